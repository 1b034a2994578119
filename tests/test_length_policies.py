"""Adaptive draft-length policies: acceptance feedback (ADL), confidence stop, SpecDec++'s predictor stop.

Unit checks of each decision rule on hand-made verdicts, then through the engine on tiny models:
greedy identity with the baseline and a chi-square test of the first two sampled tokens.
"""

from __future__ import annotations

import pytest
import torch

from conftest import chi_square_critical, chi_square_statistic, sweep
from engine.events import StepFeedback
from engine import SamplingConfig, SpeculativeDecoder, early_exit_drafter, run_to_completion
from engine.api import build_decoder
from engine.errors import ConfigError
from engine.drafting.policies import (
    AcceptanceFeedbackLength,
    AcceptancePredictorStop,
    ConfidenceStop,
    HiddenStateProjection,
    TrainedPredictor,
    acceptance_features,
)
from engine.drafting.proposers import DraftModelProposer
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
    policy.update(StepFeedback(4, 4))  # ema 3 -> 3.5, K = round(3.5) + 1 = 5
    k, reason, inputs = policy.decide()
    assert (k, inputs["signal"]) == (5, 3.5) and "3.00 -> 3.50" in reason
    policy.update(StepFeedback(5, 0))  # ema 1.75 -> K 3
    assert policy.decide()[0] == 3
    for _ in range(10):
        policy.update(StepFeedback(3, 3))
    assert policy.decide()[0] == 4  # ema -> 3: K = 4, below the cap
    policy.update(StepFeedback(0, 0))  # nothing drafted: nothing learned
    assert policy.decide()[0] == 4
    for _ in range(20):
        policy.update(StepFeedback(1, 0))
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
    policy.update(StepFeedback(4, 2))  # tokens 0 (c 0.1) and 1 (0.9) accepted, 2 (0.6) rejected, 3 (0.5) never checked
    assert sorted((round(c, 4), ok) for c, ok in policy._history) == [(0.1, True), (0.6, False), (0.9, True)]
    # t = 0: 0.5 x 1 rejected = 0.5; t = 0.1: same; t = 0.6: 1 false stop (0.1) = 1.0; t = 0.9: 1 + 0 = 1.0
    assert policy.threshold == 0.0
    _, reason, inputs = policy.decide()
    assert inputs["signal"] == 0.0 and inputs["labelled_rejected"] == 1 and "0.30 -> 0.00" in reason


def test_confidence_threshold_worked_example():
    policy = ConfidenceStop(max_k=8, stop_weight=0.5)
    for c in (0.9, 0.6, 0.3):
        policy.should_stop(0 if c == 0.9 else 1, peaked(c))
    policy.update(StepFeedback(3, 2))  # 0.9, 0.6 accepted; 0.3 rejected
    policy.should_stop(0, peaked(0.5))
    policy.update(StepFeedback(1, 0))  # 0.5 rejected
    assert policy.threshold == pytest.approx(0.6)


def test_predictor_stop_learns_that_confident_tokens_are_accepted():
    policy = AcceptancePredictorStop(max_k=8, stop_threshold=0.5)
    for step in range(30):  # sure tokens (0.95) accepted, unsure ones (0.35, at position 0: always drafted) rejected
        assert policy.should_stop(0, peaked(0.95)) is None
        assert policy.should_stop(1, peaked(0.95)) is None
        policy.update(StepFeedback(2, 2))
        assert policy.should_stop(0, peaked(0.35)) is None
        policy.update(StepFeedback(1, 0))
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


def hidden_predictor(hidden_size: int, n_components: int = 3, **kwargs) -> AcceptancePredictorStop:
    """SpecDec++ with a random hidden-state projection and weights that lean on it."""
    generator = torch.Generator().manual_seed(7)
    projection = HiddenStateProjection(torch.zeros(hidden_size, dtype=torch.float64),
                                       torch.randn(n_components, hidden_size, generator=generator, dtype=torch.float64))
    weights = (-1.0, 3.0, 0.0, 0.0) + tuple(0.5 for _ in range(n_components))
    return AcceptancePredictorStop(trained=TrainedPredictor(weights, projection), **kwargs)


def _policies(hidden_size: int, max_k: int = 6):
    return {
        "feedback": AcceptanceFeedbackLength(3, max_k),
        "confidence": ConfidenceStop(max_k),
        "specdec": AcceptancePredictorStop(max_k),
        "specdec_hidden": hidden_predictor(hidden_size, max_k=max_k),
    }


@pytest.mark.parametrize("name", ["feedback", "confidence", "specdec", "specdec_hidden"])
@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_greedy_equals_baseline_and_every_step_records_its_signal(name, prompt, tiny_target, exit1):
    baseline = run_to_completion(SpeculativeDecoder(tiny_target), prompt, 30).token_ids
    policy = _policies(tiny_target.model.config.hidden_size)[name]
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


POLICIES = {
    "confidence": lambda h: ConfidenceStop(2, threshold=0.35),
    "specdec": lambda h: AcceptancePredictorStop(2, stop_threshold=0.4),
    "specdec_hidden": lambda h: hidden_predictor(h, max_k=2, stop_threshold=0.4),
    "feedback": lambda h: AcceptanceFeedbackLength(2, 3),
}


