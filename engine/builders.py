"""How each strategy config becomes a decoder: one builder function per config class, registered with `@builds`.

A builder receives its validated config and one `BuildContext` (target, model cache, sampling,
progress callback, attached document) with one way to get a drafter, and returns a `Decoder`. Adding
a strategy is a config class (engine.strategies) plus one decorated builder here; `build_decoder`
only looks the builder up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from engine.decoding.driver import Decoder
from engine.decoding.chain import SpeculativeDecoder
from engine.drafting.diffusion_drafter import load_diffusion_drafter
from engine.errors import ConfigError
from engine.loading.models import LoadedModel, ProgressFn
from engine.loading.model_cache import ModelCache
from engine.decoding.pearl import PearlDecoder
from engine.drafting.policies import (
    AcceptanceFeedbackLength,
    AcceptancePredictorStop,
    ConfidenceStop,
    ConstantLength,
    DiffusionDraftLength,
    DraftLengthPolicy,
    DraftStopRule,
    HeuristicLength,
    TrainedPredictor,
)
from engine.drafting.proposers.adaptive_ngram import AdaptiveNgramProposer
from engine.drafting.proposers.cross_vocab import CrossVocabProposer
from engine.drafting.proposers.diffusion import DiffusionProposer
from engine.drafting.proposers.draft_model import DraftModelProposer
from engine.drafting.proposers.dynamic_exit import DynamicExitProposer
from engine.drafting.proposers.lookup_trees import FusedLookupTreeProposer, FusedRetrievalTreeProposer, LookupTreeProposer
from engine.drafting.proposers.base import Proposer
from engine.drafting.proposers.feature_heads import EagleProposer, EagleTreeDrafter, MedusaHeadsDrafter
from engine.drafting.proposers.model_trees import (
    DynamicShape,
    LevelDrafter,
    ModelTreeProposer,
    TreeDrafter,
    RsdShape,
    SpecTrShape,
    StaticShape,
    TreeShape,
    parse_branching,
)
from engine.drafting.proposers.ngram import PromptLookupProposer
from engine.drafting.proposers.retrieval import RetrievalProposer
from engine.sampling import SamplingConfig
from engine.strategies import (
    KANGAROO_PREFIX,
    AdaptiveNgramConfig,
    AutoregressiveConfig,
    ChainDrafting,
    CrossVocabConfig,
    DiffusionDraftingConfig,
    DraftModelConfig,
    DynamicExitConfig,
    DynamicTreeConfig,
    EarlyExitConfig,
    FEATURE_HEAD_STRATEGIES,
    HybridTreeConfig,
    KangarooConfig,
    LookupTreeConfig,
    ModelTreeDrafting,
    PearlConfig,
    PromptLookupConfig,
    RasdTreeConfig,
    RetrievalConfig,
    RsdConfig,
    SpecTrConfig,
    StaticTreeConfig,
    StrategyConfig,
)
from engine.drafting.token_lattice import DrafterCausalScorer, NgramCausalScorer
from engine.loading.causal_lm import FeatureTap
from engine.loading.feature_drafters import EAGLE, FEATURE_DRAFTERS, MEDUSA, EagleHead, MedusaHeads, load_feature_drafter
from engine.loading.trained_drafters import drafters_dir, kangaroo_agreement, load_acceptance_predictor
from engine.decoding.tree import TreeDecoder


@dataclass
class BuildContext:
    """Everything a builder may use besides its config."""

    target: LoadedModel
    models: ModelCache
    sampling: SamplingConfig
    progress: ProgressFn | None = None
    document: str | None = None  # the text retrieval strategies draft from
    features: FeatureTap | None = None  # the target's features, once a feature head asked for them

    def drafter(self, spec: str, vocab_trim: int = 0) -> torch.nn.Module:
        """A same-tokenizer drafter model for the target (distilled, kangaroo:N, early-exit:N, a hub id or folder)."""
        if spec in FEATURE_DRAFTERS:
            raise ConfigError("drafter", f"{spec} is a draft head that reads the target's features; use it with "
                                         f"{', '.join(FEATURE_HEAD_STRATEGIES)}")
        return self.models.drafter(self.target, spec, progress=self.progress, vocab_trim=vocab_trim).model

    def target_features(self) -> FeatureTap:
        """The tap the decoder fills with the target's features (give the decoder `self.features`)."""
        if self.features is None:
            self.features = FeatureTap()
        return self.features

    def feature_head(self, kind: str, vocab_trim: int) -> EagleHead | MedusaHeads:
        return load_feature_drafter(self.target, kind, drafters_dir(self.target.name), vocab_trim, packed=True)

    def chain_proposer(self, spec: str, vocab_trim: int, stop_rule: DraftStopRule | None = None,
                       stop_below: float = 0.0) -> Proposer:
        """A chain proposer for a drafter spec: EAGLE's or Medusa's heads on the target's features, or a drafter model."""
        if spec == EAGLE:
            return EagleProposer(self.feature_head(spec, vocab_trim), self.target_features(), stop_rule)
        if spec == MEDUSA:
            if stop_rule is not None:
                raise ConfigError("length_policy", "Medusa's heads draft all their tokens at once: they cannot stop "
                                                   "inside the draft; use constant, heuristic or feedback")
            return MedusaHeadsDrafter(self.feature_head(spec, vocab_trim), self.target_features())
        return DraftModelProposer(self.drafter(spec, vocab_trim), stop_below, stop_rule)

    def level_drafter(self, spec: str, vocab_trim: int, depth: int) -> LevelDrafter:
        """What grows a draft tree one level per pass: EAGLE's head, Medusa's heads or a drafter model."""
        if spec == EAGLE:
            return EagleTreeDrafter(self.feature_head(spec, vocab_trim), self.target_features())
        if spec == MEDUSA:
            heads = MedusaHeadsDrafter(self.feature_head(spec, vocab_trim), self.target_features())
            if depth > heads.depth:
                raise ConfigError("depth", f"Medusa has {heads.depth} heads, one per tree level: the tree may be at most "
                                           f"{heads.depth} deep, got {depth}")
            return heads
        return TreeDrafter(self.drafter(spec, vocab_trim))

    def document_ids(self, strategy: str) -> list[int]:
        """The attached document as target token ids; a clear error when there is none."""
        if self.document is None or not self.document.strip():
            raise ConfigError("document", f"{strategy} drafts from a document: attach one (paste its text or upload a "
                                          "text file)")
        return list(self.target.tokenizer(self.document, add_special_tokens=False, verbose=False)["input_ids"])


