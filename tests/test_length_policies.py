"""Adaptive draft-length policies: acceptance feedback (ADL), confidence stop, SpecDec++'s predictor stop.

Unit checks of each decision rule on hand-made verdicts, then through the engine on tiny models:
greedy identity with the baseline and a chi-square test of the first two sampled tokens.
"""

from __future__ import annotations

import pytest
import torch

from conftest import chi_square_critical, chi_square_statistic
from engine import SamplingConfig, SpeculativeDecoder, early_exit_drafter, run_to_completion
from engine.api import build_decoder
from engine.errors import ConfigError
from engine.policies import AcceptanceFeedbackLength, AcceptancePredictorStop, ConfidenceStop, acceptance_features
from engine.proposers import DraftModelProposer
from engine.strategies import parse_strategy
from test_engine_tiny import ALPHA, N_RUNS, PROMPTS, SAMPLINGS, exact_first_two, lookup_friendly_prompt
from test_self_speculation import first_two_counts

pytestmark = pytest.mark.usefixtures("single_thread")


def peaked(top: float, vocab: int = 16) -> torch.Tensor:
    """A distribution whose top probability is `top`, the rest spread evenly."""
    dist = torch.full((vocab,), (1 - top) / (vocab - 1))
    dist[3] = top
    return dist


# --------------------------------------------------------------------------- decision rules


def test_feedback_length_follows_the_moving_average_of_accepted_lengths():
    policy = AcceptanceFeedbackLength(k=4, max_k=6, beta=0.5)
    assert policy.decide()[0] == 4
    policy.update(4, 4)  # ema 3 -> 3.5, K = round(3.5) + 1 = 5
    k, reason, inputs = policy.decide()
    assert (k, inputs["signal"]) == (5, 3.5) and "3.00 -> 3.50" in reason
    policy.update(5, 0)  # ema 1.75 -> K 3
    assert policy.decide()[0] == 3
    for _ in range(10):
        policy.update(3, 3)
    assert policy.decide()[0] == 4  # ema -> 3: K = 4, below the cap
    policy.update(0, 0)  # nothing drafted: nothing learned
    assert policy.decide()[0] == 4
    for _ in range(20):
        policy.update(1, 0)
    assert policy.decide()[0] == 1  # the floor


def test_confidence_threshold_minimises_false_stops_plus_weighted_false_accepts():
    policy = ConfidenceStop(max_k=8, threshold=0.3, stop_weight=0.5)
    assert policy.decide()[0] == 8  # drafts up to the cap; the threshold decides where to stop
    # position 0 is always drafted, later positions stop below the threshold
    assert policy.should_stop(0, peaked(0.1)) is None
    assert policy.should_stop(1, peaked(0.9)) is None
    assert policy.should_stop(2, peaked(0.6)) is None
    assert policy.should_stop(3, peaked(0.5)) is None
    assert "0.20 < threshold 0.30" in policy.should_stop(4, peaked(0.2))
    policy.update(4, 2)  # tokens 0 (c 0.1) and 1 (0.9) accepted, 2 (0.6) rejected, 3 (0.5) never checked
    assert sorted((round(c, 4), ok) for c, ok in policy._history) == [(0.1, True), (0.6, False), (0.9, True)]
    # t = 0: 0.5 x 1 rejected = 0.5; t = 0.1: same; t = 0.6: 1 false stop (0.1) = 1.0; t = 0.9: 1 + 0 = 1.0
    assert policy.threshold == 0.0
    _, reason, inputs = policy.decide()
    assert inputs["signal"] == 0.0 and inputs["labelled_rejected"] == 1 and "0.30 -> 0.00" in reason


def test_confidence_threshold_worked_example():
    policy = ConfidenceStop(max_k=8, stop_weight=0.5)
    for c in (0.9, 0.6, 0.3):
        policy.should_stop(0 if c == 0.9 else 1, peaked(c))
    policy.update(3, 2)  # 0.9, 0.6 accepted; 0.3 rejected
    policy.should_stop(0, peaked(0.5))
    policy.update(1, 0)  # 0.5 rejected
    assert policy.threshold == pytest.approx(0.6)


def test_predictor_stop_learns_that_confident_tokens_are_accepted():
    policy = AcceptancePredictorStop(max_k=8, stop_threshold=0.5)
    for step in range(30):  # sure tokens (0.95) accepted, unsure ones (0.35, at position 0: always drafted) rejected
        assert policy.should_stop(0, peaked(0.95)) is None
        assert policy.should_stop(1, peaked(0.95)) is None
        policy.update(2, 2)
        assert policy.should_stop(0, peaked(0.35)) is None
        policy.update(1, 0)
    sure, unsure = policy.predict(acceptance_features(1, peaked(0.95))), policy.predict(acceptance_features(1, peaked(0.35)))
    assert sure > 0.8 and unsure < 0.3, (sure, unsure)
    assert policy.should_stop(0, peaked(0.95)) is None
    reason = policy.should_stop(1, peaked(0.35))
    assert reason is not None and "predicted P(some drafted token rejected)" in reason
    _, _, inputs = policy.decide()
    assert inputs["examples"] == 90 and inputs["signal"] > 0.5


