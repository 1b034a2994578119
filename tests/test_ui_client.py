"""The explorer driven through its API with gradio_client: a real (small) run on the embedded model,
bad input, the History replay and a Compare. The app runs in-process on a free port."""

from __future__ import annotations

import html
import json
import os
import re

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

gradio_client = pytest.importorskip("gradio_client")

from specviz.store import RunStore  # noqa: E402
from specviz.ui import build_app, launch_local  # noqa: E402

pytestmark = [
    pytest.mark.xdist_group("ui_client"),  # one worker: the tests share a launched app and run in order
    pytest.mark.slow,
    # Gradio's own queue statistics trip pandas 3 deprecation warnings; nothing in SpecViz.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

PROMPT = "Name three colours of the rainbow."


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_cache):
    store = RunStore(tmp_path_factory.mktemp("ui-client") / "runs.db")
    demo = build_app(model_cache, store)  # the session's shared ModelCache (tests/conftest.py)
    client = gradio_client.Client(launch_local(demo), verbose=False)
    try:
        yield client, store
    finally:
        demo.close()


def _html_outputs(result) -> list[str]:
    return [x for x in result if isinstance(x, str)]


def _status(result) -> str:
    """The status line's HTML, unescaped (messages are escaped in the page)."""
    return html.unescape(next(x for x in _html_outputs(result) if 'class="status' in x))


def _stream(result) -> str:
    return next(x for x in _html_outputs(result) if "token-stream-inner" in x)


def test_run_streams_tokens_and_logs_a_finished_run(app):
    client, store = app
    before = len(store.list_runs())
    job = client.submit(prompt=PROMPT, strategy="prompt_lookup", max_new_tokens=8, api_name="/run")
    streamed = list(job)  # every yield the handler made, in order
    result = job.result()
    assert len(streamed) >= 3  # loading status, then at least one step, then the end
    stream = _stream(result)
    assert stream.count('class="tok tok-') >= 1
    assert any(f"tok-{kind}" in stream for kind in ("accepted", "recovered", "bonus", "baseline"))
    assert 'class="tok-prompt">' + PROMPT in stream
    assert "Finished run #" in _status(result)
    runs = store.list_runs()
    assert len(runs) == before + 1
    run = runs[0]
    assert run["status"] == "finished" and run["finished"] == 1 and run["source"] == "ui"
    assert run["strategy"] == "prompt_lookup" and 1 <= run["new_tokens"] <= 8
    assert len(store.load_events(run["id"])) == run["steps"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "", "strategy": "ar"}, "prompt is empty"),
        ({"prompt": PROMPT, "strategy": "prompt_lookup", "max_ngram": 2, "min_ngram": 5}, "min_ngram"),
        ({"prompt": PROMPT, "strategy": "early_exit", "k": 8, "max_k": 4}, "must be <= max_k"),
        ({"prompt": PROMPT, "strategy": "draft_model", "drafter": "early-exit:zero"}, "drafter"),
        ({"prompt": PROMPT, "target": "./no-such-model-folder"}, "model folder not found"),
    ],
)
def test_bad_input_shows_a_message_and_logs_nothing(app, kwargs, message):
    client, store = app
    before = len(store.list_runs())
    result = client.predict(**{"max_new_tokens": 4, **kwargs}, api_name="/run")
    status = _status(result)
    assert "status-error" in status and message in status
    assert "Traceback" not in status
    assert len(store.list_runs()) == before


def test_history_lists_and_replays_a_run_without_a_model(app):
    client, store = app
    if not store.list_runs():
        client.predict(prompt=PROMPT, strategy="ar", max_new_tokens=3, api_name="/run")
    run = store.list_runs()[0]
    table = client.predict(strategy_filter="all", search_text="rainbow", api_name="/history")
    assert run["id"] in [row[0] for row in table["data"]]
    empty = client.predict(strategy_filter="all", search_text="no prompt contains this", api_name="/history")
    assert not empty["data"] or all(row[0] in (None, "") for row in empty["data"])
    opened = client.predict(run_id=run["id"], api_name="/open_run")
    stream = _stream(opened)
    assert stream.count('class="tok tok-') >= run["new_tokens"]
    assert f"Run #{run['id']}" in _status(opened)
    missing = client.predict(run_id=999_999, api_name="/open_run")
    assert "no run #999999" in _status(missing)


