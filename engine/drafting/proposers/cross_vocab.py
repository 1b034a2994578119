"""Cross-vocabulary drafting (Universal Assisted Generation, OmniDraft): a drafter with its own
tokenizer, bridged to the target through text.

One step, for a target context = prompt + committed output (target ids):

1. sync: the committed output is decoded to text and re-encoded with the drafter's tokenizer after
   the drafter's own encoding of the prompt. The drafter's KV cache is cropped at the longest
   common prefix with the ids it already holds, and only the rest is fed. Ids it drafted last step
   that the target accepted are usually still that prefix, so they are not recomputed.
2. draft: k drafter tokens, greedily (stopping early at a drafter special token such as its EOS).
3. bridge: the draft becomes text, and the text becomes target tokens. It is encoded together with
   the text of the last few committed target tokens (the look-behind, as in UAG), so the first
   drafted token is tokenised as it would be in context. The encoding must reproduce those
   committed tokens; when the draft text merges into them instead, the draft is encoded on its
   own. Either way only the longest run of target tokens whose text is exactly a prefix of the
   draft text is kept (a draft that cannot be expressed after the committed tokens proposes
   nothing), then it is cut to k target tokens.

Worked example (a BPE target, a character-level drafter):

    committed target tokens  [..., " the", " ca"]          committed text "... the ca"
    drafter draft            ["t", "▁", "s", "a", "t"]     draft text "t sat"
    look-behind encoding     encode(" the ca" + "t sat") = [" the", " cat", " sat"]
                             does not reproduce [" the", " ca"]: the draft merges into " ca"
    on its own               encode("t sat") = ["t", " sat"]; " the ca" + "t" + " sat" is exactly
                             the committed text + draft text, so ["t", " sat"] is proposed
    alignment                "t" <- drafter 0 ("t"); " sat" <- drafter 1-4 ("▁", "s", "a", "t")

Had the committed text ended with " cat", the look-behind encoding [" the", " cat", " sat"] would
reproduce [" the", " cat"] and [" sat"] would be proposed (a stable boundary).

The drafter has no probabilities over the target's vocabulary, so proposals carry none: the
engine verifies them greedily, which keeps the output identical to the target's whatever the
draft. Sampling would need a lossless cross-vocabulary acceptance rule; `build_decoder` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.loading.causal_lm import CachedCausalLM
from engine.events import StepFeedback
from engine.sampling import SamplingConfig, check_finite
from engine.drafting.proposers.base import Proposal

LOOKBEHIND = 4  # committed target tokens re-encoded with the draft text (UAG's target look-behind)
ANCHOR = 4  # tokens decoded before a window so its first token's leading space comes out right
PARTIAL_CHAR = "\ufffd"  # what decoding shows for an incomplete UTF-8 character

Decode = Callable[[list[int]], str]
Encode = Callable[[str], list[int]]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading ids two sequences share.

    >>> common_prefix_length([5, 6, 7, 8], [5, 6, 9])
    2
    """
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def text_after(decode: Decode, prefix_ids: list[int], ids: list[int]) -> str | None:
    """The text `ids` add after `prefix_ids`, or None when decoding them together changes the prefix's text.

    Decoding `ids` alone would lose context: SentencePiece decoders drop a leading space, and a
    byte-level token may complete a character begun in the prefix.
    """
    head = decode(prefix_ids)
    full = decode(prefix_ids + ids)
    return full[len(head):] if full.startswith(head) else None


