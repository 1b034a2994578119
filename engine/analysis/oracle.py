"""The oracle draft length (analysis only): what each step should have drafted, in hindsight.

After a run, for each step that drafted K tokens of which n were accepted, drafting K' <= K
tokens instead would have produced min(n, K') + 1 tokens: the same verdicts on the shorter
prefix (greedy: the same argmax matches; sampling: the same uniforms), then one target token. It
would have cost K' drafter passes and one verification of K' + 1 positions. The oracle picks the
K' in 0..K with the most tokens per second; it cannot see beyond K (when the whole draft was
accepted, a longer draft might have been better still: such steps are marked `bounded`).

Both the run and the oracle are priced with the same cost model, so the gap measures the length
choices alone, not timing noise. Costs come from the run itself: the drafter's time per drafted token (total draft time / total
drafted tokens) and a verification time per number of positions (a least-squares line through
the run's (positions, verify time) pairs; with one distinct length, its mean for every length,
which flatters long drafts slightly and is reported as `verify_model = "flat"`).

Example: drafter 5 ms per token, verification 80 ms + 5 ms per position. A step drafted K = 4 and
n = 1 was accepted: K' = 0 gives 1 token in 85 ms (11.8 tok/s), K' = 1 gives 2 tokens in 95 ms
(21.1 tok/s), K' >= 2 still 2 tokens at a higher cost -> the oracle length is 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.events import StepEvent


@dataclass(frozen=True)
class OracleStep:
    index: int
    drafted: int  # K, what the policy drafted
    accepted: int  # n
    oracle_k: int  # K'
    oracle_tokens: int
    oracle_s: float
    actual_s: float  # the modelled cost of what was drafted (same cost model as the oracle's)
    bounded: bool  # all K accepted: the oracle could not look further


@dataclass(frozen=True)
class OracleReport:
    steps: tuple[OracleStep, ...]
    draft_s_per_token: float
    verify_base_s: float  # verification time = verify_base_s + verify_per_position_s * positions
    verify_per_position_s: float
    verify_model: str  # "linear" or "flat"
    actual_tokens_per_s: float
    oracle_tokens_per_s: float

    @property
    def gap(self) -> float:
        """How far the run was from the oracle: 1 - actual / oracle tokens per second (0 = as good)."""
        return 1.0 - self.actual_tokens_per_s / self.oracle_tokens_per_s if self.oracle_tokens_per_s > 0 else 0.0


def _verify_line(points: Sequence[tuple[int, float]]) -> tuple[float, float, str]:
    """Least-squares verify_s = a + b * positions; flat (b = 0) when only one length was seen or b < 0."""
    xs = [float(x) for x, _ in points]
    ys = [y for _, y in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return mean_y, 0.0, "flat"
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var
    if slope < 0:
        return mean_y, 0.0, "flat"
    return mean_y - slope * mean_x, slope, "linear"


def oracle_report(events: Sequence[StepEvent]) -> OracleReport | None:
    """The hindsight-optimal length per step and the run's distance from it.

    None for a run without steps, and for tree runs: the oracle prices chain lengths, and a
    tree's cost and gain do not follow its node count along one path.
    """
    if not events or any(e.tree for e in events):
        return None
    drafted_total = sum(e.num_drafted for e in events)
    draft_per_token = sum(e.timings.draft_s for e in events if e.num_drafted) / drafted_total if drafted_total else 0.0
    base, per_position, model = _verify_line([(e.num_drafted + 1, e.timings.verify_s) for e in events])
    steps = []
    for e in events:
        k = e.num_drafted
        n = sum(1 for t in e.draft if t.verdict == "accepted")
        cost = lambda kk: draft_per_token * kk + base + per_position * (kk + 1)  # noqa: E731
        best = max(range(k + 1), key=lambda kk: ((min(n, kk) + 1) / cost(kk), -kk))  # ties: the shorter draft
        steps.append(OracleStep(
            index=e.index, drafted=k, accepted=n, oracle_k=best, oracle_tokens=min(n, best) + 1,
            oracle_s=cost(best), actual_s=cost(k), bounded=k > 0 and n == k,
        ))
    actual_tokens = sum(s.accepted + 1 for s in steps)
    actual_s = sum(s.actual_s for s in steps)
    oracle_s = sum(s.oracle_s for s in steps)
    return OracleReport(
        steps=tuple(steps), draft_s_per_token=draft_per_token, verify_base_s=base, verify_per_position_s=per_position,
        verify_model=model,
        actual_tokens_per_s=actual_tokens / actual_s if actual_s > 0 else 0.0,
        oracle_tokens_per_s=sum(s.oracle_tokens for s in steps) / oracle_s if oracle_s > 0 else 0.0,
    )