def test_compare_runs_both_sides_and_checks_losslessness(app):
    client, store = app
    before = {r["id"] for r in store.list_runs()}
    result = client.predict(
        prompt=PROMPT, a_name="ar", b_name="prompt_lookup", max_new_tokens=6, api_name="/compare"
    )
    html_parts = " ".join(_html_outputs(result))
    assert "lossless check: identical to baseline" in html_parts
    table = next(x for x in result if isinstance(x, dict) and "data" in x)
    assert [row[0] for row in table["data"]] == ["A", "B"]
    assert table["data"][0][3].startswith("1.00×")  # the ar side is the baseline
    new_runs = [r for r in store.list_runs() if r["id"] not in before]
    assert len(new_runs) == 2
    assert len({r["group_id"] for r in new_runs}) == 1 and new_runs[0]["group_id"]
    assert all(r["status"] == "finished" for r in new_runs)


def test_compare_without_ar_adds_a_baseline_run_one_after_another(app):
    client, store = app
    before = {r["id"] for r in store.list_runs()}
    result = client.predict(
        prompt=PROMPT, a_name="prompt_lookup", b_name="early_exit", b_exit_layer=20, max_new_tokens=4, mode="sequential",
        api_name="/compare",
    )
    table = next(x for x in result if isinstance(x, dict) and "data" in x)
    sides = [row[0] for row in table["data"]]
    assert sides == ["A", "B", "baseline (extra ar run)"]
    assert table["data"][2][3].startswith("1.00×")
    assert all(re.fullmatch(r"\d+\.\d\d×.*", row[3]) for row in table["data"])  # every side has a measured speedup
    note = next(x for x in result if isinstance(x, str) and "How the speedup is measured" in x)
    assert "one after another" in note and "extra `ar` baseline" in note
    new_runs = [r for r in store.list_runs() if r["id"] not in before]
    assert sorted(r["strategy"] for r in new_runs) == ["ar", "early_exit", "prompt_lookup"]
    assert len({r["group_id"] for r in new_runs}) == 1


def test_compare_races_two_length_policies_with_the_same_drafter(app):
    """Issue 4: the same strategy and drafter on both sides, only the draft-length policy differs."""
    client, store = app
    before = {r["id"] for r in store.list_runs()}
    result = client.predict(
        prompt=PROMPT, a_name="draft_model", a_length_policy="feedback", a_vocab_trim=8192,
        b_name="draft_model", b_length_policy="confidence", b_vocab_trim=8192, max_new_tokens=8, api_name="/compare",
    )
    assert "lossless check: identical to baseline" in " ".join(_html_outputs(result))
    new_runs = [r for r in store.list_runs() if r["id"] not in before and r["strategy"] == "draft_model"]
    assert sorted(json.loads(r["params"])["length_policy"] for r in new_runs) == ["confidence", "feedback"]
    for run in new_runs:
        events = store.load_events(run["id"])
        assert all("signal_name" in e.decision.inputs for e in events)  # the policy's signal reaches the log


@pytest.mark.parametrize("value", [0, 5000])
def test_max_new_tokens_out_of_range_is_refused_with_a_message(app, value):
    client, store = app
    before = len(store.list_runs())
    with pytest.raises(Exception, match=r"(less than minimum|greater than maximum)"):
        client.predict(prompt=PROMPT, max_new_tokens=value, api_name="/run")
    assert len(store.list_runs()) == before


def test_compare_races_diffusion_against_a_draft_model(app):
    """Diffusion drafting (a token lattice per step, ADL) against an autoregressive drafter: both lossless."""
    from specviz.figures import lattice_figure

    client, store = app
    before = {r["id"] for r in store.list_runs()}
    result = client.predict(
        # a side named alone runs with its strategy's own defaults (diffusion: ADL, a block of 8)
        prompt=PROMPT, a_name="diffusion", b_name="draft_model", b_vocab_trim=8192,
        max_new_tokens=8, api_name="/compare",
    )
    assert "lossless check: identical to baseline" in " ".join(_html_outputs(result))
    table = next(x for x in result if isinstance(x, dict) and "data" in x)
    assert [row[0] for row in table["data"]][:2] == ["A", "B"]
    new_runs = {r["strategy"]: r for r in store.list_runs() if r["id"] not in before}
    assert set(new_runs) == {"ar", "diffusion", "draft_model"} and all(r["status"] == "finished" for r in new_runs.values())
    assert json.loads(new_runs["diffusion"]["params"])["length_policy"] == "adl"
    events = store.load_events(new_runs["diffusion"]["id"])
    drafting = [e for e in events if e.num_drafted]
    assert drafting and all(e.lattice for e in drafting)  # every drafting step logged its lattice
    assert all(lattice_figure(e) is not None for e in drafting)
    assert all(e.decision.inputs.get("signal_name") for e in drafting)  # ADL's signal for the draft-length timeline
    assert not any(e.lattice for e in store.load_events(new_runs["draft_model"]["id"]))