def token_spans(decode: Decode, prefix_ids: list[int], ids: list[int]) -> list[tuple[int, int]]:
    """The [start, end) character span of each id in the text `ids` add after `prefix_ids`.

    A token that ends inside a character gets an empty span; the token completing it gets the
    whole character.

    >>> decode = lambda ids: "".join({1: "ab", 2: "c", 3: "de"}[i] for i in ids)
    >>> token_spans(decode, [1], [2, 3])
    [(0, 1), (1, 3)]
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        text = text_after(decode, prefix_ids, ids[:i]) or ""
        end = max(start, len(text.rstrip(PARTIAL_CHAR)))
        spans.append((start, end))
        start = end
    return spans


def align(source_spans: list[tuple[int, int]], dest_spans: list[tuple[int, int]]) -> list[list[int]]:
    """For each destination span, the indices of the source spans that overlap it.

    >>> align([(0, 1), (1, 2), (2, 4)], [(0, 2), (2, 4)])
    [[0, 1], [2]]
    """
    return [[i for i, (s0, s1) in enumerate(source_spans) if s0 < d1 and d0 < s1] for d0, d1 in dest_spans]


@dataclass(frozen=True)
class Bridged:
    """Target tokens for a draft text, and how the boundary with the committed tokens went."""

    token_ids: list[int]  # target ids whose text is a prefix of the draft text, continuing the context
    boundary: str  # "stable" | "merged" | "unstable" | "no look-behind"
    dropped: str  # why tokens of the encoding were left out ("" when none were)


def bridge_to_target(encode: Encode, decode: Decode, context: list[int], num_output: int, draft_text: str) -> Bridged:
    """Re-tokenise `draft_text` for the target so that it continues `context` exactly.

    `context` is the target's committed ids, the last `num_output` of them generated (the
    look-behind never reaches into the prompt, whose special tokens do not survive a text round
    trip). `encode` must not add special tokens. See the module docstring for a worked example.

    >>> vocab = {0: " the", 1: " ca", 2: " cat", 3: " sat", 4: "t", 5: " "}
    >>> decode = lambda ids: "".join(vocab[i] for i in ids)
    >>> def encode(text):  # greedy longest match, like a tiny BPE
    ...     ids = []
    ...     while text:
    ...         i = max((i for i in vocab if text.startswith(vocab[i])), key=lambda i: len(vocab[i]))
    ...         ids.append(i)
    ...         text = text[len(vocab[i]):]
    ...     return ids
    >>> bridge_to_target(encode, decode, [0, 2], 2, " sat")
    Bridged(token_ids=[3], boundary='stable', dropped='')
    >>> bridge_to_target(encode, decode, [0, 1], 2, "t sat")
    Bridged(token_ids=[4, 3], boundary='merged', dropped='')
    """
    n = len(context)
    behind = context[n - min(LOOKBEHIND, num_output):]
    anchored = context[: n - len(behind)][-ANCHOR:] + behind  # behind, plus context that decodes its first token right
    boundary, ids = "no look-behind", None
    if behind:
        behind_text = text_after(decode, anchored[: len(anchored) - len(behind)], behind)
        encoded = encode(behind_text + draft_text) if behind_text is not None else []
        if encoded[: len(behind)] == behind:
            boundary, ids = "stable", encoded[len(behind):]
        else:  # the draft text re-tokenises the committed tokens: encode it on its own
            boundary = "merged"
    if ids is None:
        ids = encode(draft_text)

    # Keep the longest run of tokens whose text is a prefix of the draft text: the target must see
    # the committed text followed by exactly what the drafter wrote.
    keep = 0
    for i in range(1, len(ids) + 1):
        text = text_after(decode, anchored, ids[:i])
        if text is None or not draft_text.startswith(text.rstrip(PARTIAL_CHAR)):
            break
        keep = i
    if keep == 0 and draft_text:
        return Bridged([], "unstable", f"no target tokens spell the draft text after the committed ones: {len(ids)} dropped")
    dropped = f"{len(ids) - keep} whose text departs from the draft text" if keep < len(ids) else ""
    return Bridged(ids[:keep], boundary, dropped)


class CrossVocabProposer:
    """Drafts with a model whose tokenizer differs from the target's (greedy only).

    Drafter cache bookkeeping: `_cached_ids` lists exactly the drafter ids in its KV cache. Each
    proposal re-derives the drafter's ids from the committed text, keeps the common prefix and
    feeds the rest (at least one id, to get next-token logits), so nothing needs doing in
    `observe`: rejected drafts simply stop matching.
    """

    def __init__(self, model: torch.nn.Module, drafter_tokenizer, target_tokenizer):
        self.model = model
        self.drafter_tokenizer = drafter_tokenizer
        self.target_tokenizer = target_tokenizer
        self._drafter_special = set(getattr(drafter_tokenizer, "all_special_ids", []) or [])
        self._drafter_window = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.lm: CachedCausalLM | None = None
        self._cached_ids: list[int] = []
        self._prompt_length = 0
        self._drafter_prompt: list[int] = []

    def _target_decode(self, ids: list[int]) -> str:
        return self.target_tokenizer.decode(ids, skip_special_tokens=False)

    def _target_text(self, ids: list[int]) -> str:
        """The text the drafter reads: special tokens (another vocabulary's markup) left out."""
        return self.target_tokenizer.decode(ids, skip_special_tokens=True)

    def _target_encode(self, text: str) -> list[int]:
        return list(self.target_tokenizer(text, add_special_tokens=False)["input_ids"])

    def _drafter_decode(self, ids: list[int]) -> str:
        return self.drafter_tokenizer.decode(ids, skip_special_tokens=True)

    def start(self, prompt_ids: list[int]) -> None:
        # The drafter reads the prompt's text without the target's special tokens (chat markup of
        # another vocabulary), encoded with its own special tokens (e.g. a BOS it needs).
        self.lm = CachedCausalLM(self.model)
        self._cached_ids = []
        self._prompt_length = len(prompt_ids)
        prompt_text = self._target_text(prompt_ids)
        self._drafter_prompt = list(self.drafter_tokenizer(prompt_text, add_special_tokens=True)["input_ids"])

    def propose(self, context: list[int], k: int, sampling: SamplingConfig, generator: torch.Generator) -> Proposal:
        assert self.lm is not None, "start() first"
        assert sampling.greedy, "cross-vocabulary drafting is greedy-only"
        # 1. sync: the drafter's ids for the committed text; crop its cache at the common prefix
        output = context[self._prompt_length:]
        output_text = text_after(self._target_text, context[: self._prompt_length][-ANCHOR:], output)
        if output_text is None or output_text.endswith(PARTIAL_CHAR):
            return Proposal([], None, {"summary": "proposed nothing: the committed text ends inside a character"})
        drafter_ids = self._drafter_prompt + list(self.drafter_tokenizer(output_text, add_special_tokens=False)["input_ids"])
        if not drafter_ids:
            return Proposal([], None, {"summary": "proposed nothing: the context has no text for the drafter yet"})
        if len(drafter_ids) + k > self._drafter_window:
            return Proposal([], None, {"summary": f"proposed nothing: the drafter's context window ({self._drafter_window} "
                                                  f"tokens) is full"})
        keep = min(common_prefix_length(self._cached_ids, drafter_ids), len(drafter_ids) - 1)
        self.lm.rollback(keep)
        logits = self.lm.forward(drafter_ids[keep:])[-1]
        self._cached_ids = list(drafter_ids)
        sync = {"drafter_cache_kept": keep, "drafter_fed": len(drafter_ids) - keep}

        # 2. draft k drafter tokens greedily
        drafted, confidences, stop = self._draft(logits, k)

        # 3. the draft as text (a trailing incomplete character is left out), then as target tokens
        window = drafter_ids[-ANCHOR:]
        draft_text = (text_after(self._drafter_decode, window, drafted) or "").rstrip(PARTIAL_CHAR)
        bridged = bridge_to_target(self._target_encode, self._target_decode, context, len(output), draft_text)

        # 4. k counts target tokens
        target_ids = bridged.token_ids[:k]
        dropped = [reason for reason in (
            stop and f"drafting stopped at {stop}",
            bridged.dropped and f"target tokens: {bridged.dropped}",
            len(bridged.token_ids) > k and f"{len(bridged.token_ids) - k} target tokens beyond k={k}",
        ) if reason]
        info = self._info(context, drafted, confidences, draft_text, window, target_ids, bridged, dropped, sync)
        return Proposal(target_ids, None, info)

    def observe(self, feedback: StepFeedback) -> None:
        """Nothing to do: the next proposal re-syncs the drafter from the committed text."""

    def _draft(self, logits: torch.Tensor, k: int) -> tuple[list[int], list[float], str]:
        """Up to k greedy drafter tokens from `logits` ([vocab], the next-token logits), their
        drafter probabilities, and why drafting stopped early ("" when it did not)."""
        assert self.lm is not None
        drafted: list[int] = []
        confidences: list[float] = []
        for i in range(k):
            check_finite(logits, "drafter")
            token = int(logits.argmax())
            if token in self._drafter_special:  # no text to bridge (e.g. the drafter's end of turn)
                return drafted, confidences, f"drafter special token {self.drafter_tokenizer.convert_ids_to_tokens(token)!r}"
            drafted.append(token)
            confidences.append(float(torch.softmax(logits.float(), dim=-1)[token]))
            if i + 1 < k:  # the last token's logits would be wasted
                logits = self.lm.forward([token])[-1]
                self._cached_ids.append(token)
        return drafted, confidences, ""

    def _info(
        self,
        context: list[int],
        drafted: list[int],
        confidences: list[float],
        draft_text: str,
        window: list[int],
        target_ids: list[int],
        bridged: Bridged,
        dropped: list[str],
        sync: dict[str, int],
    ) -> dict[str, Any]:
        """The step inspector's account: draft text, both token lists and the alignment between them."""
        drafter_spans = token_spans(self._drafter_decode, window, drafted)
        anchor = context[-ANCHOR:]
        target_spans = token_spans(self._target_decode, anchor, target_ids)
        sources = align(drafter_spans, target_spans)
        targets_of = align(target_spans, drafter_spans)
        drafter_pieces = [draft_text[a:b] for a, b in drafter_spans]
        summary = (
            f"drafted {len(drafted)} drafter tokens {draft_text!r} -> {len(target_ids)} target tokens"
            f" (boundary {bridged.boundary})"
        )
        if dropped:
            summary += "; dropped: " + "; ".join(dropped)
        return {
            "summary": summary,
            "draft_text": draft_text,
            "boundary": bridged.boundary,
            "dropped": "; ".join(dropped) or "none",
            **sync,
            "tables": [
                {
                    "title": "drafter tokens (its own vocabulary)",
                    "columns": ["#", "drafter id", "text", "drafter prob", "target tokens"],
                    "rows": [
                        [i, token, drafter_pieces[i], round(confidences[i], 4), _indices(targets_of[i])]
                        for i, token in enumerate(drafted)
                    ],
                },
                {
                    "title": "target tokens proposed (re-tokenised draft text)",
                    "columns": ["#", "target id", "text", "from drafter tokens"],
                    "rows": [
                        [j, token, draft_text[a:b], _indices(sources[j])]
                        for j, (token, (a, b)) in enumerate(zip(target_ids, target_spans))
                    ],
                },
            ],
        }


def _indices(indices: list[int]) -> str:
    """[2, 3, 4] -> "2-4", [1] -> "1", [] -> "" (alignment cells)."""
    if not indices:
        return ""
    return str(indices[0]) if len(indices) == 1 else f"{indices[0]}-{indices[-1]}"
