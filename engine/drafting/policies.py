"""Draft-length policies: how many tokens to ask the proposer for next, and why.

A policy is consulted before each step (`decide`) and told the outcome after verification
(`update`). Every decision carries a human-readable reason and the inputs that drove it, which
go into the step event, the SQLite log and the explorer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from engine.events import StepFeedback


class DraftLengthPolicy(Protocol):
    # The policy's in-draft stop (confidence stop, SpecDec++), which a model drafter consults before each
    # token; None for policies that only choose K. Builders pass it to the proposer explicitly.
    stop_rule: DraftStopRule | None

    def decide(self) -> tuple[int, str, dict[str, Any]]:
        """Return (requested length, reason, inputs).

        Conventional inputs: "signal" (a number) and "signal_name", the policy's internal signal
        that the explorer plots beside the chosen lengths.
        """

    def update(self, feedback: StepFeedback) -> None:
        """Learn from the verdict of the last step."""


class DraftStopRule(Protocol):
    """An in-draft stopping rule (confidence stop, SpecDec++): model drafters ask it before each token."""

    uses_hidden_state: bool  # True: the drafter passes its last hidden state to should_stop

    def should_stop(self, position: int, dist: torch.Tensor, hidden: torch.Tensor | None = None) -> str | None:
        """Before drafting `position`, given the drafter's distribution there [vocab] (and its final
        hidden state [hidden_size] when `uses_hidden_state`): a reason to stop, or None."""


class ConstantLength:
    stop_rule = None  # chooses K only

    def __init__(self, k: int):
        self.k = k

    def decide(self) -> tuple[int, str, dict[str, Any]]:
        return self.k, f"constant K = {self.k}", {"k": self.k}

    def update(self, feedback: StepFeedback) -> None:
        pass


class HeuristicLength:
    """transformers' "heuristic" schedule: +2 after a fully accepted draft, -1 otherwise, floor 1, cap max_k."""

    stop_rule = None  # chooses K only

    def __init__(self, k: int, max_k: int):
        self.k = k
        self.max_k = max_k
        self._reason = f"starting K = {k}"
        self._last: dict[str, Any] = {}

    def decide(self) -> tuple[int, str, dict[str, Any]]:
        return self.k, self._reason, {"k": self.k, "max_k": self.max_k, **self._last}

    def update(self, feedback: StepFeedback) -> None:
        drafted, accepted = feedback.drafted, feedback.num_accepted
        if drafted == 0:  # nothing was drafted (e.g. budget), nothing to learn
            return
        before = self.k
        self._last = {"previous_drafted": drafted, "previous_accepted": accepted}
        if accepted == drafted:
            self.k = min(self.max_k, self.k + 2)
            capped = " (cap)" if self.k == self.max_k and before + 2 > self.max_k else ""
            self._reason = f"all {drafted} drafted tokens accepted: +2, K {before} -> {self.k}{capped}"
        else:
            self.k = max(1, self.k - 1)
            floor = " (floor)" if before == 1 else ""
            self._reason = f"{accepted} of {drafted} accepted: -1, K {before} -> {self.k}{floor}"


