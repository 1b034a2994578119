"""Building a decoder from a strategy config, encoding prompts, and the non-streaming API.

`run_to_completion` consumes the same event stream the UI and the SQLite log consume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .decoding import SpeculativeDecoder
from .errors import ConfigError, PromptError
from .events import StepEvent
from .metrics import RunMetrics
from .pearl import PearlDecoder
from .models import LoadedModel, ModelCache
from .policies import (
    AcceptanceFeedbackLength,
    AcceptancePredictorStop,
    ConfidenceStop,
    DiffusionDraftLength,
    ConstantLength,
    DraftLengthPolicy,
    HeuristicLength,
    TrainedPredictor,
)
from .proposers import AdaptiveNgramProposer, DraftModelProposer, PromptLookupProposer
from .proposers.diffusion import DiffusionProposer
from .proposers.dynamic_exit import DynamicExitProposer
from .diffusion_drafter import load_diffusion_drafter
from .token_lattice import DrafterCausalScorer, NgramCausalScorer
from .trained_drafters import kangaroo_agreement, load_acceptance_predictor
from .proposers.retrieval import RetrievalProposer
from .proposers.cross_vocab import CrossVocabProposer
from .proposers.lookup_trees import FusedRetrievalTreeProposer, LookupTreeProposer
from .proposers.model_trees import ModelTreeProposer, parse_branching
from .tree_decoding import TreeDecoder
from .sampling import SamplingConfig
from .strategies import (
    AdaptiveNgramConfig,
    AutoregressiveConfig,
    ChainDrafting,
    CrossVocabConfig,
    DiffusionDraftingConfig,
    DraftModelConfig,
    DynamicExitConfig,
    DynamicTreeConfig,
    EarlyExitConfig,
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
from .strategies import IN_DRAFT_POLICIES, KANGAROO_PREFIX

MAX_NEW_TOKENS_LIMIT = 4096


def check_max_new_tokens(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_NEW_TOKENS_LIMIT:
        raise ConfigError("max_new_tokens", f"must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}], got {value!r}")
    return value


def encode_prompt(tokenizer, prompt: str, raw: bool = False) -> list[int]:
    """Token ids for a prompt: the chat template with one user message, unless raw or no template."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty")
    if not raw and getattr(tokenizer, "chat_template", None):
        return list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


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


