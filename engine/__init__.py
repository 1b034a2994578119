"""SpecViz's speculative-decoding engine. Knows nothing of Gradio, plotly or SQLite."""

from engine.api import RunResult, build_decoder, check_max_new_tokens, encode_prompt, run_to_completion
from engine.decoding.chain import SpeculativeDecoder
from engine.errors import ConfigError, EngineError, ModelLoadError, PromptError, SpecVizError
from engine.events import DraftedToken, LengthDecision, NewToken, OutputToken, PhaseTimings, StepEvent, TokenCandidate
from engine.metrics import RunMetrics
from engine.loading.models import EMBEDDED_DEFAULT, LoadedModel, early_exit_drafter, load_model
from engine.loading.model_cache import ModelCache
from engine.sampling import SamplingConfig, logits_to_probs
from engine.strategies import STRATEGIES, StrategyConfig, describe_strategies, parse_strategy

__all__ = [
    "ConfigError", "DraftedToken", "EMBEDDED_DEFAULT", "EngineError", "LengthDecision", "LoadedModel",
    "ModelCache", "ModelLoadError", "NewToken", "OutputToken", "PhaseTimings", "PromptError", "RunMetrics",
    "RunResult", "STRATEGIES", "SamplingConfig", "SpecVizError", "SpeculativeDecoder", "StepEvent",
    "StrategyConfig", "TokenCandidate", "build_decoder", "check_max_new_tokens",
    "describe_strategies", "early_exit_drafter", "encode_prompt", "load_model", "logits_to_probs",
    "parse_strategy", "run_to_completion",
]
