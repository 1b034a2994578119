"""Run metrics with the established definitions, computed from step events.

- new_tokens: tokens appended to the output; steps: draft-verify steps (= target verification passes)
- target_forwards: target forward passes including the prompt prefill
- drafted / accepted: drafted tokens, and those the verifier kept
- acceptance_rate = accepted / drafted
- mean_acceptance_length = 1 + accepted / steps (tokens per verification step, bonus included)
- per_position_acceptance[i] = share of drafting steps (steps that drafted >= 1 token) whose
  draft position i was accepted (vLLM's definition)
- wall_s: engine time from the start of the prefill to the last event (model loading and the
  consumer's time between steps excluded); tokens_per_s = new_tokens / wall_s
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from engine.events import StepEvent


@dataclass(frozen=True)
class RunMetrics:
    new_tokens: int
    steps: int
    target_forwards: int
    drafted: int
    accepted: int
    acceptance_rate: float | None
    mean_acceptance_length: float | None
    per_position_acceptance: list[float]
    wall_s: float
    tokens_per_s: float | None
    draft_s: float
    verify_s: float

    @classmethod
    def from_events(cls, events: Iterable[StepEvent], wall_s: float | None = None) -> "RunMetrics":
        events = list(events)
        if wall_s is None:
            wall_s = events[-1].timings.end_s if events else 0.0
        steps = len(events)
        drafted = sum(e.num_drafted for e in events)
        accepted = sum(e.num_accepted for e in events)
        new_tokens = sum(len(e.new_tokens) for e in events)
        drafting_steps = [e for e in events if e.num_drafted > 0]
        longest = max((t.position + 1 for e in events for t in e.draft), default=0)  # tree nodes: position = depth - 1
        per_position = [
            sum(1 for e in drafting_steps if any(t.position == i and t.verdict == "accepted" for t in e.draft))
            / len(drafting_steps)
            for i in range(longest)
        ] if drafting_steps else []
        return cls(
            new_tokens=new_tokens,
            steps=steps,
            target_forwards=sum(e.target_forwards for e in events),
            drafted=drafted,
            accepted=accepted,
            acceptance_rate=accepted / drafted if drafted else None,
            mean_acceptance_length=1 + accepted / steps if steps else None,
            per_position_acceptance=per_position,
            wall_s=wall_s,
            tokens_per_s=new_tokens / wall_s if wall_s > 0 else None,
            draft_s=sum(e.timings.draft_s for e in events),
            verify_s=sum(e.timings.verify_s for e in events),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def worker_time(events: Sequence[StepEvent]) -> dict[str, dict[str, float]]:
    """Per worker: busy seconds and waiting seconds.

    The span is the engine time from the first phase's start to the last phase's end; a worker's
    waiting time is the span minus its busy time.
    """
    phases = [p for e in events for p in e.timings.phases]
    if not phases:
        return {}
    span = max(p.end_s for p in phases) - min(p.start_s for p in phases)
    out = {}
    for worker in ("drafter", "target"):
        busy = sum(p.end_s - p.start_s for p in phases if p.worker == worker)
        out[worker] = {"busy_s": busy, "waiting_s": max(0.0, span - busy)}
    return out
