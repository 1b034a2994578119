"""Recorded traces (assets/traces): real runs shipped as data, replayed by the page and the lessons."""

from __future__ import annotations

import json

import pytest

from engine import StepEvent
from specviz.runner import RunRequest, Runner
from specviz.traces import TRACE_RECIPES, RecordedTrace, RunSetup, bundled_traces, load_trace, save_trace


@pytest.fixture(scope="module")
def traces() -> dict[str, RecordedTrace]:
    return bundled_traces()


def test_every_recipe_is_bundled(traces):
    assert set(traces) == {r.name for r in TRACE_RECIPES}
    for trace in traces.values():
        assert trace.events and trace.events[-1].stop_reason is not None
        assert [e.index for e in trace.events] == list(range(len(trace.events)))
        assert trace.recorded["cpu"] and trace.recorded["date"]


def test_events_survive_a_json_round_trip(traces, tmp_path):
    for trace in traces.values():
        for event in trace.events:
            assert StepEvent.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    path = save_trace(traces["tree"], tmp_path)
    assert load_trace(path) == traces["tree"]
    assert any(e.tree for e in traces["tree"].events) and any(e.lattice for e in traces["diffusion"].events)
    assert any(d.uniform is not None for e in traces["chain_sampled"].events for d in e.draft)


def test_a_damaged_trace_costs_only_itself(traces, tmp_path):
    save_trace(traces["ar"], tmp_path)
    (tmp_path / "broken.json.gz").write_bytes(b"not gzip")
    assert list(bundled_traces(tmp_path)) == ["ar"]


def test_setup_round_trips_through_a_log_row():
    setup = RunSetup("hi", "draft_model", {"k": 3}, temperature=0.5, seed=7, max_new_tokens=9)
    row = {"prompt": "hi", "strategy": "draft_model", "params": json.dumps({"k": 3}), "temperature": 0.5, "top_k": 0,
           "top_p": 1.0, "seed": 7, "max_new_tokens": 9, "target": setup.target, "raw_prompt": 0, "document": None}
    assert RunSetup.from_row(row) == setup
    assert setup.strategy_config().k == 3 and setup.sampling().seed == 7


def test_greedy_traces_are_what_the_engine_writes_today(traces, model_cache):
    """A greedy trace's text is ar's text on its prompt: the traces are real runs, and still true."""
    runner = Runner(model_cache)
    trace = traces["showcase"]
    setup = trace.setup
    prepared = runner.prepare(RunRequest(prompt=setup.prompt, strategy=RunSetup(setup.prompt, "ar").strategy_config(),
                                         max_new_tokens=setup.max_new_tokens, device="cpu"))
    ids = [u for u in runner.stream(prepared)][-1].token_ids
    assert [t.token_id for e in trace.events for t in e.new_tokens] == ids
