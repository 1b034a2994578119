"""Sampling settings and the logits -> probabilities transform shared by target and drafter.

The same `SamplingConfig` is applied to the target's and the drafter's logits, so that rejection
sampling compares like with like (`draft_probs` and `target_probs` are both the *transformed*
distributions). Temperature 0 means greedy decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.errors import ConfigError, EngineError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples from softmax(logits / temperature)
    top_k: int = 0  # keep only the k most likely tokens before sampling; 0 = off
    top_p: float = 1.0  # nucleus: keep the smallest set whose mass reaches top_p; 1.0 = off
    seed: int = 0  # seeds the run's single torch.Generator

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature):
            raise ConfigError("temperature", f"must be a finite number, got {self.temperature!r}")
        if self.temperature < 0:
            raise ConfigError("temperature", f"must be >= 0, got {self.temperature}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ConfigError("top_k", f"must be an integer >= 0, got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not (0.0 < self.top_p <= 1.0):
            raise ConfigError("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError("seed", f"must be an integer >= 0, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def make_generator(self) -> torch.Generator:
        """The run's only source of randomness; created once per run, never reseeded."""
        generator = torch.Generator(device="cpu")
        generator.manual_seed(self.seed)
        return generator


def check_finite(logits: torch.Tensor, who: str) -> None:
    if not torch.isfinite(logits).all():
        raise EngineError(f"the {who} produced NaN or infinite logits; the run was stopped")


def logits_to_probs(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Turn logits into the distribution the run samples from.

    logits: [n, vocab] float. Returns [n, vocab] float32 probabilities, rows summing to 1.
    Greedy runs get the plain softmax (temperature 1) so that probabilities can still be shown.

    >>> logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    >>> probs = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_k=2))
    >>> [round(x, 3) for x in probs[0].tolist()]
    [0.731, 0.269, 0.0, 0.0]
    """
    logits = logits.float()
    if sampling.greedy:
        return torch.softmax(logits, dim=-1)
    logits = logits / sampling.temperature
    if sampling.top_k > 0 and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]  # [n, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of strictly better tokens
        drop_sorted = mass_before >= sampling.top_p  # the top token always survives (mass_before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one token id from probs: [vocab]."""
    return int(torch.multinomial(probs, 1, generator=generator).item())