class AcceptanceFeedbackLength:
    """DiffuSpec-style adaptive draft length (ADL): K follows a moving average of recent accepted lengths.

    After each step, ema <- (1 - beta) * ema + beta * accepted; the next K is round(ema) + 1 (one
    token beyond what is expected to be accepted, so a run of full accepts can grow K), within
    [1, max_k]. Steps that drafted nothing (budget) teach nothing.

    Example (beta = 0.5, ema starts at k - 1 = 3, so K = 4): 4 of 4 accepted -> ema 3.5, K 5
    (round half to even: round(3.5) = 4); then 0 of 5 -> ema 1.75, K 3.
    """

    stop_rule = None  # chooses K only

    def __init__(self, k: int, max_k: int, beta: float = 0.5):
        self.max_k = max_k
        self.beta = beta
        self.ema = float(k - 1)
        self.k = k
        self._reason = f"starting K = {k} (moving average of accepted length {self.ema:.2f})"
        self._last: dict[str, Any] = {}

    def decide(self) -> tuple[int, str, dict[str, Any]]:
        inputs = {"k": self.k, "max_k": self.max_k, "beta": self.beta, "signal": round(self.ema, 4),
                  "signal_name": "moving average of accepted length", **self._last}
        return self.k, self._reason, inputs

    def update(self, feedback: StepFeedback) -> None:
        drafted, accepted = feedback.drafted, feedback.num_accepted
        if drafted == 0:
            return
        before = self.ema
        self.ema = (1 - self.beta) * self.ema + self.beta * accepted
        previous, self.k = self.k, max(1, min(self.max_k, round(self.ema) + 1))
        self._last = {"previous_drafted": drafted, "previous_accepted": accepted}
        self._reason = (f"{accepted} of {drafted} accepted: moving average {before:.2f} -> {self.ema:.2f}, "
                        f"K = round({self.ema:.2f}) + 1 = {self.k}" + (" (was {})".format(previous) if previous != self.k else ""))


class DiffusionDraftLength(AcceptanceFeedbackLength):
    """DiffuSpec's adaptive draft length (ADL) for a diffusion drafter: recent acceptance and generated length.

    A diffusion drafter fills its whole block in one pass whatever K is, so K only decides how
    much of the block the target verifies. Two moving averages drive it (same beta):
    - the accepted length, as in `AcceptanceFeedbackLength`: K = round(ema_accepted) + 1;
    - the generated length: how far the drafter's text went before it put an EOS (the whole
      block when it put none), reported by the proposer with each proposal (StepFeedback.generated): near the end of an answer
      the drafter's own EOS caps K at ceil(ema_generated).
    K = min(round(ema_accepted) + 1, ceil(ema_generated)), within [1, max_k].

    Example (beta 0.5, max_k 8, K starts at 4: ema_accepted 3, ema_generated 8): the drafter puts
    EOS at block position 2 (generated 3) and 3 of 3 are accepted -> ema_accepted 3.0,
    ema_generated 5.5, K = min(4, 6) = 4; next 0 of 4 accepted, generated 8 -> 1.5 and 6.75, K = 3.
    """

    def __init__(self, k: int, max_k: int, beta: float = 0.5):
        super().__init__(k, max_k, beta)
        self.ema_generated = float(max_k)
        self._reason = f"starting K = {k} (moving averages: accepted length {self.ema:.2f}, generated length {self.ema_generated:.2f})"

    def update(self, feedback: StepFeedback) -> None:
        drafted, accepted = feedback.drafted, feedback.num_accepted
        if drafted == 0:
            return
        before_acc, before_gen = self.ema, self.ema_generated
        # the drafter's generated length this step: block positions up to and including its first EOS
        generated = feedback.generated if feedback.generated is not None else self.max_k
        self.ema = (1 - self.beta) * self.ema + self.beta * accepted
        self.ema_generated = (1 - self.beta) * self.ema_generated + self.beta * generated
        by_acceptance, by_length = round(self.ema) + 1, math.ceil(self.ema_generated - 1e-9)
        previous, self.k = self.k, max(1, min(self.max_k, by_acceptance, by_length))
        self._last = {"previous_drafted": drafted, "previous_accepted": accepted, "generated": generated,
                      "ema_generated": round(self.ema_generated, 4)}
        bound = "generated length" if by_length < min(by_acceptance, self.max_k) else "accepted length"
        self._reason = (f"{accepted} of {drafted} accepted, drafter text ran {generated} positions: accepted-length "
                        f"average {before_acc:.2f} -> {self.ema:.2f}, generated-length average {before_gen:.2f} -> "
                        f"{self.ema_generated:.2f}; K = min(round({self.ema:.2f}) + 1, ceil({self.ema_generated:.2f}), "
                        f"max {self.max_k}) = {self.k}, set by the {bound}" + (f" (was {previous})" if previous != self.k else ""))


