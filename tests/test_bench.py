"""The benchmark command runs end to end on the embedded model and reports consistent numbers."""

from __future__ import annotations

import json

import pytest

from specviz import cli
from specviz.bench import Row, markdown, summarise


def test_summary_uses_summed_wall_times_and_established_definitions():
    rows = [
        Row("prompt_lookup", "rag", "rag-00", new_tokens=10, steps=5, drafted=8, accepted=5, wall_s=1.0,
            baseline_wall_s=2.0, identical=True, draft_s=0.4, baseline_steps=10),
        Row("prompt_lookup", "rag", "rag-01", new_tokens=10, steps=10, drafted=4, accepted=0, wall_s=3.0,
            baseline_wall_s=2.0, identical=False, draft_s=0.2, baseline_steps=10),
    ]
    (overall,) = [s for s in summarise(rows) if s["category"] == "ALL"]
    assert overall["speedup"] == pytest.approx(4.0 / 4.0)
    assert overall["mean_acceptance_length"] == pytest.approx(1 + 5 / 15)
    assert overall["acceptance_rate"] == pytest.approx(5 / 12)
    assert overall["identical"] is False
    # drafting 0.6 s / 12 drafted tokens = 0.05 s per token; the baseline took 4 s / 20 steps = 0.2 s per step
    assert overall["cost_ratio"] == pytest.approx(0.25)
    assert "| prompt_lookup | rag | 2 |" in markdown(summarise(rows))


@pytest.mark.slow
def test_bench_command_runs_and_checks_identity(tmp_path, capsys):
    out_file = tmp_path / "bench.json"
    code = cli.main(["bench", "--categories", "rag", "--strategies", "ar,prompt_lookup",
                     "--max-new-tokens", "6", "--repeats", "2", "--out", str(out_file)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "| prompt_lookup | ALL |" in out
    result = json.loads(out_file.read_text())
    assert {r["strategy"] for r in result["rows"]} == {"ar", "prompt_lookup"}
    assert all(r["identical"] for r in result["rows"])
    assert all(r["new_tokens"] <= 6 for r in result["rows"])
    assert len(result["rows"]) == 2  # one row per (prompt, strategy), whatever the number of rounds
    ar_row = next(r for r in result["rows"] if r["strategy"] == "ar")
    assert ar_row["wall_s"] == ar_row["baseline_wall_s"]


def test_strategy_specs_with_parameters():
    from engine.errors import ConfigError
    from specviz.bench import _row_name, parse_strategy_spec

    spec = parse_strategy_spec("draft_model:drafter=early-exit:12:k=2")
    assert (spec.name, spec.drafter, spec.k) == ("draft_model", "early-exit:12", 2)
    assert _row_name(spec) == "draft_model:k=2:drafter=early-exit:12"
    assert _row_name(parse_strategy_spec("ar")) == "ar"
    with pytest.raises(ConfigError):
        parse_strategy_spec("prompt_lookup:k")
