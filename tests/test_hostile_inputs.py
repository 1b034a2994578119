"""Hostile input everywhere: the page's API (one launched app, driven with gradio_client and raw HTTP), the CLI,
the public-Space limits and the renderers.

Every bad input gets a clear message (the status line, a Gradio error, or stderr with exit status 2), never a
traceback, a server path, a hung queue or a logged run; accepted hostile text (RTL, emoji, markup, SQL-like) runs,
is logged exactly and is escaped wherever it is shown.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

from engine import EMBEDDED_DEFAULT, parse_strategy  # noqa: E402
from engine.errors import ConfigError, PromptError, shown_path  # noqa: E402
from engine.events import DraftedToken, LengthDecision, NewToken, OutputToken, PhaseTimings, StepEvent, TokenCandidate  # noqa: E402
from specviz import cli  # noqa: E402
from specviz.figures import acceptance_figure  # noqa: E402
from specviz.limits import RunLimits  # noqa: E402
from specviz.runner import RunRequest, Runner, read_document_file  # noqa: E402
from specviz.store import RunStore  # noqa: E402
from specviz.ui import build_app, launch_local, render  # noqa: E402
from specviz.ui.compare_tab import side_stream  # noqa: E402
from specviz.ui.history_tab import history_frame, load_run  # noqa: E402

pytestmark = [
    pytest.mark.xdist_group("hostile_inputs"),  # one worker: the tests share a launched app and run in order
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Name a colour."
XSS = "<img src=x onerror=alert(1)><script>alert(1)</script>"
SQL = "'; DROP TABLE runs; --"
HOSTILE_TEXT = f"مرحبا بالعالم 👋🏽 שלום {XSS} {SQL}"  # RTL, emoji, markup, script, SQL-like: a valid prompt


def leaks(text: str, *extra: str) -> list[str]:
    """What a visitor must never see: a traceback, a server path (the checkout, site-packages, the home folder)."""
    needles = ["Traceback", 'File "', str(REPO_ROOT), "site-packages", str(Path.home()) + "/", *extra]
    return [n for n in needles if n and n in text]


def _html_outputs(result) -> list[str]:
    return [x for x in result if isinstance(x, str)]


def _status(result) -> str:
    """The status line's text (unescaped: the page escapes messages)."""
    raw = next(x for x in _html_outputs(result) if 'class="status' in x)
    return html.unescape(re.sub(r"<[^>]+>", "", raw)).strip()


def _stream(result) -> str:
    return next(x for x in _html_outputs(result) if "token-stream-inner" in x)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)


def tags_in(markup: str) -> set[str]:
    parser = _Tags()
    parser.feed(markup)
    return parser.tags