Config = TypeVar("Config", bound=StrategyConfig)
Builder = Callable[[Config, BuildContext], Decoder]
BUILDERS: dict[type[StrategyConfig], Builder] = {}


def builds(config_class: type[Config]) -> Callable[[Builder], Builder]:
    """Register the decorated function as the builder of `config_class` (exactly that class)."""
    def register(builder: Builder) -> Builder:
        if config_class in BUILDERS:
            raise TypeError(f"{config_class.__name__} has two builders")
        BUILDERS[config_class] = builder
        return builder
    return register


def build_decoder(strategy: StrategyConfig, target: LoadedModel, models: ModelCache, sampling: SamplingConfig,
                  progress: ProgressFn | None = None, *, document: str | None = None) -> Decoder:
    """The decoder a strategy config describes. `document`: what retrieval strategies draft from (others ignore it)."""
    builder = BUILDERS.get(type(strategy))
    if builder is None:
        raise ConfigError("strategy", f"no builder for strategy {strategy.name!r}")
    return builder(strategy, BuildContext(target, models, sampling, progress, document))


# --------------------------------------------------------------------------- chains


def length_policy(strategy: ChainDrafting, trained_predictor: TrainedPredictor | None = None) -> DraftLengthPolicy:
    """The draft-length policy a chain strategy names (constant, heuristic, feedback, confidence, specdec).

    `trained_predictor`: SpecDec++'s predictor trained for this target and drafter (specdec only).
    """
    k, max_k = strategy.k, strategy.max_k
    return {
        "constant": lambda: ConstantLength(k),
        "heuristic": lambda: HeuristicLength(k, max_k),
        "feedback": lambda: AcceptanceFeedbackLength(k, max_k),
        "confidence": lambda: ConfidenceStop(max_k),
        "specdec": lambda: AcceptancePredictorStop(max_k, trained=trained_predictor),
    }[strategy.length_policy]()


