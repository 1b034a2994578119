"""Model loading: errors a person can act on, tokenizer checks, early exit, the embedded cache."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_VOCAB, FakeTokenizer, make_tiny_llama, make_tiny_loaded
from engine import EMBEDDED_DEFAULT, LoadedModel, ModelCache, ModelLoadError, early_exit_drafter, load_model
from engine.loading.models import check_same_tokenizer, default_cache_dir, load_embedded_default


# --------------------------------------------------------------------------- load_model errors


@pytest.mark.parametrize("spec", ["./no/such/folder", "/no/such/folder", "no/such/folder", "~/no-such-folder-xyz", "model.gguf"])
def test_missing_folder_names_the_path(spec):
    with pytest.raises(ModelLoadError) as info:
        load_model(spec)
    assert spec in str(info.value)
    assert "not found" in str(info.value)


def test_unknown_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # make sure no local folder of that name exists
    spec = "specviz-tests/no-such-model-anywhere"
    with pytest.raises(ModelLoadError) as info:
        load_model(spec)
    assert spec in str(info.value)
    assert "offline" in str(info.value)


def test_folder_without_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECVIZ_CACHE_DIR", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SPECVIZ_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "specviz"


# --------------------------------------------------------------------------- LoadedModel


def test_loaded_model_window_and_eos():
    model = make_tiny_llama(0)
    assert LoadedModel("m", model, FakeTokenizer(TINY_VOCAB)).context_window == 64
    assert LoadedModel("m", model, FakeTokenizer(TINY_VOCAB)).eos_token_ids == set()
    assert LoadedModel("m", model, FakeTokenizer(TINY_VOCAB, eos_token_id=5)).eos_token_ids == {5}
    other = make_tiny_llama(0)
    other.config.eos_token_id = [3, 4]
    other.generation_config.eos_token_id = 7
    assert LoadedModel("m", other, FakeTokenizer(TINY_VOCAB, eos_token_id=5)).eos_token_ids == {3, 4, 5, 7}
    assert LoadedModel("m", other, None).eos_token_ids == {3, 4, 7}


# --------------------------------------------------------------------------- same tokenizer


def test_check_same_tokenizer():
    target = make_tiny_loaded(0)
    check_same_tokenizer(target, make_tiny_loaded(1, num_layers=2))  # same vocabulary: fine

    renamed = LoadedModel("renamed-vocab", make_tiny_llama(1), FakeTokenizer(TINY_VOCAB, prefix="w"))
    with pytest.raises(ModelLoadError, match="different tokenizer") as info:
        check_same_tokenizer(target, renamed)
    assert "renamed-vocab" in str(info.value) and target.name in str(info.value)

    bigger = make_tiny_loaded(2, vocab_size=TINY_VOCAB + 8)
    with pytest.raises(ModelLoadError, match="different tokenizer"):
        check_same_tokenizer(target, bigger)

    # same tokenizer, but an output layer of another size
    wide_head = LoadedModel("wide-head", make_tiny_llama(3, vocab_size=TINY_VOCAB + 4), FakeTokenizer(TINY_VOCAB))
    with pytest.raises(ModelLoadError, match="output layer"):
        check_same_tokenizer(target, wide_head)

    check_same_tokenizer(target, early_exit_drafter(target, 1))  # shares the target's tokenizer (None)


# --------------------------------------------------------------------------- early exit


@pytest.mark.parametrize("layers", [0, -1, 3, 4, 100])
def test_early_exit_layer_out_of_range(layers):
    target = make_tiny_loaded(0)  # 3 layers: valid exits are 1 and 2
    with pytest.raises(ModelLoadError) as info:
        early_exit_drafter(target, layers)
    assert "between 1 and 2" in str(info.value)


def test_early_exit_needs_decoder_layers():
    not_a_decoder = LoadedModel("mlp", torch.nn.Sequential(torch.nn.Linear(2, 2)), None)
    with pytest.raises(ModelLoadError, match="model.layers"):
        early_exit_drafter(not_a_decoder, 1)


@pytest.mark.parametrize("layers", [1, 2])
def test_early_exit_shares_weights_and_computes_the_first_layers(layers):
    target = make_tiny_loaded(0)
    drafter = early_exit_drafter(target, layers)
    assert drafter.name == f"early-exit:{layers}" and drafter.tokenizer is None
    assert len(drafter.model.model.layers) == layers and drafter.model.config.num_hidden_layers == layers
    assert target.model.config.num_hidden_layers == 3  # the target's config is untouched
    assert drafter.model.lm_head.weight.data_ptr() == target.model.lm_head.weight.data_ptr()
    assert drafter.model.model.embed_tokens.weight.data_ptr() == target.model.model.embed_tokens.weight.data_ptr()
    for mine, theirs in zip(drafter.model.model.layers, target.model.model.layers):
        assert mine is theirs
    assert not drafter.model.training

    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    with torch.no_grad():
        got = drafter.model(input_ids=ids).logits
        hidden = target.model(input_ids=ids, output_hidden_states=True).hidden_states[layers]
        want = target.model.lm_head(target.model.model.norm(hidden))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # and the full target is still the full target
    with torch.no_grad():
        full = target.model(input_ids=ids).logits
    assert not torch.allclose(full, got)


# --------------------------------------------------------------------------- ModelCache


def test_model_cache_is_a_bounded_lru_loading_each_spec_once():
    loads = []

    def loader(spec, progress=None):
        loads.append(spec)
        return LoadedModel(spec, make_tiny_llama(len(loads)), FakeTokenizer(TINY_VOCAB))

    cache = ModelCache(max_models=2, loader=loader)
    a = cache.get("a")
    assert cache.get("a") is a
    cache.get("b")
    cache.get("a")  # a becomes the most recent
    cache.get("c")  # evicts b
    assert len(cache) == 2 and loads == ["a", "b", "c"]
    cache.get("b")
    assert loads == ["a", "b", "c", "b"]
    assert cache.get("") is cache.get(EMBEDDED_DEFAULT)  # empty spec means the embedded default
    assert loads[-1] == EMBEDDED_DEFAULT and loads.count(EMBEDDED_DEFAULT) == 1


def test_model_cache_drafters():
    target = make_tiny_loaded(0)
    other_vocab = LoadedModel("other", make_tiny_llama(1), FakeTokenizer(TINY_VOCAB, prefix="x"))
    cache = ModelCache(loader=lambda spec, progress=None: {"same": make_tiny_loaded(2), "other": other_vocab}[spec])
    assert cache.drafter(target, "early-exit:2").name == "early-exit:2"
    assert cache.drafter(target, "same").name == "tiny-2"
    with pytest.raises(ModelLoadError):
        cache.drafter(target, "other")
    with pytest.raises(ModelLoadError):
        cache.drafter(target, "early-exit:3")


# --------------------------------------------------------------------------- the embedded default's cache folder


@pytest.mark.slow
def test_embedded_default_cache_folder(tmp_path):
    messages: list[str] = []
    first = load_embedded_default(cache_dir=tmp_path, progress=messages.append)
    assert first.name == EMBEDDED_DEFAULT
    assert any("De-quantising" in m for m in messages)

    models_dir = tmp_path / "models"
    folder = models_dir / EMBEDDED_DEFAULT
    marker = folder / "specviz-cache.json"
    assert marker.is_file() and json.loads(marker.read_text())["version"] == 1
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    leftovers = [p.name for p in models_dir.iterdir() if p.name.startswith(f".{EMBEDDED_DEFAULT}")]
    assert leftovers == []
    assert [p.name for p in models_dir.iterdir()] == [EMBEDDED_DEFAULT]

    messages.clear()
    second = load_embedded_default(cache_dir=tmp_path, progress=messages.append)
    assert any("local cache" in m for m in messages) and not any("De-quantising" in m for m in messages)
    assert second.name == EMBEDDED_DEFAULT
    assert second.model is not first.model

    text = "The quick brown fox jumps over the lazy dog."
    ids = first.tokenizer(text)["input_ids"]
    assert second.tokenizer(text)["input_ids"] == ids
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert second.eos_token_ids == first.eos_token_ids and second.context_window == first.context_window
    with torch.inference_mode():
        logits_first = first.model(input_ids=torch.tensor([ids])).logits
        logits_second = second.model(input_ids=torch.tensor([ids])).logits
    assert torch.equal(logits_first, logits_second)
    assert [p.name for p in models_dir.iterdir()] == [EMBEDDED_DEFAULT]
