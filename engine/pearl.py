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

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from .causal_lm import CachedCausalLM
from .decoding import SpeculativeDecoder, commit, drafted_tokens, output_token, verify_chain
from .detokenize import IncrementalDetokenizer
from .events import LengthDecision, NewToken, PhaseTimings, StepEvent, WorkerPhase
from .models import LoadedModel
from .proposers.draft_model import DraftModelProposer
from .sampling import SamplingConfig


def _draft(drafter: DraftModelProposer, context: list[int], n: int, sampling: SamplingConfig,
           generator: torch.Generator, clock) -> tuple[list[int], torch.Tensor | None, WorkerPhase]:
    """n drafted tokens continuing `context`, their distributions [n, vocab], and when the work ran."""
    started = clock()
    proposal = drafter.propose(context, n, sampling, generator)
    return proposal.token_ids, proposal.draft_probs, WorkerPhase("drafter", "draft", started, clock())


class PearlDecoder(SpeculativeDecoder):
    """PEARL's two-worker schedule with draft window `gamma`; yields the same StepEvents as the chain decoder."""

    def __init__(self, target: LoadedModel, drafter_model: torch.nn.Module, gamma: int, sampling: SamplingConfig):
        super().__init__(target, None, None, sampling)
        self.drafter_model = drafter_model
        self.gamma = gamma

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Iterator[StepEvent]:
        self.check_prompt(prompt_ids)
        sampling, window, eos_ids = self.sampling, self.target.context_window, self.target.eos_token_ids
        generator = sampling.make_generator()  # the verifier's
        drafter_generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        drafter = DraftModelProposer(self.drafter_model)
        drafter.start(list(prompt_ids))
        detok = IncrementalDetokenizer(self.target.tokenizer, prompt_ids)
        target = CachedCausalLM(self.target.model)
        tokens = list(prompt_ids)
        run_start = time.perf_counter()
        paused = 0.0
        clock = lambda: time.perf_counter() - run_start - paused  # noqa: E731  engine time, as in the chain decoder
        prefill_forwards = 0
        if len(tokens) > 1:
            target.forward(tokens[:-1])
            prefill_forwards = 1
        block: list[int] = []  # drafted tokens continuing `tokens`, not yet verified
        block_probs: torch.Tensor | None = None  # [len(block), vocab]
        produced, step = 0, 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="specviz-pearl-drafter") as worker:
            while True:
                step_start = clock()
                budget = min(max_new_tokens - produced, window - len(tokens))
                phases: list[WorkerPhase] = []
                # 1. pre-verify needs a first token to check: the drafter drafts it alone
                mode = "post-verify" if block else "pre-verify"
                if not block and budget > 1:
                    block, block_probs, phase = _draft(drafter, tokens, 1, sampling, drafter_generator, clock)
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
                drafted_at = clock()

                # 2. the drafter drafts the continuation on its worker while the target verifies here
                future = (worker.submit(_draft, drafter, tokens + block, continuation, sampling, drafter_generator, clock)
                          if continuation else None)
                target_probs, verdict = verify_chain(target, tokens[-1], block, block_probs, sampling, generator)
                verified_at = clock()
                phases.append(WorkerPhase("target", "verify", drafted_at, verified_at))
                next_block, next_probs = [], None
                if future is not None:
                    next_block, next_probs, phase = future.result()
                    phases.append(phase)

                # 3. commit accepted + recovered/bonus, exactly as plain speculation does
                n = verdict.num_accepted
                context_length = len(tokens)
                committed, kinds, stop_reason = commit(tokens, block[:n], verdict, bool(block), eos_ids,
                                                       max_new_tokens - produced, window)
                produced += len(committed)

                # 4. keep the continuation when the whole block was accepted and it starts with the target's token
                if stop_reason is None:
                    target.rollback(context_length + n)
                    if block and n == len(block) and next_block and next_block[0] == verdict.next_token:
                        kept, kept_probs = next_block[1:], (next_probs[1:] if len(next_block) > 1 else None)
                    else:
                        kept, kept_probs = [], None
                        drafter.crop(context_length + n)
                event = StepEvent(
                    index=step,
                    context_length=context_length,
                    decision=decision,
                    draft=drafted_tokens(block, block_probs, target_probs, verdict, detok, sampling),
                    output=output_token(verdict, target_probs[n], bool(block), detok, sampling),
                    new_tokens=tuple(NewToken(t, detok.push(t), kind) for t, kind in zip(committed, kinds)),
                    target_forwards=1 + (prefill_forwards if step == 0 else 0),
                    timings=PhaseTimings(
                        draft_s=drafted_at - step_start,  # only the pre-verify's first token is on the critical path
                        verify_s=verified_at - drafted_at,
                        overhead_s=clock() - verified_at,  # includes waiting for the drafter, if it was slower
                        start_s=step_start,
                        end_s=clock(),
                        phases=tuple(phases),
                    ),
                    stop_reason=stop_reason,
                    proposer_info={
                        "summary": f"{mode}: checked {len(block)}, the drafter drafted {len(next_block)} ahead"
                        + (f"; {len(kept)} of them kept for the next step" if stop_reason is None and kept
                           else "; nothing kept" if stop_reason is None and next_block else ""),
                        "mode": mode,
                    },
                )
                yielded_at = time.perf_counter()
                yield event
                paused += time.perf_counter() - yielded_at
                if stop_reason is not None:
                    return
                block, block_probs = kept, kept_probs
                step += 1
