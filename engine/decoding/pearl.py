"""PEARL (Liu et al. 2024): the drafter keeps drafting while the target verifies, on two real workers.

Plain speculation alternates: the target waits while the drafter drafts, the drafter waits while
the target verifies. PEARL overlaps them. Each step the target (this thread) verifies a block B
of drafted tokens while the drafter (a worker thread) drafts the continuation C that follows B,
assuming B will be accepted:

- **pre-verify** (no block ready): the drafter drafts one token d1 alone, then the target checks
  B = [d1] while the drafter drafts C = gamma - 1 more tokens after it;
- **post-verify** (a block ready): the target checks B while the drafter drafts C = gamma more.

After the verdict the accepted tokens and the target's own token y (recovered at a rejection,
bonus after a full accept) are committed, exactly as in plain speculation. If B was accepted
whole and the drafter's first continuation token equals y, the rest of C is already a draft for
the new context and becomes the next block (post-verify); otherwise C is discarded and the next
step is a pre-verify.

**Why this is lossless.** Every verified token is checked by the usual verifier against the
drafter distribution it was drawn from, for the context it was drawn in. Keeping C[1:] only when
C[0] == y is a choice that depends on y (already committed) and C[0]; the later tokens C[1:]
were drawn from the drafter given the prefix ending in C[0] = y, so they are an honest draft for
the new context. Which tokens get verified never depends on the target's unseen randomness.
The drafter always drafts its full continuation (no cancellation), and it has its own random
generator seeded once from the run's, so a seeded run is reproducible whatever the thread timing.

**What it costs on a CPU.** Both workers share the machine's cores: the overlap only pays when
the two forward passes together run faster than one after the other, which `specviz bench`
measures (and the phase timeline shows).

Example (gamma = 3, greedy). Context "The cat". Pre-verify: the drafter drafts " sat"; the target
checks [" sat"] while the drafter drafts [" on", " the"]. The target accepts " sat" and its
bonus is " on" == C[0], so the next block is [" the"] (post-verify): the target checks it while
the drafter drafts [" mat", ".", "\n"]; and so on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from engine.decoding.driver import Decoder, Run, StepOutcome, drafted_tokens, output_token
from engine.decoding.chain import verify_chain
from engine.events import LengthDecision, StepFeedback, WorkerPhase
from engine.loading.models import LoadedModel
from engine.drafting.proposers.draft_model import DraftModelProposer
from engine.sampling import SamplingConfig


def _draft(drafter: DraftModelProposer, context: list[int], n: int, sampling: SamplingConfig,
           generator: torch.Generator, clock) -> tuple[list[int], torch.Tensor | None, WorkerPhase]:
    """n drafted tokens continuing `context`, their distributions [n, vocab], and when the work ran."""
    started = clock()
    proposal = drafter.propose(context, n, sampling, generator)
    return proposal.token_ids, proposal.draft_probs, WorkerPhase("drafter", "draft", started, clock())


class PearlDecoder(Decoder):
    """PEARL's two-worker schedule with draft window `gamma`; yields the same StepEvents as the chain decoder."""

    def __init__(self, target: LoadedModel, drafter_model: torch.nn.Module, gamma: int, sampling: SamplingConfig):
        super().__init__(target, sampling)
        self.drafter_model = drafter_model
        self.gamma = gamma

    def stepper(self, run: Run) -> PearlStepper:
        return PearlStepper(self.drafter_model, self.gamma, run)


class PearlStepper:
    """Per run: the drafter, its own generator, its worker thread, and the block drafted ahead."""

    def __init__(self, drafter_model: torch.nn.Module, gamma: int, run: Run):
        self.gamma = gamma
        # the drafter's generator, seeded once from the verifier's
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=run.generator)))
        self.drafter = DraftModelProposer(drafter_model)
        self.drafter.start(list(run.tokens))
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="specviz-pearl-drafter")
        self.block: list[int] = []  # drafted tokens continuing the committed tokens, not yet verified
        self.block_probs: torch.Tensor | None = None  # [len(block), vocab]
        self._kept: tuple[list[int], torch.Tensor | None] | None = None  # the next block, if the continuation holds

    def step(self, run: Run) -> StepOutcome:
        sampling, tokens, budget = run.sampling, run.tokens, run.budget
        phases: list[WorkerPhase] = []
        block, block_probs = self.block, self.block_probs
        # 1. pre-verify needs a first token to check: the drafter drafts it alone
        mode = "post-verify" if block else "pre-verify"
        if not block and budget > 1:
            block, block_probs, phase = _draft(self.drafter, tokens, 1, sampling, self.generator, run.clock)
            phases.append(phase)
        continuation = self.gamma - 1 if mode == "pre-verify" else self.gamma
        if len(block) > budget - 1:  # the budget cuts the block: nothing to draft beyond it
            block, continuation = block[: max(0, budget - 1)], 0
            block_probs = block_probs[: len(block)] if block else None
        if not block:
            continuation = 0
        reason = (
            f"PEARL {mode}: the target checks {len(block)} drafted token{'s' if len(block) != 1 else ''} while "
            f"the drafter drafts {continuation} more after {'it' if len(block) == 1 else 'them'}"
            if block else "PEARL: the token budget leaves nothing to draft"
        )
        decision = LengthDecision(len(block), len(block), reason,
                                  {"mode": mode, "gamma": self.gamma, "continuation": continuation})
        drafted_at = run.clock()

        # 2. the drafter drafts the continuation on its worker while the target verifies here
        future = (self.worker.submit(_draft, self.drafter, tokens + block, continuation, sampling, self.generator,
                                     run.clock) if continuation else None)
        target_probs, verdict = verify_chain(run.target, tokens[-1], block, block_probs, sampling, run.generator)
        verified_at = run.clock()
        phases.append(WorkerPhase("target", "verify", drafted_at, verified_at))
        next_block, next_probs = [], None
        if future is not None:
            next_block, next_probs, phase = future.result()
            phases.append(phase)

        # 3. keep the continuation when the whole block was accepted and it starts with the target's token
        n = verdict.num_accepted
        if block and n == len(block) and next_block and next_block[0] == verdict.next_token:
            self._kept = (next_block[1:], next_probs[1:] if len(next_block) > 1 else None)
        else:
            self._kept = None
        kept = self._kept[0] if self._kept else []
        summary = f"{mode}: checked {len(block)}, the drafter drafted {len(next_block)} ahead"
        return StepOutcome(
            decision=decision,
            draft=drafted_tokens(block, block_probs, target_probs, verdict, run.detok, sampling),
            accepted=tuple(block[:n]),
            verdict=verdict,
            output=output_token(verdict, target_probs[n], run.detok, sampling),
            drafted_at=drafted_at,  # only the pre-verify's first token is on the critical path
            verified_at=verified_at,  # overhead after it includes waiting for the drafter, if it was slower
            phases=tuple(phases),
            proposer_info={
                "summary": summary + (f"; {len(kept)} of them kept for the next step" if kept
                                      else "; nothing kept" if next_block else ""),
                "mode": mode,
            },
            feedback=StepFeedback(len(block), n, tuple(block[:n])),
            last_step_info={"summary": summary, "mode": mode},
        )

    def settle(self, run: Run, outcome: StepOutcome, context_length: int) -> None:
        run.target.rollback(context_length + outcome.feedback.num_accepted)
        if self._kept is None:  # the drafter drafted for a context that did not happen: roll it back
            self.block, self.block_probs = [], None
            self.drafter.crop(context_length + outcome.feedback.num_accepted)
        else:
            self.block, self.block_probs = self._kept

    def close(self) -> None:
        self.worker.shutdown(wait=True)