def raw_call(url: str, api: str, params: list[tuple[str, object]], **values) -> str:
    """Call a named endpoint over plain HTTP with ASCII-escaped JSON (what gradio_client cannot send: lone
    surrogates, NaN, infinity); the last message of the event stream."""
    data = [values.get(name, default) for name, default in params]
    event = httpx.post(f"{url}gradio_api/call{api}", content=json.dumps({"data": data}, ensure_ascii=True),
                       headers={"content-type": "application/json"}, timeout=30).json()["event_id"]
    lines = httpx.get(f"{url}gradio_api/call{api}/{event}", timeout=120).text.splitlines()
    return [line for line in lines if line.startswith("data:")][-1]


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_cache):
    db = tmp_path_factory.mktemp("hostile") / "runs.db"
    store = RunStore(db)
    demo = build_app(model_cache, store)
    url = launch_local(demo)
    client = gradio_client.Client(url, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = {name: [(p["parameter_name"], p.get("parameter_default")) for p in info["parameters"]]
              for name, info in api.items()}
    try:
        yield client, store, url, params, str(db)
    finally:
        demo.close()


# -- the page's API: /run -----------------------------------------------------------------------------------

RUN_REFUSALS = [
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": " \n\t "}, "prompt is empty"),
    ({"prompt": "a\x00b"}, "prompt: contains NUL"),
    ({"prompt": "word " * 20_000}, "context window is"),  # 100k characters: tokenised, too long for the model
    ({"prompt": "x" * 200_001}, "takes at most 200,000"),
    ({"strategy": "prompt_lookup", "k": 10**12}, "k: must be an integer in [1, 64]"),
    ({"strategy": "prompt_lookup", "k": -5}, "k: must be an integer in [1, 64]"),
    ({"strategy": "prompt_lookup", "k": 2.5}, "k: must be an integer in [1, 64]"),
    ({"seed": 10**30}, "seed: must be an integer in [0, 9,223,372,036,854,775,807]"),
    ({"top_k": 1e308}, "top_k: must be an integer in [0, "),
    ({"temperature": 1e-320}, "temperature: must be 0 (greedy) or at least 1e-06"),
    ({"strategy": "draft_model", "drafter": "kangaroo:6"}, "no Kangaroo adapter for exit layer 6 in assets/drafters/"),
    ({"strategy": "draft_model", "drafter": XSS, "vocab_trim": 0}, "model folder not found"),
    ({"strategy": "draft_model", "drafter": "a\x00b"}, "drafter: contains NUL"),
    ({"strategy": "static_tree", "branching": SQL}, "branching: must be 1-8"),
    ({"target": SQL}, "model folder not found"),
    ({"target": "m" * 400}, "a model name has at most 300"),
    ({"strategy": "rasd", "document": "a\x00b"}, "document: contains NUL"),
    ({"strategy": "rasd", "document": "x" * 1_000_001}, "the limit is 1 MB"),
    ({"strategy": "rasd", "document": "   "}, "drafts from a document: attach one"),
]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, message", RUN_REFUSALS, ids=lambda x: repr(x)[:40] if isinstance(x, dict) else None)
def test_run_refuses_bad_input_with_a_message_and_logs_nothing(app, kwargs, message):
    client, store, _, _, db = app
    before = len(store.list_runs())
    result = client.predict(**{"prompt": PROMPT, "strategy": "ar", "max_new_tokens": 2, **kwargs}, api_name="/run")
    status = _status(result)
    assert "status-error" in " ".join(_html_outputs(result)) and message in status, status
    assert not leaks(" ".join(map(str, result)), db)
    assert len(store.list_runs()) == before


@pytest.mark.slow
@pytest.mark.parametrize("field, value", [("prompt", "\ud800x"), ("drafter", "\udfff"), ("document", "a\ud800")])
def test_lone_surrogates_over_raw_http_get_a_message(app, field, value):
    _, store, url, params, db = app
    before = len(store.list_runs())
    strategy = "draft_model" if field == "drafter" else "ar"
    last = raw_call(url, "/run", params["/run"], **{"prompt": PROMPT, "strategy": strategy, "max_new_tokens": 2,
                                                    field: value})
    assert f"{field}: contains characters that are not valid Unicode" in last
    assert not leaks(last, db)
    assert len(store.list_runs()) == before


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 10**12}, "greater than maximum value"),
    ({"max_new_tokens": -5}, "less than minimum value"),
    ({"strategy": SQL}, "not in the list of choices"),
    ({"top_k": -1}, "less than minimum value"),
    ({"temperature": 1e308}, "greater than maximum value"),
])
def test_gradio_refuses_out_of_range_widget_values_with_a_message(app, kwargs, message):
    client, store, _, _, _ = app
    before = len(store.list_runs())
    with pytest.raises(gradio_client.exceptions.AppError, match=re.escape(message)) as caught:
        client.predict(**{"prompt": PROMPT, "strategy": "ar", "max_new_tokens": 2, **kwargs}, api_name="/run")
    assert not leaks(str(caught.value))
    assert len(store.list_runs()) == before


