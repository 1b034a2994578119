"""Incremental detokenisation: the text each new token adds to the output.

Decoding one id at a time breaks multi-byte characters and merges; instead (as in TGI) decode a
short window before and after the new ids and emit the difference once it is complete.
"""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-4:])  # a little left context so leading spaces come out right
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def push(self, token_id: int) -> str:
        """Append one id; return the text it completes ('' while a character is still partial)."""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=False)
        new_text = decode(self.ids[self.prefix_offset :], skip_special_tokens=False)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def piece(self, token_id: int) -> str:
        """Stand-alone text of one token, for drafts and candidate lists."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)
