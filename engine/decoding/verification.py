"""Chain verification as pure functions over tensors.

Greedy and sampling are separate, exact branches (greedy is never checked with the probabilistic
rule). Naming follows the paper: `draft_probs` are the drafter's q, `target_probs` the target's p.

Worked example (sampling, k = 2, vocab = 3), draft = [0, 2]:
  target_probs[0] = [0.5, 0.3, 0.2], draft_probs[0] = [0.8, 0.1, 0.1]
  position 0: accept token 0 with min(1, 0.5 / 0.8) = 0.625. Say the uniform draw is 0.9 > 0.625:
  rejected; the recovered token is drawn from the residual max(0, p - q) = [0, 0.2, 0.1] / 0.3.
  Position 1 is "unchecked". Had both been accepted, a bonus token is drawn from target_probs[2].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChainVerdict:
    num_accepted: int  # length of the accepted prefix of the draft
    next_token: int  # recovered token (at the first rejection) or bonus token (all accepted)
    next_kind: str  # "recovered" | "bonus" | "baseline" (nothing was drafted)
    accept_probs: tuple[float, ...]  # per checked position: min(1, p/q) (greedy: 1.0 or 0.0)
    uniforms: tuple[float, ...]  # per checked position: the uniform draw (empty under greedy)
    next_distribution: torch.Tensor  # [vocab] the distribution next_token was drawn from


def verify_greedy(draft_ids: list[int], target_logits: torch.Tensor) -> ChainVerdict:
    """Longest prefix of the draft that matches the target's argmax, plus one target token.

    draft_ids: k token ids. target_logits: [k + 1, vocab]; row i scores the token after the
    context extended by draft_ids[:i].
    """
    argmax = target_logits.argmax(dim=-1).tolist()  # [k + 1]
    accept_probs = []
    for i, token in enumerate(draft_ids):
        ok = argmax[i] == token
        accept_probs.append(1.0 if ok else 0.0)
        if not ok:
            return ChainVerdict(i, argmax[i], "recovered", tuple(accept_probs), (), _one_hot_like(target_logits[i], argmax[i]))
    k = len(draft_ids)
    return ChainVerdict(k, argmax[k], "bonus" if k else "baseline", tuple(accept_probs), (), _one_hot_like(target_logits[k], argmax[k]))


def _one_hot_like(row: torch.Tensor, index: int) -> torch.Tensor:
    out = torch.zeros_like(row, dtype=torch.float32)
    out[index] = 1.0
    return out


def acceptance_probability(draft_prob: float | None, target_prob: float) -> float:
    """min(1, p/q); a drafter without probabilities (q = one-hot) gives p itself."""
    if draft_prob is None:
        return min(1.0, target_prob)
    if draft_prob <= 0.0:
        # The drafter could not have proposed this token under its own distribution; accept only if p > 0.
        return 1.0 if target_prob > 0.0 else 0.0
    return min(1.0, target_prob / draft_prob)


def residual_distribution(target_probs: torch.Tensor, draft_probs: torch.Tensor | None, draft_token: int) -> torch.Tensor:
    """The distribution a rejected position resamples from: normalise(max(0, p - q)).

    target_probs: [vocab]; draft_probs: [vocab] or None (one-hot at draft_token).
    """
    if draft_probs is None:
        residual = target_probs.clone()
        residual[draft_token] = 0.0
    else:
        residual = torch.clamp(target_probs - draft_probs, min=0.0)
    total = residual.sum()
    if total <= 0:
        # p <= q everywhere means p == q, and then rejection has probability 0; guard rounding.
        return target_probs / target_probs.sum()
    return residual / total


def verify_rejection_sampling(
    draft_ids: list[int],
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator,
) -> ChainVerdict:
    """Lossless speculative sampling (Leviathan et al. 2023, Chen et al. 2023) over a chain.

    draft_ids: k token ids; draft_probs: [k, vocab] or None (drafter without probabilities,
    treated as one-hot); target_probs: [k + 1, vocab]. The output is distributed exactly as
    sampling from target_probs token by token.
    """
    accept_probs: list[float] = []
    uniforms: list[float] = []
    for i, token in enumerate(draft_ids):
        q_row = None if draft_probs is None else draft_probs[i]
        q = None if q_row is None else float(q_row[token])
        a = acceptance_probability(q, float(target_probs[i, token]))
        u = float(torch.rand((), generator=generator))
        accept_probs.append(a)
        uniforms.append(u)
        if u >= a:
            residual = residual_distribution(target_probs[i], q_row, token)
            recovered = int(torch.multinomial(residual, 1, generator=generator))
            return ChainVerdict(i, recovered, "recovered", tuple(accept_probs), tuple(uniforms), residual)
    k = len(draft_ids)
    bonus = int(torch.multinomial(target_probs[k], 1, generator=generator))
    return ChainVerdict(k, bonus, "bonus" if k else "baseline", tuple(accept_probs), tuple(uniforms), target_probs[k])