class ConfidenceStop:
    """Draft until the drafter's top probability falls below a threshold that adapts to the verdicts.

    The proposer calls `should_stop(position, dist)` before drafting each token; drafting stops at
    the first position whose top probability c is below the threshold (position 0 is always
    drafted, so every step yields uncensored evidence). The decision depends only on the drafter's
    distribution given the context and the drafted prefix, so verification stays lossless.

    Every drafted token the target checked becomes a labelled example (c, accepted?). After each
    step the threshold is re-chosen from the history as the candidate t (each observed c, and 0)
    minimising

        cost(t) = #{accepted tokens with c < t}                (false stops: lost accepted tokens)
                + stop_weight * #{rejected tokens with c >= t}  (false accepts: wasted drafting)

    stop_weight < 1 says a rejected draft token costs less than an accepted one gains (a cheap
    drafter); ties go to the lower threshold. K from `decide` is only the cap (max_k).

    Example (stop_weight 0.5): history accepted c = [0.9, 0.6], rejected c = [0.3, 0.5].
    t = 0: cost 0 + 0.5 * 2 = 1.0; t = 0.3: 0 + 0.5 * 2 = 1.0; t = 0.5: 0 + 0.5 * 1 = 0.5;
    t = 0.6: 0 + 0 = 0.0 -> threshold 0.6.
    """

    def __init__(self, max_k: int, threshold: float = 0.3, stop_weight: float = 0.5, window: int = 256):
        self.max_k = max_k
        self.threshold = threshold
        self.stop_weight = stop_weight
        self.window = window  # most recent labelled tokens kept
        self._history: list[tuple[float, bool]] = []  # (top probability, accepted?)
        self._drafted_conf: list[float] = []  # top probabilities of the tokens drafted this step
        self._reason = f"draft while the top drafter probability >= {threshold:.2f} (starting threshold), up to {max_k}"

    def decide(self) -> tuple[int, str, dict[str, Any]]:
        accepted = sum(ok for _, ok in self._history)
        inputs = {"max_k": self.max_k, "signal": round(self.threshold, 4), "signal_name": "confidence threshold",
                  "stop_weight": self.stop_weight, "labelled_accepted": accepted,
                  "labelled_rejected": len(self._history) - accepted}
        return self.max_k, self._reason, inputs

    uses_hidden_state = False

    @property
    def stop_rule(self) -> ConfidenceStop:
        return self  # it stops inside the draft, with the threshold it learns as a policy

    def should_stop(self, position: int, dist: torch.Tensor, hidden: torch.Tensor | None = None) -> str | None:
        """Called before drafting position `position` with the drafter's distribution there ([vocab])."""
        confidence = float(dist.max())
        if position > 0 and confidence < self.threshold:
            return f"top drafter probability {confidence:.2f} < threshold {self.threshold:.2f}"
        self._drafted_conf.append(confidence)
        return None

    def update(self, feedback: StepFeedback) -> None:
        drafted, accepted = feedback.drafted, feedback.num_accepted
        checked, self._drafted_conf = feedback.checked(self._drafted_conf), []
        if not checked:
            return
        self._history.extend(checked)
        del self._history[: -self.window]
        before, self.threshold = self.threshold, self._best_threshold()
        self._reason = (f"{accepted} of {drafted} accepted; threshold {before:.2f} -> {self.threshold:.2f} "
                        f"(least false stops + {self.stop_weight:g} x false accepts over {len(self._history)} checked tokens)")

    def _best_threshold(self) -> float:
        """The cost-minimising threshold: one sweep over the history sorted by confidence."""
        rejected_total = sum(not ok for _, ok in self._history)
        best, best_cost = 0.0, self.stop_weight * rejected_total  # t = 0: never stop
        accepted_below = rejected_below = 0
        ordered = sorted(self._history)
        i = 0
        while i < len(ordered):
            value = ordered[i][0]
            cost = accepted_below + self.stop_weight * (rejected_total - rejected_below)  # stop below `value`
            if cost < best_cost - 1e-12:
                best, best_cost = value, cost
            while i < len(ordered) and ordered[i][0] == value:
                accepted_below += ordered[i][1]
                rejected_below += not ordered[i][1]
                i += 1
        return best


