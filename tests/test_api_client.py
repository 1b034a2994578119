"""The explorer's API as a client sees it (gradio_client), and a room of visitors at once.

- A named-endpoint call that gives only a strategy's name runs that strategy with its own defaults, the
  config `specviz run --strategy NAME` builds (`parse_strategy(name, {})`), for every strategy.
- Concurrent clients (N = 8) each get their own answer (no cross-talk), every run is logged "finished",
  waiting clients are told their queue position, and the log stays readable while model runs wait.
- One session holds one model run at a time (`specviz.ui.sessions.RunGate`).
- Messages for the page carry no server paths (`specviz.compare.redact_paths`).

The app runs once, in-process on a free port, on the real embedded model (tests/conftest.py's ModelCache).
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

gradio_client = pytest.importorskip("gradio_client")

from conftest import served_app  # noqa: E402
from engine import describe_strategies, parse_strategy  # noqa: E402
from engine.errors import ModelLoadError  # noqa: E402
from engine.loading.models import EMBEDDED_MODELS  # noqa: E402
from specviz.compare import describe_error, redact_paths  # noqa: E402
from specviz.ui.inputs import PARAM_FIELDS, strategy_from_inputs  # noqa: E402
from specviz.ui.sessions import BUSY_MESSAGE, RunGate, SessionBusyError  # noqa: E402

pytestmark = [
    pytest.mark.xdist_group("api_client"),  # one worker: the tests share a launched app and run in order
    # Gradio's own queue statistics trip pandas 3 deprecation warnings; nothing in SpecViz.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

STRATEGIES = [s["name"] for s in describe_strategies()]
PROMPT = "Name three colours of the rainbow."
MAX_NEW = 8
# rasd and rasd_tree draft from an attached document (a run input, not a strategy parameter): `specviz run` needs
# --document for them too. Every other strategy ignores it.
NEEDS_DOCUMENT = {"rasd", "rasd_tree"}
DOCUMENT = "The colours of the rainbow are red, orange, yellow, green, blue, indigo and violet."
GEMMA_INSTALLED = importlib.util.find_spec(EMBEDDED_MODELS["gemma3-270m"].package) is not None
OPTIONAL_MODELS = {"cross_vocab": GEMMA_INSTALLED}  # its default drafter is an optional package
RESULT_TIMEOUT_S = 600


# -- without the app -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STRATEGIES)
def test_a_strategy_named_alone_gets_its_own_defaults(name):
    """What a page or API call with every field None (or blank) builds: the CLI's `parse_strategy(name, {})`."""
    assert strategy_from_inputs(name, dict.fromkeys(PARAM_FIELDS)) == parse_strategy(name, {})
    assert strategy_from_inputs(name, dict.fromkeys(PARAM_FIELDS, "  ")) == parse_strategy(name, {})
    assert strategy_from_inputs(name, {}) == parse_strategy(name, {})


def test_a_given_field_still_counts_and_others_keep_their_defaults():
    config = strategy_from_inputs("kangaroo", {**dict.fromkeys(PARAM_FIELDS), "k": 3.0, "exit_layer": None})
    assert config == parse_strategy("kangaroo", {"k": 3})


def test_run_gate_holds_one_run_per_session():
    gate = RunGate()
    assert gate.try_acquire("a") and not gate.try_acquire("a")
    assert gate.try_acquire("b")  # another session is not held back
    assert gate.held("a") == 1 and gate.held() == 2
    gate.release("a")
    assert gate.try_acquire("a")
    assert gate.try_acquire(None) and gate.try_acquire(None)  # no session hash: not limited
    with pytest.raises(ValueError):
        RunGate(per_session=0)


class _Request:
    def __init__(self, session_hash):
        self.session_hash = session_hash


def test_guarded_handler_refuses_a_second_run_and_releases_on_close():
    gate = RunGate()

    def run(prompt):
        yield f"step 1 of {prompt}"
        yield f"step 2 of {prompt}"

    guarded = gate.guard(run, lambda exc: f"refused: {exc}")
    assert list(guarded.__signature__.parameters) == ["prompt", "request"]
    first = guarded("p", _Request("s1"))
    assert next(first) == "step 1 of p" and gate.held("s1") == 1
    assert list(guarded("q", _Request("s1"))) == [f"refused: {BUSY_MESSAGE}"]
    assert list(guarded("q", _Request("s2"))) == ["step 1 of q", "step 2 of q"]  # another session runs
    first.close()  # Stop: Gradio closes the generator
    assert gate.held() == 0
    assert list(guarded("r", _Request("s1")))[-1] == "step 2 of r"
    assert issubclass(SessionBusyError, Exception)