# --------------------------------------------------------------------------- through the engine


@pytest.fixture(scope="module")
def exit1(tiny_target):
    return early_exit_drafter(tiny_target, 1).model


def _policies(max_k: int = 6):
    return {
        "feedback": AcceptanceFeedbackLength(3, max_k),
        "confidence": ConfidenceStop(max_k),
        "specdec": AcceptancePredictorStop(max_k),
    }


@pytest.mark.parametrize("name", ["feedback", "confidence", "specdec"])
@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_greedy_equals_baseline_and_every_step_records_its_signal(name, prompt, tiny_target, exit1):
    baseline = run_to_completion(SpeculativeDecoder(tiny_target), prompt, 30).token_ids
    policy = _policies()[name]
    proposer = DraftModelProposer(exit1, stop_rule=policy if name != "feedback" else None)
    result = run_to_completion(SpeculativeDecoder(tiny_target, proposer, policy, SamplingConfig()), prompt, 30)
    assert result.token_ids == baseline
    assert result.metrics.drafted > 0
    assert all("signal_name" in e.decision.inputs for e in result.events)
    if name == "feedback":
        assert len({e.decision.requested for e in result.events}) > 1  # the length moved
    else:
        stops = [e for e in result.events if "stopped drafting" in e.proposer_info.get("summary", "")]
        assert all(e.num_drafted == e.proposer_info["stopped_at"] >= 1 for e in stops)


def _stop_policy(make):
    def build(exit1):
        policy = make()
        return DraftModelProposer(exit1, stop_rule=policy), policy
    return build


@pytest.mark.parametrize("sampling_name", list(SAMPLINGS))
@pytest.mark.parametrize(
    "make",
    [lambda: ConfidenceStop(2, threshold=0.35), lambda: AcceptancePredictorStop(2, stop_threshold=0.4),
     lambda: AcceptanceFeedbackLength(2, 3)],
    ids=["confidence", "specdec", "feedback"],
)
def test_sampling_first_two_tokens_follow_the_target(make, sampling_name, tiny_target, exit1):
    settings = SAMPLINGS[sampling_name]
    reference = SamplingConfig(**settings)
    prompt = lookup_friendly_prompt(tiny_target.model, reference)
    expected = exact_first_two(tiny_target.model, prompt, reference)

    def build():
        policy = make()
        stop_rule = None if isinstance(policy, AcceptanceFeedbackLength) else policy
        return DraftModelProposer(exit1, stop_rule=stop_rule), policy

    counts = first_two_counts(tiny_target, build, settings, prompt)
    assert set(counts) <= set(expected), "a token pair the target cannot produce was generated"
    stat, df = chi_square_statistic(counts, expected, N_RUNS)
    critical = chi_square_critical(df, ALPHA)
    assert stat < critical, f"chi-square {stat:.1f} >= {critical:.1f} (df {df})"


def test_in_draft_policies_need_a_model_drafter(tiny_target):
    with pytest.raises(ConfigError) as info:
        build_decoder(parse_strategy("prompt_lookup", {"length_policy": "confidence"}), tiny_target, None, SamplingConfig())
    assert info.value.field == "length_policy" and "only model drafters" in str(info.value)
    decoder = build_decoder(parse_strategy("prompt_lookup", {"length_policy": "feedback"}), tiny_target, None, SamplingConfig())
    assert isinstance(decoder.policy, AcceptanceFeedbackLength)


# --------------------------------------------------------------------------- the oracle (analysis)


def _step(template, index: int, verdicts: list[str], draft_s: float, verify_s: float):
    """A copy of a real event with the given draft verdicts and timings."""
    from dataclasses import replace

    from engine.events import DraftedToken, PhaseTimings

    draft = tuple(DraftedToken(i, 1, "t1 ", 0.5, 0.5, 1.0, None, v) for i, v in enumerate(verdicts))
    return replace(template, index=index, draft=draft, timings=PhaseTimings(draft_s, verify_s, 0.0, 0.0, 0.0))