@pytest.mark.parametrize("policy, sampling_name", sweep(
    [(p, n) for p in POLICIES for n in SAMPLINGS],
    # specdec is specdec_hidden without the hidden state; feedback changes K only after a verdict, so its first step
    # (what this test samples) is a constant K = 2 chain, as in test_engine_tiny: both run under -m exhaustive
    default=[("confidence", "t1"), ("specdec_hidden", "t0.7-k8-p0.9")]))
def test_sampling_first_two_tokens_follow_the_target(policy, sampling_name, tiny_target, exit1):
    make = POLICIES[policy]
    settings = SAMPLINGS[sampling_name]
    reference = SamplingConfig(**settings)
    prompt = lookup_friendly_prompt(tiny_target.model, reference)
    expected = exact_first_two(tiny_target.model, prompt, reference)

    def build():
        policy = make(tiny_target.model.config.hidden_size)
        stop_rule = None if isinstance(policy, AcceptanceFeedbackLength) else policy
        return DraftModelProposer(exit1, stop_rule=stop_rule), policy

    counts = first_two_counts(tiny_target, build, settings, prompt)
    assert set(counts) <= set(expected), "a token pair the target cannot produce was generated"
    stat, df = chi_square_statistic(counts, expected, N_RUNS)
    critical = chi_square_critical(df, ALPHA)
    assert stat < critical, f"chi-square {stat:.1f} >= {critical:.1f} (df {df})"


def test_the_drafter_hands_its_final_hidden_state_to_rules_that_use_it(tiny_target, exit1):
    class Recorder:
        uses_hidden_state = True

        def __init__(self):
            self.seen = []

        def should_stop(self, position, dist, hidden=None):
            self.seen.append((position, hidden))
            return None

    recorder = Recorder()
    proposer = DraftModelProposer(exit1, stop_rule=recorder)
    context = list(PROMPTS[0])
    proposer.start(context)
    proposal = proposer.propose(context, 3, SamplingConfig(), torch.Generator())
    assert [p for p, _ in recorder.seen] == [0, 1, 2]
    with torch.inference_mode():  # a fresh pass over the context + the first two drafts gives the same states
        out = exit1(input_ids=torch.tensor([context + proposal.token_ids[:2]]), output_hidden_states=True)
    final = out.hidden_states[-1][0]  # [positions, hidden_size]
    for position, hidden in recorder.seen:
        assert hidden.shape == (tiny_target.model.config.hidden_size,)
        torch.testing.assert_close(hidden, final[len(context) - 1 + position], atol=1e-4, rtol=1e-4)
    # rules that do not use it get None (whether the drafter collects it at all is decided when a run starts)
    recorder.uses_hidden_state, recorder.seen = False, []
    proposer.crop(len(context) - 1)  # as after a verdict: the last context token is new to the drafter
    proposer.propose(context, 2, SamplingConfig(), torch.Generator())
    assert [h for _, h in recorder.seen] == [None, None]


def test_hidden_state_features_move_the_prediction(tiny_target):
    policy = hidden_predictor(4, n_components=2, max_k=4)
    assert policy.uses_hidden_state and policy.feature_names[-2:] == ("hidden PC1", "hidden PC2")
    dist = peaked(0.6)
    features = acceptance_features(1, dist, torch.ones(4), policy.projection)
    assert len(features) == 6 and features[:4] == acceptance_features(1, dist)
    low = policy.predict(acceptance_features(1, dist, -torch.ones(4), policy.projection))
    high = policy.predict(acceptance_features(1, dist, torch.ones(4), policy.projection))
    assert low != pytest.approx(high)
    with pytest.raises(ValueError, match="weights for"):
        AcceptancePredictorStop(4, trained=TrainedPredictor((0.0, 1.0, 0.0, 0.0), policy.projection))


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
    from engine.analysis.oracle import oracle_report

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
    from engine.analysis.oracle import oracle_report

    policy = AcceptanceFeedbackLength(3, 6)
    result = run_to_completion(SpeculativeDecoder(tiny_target, DraftModelProposer(exit1), policy, SamplingConfig()),
                               PROMPTS[0], 30)
    report = oracle_report(result.events)
    assert len(report.steps) == len(result.events)
    assert all(s.oracle_k <= s.drafted and s.oracle_s <= s.actual_s + 1e-12 for s in report.steps)
    assert report.oracle_tokens_per_s >= report.actual_tokens_per_s * (1 - 1e-9)


# --------------------------------------------------------------------------- the trained SpecDec++ predictor


def test_fit_logistic_recovers_a_separable_rule():
    from engine.drafting.policies import HAND_SET_PRIOR, fit_logistic

    generator = torch.Generator().manual_seed(0)
    top = torch.rand(400, generator=generator, dtype=torch.float64)
    x = torch.stack([torch.ones(400, dtype=torch.float64), top, 1 - top, torch.zeros(400, dtype=torch.float64)], 1)
    y = (top > 0.7).double()
    w = fit_logistic(x, y, torch.tensor(HAND_SET_PRIOR, dtype=torch.float64), l2=1e-3, steps=25)
    predicted = torch.sigmoid(x @ w) > 0.5
    assert (predicted.double() == y).double().mean() > 0.97