def test_error_messages_carry_no_server_paths():
    cases = {
        "no Kangaroo adapter for exit layer 6 in /srv/app/engine/assets/drafters/smollm2; trained exit layers: 4":
            "no Kangaroo adapter for exit layer 6 in …/smollm2; trained exit layers: 4",
        "unreadable: [Errno 2] No such file or directory: '/root/.cache/specviz/heads/eagle.json'":
            "unreadable: [Errno 2] No such file or directory: '…/eagle.json'",
        "~/.cache/specviz/x/config.json has format 1": "…/config.json has format 1",
        r"C:\Users\bob\models\m.gguf is missing": "…/m.gguf is missing",
        # kept: relative paths the person typed, URLs, ratios and units
        "model folder not found: './no-such-model-folder'": "model folder not found: './no-such-model-folder'",
        "see https://huggingface.co/org/model/tree/main": "see https://huggingface.co/org/model/tree/main",
        "12.5 tokens/s, 3/4 accepted, early-exit:6": "12.5 tokens/s, 3/4 accepted, early-exit:6",
    }
    for text, expected in cases.items():
        assert redact_paths(text) == expected
    assert describe_error(ModelLoadError("weights in /opt/specviz/models/m do not fit")) == "weights in …/m do not fit"
    assert "/opt/" not in describe_error(OSError("cannot open /opt/specviz/models/m/x.bin"))


# -- through the API -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(tmp_path_factory, model_cache):
    with served_app(model_cache, tmp_path_factory.mktemp("api-client") / "runs.db") as (url, store):
        yield url, gradio_client.Client(url, verbose=False), store


def _status(result) -> str:
    """The status line's text: the first output, unescaped (messages are escaped in the page)."""
    return html.unescape(re.sub(r"<[^>]+>", "", result[0]))


def _run_id(result) -> int:
    match = re.search(r"Finished run #(\d+)", _status(result))
    assert match, _status(result)
    return int(match.group(1))


def _run_kwargs(prompt: str, strategy: str) -> dict:
    """Only the prompt, the strategy's name and a short length (and the document a retrieval strategy needs)."""
    kwargs = {"prompt": prompt, "strategy": strategy, "max_new_tokens": MAX_NEW}
    if strategy in NEEDS_DOCUMENT:
        kwargs["document"] = DOCUMENT
    return kwargs


@pytest.fixture(scope="module")
def ar_tokens(app) -> dict[str, list[int]]:
    """Each prompt's greedy ar output (token ids), filled on first use: every lossless strategy must match it."""
    _, client, store = app
    cache: dict[str, list[int]] = {}

    def tokens(prompt: str) -> list[int]:
        if prompt not in cache:
            run = store.get_run(_run_id(client.predict(**_run_kwargs(prompt, "ar"), api_name="/run")))
            cache[prompt] = json.loads(run["output_token_ids"])
        return cache[prompt]

    return tokens


@pytest.mark.slow
def test_api_lists_every_strategy_field_as_optional_with_default_none(app):
    _, client, _ = app
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for endpoint, prefixes in (("/run", [""]), ("/compare", ["a_", "b_"])):
        params = {p["parameter_name"]: p for p in api[endpoint]["parameters"]}
        assert not params["prompt"]["parameter_has_default"]  # the one required parameter
        for prefix in prefixes:
            for field in PARAM_FIELDS:
                p = params[prefix + field]
                assert p["parameter_has_default"] and p["parameter_default"] is None, p
        assert "request" not in params  # Gradio fills the session itself


@pytest.mark.slow
@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_runs_by_name_alone_with_its_own_defaults(app, ar_tokens, name):
    if not OPTIONAL_MODELS.get(name, True):
        pytest.skip(f"{name}'s default drafter is an optional package that is not installed")
    _, client, store = app
    result = client.predict(**_run_kwargs(PROMPT, name), api_name="/run")
    run = store.get_run(_run_id(result))
    assert run["status"] == "finished" and run["strategy"] == name
    assert json.loads(run["params"]) == parse_strategy(name, {}).params()  # what `specviz run --strategy NAME` runs
    assert json.loads(run["output_token_ids"]) == ar_tokens(PROMPT)  # greedy and lossless: ar's text


@pytest.mark.slow
def test_compare_sides_named_alone_get_their_own_defaults(app):
    _, client, store = app
    before = {r["id"] for r in store.list_runs()}
    client.predict(prompt=PROMPT, a_name="kangaroo", b_name="early_exit", max_new_tokens=4, mode="sequential",
                   api_name="/compare")
    new = {r["strategy"]: r for r in store.list_runs() if r["id"] not in before}
    assert set(new) == {"kangaroo", "early_exit", "ar"} and all(r["status"] == "finished" for r in new.values())
    for name in ("kangaroo", "early_exit"):
        assert json.loads(new[name]["params"]) == parse_strategy(name, {}).params()