@pytest.mark.slow
def test_hostile_but_valid_text_runs_is_logged_exactly_and_shown_escaped(app):
    client, store, _, _, db = app
    result = client.predict(prompt=HOSTILE_TEXT, strategy="ar", max_new_tokens=3, api_name="/run")
    assert _status(result).startswith("✓ Finished run #"), _status(result)
    run = store.list_runs()[0]
    assert run["prompt"] == HOSTILE_TEXT and run["status"] == "finished"
    for shown in (_stream(result), _status(result)):
        assert not tags_in(shown) & {"img", "script"}
    assert html.escape(HOSTILE_TEXT, quote=True) in _stream(result)
    # the SQL-like text is a search like any other (the log's queries are parameterised; the table survives)
    table = client.predict(strategy_filter="all", search_text=SQL, api_name="/history")
    assert run["id"] in [row[0] for row in table["data"]]
    opened = client.predict(run_id=run["id"], api_name="/open_run")
    assert f"Run #{run['id']}" in _status(opened)
    assert not tags_in(_stream(opened)) & {"img", "script"} and not leaks(" ".join(map(str, opened)), db)


# -- History and the multi-draft bound ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("run_id, message", [
    (2.5, "run ids are whole numbers"), (1e30, "run ids are whole numbers"), (999_999, "no run #999999"),
])
def test_open_run_refuses_bad_ids_with_a_message(app, run_id, message):
    client, _, _, _, db = app
    result = client.predict(run_id=run_id, api_name="/open_run")
    assert message in _status(result) and not leaks(" ".join(map(str, result)), db)


@pytest.mark.slow
@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_open_run_refuses_nan_and_infinity_over_raw_http(app, value):
    _, _, url, _, db = app
    event = httpx.post(f"{url}gradio_api/call/open_run", content='{"data": [%s]}' % value,
                       headers={"content-type": "application/json"}, timeout=30).json()["event_id"]
    last = httpx.get(f"{url}gradio_api/call/open_run/{event}", timeout=60).text
    assert "run id: type the id of a run" in last and not leaks(last, db)


@pytest.mark.slow
@pytest.mark.parametrize("search, message", [("a\x00b", "search: contains NUL"), ("s" * 1_001, "search for at most 1,000")])
def test_history_search_refuses_non_text_with_a_message(app, search, message):
    client, _, _, _, db = app
    with pytest.raises(gradio_client.exceptions.AppError, match=re.escape(message)) as caught:
        client.predict(strategy_filter="all", search_text=search, api_name="/history")
    assert not leaks(str(caught.value), db)
    assert "data" in client.predict(strategy_filter="all", search_text="%_", api_name="/history")


@pytest.mark.slow
@pytest.mark.parametrize("p_text, message", [
    (XSS, "is not a number"), ("nan, 1", "not a finite number"), ("", "is empty"), (", ".join(["1"] * 50), "50 entries"),
])
def test_multi_draft_bound_refuses_bad_weights_escaped(app, p_text, message):
    client, _, _, _, _ = app
    _, result_html = client.predict(p_text=p_text, q_text="1, 1", k=2, api_name="/multi_draft_bound")
    assert "status-error" in result_html and message in html.unescape(result_html)
    assert not tags_in(result_html) & {"img", "script"}


@pytest.mark.slow
def test_the_queue_still_answers_and_logs_after_the_hostile_calls(app):
    client, store, _, _, _ = app
    before = len(store.list_runs())
    job = client.submit(prompt=PROMPT, strategy="prompt_lookup", max_new_tokens=2, api_name="/run")
    result = job.result(timeout=120)
    assert "Finished run #" in _status(result)
    assert len(store.list_runs()) == before + 1 and store.list_runs()[0]["status"] == "finished"


# -- the public-Space mode -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def public_app(tmp_path_factory, model_cache):
    store = RunStore(tmp_path_factory.mktemp("hostile-public") / "runs.db")
    demo = build_app(model_cache, store, RunLimits.public_space())
    client = gradio_client.Client(launch_local(demo), verbose=False)
    try:
        yield client, store, demo
    finally:
        demo.close()