def test_specdec_starts_from_trained_weights_when_given(tmp_path):
    import json

    from engine.builders import length_policy
    from engine.loading.trained_drafters import PREDICTOR_FILE, load_acceptance_predictor

    from safetensors.torch import save_file

    from engine.errors import ModelLoadError
    from engine.loading.trained_drafters import PROJECTION_FILE

    (tmp_path / PREDICTOR_FILE).write_text(json.dumps({"format": 2, "predictors": {
        "distilled:vocab_trim=8192": {"weights": [-6.0, 9.0, 0.0, 0.0]},
        "kangaroo:4:vocab_trim=0": {"weights": [-6.0, 9.0, 0.0, 0.0, 2.0], "hidden_components": 1}}}))
    trained = load_acceptance_predictor("t", "distilled", 8192, folder=tmp_path)
    assert trained == TrainedPredictor((-6.0, 9.0, 0.0, 0.0), None)
    assert load_acceptance_predictor("t", "distilled", 0, folder=tmp_path) is None  # another VocabTrim: not trained
    assert load_acceptance_predictor("t", "distilled", 8192, folder=tmp_path / "none") is None
    policy = length_policy(parse_strategy("draft_model", {"length_policy": "specdec"}), trained)
    _, reason, inputs = policy.decide()
    assert inputs["predictor"] == "trained offline" and "trained offline" in reason
    assert inputs["weights"]["top probability"] == 9.0
    assert not policy.uses_hidden_state
    # a predictor trained with the hidden state: its projection comes from the safetensors file
    with pytest.raises(ModelLoadError, match="kangaroo:4:vocab_trim=0"):  # the file is missing: a clear error
        load_acceptance_predictor("t", "kangaroo:4", 0, folder=tmp_path)
    save_file({"kangaroo:4:vocab_trim=0.mean": torch.zeros(6), "kangaroo:4:vocab_trim=0.components": torch.ones(1, 6)},
              str(tmp_path / PROJECTION_FILE))
    with_hidden = load_acceptance_predictor("t", "kangaroo:4", 0, folder=tmp_path)
    assert with_hidden.projection.components.shape == (1, 6)
    policy = length_policy(parse_strategy("kangaroo", {"length_policy": "specdec"}), with_hidden)
    assert policy.uses_hidden_state and policy.decide()[2]["weights"]["hidden PC1"] == 2.0
    assert length_policy(parse_strategy("draft_model", {"length_policy": "specdec"})).decide()[2]["predictor"] == "hand-set prior"


def test_shipped_predictor_beats_the_hand_set_prior_on_held_out_prompts():
    import json

    from engine.loading.trained_drafters import PREDICTOR_FILE, drafters_dir, load_acceptance_predictor

    entry = json.loads((drafters_dir("smollm2-135m-instruct") / PREDICTOR_FILE).read_text())["predictors"][
        "distilled:vocab_trim=8192"]
    assert len(entry["weights"]) == 4 + entry["hidden_components"] and entry["hidden_components"] > 0
    assert entry["heldout_examples"] > 100
    held = entry["heldout"]
    assert held["trained"]["log_loss"] < held["hand_set_prior"]["log_loss"]
    trained = load_acceptance_predictor("smollm2-135m-instruct", "distilled", 8192)
    assert trained.projection.components.shape[0] == entry["hidden_components"]


@pytest.mark.slow
def test_train_predictor_command_on_a_tiny_budget(tmp_path, capsys):
    import json

    from engine.loading.trained_drafters import load_acceptance_predictor
    from specviz import cli

    code = cli.main(["train-predictor", "--out", str(tmp_path), "--prompts", "3", "--max-new-tokens", "12", "--k", "4",
                     "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "checked tokens from 3 prompts" in out
    entry = json.loads((tmp_path / "acceptance_predictor.json").read_text())["predictors"]["distilled:vocab_trim=8192"]
    assert len(entry["weights"]) == 4 + entry["hidden_components"] and entry["train_examples"] > 0 and entry["k"] == 4
    trained = load_acceptance_predictor("t", "distilled", 8192, folder=tmp_path)
    assert trained.projection is not None and trained.projection.components.shape[0] == entry["hidden_components"] > 0
    assert cli.main(["train-predictor", "--out", str(tmp_path), "--prompts", "1"]) == 2  # too few prompts: a clear error


def test_feedback_pairs_the_checked_positions_with_their_verdicts():
    """Positions before num_accepted were accepted, the next one (if drafted) rejected, the rest never checked."""
    assert StepFeedback(4, 1).checked("abcd") == [("a", True), ("b", False)]
    assert StepFeedback(2, 2).checked("ab") == [("a", True), ("b", True)]  # all accepted: nothing rejected
    assert StepFeedback(3, 0).checked("abc") == [("a", False)]
    assert StepFeedback(0, 0).checked("") == []