@pytest.mark.slow
def test_a_load_error_shows_no_server_path(app):
    _, client, store = app
    before = len(store.list_runs())
    status = _status(client.predict(prompt=PROMPT, strategy="kangaroo", exit_layer=6, max_new_tokens=2,
                                    api_name="/run"))
    assert "no Kangaroo adapter for exit layer 6" in status
    assert not re.search(r"(?<![\w.])/\w+/", status), status  # no absolute path
    assert len(store.list_runs()) == before


@pytest.mark.slow
def test_one_session_holds_one_model_run_at_a_time(app):
    url, _, store = app
    client = gradio_client.Client(url, verbose=False)  # one session
    before = {r["id"] for r in store.list_runs()}
    first = client.submit(prompt=PROMPT, strategy="ar", max_new_tokens=24, api_name="/run")
    while len(first.outputs()) < 2 and not first.done():  # running: past the loading status
        time.sleep(0.05)
    assert not first.done()
    second = client.predict(prompt=PROMPT, strategy="prompt_lookup", max_new_tokens=2, api_name="/run")
    assert "already has a model run in progress" in _status(second)
    _run_id(first.result(timeout=RESULT_TIMEOUT_S))
    new = [r for r in store.list_runs() if r["id"] not in before]
    assert [r["strategy"] for r in new] == ["ar"]
    _run_id(client.predict(prompt=PROMPT, strategy="prompt_lookup", max_new_tokens=2, api_name="/run"))  # released


# Eight visitors at once, each with its own (lossless) strategy; two per prompt, so that only four prompts need a
# run alone for reference (each run's id, strategy and prompt are checked too, so a mix-up between the two shows).
CONCURRENT = [
    (PROMPT, "ar"),
    ("What is the capital of France?", "prompt_lookup"),
    ("Count from one to five.", "early_exit"),
    ("Say hello in Spanish.", "lookup_tree"),
    (PROMPT, "hybrid_tree"),
    ("What is the capital of France?", "draft_model"),
    ("Count from one to five.", "aded"),
    ("Say hello in Spanish.", "dynamic_tree"),
]


@pytest.mark.slow
def test_eight_concurrent_clients_get_their_own_answers_and_every_run_is_logged(app, ar_tokens):
    url, reader, store = app
    alone = {prompt: ar_tokens(prompt) for prompt, _ in CONCURRENT}  # each prompt run by itself first
    before = {r["id"] for r in store.list_runs()}
    with ThreadPoolExecutor(len(CONCURRENT)) as pool:  # one client (one session) per visitor
        clients = list(pool.map(lambda _: gradio_client.Client(url, verbose=False), CONCURRENT))
    jobs = [client.submit(**_run_kwargs(prompt, strategy), api_name="/run")
            for client, (prompt, strategy) in zip(clients, CONCURRENT, strict=True)]

    # The log is served while model runs wait: History answers before the runs are through.
    reader.predict(strategy_filter="all", search_text="", api_name="/history")
    assert not all(job.done() for job in jobs)

    ranks: set[int] = set()
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while not all(job.done() for job in jobs) and time.monotonic() < deadline:
        for job in jobs:
            status = job.status()
            if status.rank is not None and not job.done():
                ranks.add(status.rank)
        time.sleep(0.05)
    assert ranks and max(ranks) >= 1, ranks  # waiting clients were told their place in the queue

    for job, (prompt, strategy) in zip(jobs, CONCURRENT, strict=True):
        result = job.result(timeout=1)  # raises if the job failed
        run = store.get_run(_run_id(result))
        assert (run["prompt"], run["strategy"], run["status"]) == (prompt, strategy, "finished")
        assert json.loads(run["output_token_ids"]) == alone[prompt]  # what this prompt gives alone
        stream = next(x for x in result if isinstance(x, str) and "token-stream-inner" in x)
        assert html.escape(prompt, quote=False) in stream
        assert not any(html.escape(other, quote=False) in stream for other, _ in CONCURRENT if other != prompt)
    new = [r for r in store.list_runs() if r["id"] not in before]
    assert len(new) == len(CONCURRENT) and all(r["status"] == "finished" for r in new)


@pytest.mark.slow
def test_what_if_and_fork_act_on_the_clients_last_run(app):
    """/what_if_k and /fork read the run this client (one session) last ran: no run yet gets a message."""
    url, _, _ = app
    client = gradio_client.Client(url, verbose=False)  # a session of its own
    assert "no run to explore yet" in _status(client.predict(step=0, api_name="/what_if_k"))
    client.predict(prompt=PROMPT, strategy="draft_model", max_new_tokens=10, api_name="/run")
    status = _status(client.predict(step=1, api_name="/what_if_k"))
    assert status.startswith("✓ Step 1:") and "agree" in status, status
    status, sides = client.predict(step=1, strategy="prompt_lookup", max_new_tokens=6, api_name="/fork")
    assert "Identical text" in sides, _status([status])
