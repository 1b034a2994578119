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
    code = cli.main(["bench", "--categories", "rag", "--strategies", "ar,prompt_lookup,hf_prompt_lookup,hf_assisted",
                     "--max-new-tokens", "6", "--repeats", "2", "--out", str(out_file)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "| prompt_lookup | ALL |" in out
    result = json.loads(out_file.read_text())
    assert {r["strategy"] for r in result["rows"]} == {"ar", "prompt_lookup", "hf_prompt_lookup", "hf_assisted"}, err
    ours = [r for r in result["rows"] if not r["strategy"].startswith("hf_")]
    assert all(r["identical"] for r in ours)
    assert all(r["new_tokens"] <= 6 for r in result["rows"])
    assert len(result["rows"]) == 4  # one row per (prompt, strategy), whatever the number of rounds
    ar_row = next(r for r in result["rows"] if r["strategy"] == "ar")
    assert ar_row["wall_s"] == ar_row["baseline_wall_s"]
    for hf in (r for r in result["rows"] if r["strategy"].startswith("hf_")):
        # timed in the same rounds against the same baseline and generate(); acceptance unknown
        assert hf["baseline_wall_s"] == ar_row["wall_s"] and hf["generate_wall_s"] == ar_row["generate_wall_s"]
        assert hf["wall_s"] > 0 and 0 < hf["new_tokens"] <= 6 and isinstance(hf["identical"], bool)
        assert (hf["steps"], hf["drafted"], hf["accepted"], hf["per_position"]) == (0, 0, 0, [])
    (hf_all,) = [s for s in result["summary"] if s["strategy"] == "hf_prompt_lookup" and s["category"] == "ALL"]
    assert hf_all["speedup"] > 0 and hf_all["vs_generate_geomean"] > 0


def test_strategy_specs_with_parameters():
    from engine.errors import ConfigError
    from specviz.bench import _row_name, parse_strategy_spec

    spec = parse_strategy_spec("draft_model:drafter=early-exit:12:k=2")
    assert (spec.name, spec.drafter, spec.k) == ("draft_model", "early-exit:12", 2)
    assert _row_name(spec) == "draft_model:k=2:drafter=early-exit:12"
    assert _row_name(parse_strategy_spec("ar")) == "ar"
    with pytest.raises(ConfigError):
        parse_strategy_spec("prompt_lookup:k")


def _row(strategy, category, prompt_id, wall_s, generate_wall_s, per_position=(), **kw):
    defaults = dict(new_tokens=10, steps=5, drafted=8, accepted=4, baseline_wall_s=2.0, identical=True)
    return Row(strategy, category, prompt_id, wall_s=wall_s, generate_wall_s=generate_wall_s,
               per_position=list(per_position), **{**defaults, **kw})


def test_summary_per_position_acceptance_and_geometric_mean_vs_generate():
    rows = [
        _row("draft_model", "qa", "qa-00", wall_s=1.0, generate_wall_s=4.0, per_position=[0.9, 0.6, 0.3]),
        _row("draft_model", "qa", "qa-01", wall_s=2.0, generate_wall_s=1.0, per_position=[0.5, 0.2]),
        _row("draft_model", "code", "code-00", wall_s=1.0, generate_wall_s=1.0, per_position=[]),  # never drafted
        _row("draft_model", "code", "code-01", wall_s=1.0, generate_wall_s=2.0,
             per_position=[0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]),
    ]
    by_group = {(s["strategy"], s["category"]): s for s in summarise(rows)}
    qa, code, overall = by_group["draft_model", "qa"], by_group["draft_model", "code"], by_group["draft_model", "ALL"]
    # each row weighs the same at a position, over the rows that drafted that far
    assert qa["per_position"] == pytest.approx([0.7, 0.4, 0.3])
    assert code["per_position"] == pytest.approx([0.8, 0.7, 0.6, 0.5, 0.4, 0.3])  # positions 1..6 only
    assert overall["per_position"] == pytest.approx([(0.9 + 0.5 + 0.8) / 3, (0.6 + 0.2 + 0.7) / 3, 0.45, 0.5, 0.4, 0.3])
    # geometric mean over prompts of generate() time / wall time, next to the ratio of sums
    assert qa["vs_generate_geomean"] == pytest.approx((4.0 * 0.5) ** 0.5)
    assert qa["vs_generate"] == pytest.approx(5.0 / 3.0)
    assert overall["vs_generate_geomean"] == pytest.approx((4.0 * 0.5 * 1.0 * 2.0) ** 0.25)
    assert overall["vs_generate"] == pytest.approx(8.0 / 5.0)
    table = markdown(summarise(rows))
    assert "| draft_model | qa | 2 | 1.33x | 1.67x | 1.41x |" in table
    assert "| 0.70/0.40/0.30 |" in table
    assert "vs generate() geomean" in table.splitlines()[0]


def test_markdown_shows_n_a_for_the_transformers_rows_acceptance_columns():
    rows = [
        _row("ar", "rag", "rag-00", wall_s=2.0, generate_wall_s=1.5, steps=10, drafted=0, accepted=0),
        _row("hf_prompt_lookup", "rag", "rag-00", wall_s=1.0, generate_wall_s=1.5, steps=0, drafted=0, accepted=0),
    ]
    table = markdown(summarise(rows))
    assert "| hf_prompt_lookup | rag | 1 | 2.00x | 1.50x | 1.50x | n/a | n/a | n/a | n/a | n/a | n/a | 10.0 | yes |" in table
    assert "| ar | rag | 1 | 1.00x | 0.75x | 0.75x | 1.00 | n/a | n/a | n/a |" in table
    assert "nan" not in table


def test_transformers_rows_are_selected_in_strategies(capsys):
    from engine.errors import ConfigError
    from specviz.bench import DEFAULT_STRATEGIES, REFERENCES, main, parse_selection

    strategies, references = parse_selection("ar, hf_prompt_lookup,prompt_lookup:k=4,hf_assisted")
    assert [s.name for s in strategies] == ["ar", "prompt_lookup"] and strategies[1].k == 4
    assert references == ["hf_prompt_lookup", "hf_assisted"]
    assert set(REFERENCES) == {"hf_prompt_lookup", "hf_assisted"}
    assert {"hf_prompt_lookup", "hf_assisted"} <= set(DEFAULT_STRATEGIES.split(","))
    assert parse_selection(DEFAULT_STRATEGIES)[1] == ["hf_prompt_lookup", "hf_assisted"]
    with pytest.raises(ConfigError, match="unknown transformers row 'hf_foo'; choose one of hf_prompt_lookup"):
        parse_selection("ar,hf_foo")
    with pytest.raises(ConfigError, match="no parameters"):
        parse_selection("hf_prompt_lookup:k=4")
    with pytest.raises(SystemExit) as exc:  # rejected before any model loads
        main(["--strategies", "ar,hf_foo"])
    assert exc.value.code == 2 and "hf_foo" in capsys.readouterr().err


def test_transformers_rows_setup_options_greedy_only_and_a_failing_assistant_is_skipped(capsys):
    import argparse

    from engine import SamplingConfig
    from engine.errors import ModelLoadError
    from specviz.bench import build_references

    class NoDrafters:
        def drafter(self, target, spec, vocab_trim=0):
            raise ModelLoadError(f"no trained drafters for {spec!r}")

    args = argparse.Namespace(hf_lookup_tokens=10, reference_k=4)
    names = ["hf_prompt_lookup", "hf_assisted"]
    built = build_references(names, args, NoDrafters(), None, SamplingConfig())
    assert [(r.name, r.options) for r in built] == [("hf_prompt_lookup", {"prompt_lookup_num_tokens": 10})]
    err = capsys.readouterr().err
    assert "skipping hf_assisted" in err and "no trained drafters" in err and "Traceback" not in err
    assert build_references(names, args, NoDrafters(), None, SamplingConfig(temperature=0.7)) == []
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "greedy" in err