def build_decoder(
    strategy: StrategyConfig,
    target: LoadedModel,
    models: ModelCache,
    sampling: SamplingConfig,
    progress=None,
    *,
    document: str | None = None,
) -> SpeculativeDecoder:
    """Wire a strategy config to a proposer and a draft-length policy.

    `document`: the text a retrieval strategy (rasd) drafts from; other strategies ignore it.
    """
    if isinstance(strategy, AutoregressiveConfig):
        return SpeculativeDecoder(target, None, None, sampling)
    if isinstance(strategy, DynamicExitConfig):
        return _dynamic_exit_decoder(strategy, target, models, sampling)
    if isinstance(strategy, (ModelTreeDrafting, LookupTreeConfig)):
        return _tree_decoder(strategy, target, models, sampling, progress, document)
    if isinstance(strategy, DiffusionDraftingConfig):
        return _diffusion_decoder(strategy, target, models, sampling, progress)
    if isinstance(strategy, PearlConfig):
        drafter = models.drafter(target, strategy.drafter, progress=progress, vocab_trim=strategy.vocab_trim)
        return PearlDecoder(target, drafter.model, strategy.gamma, sampling)
    assert isinstance(strategy, ChainDrafting)
    trained = None
    if strategy.length_policy == "specdec" and isinstance(strategy, (DraftModelConfig, EarlyExitConfig, KangarooConfig)):
        trained = load_acceptance_predictor(target.name, strategy.drafter, strategy.vocab_trim)
    policy = length_policy(strategy, trained)
    stop_rule = policy if strategy.length_policy in IN_DRAFT_POLICIES else None
    if isinstance(strategy, (DraftModelConfig, EarlyExitConfig, KangarooConfig)):
        drafter = models.drafter(target, strategy.drafter, progress=progress, vocab_trim=strategy.vocab_trim)
        stop_below = strategy.stop_below if isinstance(strategy, KangarooConfig) else 0.0
        return SpeculativeDecoder(target, DraftModelProposer(drafter.model, stop_below, stop_rule), policy, sampling)
    if stop_rule is not None:
        raise ConfigError(
            "length_policy",
            f"{strategy.length_policy} stops drafting on the drafter's probabilities, which only model drafters "
            f"(draft_model, early_exit, kangaroo) have; {strategy.name} cannot use it",
        )
    if isinstance(strategy, PromptLookupConfig):
        return SpeculativeDecoder(target, PromptLookupProposer(strategy.max_ngram, strategy.min_ngram), policy, sampling)
    if isinstance(strategy, AdaptiveNgramConfig):
        proposer = AdaptiveNgramProposer(
            strategy.max_ngram, strategy.min_ngram, strategy.exploration, strategy.min_confidence, decode=target.tokenizer.decode
        )
        return SpeculativeDecoder(target, proposer, policy, sampling)
    if isinstance(strategy, RetrievalConfig):
        if document is None or not document.strip():
            raise ConfigError("document", "rasd drafts from a document: attach one (paste its text or upload a text file)")
        drafter = models.drafter(target, strategy.drafter, progress=progress, vocab_trim=strategy.vocab_trim)
        document_ids = list(target.tokenizer(document, add_special_tokens=False, verbose=False)["input_ids"])
        proposer = RetrievalProposer(
            drafter.model, document_ids, target.tokenizer.decode, strategy.tau, strategy.max_candidates,
            strategy.min_match, strategy.max_match, strategy.drafter_tokens, drafter_name=strategy.drafter, stop_below=strategy.stop_below,
        )
        return SpeculativeDecoder(target, proposer, policy, sampling)
    if isinstance(strategy, CrossVocabConfig):
        if not sampling.greedy:
            raise ConfigError(
                "temperature",
                "cross-vocabulary drafting is greedy-only here: its drafter has no probabilities over the target's "
                "vocabulary, so sampled drafts could not be verified losslessly; use temperature 0",
            )
        drafter = models.get(strategy.drafter, progress=progress)
        if drafter.tokenizer is None:
            raise ConfigError("drafter", f"{strategy.drafter!r} has no tokenizer of its own")
        return SpeculativeDecoder(target, CrossVocabProposer(drafter.model, drafter.tokenizer, target.tokenizer), policy, sampling)
    raise ConfigError("strategy", f"no builder for strategy {strategy.name!r}")


def _tree_decoder(strategy: StrategyConfig, target: LoadedModel, models: ModelCache, sampling: SamplingConfig,
                  progress, document: str | None) -> TreeDecoder:
    """Tree strategies: a tree proposer and the one-pass tree verifier."""
    if "sliding_attention" in (getattr(target.model.config, "layer_types", None) or ()):
        raise ConfigError("strategy", f"{strategy.name} verifies a tree with tree attention, which needs full-attention "
                                      f"layers; {target.name} has sliding-window layers: use a chain strategy")
    if isinstance(strategy, LookupTreeConfig):
        proposer = LookupTreeProposer(strategy.max_ngram, strategy.min_ngram, strategy.max_candidates, strategy.k)
        return TreeDecoder(target, proposer, sampling)
    assert isinstance(strategy, ModelTreeDrafting)
    if isinstance(strategy, RasdTreeConfig) and (document is None or not document.strip()):
        raise ConfigError("document", "rasd_tree drafts from a document: attach one (paste its text or upload a text file)")
    drafter = models.drafter(target, strategy.drafter, progress=progress, vocab_trim=strategy.vocab_trim).model
    if isinstance(strategy, StaticTreeConfig):
        proposer = ModelTreeProposer(drafter, "static", branching=parse_branching(strategy.branching))
    elif isinstance(strategy, RsdConfig):
        proposer = ModelTreeProposer(drafter, "rsd", branching=parse_branching(strategy.branching))
    elif isinstance(strategy, SpecTrConfig):
        proposer = ModelTreeProposer(drafter, "spectr", depth=strategy.depth, drafts=strategy.drafts)
    else:
        assert isinstance(strategy, DynamicTreeConfig)
        proposer = ModelTreeProposer(drafter, "dynamic", width=strategy.width, nodes=strategy.nodes, depth=strategy.depth)
    if isinstance(strategy, RasdTreeConfig):
        document_ids = list(target.tokenizer(document, add_special_tokens=False, verbose=False)["input_ids"])
        proposer = FusedRetrievalTreeProposer(proposer, document_ids, strategy.k, strategy.max_candidates,
                                              strategy.min_match, strategy.max_match)
    return TreeDecoder(target, proposer, sampling)


