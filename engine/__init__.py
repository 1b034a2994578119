"""SpecViz's speculative-decoding engine. Knows nothing of Gradio, plotly or SQLite."""

from .api import RunResult, build_decoder, check_max_new_tokens, encode_prompt, run_to_completion
from .decoding import SpeculativeDecoder
from .errors import ConfigError, EngineError, ModelLoadError, PromptError, SpecVizError
from .events import DraftedToken, LengthDecision, NewToken, OutputToken, PhaseTimings, StepEvent, TokenCandidate
from .metrics import RunMetrics
from .models import EMBEDDED_DEFAULT, LoadedModel, ModelCache, early_exit_drafter, load_model
from .sampling import SamplingConfig, logits_to_probs
from .strategies import STRATEGIES, StrategyConfig, describe_strategies, parse_strategy

__all__ = [
    "ConfigError", "DraftedToken", "EMBEDDED_DEFAULT", "EngineError", "LengthDecision", "LoadedModel",
    "ModelCache", "ModelLoadError", "NewToken", "OutputToken", "PhaseTimings", "PromptError", "RunMetrics",
    "RunResult", "STRATEGIES", "SamplingConfig", "SpecVizError", "SpeculativeDecoder", "StepEvent",
    "StrategyConfig", "TokenCandidate", "build_decoder", "check_max_new_tokens",
    "describe_strategies", "early_exit_drafter", "encode_prompt", "load_model", "logits_to_probs",
    "parse_strategy", "run_to_completion",
]
