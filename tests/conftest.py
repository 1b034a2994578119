"""Shared fixtures and helpers for the engine tests.

- Tiny random Llama models (built in-process, no downloads) with a tokenizer-free fake tokenizer.
- The real embedded default model (SmolLM2-135M-Instruct), loaded once per session.
- The project's prompt suite (assets/prompts.jsonl).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path

import pytest
import torch

from engine import EMBEDDED_DEFAULT, LoadedModel, ModelCache
# The goodness-of-fit helpers live in the project (the Sampling lab uses them too); re-exported for the tests.
from specviz.goodness_of_fit import chi_square_critical, chi_square_statistic, total_variation  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPTS_PATH = REPO_ROOT / "assets" / "prompts.jsonl"

# The machines that run this suite have 2 cores, shared by the pytest-xdist workers (pyproject's addopts): each
# worker gets its share, so the processes never spin against each other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads()) // _WORKERS))


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models are dominated by per-call overhead: one thread is as fast and does not spin
    against other processes on a 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- a served explorer


@contextlib.contextmanager
def served_app(models: ModelCache, db_path: Path):
    """The explorer over `models` with a fresh run log at `db_path`, served on a free loopback port: (url, store)."""
    from specviz.store import RunStore
    from specviz.ui import build_app, launch_local

    store = RunStore(db_path)
    demo = build_app(models, store)
    try:
        yield launch_local(demo), store
    finally:
        demo.close()


# --------------------------------------------------------------------------- scheduling

# The longest files first (measured with --durations), so that pytest-xdist's loadfile scheduling never leaves one
# worker alone on a long file at the end. Only when tests run changes, never what they check.
LONGEST_FIRST = (
    "test_feature_heads.py", "test_golden_traces.py", "test_tree_decoding.py", "test_retrieval.py",
    "test_api_client.py", "test_crash_recovery.py", "test_engine_tiny.py", "test_length_policies.py",
    "test_browser.py", "test_pearl.py", "test_diffusion_decoding.py", "test_cli.py", "test_hostile_inputs.py",
    "test_models.py", "test_self_speculation.py", "test_trained_drafters.py", "test_ui_client.py", "test_bench.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: a file keeps its own order


# --------------------------------------------------------------------------- sweeps


def sweep(cases: list, default: list) -> list:
    """Parametrize over `cases`; those not in `default` carry the `exhaustive` marker, so the default run (pyproject's
    addopts) takes `default` and `python -m pytest -m exhaustive` the rest. Each default list keeps every strategy or
    path at least once: a sweep adds settings, never a strategy the default run leaves unproven."""
    missing = [case for case in default if case not in cases]
    assert not missing, f"default cases not among the cases: {missing}"
    return [case if case in default else pytest.param(*(case if isinstance(case, tuple) else (case,)),
                                                      marks=pytest.mark.exhaustive) for case in cases]


# --------------------------------------------------------------------------- prompt suite


def load_prompts(path: Path = PROMPTS_PATH) -> list[dict]:
    """The project's prompt suite: one JSON object per line with id, category, prompt, max_new_tokens."""
    prompts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                prompts.append(json.loads(line))
    return prompts


# --------------------------------------------------------------------------- tiny models


class FakeTokenizer:
    """Just enough of a tokenizer for the engine: decode, get_vocab, eos_token_id.

    Token i decodes to "t{i} " (a prefix other than "t" gives a different vocabulary).
    """

    chat_template = None

    def __init__(self, vocab_size: int, eos_token_id: int | None = None, prefix: str = "t"):
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.prefix = prefix

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens and self.eos_token_id is not None:
            ids = [i for i in ids if i != self.eos_token_id]
        return "".join(f"{self.prefix}{i} " for i in ids)

    def get_vocab(self) -> dict[str, int]:
        return {f"{self.prefix}{i}": i for i in range(self.vocab_size)}

    def __call__(self, text: str, add_special_tokens: bool = False, verbose: bool = False) -> dict[str, list[int]]:
        """Encode what decode writes: "t3 t5 " -> [3, 5] (for documents in retrieval tests)."""
        return {"input_ids": [int(word[len(self.prefix):]) for word in text.split()]}

    def __len__(self) -> int:
        return self.vocab_size


TINY_VOCAB = 16
TINY_WINDOW = 64


def make_tiny_llama(
    seed: int,
    vocab_size: int = TINY_VOCAB,
    hidden_size: int = 32,
    num_layers: int = 3,
    max_position_embeddings: int = TINY_WINDOW,
    init_range: float = 0.3,
) -> torch.nn.Module:
    """A tiny random LlamaForCausalLM in eval mode.

    init_range 0.3 (instead of transformers' 0.02) makes the next-token distributions peaked,
    like a trained model's, rather than almost uniform. No BOS/EOS/PAD ids, so nothing in the
    model's config or generation config stops a run early.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        initializer_range=init_range,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    model.requires_grad_(False)
    return model


def make_tiny_loaded(seed: int, name: str | None = None, eos_token_id: int | None = None, **kwargs) -> LoadedModel:
    model = make_tiny_llama(seed, **kwargs)
    tokenizer = FakeTokenizer(model.config.vocab_size, eos_token_id=eos_token_id)
    return LoadedModel(name or f"tiny-{seed}", model, tokenizer)


@pytest.fixture(scope="session")
def tiny_target() -> LoadedModel:
    """The tiny target: 3 layers, vocab 16, context window 64."""
    loaded = make_tiny_loaded(0, name="tiny-target")
    assert loaded.eos_token_ids == set(), "the tiny target must not stop on EOS unless a test asks for it"
    return loaded


def noisy_copy(loaded: LoadedModel, sigma: float, seed: int, name: str) -> LoadedModel:
    """A second model: a copy of `loaded` with seeded Gaussian noise added to every weight."""
    model = copy.deepcopy(loaded.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * sigma)
    return LoadedModel(name, model, FakeTokenizer(model.config.vocab_size))


@pytest.fixture(scope="session")
def tiny_drafter() -> LoadedModel:
    """A second, independently initialised tiny model (2 layers): a poor drafter, many rejections."""
    return make_tiny_loaded(1, name="tiny-drafter", num_layers=2)


@pytest.fixture(scope="session")
def tiny_noisy_drafter(tiny_target) -> LoadedModel:
    """The target plus small noise: a drafter whose proposals are often, but not always, accepted.

    (An independent random model agrees with the target so rarely that, at temperature 0.7 with
    top-k / top-p, nothing would ever be accepted.)
    """
    return noisy_copy(tiny_target, sigma=0.03, seed=1, name="tiny-noisy-drafter")


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="session")
def model_cache() -> ModelCache:
    return ModelCache()


@pytest.fixture(scope="session")
def real_model(model_cache) -> LoadedModel:
    """The embedded default (first load de-quantises ~30 s, then it comes from ~/.cache/specviz)."""
    return model_cache.get(EMBEDDED_DEFAULT)
