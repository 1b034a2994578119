"""Training data for feature-level draft heads: token sequences with the target's feature at every position.

Two sources, both read by the target itself (teacher forcing, so the features and the next-token
distributions are exactly what the target computes when it verifies):

1. the target's own answers to the project's training prompts (specviz/training/prompts.py: none from
   the evaluation suite), continued in batches with the target's KV cache (`data._generate_batch`),
   greedily and sampled, chat-templated as at run time;
2. text found offline on this machine: the sources and docstrings of the installed Python packages
   and the standard library (code and technical English), and the long descriptions of installed
   distributions (prose). Windows of `window` tokens.

Every sequence is then run through the target once, in batches (right-padded: a causal model's
padded tail cannot change the positions before it), and its final hidden state at every position is
kept in float16. The file records the settings that made it; `load_or_build` reuses a matching one.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import random
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from engine import LoadedModel
from engine.loading.models import default_cache_dir

from .data import DataConfig, _generate_batch
from .prompts import training_prompts

FEATURE_DATA_FORMAT = 1
LogFn = Callable[[str], None]


@dataclass(frozen=True)
class FeatureDataConfig:
    prompts: int = 574  # training prompts the target answers (all the candidates by default)
    temperatures: tuple[float, ...] = (0.0, 0.8)  # each prompt is answered once per temperature
    max_new_tokens: int = 160
    text_tokens: int = 240_000  # tokens of offline text (package sources, docstrings, descriptions)
    window: int = 256  # offline text is cut into windows of this many tokens
    seed: int = 0
    batch_prompts: int = 32  # prompts decoded together (x temperatures rows)

    def fingerprint(self, target_name: str) -> str:
        text = json.dumps({"format": FEATURE_DATA_FORMAT, "target": target_name, **dataclasses.asdict(self)},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class FeatureSequence:
    source: str  # "answer" | "code" | "docs"
    category: str  # the prompt's category for answers; the source for offline text
    prompt_id: str  # answers: the training prompt's id; offline text: the file it came from
    temperature: float  # answers: the temperature the target answered at; text: -1
    prompt_length: int  # answers: chat-templated prompt tokens; text: 0
    ids: torch.Tensor  # [T] int64
    features: torch.Tensor  # [T, H] float16: the target's final hidden state after each token


@dataclass
class FeatureData:
    config: FeatureDataConfig
    target_name: str
    sequences: list[FeatureSequence]
    wall_s: float

    @property
    def tokens(self) -> int:
        return sum(int(s.ids.numel()) for s in self.sequences)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FEATURE_DATA_FORMAT, "config": dataclasses.asdict(self.config),
                   "target_name": self.target_name, "wall_s": self.wall_s,
                   "sequences": [dataclasses.asdict(s) for s in self.sequences]}
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> FeatureData:
        payload = torch.load(path, weights_only=True)
        if payload.get("format") != FEATURE_DATA_FORMAT:
            raise ValueError(f"feature data format {payload.get('format')!r}, expected {FEATURE_DATA_FORMAT}")
        config = payload["config"] | {"temperatures": tuple(payload["config"]["temperatures"])}
        return FeatureData(FeatureDataConfig(**config), payload["target_name"],
                           [FeatureSequence(**s) for s in payload["sequences"]], payload["wall_s"])


def default_path(config: FeatureDataConfig, target_name: str) -> Path:
    safe = target_name.strip("/").replace("/", "--")
    return default_cache_dir() / "training" / f"{safe}-features-{config.fingerprint(target_name)}.pt"


def load_or_build(target: LoadedModel, config: FeatureDataConfig, path: Path | None, log: LogFn) -> FeatureData:
    """Reuse the data file at `path` (default: the cache) if its settings match; else build and save it."""
    path = path or default_path(config, target.name)
    if path.is_file():
        try:
            data = FeatureData.load(path)
        except Exception as exc:  # an unreadable file is rebuilt, whatever the reason
            log(f"Feature data {path} is unreadable ({exc}); building it again")
        else:
            if data.target_name == target.name and data.config == config:
                log(f"Reusing feature data {path} ({len(data.sequences)} sequences, {data.tokens} tokens)")
                return data
            log(f"Feature data {path} was made with other settings; building it again")
    data = build(target, config, log)
    data.save(path)
    log(f"Saved feature data to {path}")
    return data


def build(target: LoadedModel, config: FeatureDataConfig, log: LogFn) -> FeatureData:
    start = time.perf_counter()
    answers = target_answers(target, config, log)
    texts = offline_text(target, config, log)
    sequences = attach_features(target, answers + texts)
    data = FeatureData(config, target.name, sequences, time.perf_counter() - start)
    log(f"Built {len(sequences)} sequences ({len(answers)} answers, {len(texts)} text windows), {data.tokens} tokens "
        f"with features, in {data.wall_s:.0f} s")
    return data


def target_answers(target: LoadedModel, config: FeatureDataConfig, log: LogFn) -> list[FeatureSequence]:
    """The target's own answers to the training prompts, at every temperature (features attached later)."""
    decode = DataConfig(prompts=config.prompts, max_new_tokens=config.max_new_tokens, temperatures=config.temperatures,
                        top_k=1, seed=config.seed, batch_prompts=config.batch_prompts)
    generator = torch.Generator().manual_seed(config.seed)
    prompts = training_prompts(config.prompts, config.seed)
    prompts.sort(key=lambda p: len(p.text))  # similar lengths together: less padding
    batches = [prompts[i : i + config.batch_prompts] for i in range(0, len(prompts), config.batch_prompts)]
    log(f"The target answers {len(prompts)} training prompts at temperatures {list(config.temperatures)} "
        f"(up to {config.max_new_tokens} tokens, batches of {config.batch_prompts} prompts)")
    out: list[FeatureSequence] = []
    with tqdm(total=len(prompts) * len(config.temperatures), desc="target answers", unit="seq") as bar:
        for batch in batches:
            for s in _generate_batch(target, batch, decode, generator):
                out.append(FeatureSequence("answer", s.category, s.prompt_id, s.temperature, s.prompt_length, s.ids,
                                           torch.empty(0)))
            bar.update(len(batch) * len(config.temperatures))
            bar.set_postfix(tokens=sum(int(s.ids.numel()) for s in out))
    return out


