"""Typed step events: the one record of what the decoding loop did.

Glossary (vLLM / Leviathan et al.):
- accepted: a drafted token the verifier kept;
- rejected: the first drafted token the verifier refused; everything drafted after it is
  "unchecked" (discarded without a test);
- recovered: the token drawn from the residual distribution max(0, p_target - p_draft) at the
  rejection point (greedy: the target's argmax there);
- bonus: the extra target token drawn after a fully accepted draft;
- baseline: the token of a step that drafted nothing (the autoregressive baseline, or an n-gram
  step with no match).

Everything downstream (UI, SQLite log, CLI, benchmarks, replays) consumes these events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")
VERDICTS = ("accepted", "rejected", "unchecked")
OUTPUT_KINDS = ("recovered", "bonus", "baseline")


@dataclass(frozen=True)
class TokenCandidate:
    token_id: int
    text: str
    prob: float


@dataclass(frozen=True)
class DraftedToken:
    """One proposed position and what the verifier decided about it."""

    position: int  # 0-based position in the draft
    token_id: int
    text: str
    draft_prob: float | None  # drafter probability of this token (None: drafter without probabilities, e.g. n-gram)
    target_prob: float | None  # target probability of this token at this position (None when unchecked)
    accept_prob: float | None  # min(1, p_target / p_draft); greedy: 1.0 if it is the target's argmax else 0.0
    uniform: float | None  # the uniform draw compared with accept_prob (None under greedy or when unchecked)
    verdict: str  # "accepted" | "rejected" | "unchecked"
    target_top: tuple[TokenCandidate, ...] = ()  # the target's most likely tokens at this position


@dataclass(frozen=True)
class OutputToken:
    """The token the target itself contributed this step: recovered, bonus or baseline."""

    token_id: int
    text: str
    kind: str  # "recovered" | "bonus" | "baseline"
    prob: float  # probability of this token under the distribution it was drawn from
    residual_top: tuple[TokenCandidate, ...] = ()  # top of the distribution it was drawn from


@dataclass(frozen=True)
class LengthDecision:
    """How many tokens the policy asked the proposer for, and why."""

    requested: int  # what the policy wanted
    allowed: int  # after clamping to the remaining token budget and the context window
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerPhase:
    """One stretch of work by one worker on the run's engine clock, for the phase timeline."""

    worker: str  # "drafter" | "target"
    kind: str  # "draft" | "verify"
    start_s: float
    end_s: float


@dataclass(frozen=True)
class PhaseTimings:
    draft_s: float  # drafting on this step's critical path
    verify_s: float
    overhead_s: float
    start_s: float  # engine time (run clock without consumer pauses) when this step began; includes the prefill
    end_s: float  # engine time when this step's event was ready
    # Who worked when: plain speculation alternates (drafter, then target); PEARL overlaps them. Empty for the
    # autoregressive baseline. A phase may start before `start_s` (PEARL drafts the next block during a step).
    phases: tuple[WorkerPhase, ...] = ()


@dataclass(frozen=True)
class NewToken:
    """One token appended to the output this step, in order."""

    token_id: int
    text: str
    kind: str  # "accepted" | "recovered" | "bonus" | "baseline"


@dataclass(frozen=True)
class TreeNode:
    """One node of a draft tree, with its verdict. Node 0 is the root: the last committed token (not drafted).

    Nodes come parents first. A drafted node at depth d would be the d-th new token of the step.
    """

    index: int
    parent: int  # the parent's index; -1 for the root
    depth: int  # 0 for the root
    token_id: int
    text: str
    draft_prob: float | None  # drafter probability of this token after its parent's path (None: retrieval)
    path_prob: float | None  # product of draft_prob along the path (EAGLE-2's score); None without probabilities
    target_prob: float | None  # target probability of this token after its parent's path (None: parent not reached)
    accept_prob: float | None  # the chance the verifier accepted it when it was tried (None: not tried)
    verdict: str  # "root" | "accepted" (on the accepted path) | "rejected" (tried, refused) | "unchecked"
    source: str = "model"  # "model" | "retrieval" | "both": which proposer put it there (fused trees)


