"""What a run may ask for: text checks every run gets, and the tighter limits of a public Space.

`RunLimits()` is the ordinary configuration (the CLI, a local explorer, the benchmark): any target
(the embedded models, a local folder, a Hugging Face id), up to the engine's own max_new_tokens.
`RunLimits.public_space()` is what a public Space serves: the embedded default target only, the
project's own drafters only (nothing is downloaded from the hub or read from a folder a visitor
names), fewer new tokens per run, shorter prompts and documents. `RunLimits.from_env(os.environ)`
picks one from SPECVIZ_PUBLIC, public by default on a Hugging Face Space (app.py). The object is
frozen and passed to `build_app` and the `Runner`, which enforce it server-side for every run, page
or API (nothing here is global).

Every check raises a `ConfigError` / `PromptError` whose message says what is allowed, and never
names a server path.

    limits = RunLimits.public_space()
    limits.check_target("HuggingFaceTB/SmolLM2-1.7B")  # ConfigError: target: this public demo runs ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from engine import EMBEDDED_DEFAULT
from engine.api import MAX_NEW_TOKENS_LIMIT
from engine.errors import ConfigError, PromptError
from engine.loading.models import EMBEDDED_MODELS

PUBLIC_ENV = "SPECVIZ_PUBLIC"  # "1" (or true / yes / on): serve the public-Space limits; "0": the ordinary ones
SPACE_ENV = "SPACE_ID"  # set by Hugging Face on a Space: public limits there unless SPECVIZ_PUBLIC says otherwise
MAX_DOCUMENT_BYTES = 1_000_000  # an attached document, UTF-8 (about 200k tokens: tokenised and indexed in seconds)
MAX_PROMPT_CHARS = 200_000  # far beyond any context window here; stops a runaway paste before tokenising it
MAX_SPEC_CHARS = 300  # a model spec (hub id, folder, early-exit:N) is short
SQLITE_MAX_INT = 2**63 - 1  # the log stores seed and top_k as SQLite integers
# The project's own drafters (shipped in assets/drafters or built from the target's layers) and the embedded models
OWN_DRAFTER = re.compile(r"distilled|eagle|medusa|(kangaroo|early-exit):[1-9][0-9]{0,3}")


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def check_text(field: str, value: object, *, empty_ok: bool = True) -> str:
    """A text input as a str, or a clear ConfigError: not text, NUL bytes, characters that are not valid Unicode
    (lone surrogates, which JSON can carry but UTF-8 cannot store)."""
    if not isinstance(value, str):
        raise ConfigError(field, f"must be text, got {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise ConfigError(field, "is empty; enter a value")
    if "\x00" in value:
        raise ConfigError(field, "contains NUL characters (\\x00); remove them (binary data is not text)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(field, "contains characters that are not valid Unicode (lone surrogates)") from None
    return value


@dataclass(frozen=True)
class RunLimits:
    """The limits every run of one app (or CLI) is checked against; see the module docstring."""

    public: bool = False  # a public Space: the page says so, and the rules below are the tight ones
    max_new_tokens: int = MAX_NEW_TOKENS_LIMIT
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    targets: tuple[str, ...] | None = None  # the allowed target specs; None: any (embedded, folder, hub id)
    own_drafters_only: bool = False  # drafters: only the project's own (OWN_DRAFTER) and the embedded models
    max_lab_samples: int = 1000  # samples per strategy in one Sampling lab run (each is a short run of its own)

    @classmethod
    def public_space(cls) -> RunLimits:
        return cls(public=True, max_new_tokens=256, max_prompt_chars=4_000, max_document_bytes=100_000,
                   targets=(EMBEDDED_DEFAULT,), own_drafters_only=True, max_lab_samples=300)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RunLimits:
        """The public-Space limits when SPECVIZ_PUBLIC is 1 / true / yes / on, the ordinary ones when it is set to
        anything else; unset (or blank), public on a Hugging Face Space (which sets SPACE_ID), ordinary elsewhere."""
        value = (environ.get(PUBLIC_ENV) or "").strip()
        public = _yes(value) if value else bool((environ.get(SPACE_ENV) or "").strip())
        return cls.public_space() if public else cls()

    @property
    def _who(self) -> str:
        return "this public demo" if self.public else "SpecViz"

    # -- checks (each raises a ConfigError / PromptError for the person) --------------------------------------

    def check_prompt(self, prompt: object) -> str:
        text = check_text("prompt", prompt)
        if not text.strip():
            raise PromptError("the prompt is empty: type something (or pick an example) first")
        if len(text) > self.max_prompt_chars:
            raise PromptError(f"the prompt is {len(text):,} characters; {self._who} takes at most "
                              f"{self.max_prompt_chars:,}: shorten it")
        return text

    def check_document(self, document: object) -> str | None:
        if document is None:
            return None
        text = check_text("document", document)
        self.check_document_size(len(text.encode("utf-8")), "the document")
        return text

    def check_document_size(self, size: int, what: str) -> None:
        if size > self.max_document_bytes:
            raise ConfigError("document", f"{what} is {size_text(size)}; the limit is "
                                          f"{size_limit_text(self.max_document_bytes)}"
                                          + (" in this public demo" if self.public else ""))

    def check_max_new_tokens(self, value: int) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value > self.max_new_tokens >= 1:
            raise ConfigError("max_new_tokens", f"{self._who} generates at most {self.max_new_tokens:,} new "
                                                f"tokens per run, got {value:,}")
        return value

    def check_lab_samples(self, value: int) -> int:
        if value > self.max_lab_samples:
            raise ConfigError("samples", f"{self._who} draws at most {self.max_lab_samples:,} samples per strategy, "
                                         f"got {value:,}")
        return value

    def check_target(self, spec: object) -> str:
        """The target spec as ModelCache reads it (blank: the embedded default), if it is allowed."""
        text = check_text("target", "" if spec is None else spec).strip() or EMBEDDED_DEFAULT
        if len(text) > MAX_SPEC_CHARS:
            raise ConfigError("target", f"is {len(text):,} characters long; a model name has at most {MAX_SPEC_CHARS}")
        if self.targets is not None and text not in self.targets:
            raise ConfigError("target", f"{self._who} runs only {', '.join(self.targets)} (no downloads from the "
                                        "Hugging Face hub, no local folders); run SpecViz on your own machine for "
                                        "other models")
        return text

    def check_drafter(self, spec: object) -> None:
        """A strategy's drafter spec (None: the strategy has no drafter)."""
        if spec is None:
            return
        text = check_text("drafter", spec).strip()
        if len(text) > MAX_SPEC_CHARS:
            raise ConfigError("drafter", f"is {len(text):,} characters long; a model name has at most {MAX_SPEC_CHARS}")
        if self.own_drafters_only and not (OWN_DRAFTER.fullmatch(text) or text in EMBEDDED_MODELS):
            embedded = "".join(f", {name}" for name in EMBEDDED_MODELS if name not in (self.targets or ()))
            raise ConfigError("drafter", f"{self._who} drafts only with the project's own drafters: distilled, "
                                         f"eagle, medusa, kangaroo:N, early-exit:N{embedded} (no downloads from the "
                                         "Hugging Face hub, no local folders)")

    def describe(self) -> str:
        """One paragraph (Markdown) for the page: what a public demo limits, and why."""
        if not self.public:
            return ""
        targets = ", ".join(f"`{t}`" for t in self.targets or ())
        return (f"**Public demo limits.** Target model: {targets} only; drafters: the project's own (distilled, "
                f"eagle, medusa, kangaroo:N, early-exit:N). At most {self.max_new_tokens:,} new tokens per run, "
                f"prompts of up to {self.max_prompt_chars:,} characters, documents of up to "
                f"{size_limit_text(self.max_document_bytes)}, at most {self.max_lab_samples:,} Sampling lab samples. Why: everyone here shares one machine, and this Space "
                "downloads no models from the Hugging Face hub. Run SpecViz on your own machine for other models and longer "
                "runs.")


def size_limit_text(n_bytes: int) -> str:
    """A size limit for people: "1 MB", "100 kB"."""
    return f"{n_bytes / 1e6:g} MB" if n_bytes >= 1_000_000 else f"{n_bytes / 1e3:g} kB"


def size_text(n_bytes: int) -> str:
    """A size that broke a limit: "1.2 MB", "150,001 bytes" (exact where rounding could hide the excess)."""
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1_000_000 else f"{n_bytes:,} bytes"