def _diffusion_decoder(strategy: DiffusionDraftingConfig, target: LoadedModel, models: ModelCache,
                       sampling: SamplingConfig, progress) -> SpeculativeDecoder:
    """Diffusion drafting: the target's trained diffusion drafter, a lattice path search and ADL."""
    drafter = load_diffusion_drafter(target, vocab_trim=strategy.vocab_trim)
    block = drafter.config.block
    if strategy.max_k > block:
        raise ConfigError("max_k", f"the diffusion drafter fills {block} positions per pass; max_k must be <= {block}, "
                                   f"got {strategy.max_k}")
    scorer = None
    if strategy.search == "cps":
        scorer = (NgramCausalScorer() if strategy.causal == "ngram" else DrafterCausalScorer(
            models.drafter(target, strategy.drafter, progress=progress, vocab_trim=strategy.vocab_trim).model))
    policy = (DiffusionDraftLength(strategy.k, strategy.max_k) if strategy.length_policy == "adl"
              else ConstantLength(strategy.k))
    proposer = DiffusionProposer(
        drafter, block, strategy.search, scorer, strategy.causal_weight, strategy.beam, strategy.candidates,
        target.eos_token_ids, policy if isinstance(policy, DiffusionDraftLength) else None,
    )
    return SpeculativeDecoder(target, proposer, policy, sampling)


def _dynamic_exit_decoder(
    strategy: DynamicExitConfig, target: LoadedModel, models: ModelCache, sampling: SamplingConfig
) -> SpeculativeDecoder:
    """DEL over the target's trained Kangaroo adapters (all of them, or the requested exit layers)."""
    trained = kangaroo_agreement(target)  # exit layer -> held-out agreement, the prior acceptance
    layers = strategy.layers() or sorted(trained)
    missing = [layer for layer in layers if layer not in trained]
    if missing or not layers:
        raise ConfigError(
            "exit_layers",
            f"no trained Kangaroo adapter for exit layer(s) {', '.join(map(str, missing)) or '(none trained)'}; "
            f"trained: {', '.join(map(str, sorted(trained))) or 'none'}",
        )
    drafters = {
        layer: models.drafter(target, f"{KANGAROO_PREFIX}{layer}", vocab_trim=strategy.vocab_trim).model
        for layer in layers
    }
    proposer = DynamicExitProposer(
        drafters, {layer: trained[layer] for layer in layers}, len(target.model.model.layers), strategy.max_k,
        stop_below=strategy.stop_below,
    )
    return SpeculativeDecoder(target, proposer, proposer, sampling)


@dataclass
class RunResult:
    token_ids: list[int]
    text: str
    stop_reason: str | None
    metrics: RunMetrics
    events: list[StepEvent] = field(repr=False)


def run_to_completion(decoder: SpeculativeDecoder, prompt_ids: list[int], max_new_tokens: int) -> RunResult:
    events = list(decoder.generate(prompt_ids, check_max_new_tokens(max_new_tokens)))
    ids = [t.token_id for e in events for t in e.new_tokens]
    text = decoder.target.tokenizer.decode(ids, skip_special_tokens=True)
    return RunResult(ids, text, events[-1].stop_reason if events else None, RunMetrics.from_events(events), events)
