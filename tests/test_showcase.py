"""The page's first seconds: the recorded showcase, playback, the most informative step, the background warm-up."""

from __future__ import annotations

import pytest

from engine import ModelCache, parse_strategy
from specviz.runner import RunRequest, Runner
from specviz.traces import bundled_traces
from specviz.ui.panels import most_informative_step, shown_events
from specviz.ui.warmup import ModelWarmup


def test_most_informative_step_shows_every_verdict():
    for name, trace in bundled_traces().items():
        if name == "ar":
            assert most_informative_step(trace.events) == 0  # nothing drafted anywhere: the first step
            continue
        step = trace.events[most_informative_step(trace.events)]
        assert step.num_accepted > 0 and step.output.kind == "recovered", name
        assert step.stop_reason is None  # never the budget-starved last step
    assert most_informative_step([]) is None


def test_playback_shows_a_growing_prefix():
    events = bundled_traces()["showcase"].events
    state = {"events": events, "shown": 3}
    assert shown_events(state) == events[:3]
    assert shown_events({**state, "shown": None}) == events
    assert shown_events(None) == []


class SlowFailingCache(ModelCache):
    def get(self, spec, progress=None, device=None):
        progress("reading weights")
        raise OSError("disk on fire")


def test_warmup_reports_progress_and_failure_once():
    warmup = ModelWarmup(Runner(SlowFailingCache()), RunRequest(prompt="hi", strategy=parse_strategy("ar")))
    assert "waiting" in warmup.badge_html()
    warmup.start()
    warmup.start()  # idempotent: one thread
    assert warmup.wait(30)
    assert warmup.state == "failed"
    assert "could not be loaded" in warmup.badge_html() and "disk on fire" in warmup.badge_html()


def test_warmup_loads_the_model_without_logging(model_cache):
    warmup = ModelWarmup(Runner(model_cache), RunRequest(prompt="hi", strategy=parse_strategy("ar"), device="cpu"))
    warmup.start()
    assert warmup.wait(300) and warmup.state == "ready"
    assert "ready" in warmup.badge_html()
    assert model_cache.loaded()