@pytest.mark.slow
@pytest.mark.parametrize("api, kwargs, message", [
    ("/run", {"target": "HuggingFaceTB/SmolLM2-360M-Instruct"}, "this public demo runs only smollm2-135m-instruct"),
    ("/run", {"target": "/tmp"}, "no local folders"),
    ("/run", {"strategy": "draft_model", "drafter": "HuggingFaceTB/SmolLM2-135M", "vocab_trim": 0},
     "drafts only with the project's own drafters"),
    ("/run", {"strategy": "rasd", "document": "d" * 150_000}, "150,000 bytes; the limit is 100 kB in this public demo"),
    ("/run", {"prompt": "p" * 5_000}, "takes at most 4,000"),
    ("/compare", {"target": "gpt2", "a_name": "ar", "b_name": "prompt_lookup"}, "this public demo runs only"),
])
def test_public_mode_refuses_what_it_does_not_serve(public_app, api, kwargs, message):
    client, store, _ = public_app
    result = client.predict(**{"prompt": PROMPT, "max_new_tokens": 2, **({"strategy": "ar"} if api == "/run" else {}),
                               **kwargs}, api_name=api)
    assert message in _status(result), _status(result)
    assert not leaks(" ".join(map(str, result)))
    assert store.list_runs() == []


@pytest.mark.slow
def test_public_mode_caps_the_sampling_lab(public_app):
    client, store, demo = public_app
    slider = next(c["props"] for c in demo.config["components"] if c["props"].get("label") == "samples (N)")
    assert slider["maximum"] == 300
    with pytest.raises(gradio_client.exceptions.AppError, match="greater than maximum value 300"):
        client.predict(prompt=PROMPT, samples=310, temperature=0.7, api_name="/sampling_lab")
    # the widget's cap is a convenience: the handler refuses on its own
    with pytest.raises(ConfigError, match="at most 300 samples per strategy"):
        RunLimits.public_space().check_lab_samples(310)
    assert RunLimits().check_lab_samples(1000) == 1000
    assert store.list_runs() == []


@pytest.mark.slow
def test_public_mode_says_so_in_the_page_caps_the_widgets_and_still_runs(public_app, model_cache):
    client, store, demo = public_app
    components = demo.config["components"]
    note = next(c for c in components if c.get("props", {}).get("elem_id") == "public-limits")
    assert "Public demo limits" in note["props"]["value"] and "256 new tokens" in note["props"]["value"]
    sliders = [c["props"] for c in components if c["props"].get("label") == "max new tokens"]
    assert len(sliders) == 2 and all(s["maximum"] == 256 for s in sliders)
    targets = [c["props"] for c in components if c["props"].get("label") == "target model"]
    assert targets and all(t["interactive"] is False and t["value"] == EMBEDDED_DEFAULT for t in targets)
    with pytest.raises(gradio_client.exceptions.AppError, match="greater than maximum value 256"):
        client.predict(prompt=PROMPT, strategy="ar", max_new_tokens=300, api_name="/run")
    # the widget's cap is a convenience: the runner refuses on its own (any caller, any endpoint)
    runner = Runner(model_cache, None, RunLimits.public_space())
    with pytest.raises(ConfigError, match="at most 256 new tokens"):
        runner.check_request(RunRequest(prompt=PROMPT, strategy=parse_strategy("ar"), max_new_tokens=300))
    result = client.predict(prompt=PROMPT, strategy="draft_model", drafter="kangaroo:2", max_new_tokens=2, api_name="/run")
    assert "Finished run #" in _status(result)
    assert [r["status"] for r in store.list_runs()] == ["finished"]


