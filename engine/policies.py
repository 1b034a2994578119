"""Draft-length policies: how many tokens to ask the proposer for next, and why.

A policy is consulted before each step (`decide`) and told the outcome after verification
(`update`). Every decision carries a human-readable reason and the inputs that drove it, which
go into the step event, the SQLite log and the explorer.
"""

from __future__ import annotations

from typing import Any, Protocol


class DraftLengthPolicy(Protocol):
    def decide(self) -> tuple[int, str, dict[str, Any]]:
        """Return (requested length, reason, inputs)."""

    def update(self, drafted: int, accepted: int) -> None:
        """Learn from the verdict of the last step."""


class ConstantLength:
    def __init__(self, k: int):
        self.k = k

    def decide(self) -> tuple[int, str, dict[str, Any]]:
        return self.k, f"constant K = {self.k}", {"k": self.k}

    def update(self, drafted: int, accepted: int) -> None:
        pass


class HeuristicLength:
    """transformers' "heuristic" schedule: +2 after a fully accepted draft, -1 otherwise, floor 1, cap max_k."""

    def __init__(self, k: int, max_k: int):
        self.k = k
        self.max_k = max_k
        self._reason = f"starting K = {k}"
        self._last: dict[str, Any] = {}

    def decide(self) -> tuple[int, str, dict[str, Any]]:
        return self.k, self._reason, {"k": self.k, "max_k": self.max_k, **self._last}

    def update(self, drafted: int, accepted: int) -> None:
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