def _policy_without_model_drafter(strategy: ChainDrafting) -> DraftLengthPolicy:
    """The length policy of a chain strategy whose drafter has no distributions to stop on."""
    policy = length_policy(strategy)
    if policy.stop_rule is not None:
        raise ConfigError(
            "length_policy",
            f"{strategy.length_policy} stops drafting on the drafter's probabilities, which only model drafters "
            f"(draft_model, early_exit, kangaroo) have; {strategy.name} cannot use it",
        )
    return policy


@builds(AutoregressiveConfig)
def _autoregressive(strategy: AutoregressiveConfig, ctx: BuildContext) -> Decoder:
    return SpeculativeDecoder(ctx.target, None, None, ctx.sampling)


def _model_chain(strategy: DraftModelConfig | EarlyExitConfig | KangarooConfig, ctx: BuildContext,
                 stop_below: float = 0.0) -> Decoder:
    """A chain from a drafter model; `stop_below`: Kangaroo's double early exit (0 = off)."""
    trained = None
    if strategy.length_policy == "specdec":
        trained = load_acceptance_predictor(ctx.target.name, strategy.drafter, strategy.vocab_trim)
    policy = length_policy(strategy, trained)
    proposer = ctx.chain_proposer(strategy.drafter, strategy.vocab_trim, policy.stop_rule, stop_below)
    return SpeculativeDecoder(ctx.target, proposer, policy, ctx.sampling, ctx.features)


@builds(DraftModelConfig)
def _draft_model(strategy: DraftModelConfig, ctx: BuildContext) -> Decoder:
    return _model_chain(strategy, ctx)


@builds(EarlyExitConfig)
def _early_exit(strategy: EarlyExitConfig, ctx: BuildContext) -> Decoder:
    return _model_chain(strategy, ctx)


@builds(KangarooConfig)
def _kangaroo(strategy: KangarooConfig, ctx: BuildContext) -> Decoder:
    return _model_chain(strategy, ctx, stop_below=strategy.stop_below)


@builds(PromptLookupConfig)
def _prompt_lookup(strategy: PromptLookupConfig, ctx: BuildContext) -> Decoder:
    proposer = PromptLookupProposer(strategy.max_ngram, strategy.min_ngram)
    return SpeculativeDecoder(ctx.target, proposer, _policy_without_model_drafter(strategy), ctx.sampling)


@builds(AdaptiveNgramConfig)
def _aded(strategy: AdaptiveNgramConfig, ctx: BuildContext) -> Decoder:
    policy = _policy_without_model_drafter(strategy)
    proposer = AdaptiveNgramProposer(strategy.max_ngram, strategy.min_ngram, strategy.exploration,
                                     strategy.min_confidence, decode=ctx.target.tokenizer.decode)
    return SpeculativeDecoder(ctx.target, proposer, policy, ctx.sampling)


@builds(RetrievalConfig)
def _rasd(strategy: RetrievalConfig, ctx: BuildContext) -> Decoder:
    policy = _policy_without_model_drafter(strategy)
    document_ids = ctx.document_ids(strategy.name)
    proposer = RetrievalProposer(
        ctx.drafter(strategy.drafter, strategy.vocab_trim), document_ids, ctx.target.tokenizer.decode, strategy.tau,
        strategy.max_candidates, strategy.min_match, strategy.max_match, strategy.drafter_tokens,
        drafter_name=strategy.drafter, stop_below=strategy.stop_below,
    )
    return SpeculativeDecoder(ctx.target, proposer, policy, ctx.sampling)