def _text_files(seed: int) -> list[Path]:
    """Python sources of the standard library and installed packages, plus distribution METADATA files, shuffled."""
    roots = {Path(sysconfig.get_paths()[key]) for key in ("stdlib", "purelib", "platlib")}
    files: set[Path] = set()
    for root in roots:
        if root.is_dir():
            files.update(root.rglob("*.py"))
            files.update(root.rglob("*.dist-info/METADATA"))
    # the project's own code (an editable install may expose it) never goes into its training data
    ordered = sorted(p for p in files if not {"engine", "specviz", "tests"} & set(p.parts))
    random.Random(seed).shuffle(ordered)
    return ordered


def _pieces(path: Path) -> list[tuple[str, str]]:
    """(kind, text) pieces of one file: a METADATA description is "docs"; a source file gives its docstrings
    ("docs") and its code ("code")."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    if path.name == "METADATA":
        body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
        return [("docs", body)] if len(body) > 400 else []
    pieces = [("code", text)]
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return pieces
    docs = [ast.get_docstring(node) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    prose = "\n\n".join(d for d in docs if d and len(d) > 80)
    return pieces + ([("docs", prose)] if prose else [])


def offline_text(target: LoadedModel, config: FeatureDataConfig, log: LogFn) -> list[FeatureSequence]:
    """Windows of offline text, half code and half prose, until `text_tokens` tokens (features attached later)."""
    budget = {"code": config.text_tokens // 2, "docs": config.text_tokens - config.text_tokens // 2}
    out: list[FeatureSequence] = []
    for path in _text_files(config.seed):
        if all(v <= 0 for v in budget.values()):
            break
        for kind, text in _pieces(path):
            if budget[kind] <= 0:
                continue
            ids = target.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            for start in range(0, len(ids) - config.window // 4, config.window):
                window = ids[start : start + config.window]
                out.append(FeatureSequence(kind, kind, path.name, -1.0, 0, torch.tensor(window, dtype=torch.long),
                                           torch.empty(0)))
                budget[kind] -= len(window)
                if budget[kind] <= 0:
                    break
    log(f"Offline text: {len(out)} windows of up to {config.window} tokens "
        f"({sum(int(s.ids.numel()) for s in out)} tokens of package sources, docstrings and descriptions)")
    return out


@torch.inference_mode()
def attach_features(target: LoadedModel, sequences: list[FeatureSequence], batch: int = 8) -> list[FeatureSequence]:
    """Run the target over every sequence (right-padded batches of similar length); keep its features [T, H] fp16."""
    order = sorted(range(len(sequences)), key=lambda i: int(sequences[i].ids.numel()))
    inner = target.model.get_decoder()
    with tqdm(total=sum(int(s.ids.numel()) for s in sequences), desc="target features", unit="tok") as bar:
        for first in range(0, len(order), batch):
            chunk = [sequences[i] for i in order[first : first + batch]]
            width = max(int(s.ids.numel()) for s in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, s in enumerate(chunk):
                ids[row, : s.ids.numel()] = s.ids
            hidden = inner(input_ids=ids).last_hidden_state  # [B, W, H], the final norm applied
            for row, s in enumerate(chunk):
                s.features = hidden[row, : s.ids.numel()].half().clone()
            bar.update(sum(int(s.ids.numel()) for s in chunk))
    return sequences


def split_heldout(data: FeatureData, fraction: float, seed: int) -> tuple[list[FeatureSequence], list[FeatureSequence]]:
    """Hold out every sequence of a seeded `fraction` of the answered prompts (per category) and of the text files."""
    rng = random.Random(seed)
    keys = sorted({(s.category, s.prompt_id) for s in data.sequences})
    by_category: dict[str, list[tuple[str, str]]] = {}
    for key in keys:
        by_category.setdefault(key[0], []).append(key)
    held = set()
    for group in by_category.values():
        rng.shuffle(group)
        held.update(group[: max(1, round(len(group) * fraction))])
    train = [s for s in data.sequences if (s.category, s.prompt_id) not in held]
    heldout = [s for s in data.sequences if (s.category, s.prompt_id) in held]
    return train, heldout