def test_run_limits_from_the_environment():
    assert not RunLimits.from_env({}).public
    assert RunLimits.from_env({"SPECVIZ_PUBLIC": "1"}).public
    assert RunLimits.from_env({"SPACE_ID": "someone/specviz"}).public  # a Space is public unless told otherwise
    assert not RunLimits.from_env({"SPACE_ID": "someone/specviz", "SPECVIZ_PUBLIC": "0"}).public
    public = RunLimits.public_space()
    for spec in ("distilled", "eagle", "medusa", "kangaroo:2", "early-exit:6", "gemma3-270m"):
        public.check_drafter(spec)
    for spec in ("gpt2", "./drafter", "/abs/drafter", "early-exit:0", "kangaroo:2x"):
        with pytest.raises(ConfigError, match="drafter:"):
            public.check_drafter(spec)
    assert RunLimits().check_target("  ") == EMBEDDED_DEFAULT
    with pytest.raises(PromptError, match="at most 4,000"):
        public.check_prompt("x" * 4_001)


# -- the CLI ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-files")
    contents = {"bad": b"hi \xff\xfe there", "nul": b"a\x00b", "empty": b"", "space": b"  \n\t ",
                "notadb": b"this is not SQLite"}
    paths = {}
    for name, content in contents.items():
        (root / f"{name}.txt").write_bytes(content)
        paths[name] = root / f"{name}.txt"
    (root / "folder").mkdir()
    paths["folder"] = root / "folder"
    return paths


CLI_REFUSALS = [
    (["--prompt-file", "{bad}"], "is not a UTF-8 text file"),
    (["--prompt-file", "{nul}"], "looks like a binary file"),
    (["--prompt-file", "{folder}"], "Is a directory"),
    (["--prompt-file", "{empty}"], "prompt is empty"),
    (["--prompt-file", "{space}"], "prompt is empty"),
    (["--prompt", "hi", "--document", "{bad}"], "document: "),
    (["--prompt", "hi", "--document", "{folder}"], "Is a directory"),
    (["--prompt", "hi", "--max-new-tokens", str(10**12)], "max_new_tokens: must be an integer in [1, 4096]"),
    (["--prompt", "hi", "--max-new-tokens", "-5"], "max_new_tokens"),
    (["--prompt", "hi", "--max-new-tokens", "abc"], "invalid int value"),
    (["--prompt", "hi", "--temperature", "nan"], "temperature: must be a finite number"),
    (["--prompt", "hi", "--temperature", "inf"], "temperature: must be a finite number"),
    (["--prompt", "hi", "--temperature", "1e-320"], "temperature: must be 0 (greedy) or at least"),
    (["--prompt", "hi", "--top-p", "nan"], "top_p"),
    (["--prompt", "hi", "--top-p", "1e-300"], "top_p: must be at least"),
    (["--prompt", "hi", "--seed", str(10**30)], "seed: must be an integer in [0, "),
    (["--prompt", "hi", "--top-k", str(10**30)], "top_k: must be an integer in [0, "),
    (["--prompt", "hi", "--seed", "-1"], "seed"),
    (["--prompt", "hi", "--strategy", SQL], "unknown strategy"),
    (["--prompt", "hi", "--strategy", "prompt_lookup", "--param", "k=1e12"], "k: expected an integer"),
    (["--prompt", "hi", "--strategy", "prompt_lookup", "--param", "k=nan"], "k: expected an integer"),
    (["--prompt", "hi", "--param", "=x"], "expected key=value"),
    (["--prompt", "hi", "--target", "m" * 400], "a model name has at most 300"),
    (["--prompt", "hi", "--db", "{folder}"], "--db: cannot open"),
    (["--prompt", "hi", "--db", "{notadb}"], "--db: cannot open"),
]