@builds(CrossVocabConfig)
def _cross_vocab(strategy: CrossVocabConfig, ctx: BuildContext) -> Decoder:
    policy = _policy_without_model_drafter(strategy)
    if not ctx.sampling.greedy:
        raise ConfigError(
            "temperature",
            "cross-vocabulary drafting is greedy-only here: its drafter has no probabilities over the target's "
            "vocabulary, so sampled drafts could not be verified losslessly; use temperature 0",
        )
    drafter = ctx.models.get(strategy.drafter, progress=ctx.progress, device=ctx.target.device)  # beside the target
    if drafter.tokenizer is None:
        raise ConfigError("drafter", f"{strategy.drafter!r} has no tokenizer of its own")
    proposer = CrossVocabProposer(drafter.model, drafter.tokenizer, ctx.target.tokenizer)
    return SpeculativeDecoder(ctx.target, proposer, policy, ctx.sampling)


@builds(DynamicExitConfig)
def _dynamic_exit(strategy: DynamicExitConfig, ctx: BuildContext) -> Decoder:
    """DEL over the target's trained Kangaroo adapters (all of them, or the requested exit layers).

    DEL chooses the exit layer and K together from the same statistics, so its proposer is its own length policy.
    """
    trained = kangaroo_agreement(ctx.target)  # exit layer -> held-out agreement, the prior acceptance
    layers = strategy.layers() or sorted(trained)
    missing = [layer for layer in layers if layer not in trained]
    if missing or not layers:
        raise ConfigError(
            "exit_layers",
            f"no trained Kangaroo adapter for exit layer(s) {', '.join(map(str, missing)) or '(none trained)'}; "
            f"trained: {', '.join(map(str, sorted(trained))) or 'none'}",
        )
    drafters = {layer: ctx.drafter(f"{KANGAROO_PREFIX}{layer}", strategy.vocab_trim) for layer in layers}
    proposer = DynamicExitProposer(
        drafters, {layer: trained[layer] for layer in layers}, len(ctx.target.model.model.layers), strategy.max_k,
        stop_below=strategy.stop_below,
    )
    return SpeculativeDecoder(ctx.target, proposer, proposer, ctx.sampling)


@builds(PearlConfig)
def _pearl(strategy: PearlConfig, ctx: BuildContext) -> Decoder:
    return PearlDecoder(ctx.target, ctx.drafter(strategy.drafter, strategy.vocab_trim), strategy.gamma, ctx.sampling)


@builds(DiffusionDraftingConfig)
def _diffusion(strategy: DiffusionDraftingConfig, ctx: BuildContext) -> Decoder:
    """Diffusion drafting: the target's trained diffusion drafter, a lattice path search and ADL."""
    drafter = load_diffusion_drafter(ctx.target, vocab_trim=strategy.vocab_trim)
    block = drafter.config.block
    if strategy.max_k > block:
        raise ConfigError("max_k", f"the diffusion drafter fills {block} positions per pass; max_k must be <= {block}, "
                                   f"got {strategy.max_k}")
    scorer = None
    if strategy.search == "cps":
        scorer = (NgramCausalScorer() if strategy.causal == "ngram"
                  else DrafterCausalScorer(ctx.drafter(strategy.drafter, strategy.vocab_trim)))
    policy = (DiffusionDraftLength(strategy.k, strategy.max_k) if strategy.length_policy == "adl"
              else ConstantLength(strategy.k))
    proposer = DiffusionProposer(drafter, block, strategy.search, scorer, strategy.causal_weight, strategy.beam,
                                 strategy.candidates, ctx.target.eos_token_ids)
    return SpeculativeDecoder(ctx.target, proposer, policy, ctx.sampling)