ACCEPTANCE_FEATURES = ("bias", "top probability", "normalised entropy", "position / 8")
HAND_SET_PRIOR = (-2.0, 4.0, 0.0, 0.0)  # p(accept) ~ sigmoid(4 * top probability - 2): 0.12 at 0, 0.88 at 1


@dataclass(frozen=True)
class HiddenStateProjection:
    """The drafter's final hidden state projected on a few whitened principal directions.

    Fitted by `specviz train-predictor` on the hidden states of drafted tokens:
    feature_j = components[j] . (hidden - mean), with each row of `components` scaled so the
    feature has unit variance on the training data.
    """

    mean: torch.Tensor  # [hidden_size]
    components: torch.Tensor  # [n_components, hidden_size]

    def __call__(self, hidden: torch.Tensor) -> list[float]:  # hidden: [hidden_size]
        return (self.components @ (hidden.double().to(self.mean.device) - self.mean)).tolist()  # a GPU drafter's state too

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"hidden PC{j + 1}" for j in range(self.components.shape[0]))


@dataclass(frozen=True)
class TrainedPredictor:
    """SpecDec++ weights fitted offline for one target and drafter, over ACCEPTANCE_FEATURES (+ the projection's)."""

    weights: tuple[float, ...]
    projection: HiddenStateProjection | None = None


def acceptance_features(position: int, dist: torch.Tensor, hidden: torch.Tensor | None = None,
                        projection: HiddenStateProjection | None = None) -> list[float]:
    """SpecDec++'s features of a drafted position: [1, top probability, entropy / ln vocab, position / 8],
    then the projected hidden state when a projection is given (`hidden` is then required)."""
    p = dist.double().clamp_min(1e-12)
    entropy = float(-(p * p.log()).sum()) / math.log(max(2, p.shape[-1]))
    base = [1.0, float(dist.max()), entropy, position / 8.0]
    return base if projection is None else base + projection(hidden)


def fit_logistic(
    x: torch.Tensor,  # [n, features]
    y: torch.Tensor,  # [n] 1.0 accepted, 0.0 rejected
    prior: torch.Tensor,  # [features] the weights the L2 term pulls towards (and the start)
    l2: float = 1.0,
    steps: int = 4,
) -> torch.Tensor:
    """A few Newton steps of L2-regularised logistic regression; returns the weights [features] (float64)."""
    x, y, w = x.double(), y.double(), prior.double().clone()
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    for _ in range(steps):
        p = torch.sigmoid(x @ w)
        grad = x.T @ (p - y) + l2 * (w - prior)
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + l2 * eye
        w = w - torch.linalg.solve(hessian, grad)
    return w