@pytest.mark.parametrize("args, message", CLI_REFUSALS, ids=lambda x: " ".join(x)[:40] if isinstance(x, list) else None)
def test_cli_refuses_bad_input_with_one_line_and_exit_2(args, message, files, tmp_path, capsys):
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    if "--strategy" not in args:
        args += ["--strategy", "ar"]
    if "--db" not in args:
        args += ["--db", str(tmp_path / "runs.db")]
    code = cli.main(["run", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("specviz: error: ") and err.count("\n") == 1 and message in err, err
    assert not leaks(err)
    assert not (tmp_path / "runs.db").exists() or RunStore(tmp_path / "runs.db").list_runs() == []


def test_cli_bad_prompt_file_in_a_real_process(files, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "specviz.cli", "run", "--prompt-file", str(files["bad"]), "--strategy", "ar",
         "--db", str(tmp_path / "r.db")], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"specviz: error: --prompt-file: {str(files['bad'])!r} is not a UTF-8 text file\n"


@pytest.mark.parametrize("out, message", [("{folder}", "is a folder"), ("{folder}/no/such/x.json", "does not exist")])
def test_bench_refuses_an_unwritable_out_before_benchmarking(out, message, files, capsys):
    with pytest.raises(SystemExit) as exited:  # argparse's usage error, before any model is loaded
        cli.main(["bench", "--out", out.format(folder=files["folder"])])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--out: " in err and message in err and "Traceback" not in err


def test_file_messages_name_no_server_folder(files, tmp_path):
    for name in ("bad", "nul", "folder"):
        with pytest.raises(ConfigError) as caught:
            read_document_file(files[name])
        assert str(files[name].parent) not in str(caught.value)
    assert shown_path(REPO_ROOT / "assets" / "drafters" / "x") == "assets/drafters/x"
    assert shown_path(tmp_path / "mine") == "…/mine"


# -- rendering: everything a person or the model typed is escaped -------------------------------------------

def _hostile_event() -> StepEvent:
    cand = (TokenCandidate(5, XSS, 0.6),)
    draft = (DraftedToken(0, 5, XSS, 0.5, 0.6, 1.0, 0.2, "accepted", cand),
             DraftedToken(1, 6, SQL + XSS, 0.4, 0.1, 0.25, 0.9, "rejected", cand))
    timings = PhaseTimings(draft_s=0.01, verify_s=0.02, overhead_s=0.001, start_s=0.0, end_s=0.031)
    return StepEvent(
        index=0, context_length=12, decision=LengthDecision(2, 2, XSS, {XSS: XSS}), draft=draft,
        output=OutputToken(7, XSS, "recovered", 0.5, cand), new_tokens=(NewToken(5, XSS, "accepted"), NewToken(7, XSS, "recovered")),
        target_forwards=2, timings=timings, stop_reason=XSS,
        proposer_info={"summary": XSS, XSS: XSS, "tables": [{"title": XSS, "columns": [XSS], "rows": [[XSS, 0.5]]}]},
    )


def test_every_panel_escapes_model_and_user_text():
    events = [_hostile_event()]
    label = parse_strategy("draft_model", {"drafter": XSS, "vocab_trim": 0}).label()
    panels = [
        render.token_stream_html(events, HOSTILE_TEXT),
        render.step_inspector_html(events, 0),
        render.status_html(XSS, "error"),
        render.metrics_html(None, note=XSS),
        side_stream(XSS, label, events, running=False, error=XSS),
    ]
    for markup in panels:
        assert not tags_in(markup) & {"img", "script"}, markup
        assert XSS not in markup
    figure = acceptance_figure(events, title=label)
    assert "<img" not in figure.layout.title.text and "<script" not in figure.layout.title.text
    frame = history_frame([{"id": 1, "prompt": XSS, "strategy_label": label, "status": "finished"}])
    assert frame.loc[0, "prompt"] == render.excerpt(XSS, 60)  # a Dataframe cell: plain text, shown as text


def test_load_run_refuses_absurd_ids(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    for value in (None, "", "abc", float("nan"), float("inf"), 1e308, -5, 0, 2.5, 10**30, SQL):
        with pytest.raises(ConfigError, match="run id"):
            load_run(store, value)