# --------------------------------------------------------------------------- trees


def _check_tree_attention(strategy: StrategyConfig, ctx: BuildContext) -> None:
    """Tree verification needs full attention everywhere (checked before any drafter is loaded)."""
    if "sliding_attention" in (getattr(ctx.target.model.config, "layer_types", None) or ()):
        raise ConfigError("strategy", f"{strategy.name} verifies a tree with tree attention, which needs full-attention "
                                      f"layers; {ctx.target.name} has sliding-window layers: use a chain strategy")


def _model_tree(strategy: ModelTreeDrafting, ctx: BuildContext, shape: TreeShape) -> Decoder:
    _check_tree_attention(strategy, ctx)
    proposer = ModelTreeProposer(ctx.level_drafter(strategy.drafter, strategy.vocab_trim, shape.depth), shape)
    return TreeDecoder(ctx.target, proposer, ctx.sampling, ctx.features)


@builds(StaticTreeConfig)
def _static_tree(strategy: StaticTreeConfig, ctx: BuildContext) -> Decoder:
    return _model_tree(strategy, ctx, StaticShape(parse_branching(strategy.branching)))


@builds(RsdConfig)
def _rsd(strategy: RsdConfig, ctx: BuildContext) -> Decoder:
    return _model_tree(strategy, ctx, RsdShape(parse_branching(strategy.branching)))


@builds(SpecTrConfig)
def _spectr(strategy: SpecTrConfig, ctx: BuildContext) -> Decoder:
    return _model_tree(strategy, ctx, SpecTrShape(drafts=strategy.drafts, depth=strategy.depth))


@builds(DynamicTreeConfig)
def _dynamic_tree(strategy: DynamicTreeConfig, ctx: BuildContext) -> Decoder:
    return _model_tree(strategy, ctx, DynamicShape(width=strategy.width, nodes=strategy.nodes, depth=strategy.depth))


@builds(LookupTreeConfig)
def _lookup_tree(strategy: LookupTreeConfig, ctx: BuildContext) -> Decoder:
    _check_tree_attention(strategy, ctx)
    proposer = LookupTreeProposer(strategy.max_ngram, strategy.min_ngram, strategy.max_candidates, strategy.k)
    return TreeDecoder(ctx.target, proposer, ctx.sampling)


@builds(RasdTreeConfig)
def _rasd_tree(strategy: RasdTreeConfig, ctx: BuildContext) -> Decoder:
    _check_tree_attention(strategy, ctx)
    document_ids = ctx.document_ids(strategy.name)
    shape = DynamicShape(width=strategy.width, nodes=strategy.nodes, depth=strategy.depth)
    model_tree = ModelTreeProposer(ctx.level_drafter(strategy.drafter, strategy.vocab_trim, shape.depth), shape)
    proposer = FusedRetrievalTreeProposer(model_tree, document_ids, strategy.k, strategy.max_candidates,
                                          strategy.min_match, strategy.max_match)
    return TreeDecoder(ctx.target, proposer, ctx.sampling, ctx.features)


@builds(HybridTreeConfig)
def _hybrid_tree(strategy: HybridTreeConfig, ctx: BuildContext) -> Decoder:
    """The feature head's EAGLE-2 tree with the context's own earlier continuations (prompt lookup) merged in."""
    _check_tree_attention(strategy, ctx)
    shape = DynamicShape(width=strategy.width, nodes=strategy.nodes, depth=strategy.depth, floor=strategy.min_path_prob)
    model_tree = ModelTreeProposer(ctx.level_drafter(strategy.drafter, strategy.vocab_trim, shape.depth), shape)
    proposer = FusedLookupTreeProposer(model_tree, strategy.k, strategy.max_candidates, strategy.max_ngram,
                                       strategy.min_ngram)
    return TreeDecoder(ctx.target, proposer, ctx.sampling, ctx.features)