@dataclass(frozen=True)
class LatticeColumn:
    """One position of a diffusion drafter's token lattice, and the draft path's choice there.

    A masked-diffusion drafter fills every position of a block in one pass; column i holds its top
    candidates for the token at context_length + i. The path search (CPS) picks one candidate per
    proposed position; columns past the proposed length (ADL's cut, an EOS) have no path token. The
    verdict of a path token is the verdict of StepEvent.draft[position].
    """

    position: int  # 0-based offset after the context (= the draft position)
    candidates: tuple[TokenCandidate, ...]  # the drafter's top candidates here, most likely first
    path_token_id: int | None = None  # the token the path takes here (None: not proposed)
    path_text: str | None = None
    path_prob: float | None = None  # the drafter's probability of the path token at this position
    path_rank: int | None = None  # its rank among `candidates` (0 = the top one)
    causal_prob: float | None = None  # the causal scorer's probability of it after the path so far (None: not scored)


@dataclass(frozen=True)
class StepFeedback:
    """What verification did with one step's draft: the one thing proposers and length policies learn from."""

    drafted: int  # tokens the verifier was shown (a chain's length, or a tree's nodes below the root)
    num_accepted: int  # drafted tokens kept
    accepted: tuple[int, ...] = ()  # the kept token ids, in order (a chain prefix or a tree path)
    generated: int | None = None  # tokens the drafter generated before its own cut (diffusion: up to EOS), if known

    def checked(self, per_position: Sequence[T]) -> list[tuple[T, bool]]:
        """Each checked drafted position's item with its verdict: positions before num_accepted were accepted, the
        one at num_accepted (if drafted) rejected; later ones were never checked and teach nothing.

        >>> StepFeedback(drafted=4, num_accepted=1).checked("abcd")
        [('a', True), ('b', False)]
        """
        return [(item, i < self.num_accepted)
                for i, item in enumerate(per_position[: min(self.drafted, self.num_accepted + 1)])]


@dataclass(frozen=True)
class StepEvent:
    index: int  # 0-based step number
    context_length: int  # tokens in the context (prompt + output) before this step
    decision: LengthDecision
    draft: tuple[DraftedToken, ...]  # the proposal (chain), with verdicts
    output: OutputToken
    new_tokens: tuple[NewToken, ...]  # accepted tokens then the output token, cut at EOS / budget
    target_forwards: int  # target forward passes this step (1 for a verification step)
    timings: PhaseTimings
    stop_reason: str | None = None  # set on the last step: "eos" | "max_new_tokens" | "context_window"
    # What drove the proposal (JSON-serialisable), from the proposer. Conventional keys, all optional:
    #   "summary": one line shown above the proposal, e.g. "matched the 3-gram ' of the' at position 41";
    #   "tables": [{"title": str, "columns": [str, ...], "rows": [[scalar, ...], ...]}, ...] for state the
    #             proposal came from (n-gram table rows, retrieved candidates, per-layer acceptance, ...);
    #   any other key: a scalar shown as key = value.
    proposer_info: dict[str, Any] = field(default_factory=dict)
    # Tree strategies: the whole draft tree with verdicts (root first); empty for chains. `draft` then
    # lists the drafted nodes (the root excluded) in the same order, position = depth - 1.
    tree: tuple[TreeNode, ...] = ()
    # Diffusion strategies: the drafter's token lattice with the path taken through it; empty otherwise.
    lattice: tuple[LatticeColumn, ...] = ()

    @property
    def num_drafted(self) -> int:
        return len(self.draft)

    @property
    def num_accepted(self) -> int:
        return sum(1 for t in self.draft if t.verdict == "accepted")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepEvent:
        """The inverse of `to_dict` (e.g. after a JSON round trip: lists back to tuples)."""

        def cands(items) -> tuple[TokenCandidate, ...]:
            return tuple(TokenCandidate(**c) for c in items or ())

        timings = d["timings"]
        return cls(
            index=d["index"],
            context_length=d["context_length"],
            decision=LengthDecision(**d["decision"]),
            draft=tuple(DraftedToken(**{**t, "target_top": cands(t.get("target_top"))}) for t in d["draft"]),
            output=OutputToken(**{**d["output"], "residual_top": cands(d["output"].get("residual_top"))}),
            new_tokens=tuple(NewToken(**t) for t in d["new_tokens"]),
            target_forwards=d["target_forwards"],
            timings=PhaseTimings(**{**timings, "phases": tuple(WorkerPhase(**p) for p in timings.get("phases") or ())}),
            stop_reason=d.get("stop_reason"),
            proposer_info=d.get("proposer_info") or {},
            tree=tuple(TreeNode(**n) for n in d.get("tree") or ()),
            lattice=tuple(LatticeColumn(**{**c, "candidates": cands(c.get("candidates"))}) for c in d.get("lattice") or ()),
        )