class AcceptancePredictorStop:
    """SpecDec++: stop drafting when the predicted chance that some drafted token is rejected exceeds a threshold.

    A logistic acceptance predictor p(accept | features) over the drafter's features at each
    position (`acceptance_features`: top probability, normalised entropy, position in the draft,
    and, with a trained predictor, the drafter's final hidden state projected on a few principal
    directions). The proposer calls `should_stop(position, dist, hidden)` before each token; with p_0..p_i the
    predictions for the tokens so far and the next one, drafting stops when
    1 - p_0 * ... * p_i > stop_threshold (position 0 is always drafted). The decision uses only
    the drafter's distributions, so verification stays lossless.

    `trained`: weights fitted offline for this target and drafter (`specviz train-predictor`,
    assets/drafters/<target>/acceptance_predictor.json); they are the starting point and the prior.
    Without them the prior is hand-set (HAND_SET_PRIOR). Either way the predictor keeps learning
    online: every checked token is a labelled example, and after each step the weights are refitted
    on the recent window (`fit_logistic`, an L2 pull towards the prior). The hidden-state
    projection comes only with trained weights: the online fallback has no data to choose
    directions from before its first verdicts, so it uses the first four features.
    """

    def __init__(self, max_k: int, stop_threshold: float = 0.5, window: int = 256, l2: float = 1.0,
                 trained: TrainedPredictor | None = None):
        self.max_k = max_k
        self.stop_threshold = stop_threshold
        self.window = window
        self.l2 = l2
        self.projection = trained.projection if trained is not None else None
        self.uses_hidden_state = self.projection is not None
        self.feature_names = ACCEPTANCE_FEATURES + (self.projection.names if self.projection is not None else ())
        self.source = ("trained offline" + (" with the hidden state" if self.uses_hidden_state else "")
                       if trained is not None else "hand-set prior")
        self.prior = torch.tensor(trained.weights if trained is not None else HAND_SET_PRIOR, dtype=torch.float64)
        if self.prior.shape[0] != len(self.feature_names):
            raise ValueError(f"{self.prior.shape[0]} predictor weights for {len(self.feature_names)} features")
        self.weights = self.prior.clone()
        self._examples: list[tuple[list[float], bool]] = []
        self._drafted: list[list[float]] = []  # features of the tokens drafted this step
        self._survive = 1.0  # product of predicted acceptances of this step's drafted tokens
        self._last_risk: float | None = None
        self._reason = (f"draft while P(some drafted token rejected) <= {stop_threshold:.2f}, up to {max_k} "
                        f"(predictor: {self.source})")

    def predict(self, features: list[float]) -> float:
        return float(torch.sigmoid(torch.tensor(features, dtype=torch.float64) @ self.weights))

    @property
    def stop_rule(self) -> AcceptancePredictorStop:
        return self  # it stops inside the draft, with the predictor it refits as a policy

    def decide(self) -> tuple[int, str, dict[str, Any]]:
        inputs = {"max_k": self.max_k, "stop_threshold": self.stop_threshold,
                  "signal": None if self._last_risk is None else round(self._last_risk, 4),
                  "signal_name": "predicted P(a drafted token is rejected) where drafting stopped",
                  "weights": dict(zip(self.feature_names, (round(float(w), 4) for w in self.weights))),
                  "predictor": self.source, "examples": len(self._examples)}
        return self.max_k, self._reason, inputs

    def should_stop(self, position: int, dist: torch.Tensor, hidden: torch.Tensor | None = None) -> str | None:
        if position == 0:
            self._survive = 1.0
        features = acceptance_features(position, dist, hidden, self.projection)
        accept = self.predict(features)
        risk = 1.0 - self._survive * accept
        self._last_risk = risk
        if position > 0 and risk > self.stop_threshold:
            return (f"predicted P(some drafted token rejected) {risk:.2f} > {self.stop_threshold:.2f} "
                    f"(next token's predicted acceptance {accept:.2f})")
        self._survive *= accept
        self._drafted.append(features)
        return None

    def update(self, feedback: StepFeedback) -> None:
        drafted, accepted = feedback.drafted, feedback.num_accepted
        checked, self._drafted = feedback.checked(self._drafted), []
        if not checked:
            return
        self._examples.extend(checked)
        del self._examples[: -self.window]
        x = torch.tensor([f for f, _ in self._examples], dtype=torch.float64)  # [n, features]
        y = torch.tensor([float(ok) for _, ok in self._examples], dtype=torch.float64)  # [n]
        self.weights = fit_logistic(x, y, self.prior, self.l2)
        self._reason = (f"{accepted} of {drafted} accepted; predictor ({self.source}) refitted on "
                        f"{len(self._examples)} checked tokens (stop when P(some drafted token rejected) > "
                        f"{self.stop_threshold:.2f})")