def test_oracle_worked_example(tiny_target):
    from engine.oracle import oracle_report

    template = next(iter(SpeculativeDecoder(tiny_target).generate(PROMPTS[0], 1)))
    events = [
        # drafter 5 ms per token, verification 80 ms + 5 ms per position
        _step(template, 0, ["accepted", "rejected", "unchecked", "unchecked"], 0.020, 0.105),  # K 4, n 1
        _step(template, 1, ["accepted", "accepted"], 0.010, 0.095),  # K 2, n 2: bounded
        _step(template, 2, ["rejected"], 0.005, 0.090),  # K 1, n 0
    ]
    report = oracle_report(events)
    assert report.verify_model == "linear"
    assert report.draft_s_per_token == pytest.approx(0.005)
    assert (report.verify_base_s, report.verify_per_position_s) == (pytest.approx(0.080), pytest.approx(0.005))
    assert [s.oracle_k for s in report.steps] == [1, 2, 0]
    assert [s.bounded for s in report.steps] == [False, True, False]
    assert [s.oracle_tokens for s in report.steps] == [2, 3, 1]
    # actual: 2 + 3 + 1 tokens in 0.125 + 0.105 + 0.095 s; oracle: the same tokens in 0.095 + 0.105 + 0.085 s
    assert report.actual_tokens_per_s == pytest.approx(6 / 0.325)
    assert report.oracle_tokens_per_s == pytest.approx(6 / 0.285)
    assert 0 < report.gap < 0.2
    assert oracle_report([]) is None


def test_oracle_of_a_real_run_never_beats_itself(tiny_target, exit1):
    from engine.oracle import oracle_report

    policy = AcceptanceFeedbackLength(3, 6)
    result = run_to_completion(SpeculativeDecoder(tiny_target, DraftModelProposer(exit1), policy, SamplingConfig()),
                               PROMPTS[0], 30)
    report = oracle_report(result.events)
    assert len(report.steps) == len(result.events)
    assert all(s.oracle_k <= s.drafted and s.oracle_s <= s.actual_s + 1e-12 for s in report.steps)
    assert report.oracle_tokens_per_s >= report.actual_tokens_per_s * (1 - 1e-9)


# --------------------------------------------------------------------------- the trained SpecDec++ predictor


def test_fit_logistic_recovers_a_separable_rule():
    from engine.policies import HAND_SET_PRIOR, fit_logistic

    generator = torch.Generator().manual_seed(0)
    top = torch.rand(400, generator=generator, dtype=torch.float64)
    x = torch.stack([torch.ones(400, dtype=torch.float64), top, 1 - top, torch.zeros(400, dtype=torch.float64)], 1)
    y = (top > 0.7).double()
    w = fit_logistic(x, y, torch.tensor(HAND_SET_PRIOR, dtype=torch.float64), l2=1e-3, steps=25)
    predicted = torch.sigmoid(x @ w) > 0.5
    assert (predicted.double() == y).double().mean() > 0.97


def test_specdec_starts_from_trained_weights_when_given(tmp_path):
    import json

    from engine.api import length_policy
    from engine.trained_drafters import PREDICTOR_FILE, load_acceptance_predictor

    (tmp_path / PREDICTOR_FILE).write_text(json.dumps(
        {"format": 1, "predictors": {"distilled:vocab_trim=8192": {"weights": [-6.0, 9.0, 0.0, 0.0]}}}))
    trained = load_acceptance_predictor("t", "distilled", 8192, folder=tmp_path)
    assert trained == [-6.0, 9.0, 0.0, 0.0]
    assert load_acceptance_predictor("t", "distilled", 0, folder=tmp_path) is None  # another VocabTrim: not trained
    assert load_acceptance_predictor("t", "distilled", 8192, folder=tmp_path / "none") is None
    policy = length_policy(parse_strategy("draft_model", {"length_policy": "specdec"}), trained)
    _, reason, inputs = policy.decide()
    assert inputs["predictor"] == "trained offline" and "trained offline" in reason
    assert inputs["weights"]["top probability"] == 9.0
    assert length_policy(parse_strategy("draft_model", {"length_policy": "specdec"})).decide()[2]["predictor"] == "hand-set prior"


def test_shipped_predictor_beats_the_hand_set_prior_on_held_out_prompts():
    import json

    from engine.trained_drafters import PREDICTOR_FILE, drafters_dir

    entry = json.loads((drafters_dir("smollm2-135m-instruct") / PREDICTOR_FILE).read_text())["predictors"][
        "distilled:vocab_trim=8192"]
    assert len(entry["weights"]) == 4 and entry["heldout_examples"] > 100
    held = entry["heldout"]
    assert held["trained"]["log_loss"] < held["hand_set_prior"]["log_loss"]


@pytest.mark.slow
def test_train_predictor_command_on_a_tiny_budget(tmp_path, capsys):
    import json

    from specviz import cli

    code = cli.main(["train-predictor", "--out", str(tmp_path), "--prompts", "3", "--max-new-tokens", "12", "--k", "4",
                     "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "checked tokens from 3 prompts" in out
    entry = json.loads((tmp_path / "acceptance_predictor.json").read_text())["predictors"]["distilled:vocab_trim=8192"]
    assert len(entry["weights"]) == 4 and entry["train_examples"] > 0 and entry["k"] == 4
    assert cli.main(["train-predictor", "--out", str(tmp_path), "--prompts", "1"]) == 2  # too few prompts: a clear error
