"""The masked-diffusion drafter and `specviz train-diffusion`.

- block_logits: shape, the context window, bidirectional attention (a causal mask would be
  caught), left padding that changes nothing;
- save / load round trip (identical logits, shared modules not stored) and clear load errors;
- training on tiny synthetic data lowers the loss; the held-out acceptance counts accepted prefixes;
- the hub adapter's vocabulary check and logit positions (on a tiny stand-in model, no download);
- `specviz train-diffusion`: usage errors, and a tiny-budget run on the real model (slow).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import TINY_VOCAB, FakeTokenizer, make_tiny_llama, make_tiny_loaded
from engine import ConfigError, LoadedModel, ModelLoadError, encode_prompt
from engine.drafting import diffusion_drafter
from engine.loading.vocab_trim import masked_logit
from engine.drafting.diffusion_drafter import (
    DiffusionConfig,
    HubDiffusionDrafter,
    block_attention_mask,
    load_diffusion_drafter,
    new_diffusion_drafter,
    read_diffusion_config,
    save_diffusion_drafter,
)
from specviz import cli
from specviz.training import diffusion
from specviz.training.data import Sequence
from specviz.training.distill import RunLog

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread is as fast, and spins less

CONFIG = DiffusionConfig(context=8, block=4, source_layers=(0, 2))
CONTEXT = [3, 5, 7, 11, 2, 9]


@pytest.fixture(scope="module")
def drafter(tiny_target):
    return new_diffusion_drafter(tiny_target, CONFIG)


def _differs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[L] whether each block position's logits changed."""
    return (a - b).abs().amax(-1) > 1e-5


# --------------------------------------------------------------------------- the forward pass


def test_block_logits_shape_and_window(drafter):
    logits = drafter.block_logits(CONTEXT, 4)
    assert logits.shape == (4, TINY_VOCAB) and logits.dtype == torch.float32
    # a shorter request returns the first rows of the same drafts
    torch.testing.assert_close(drafter.block_logits(CONTEXT, 2), logits[:2])
    # only the last W = 8 context tokens count
    long = [1, 2, 3, 4] + CONTEXT + [6, 6]
    changed = [15, 15, 15, 15] + CONTEXT + [6, 6]
    torch.testing.assert_close(drafter.block_logits(long, 4), drafter.block_logits(changed, 4), rtol=0, atol=0)
    for length, context in ((5, CONTEXT), (0, CONTEXT), (2, [])):
        with pytest.raises(ConfigError):
            drafter.block_logits(context, length)


def test_the_context_reaches_every_block_position(drafter):
    base = drafter.block_logits(CONTEXT, 4)
    first, last = [12] + CONTEXT[1:], CONTEXT[:-1] + [12]
    assert _differs(drafter.block_logits(first, 4), base).all()
    assert _differs(drafter.block_logits(last, 4), base).all()


def test_attention_is_bidirectional_and_a_causal_mask_would_be_caught(drafter, monkeypatch):
    """With every block position masked, only bidirectional attention lets a later mask position
    change an earlier one: block position 0 must differ between 1 and 4 mask positions. The same
    check on a causal mask finds no difference."""
    ids = torch.tensor([CONTEXT])
    keys = torch.ones_like(ids, dtype=torch.bool)

    def first_position_depends_on_later_masks() -> bool:
        with torch.no_grad():
            alone, followed = drafter.hidden(ids, keys, block=1)[0, 0], drafter.hidden(ids, keys, block=4)[0, 0]
        return bool((alone - followed).abs().max() > 1e-5)

    assert first_position_depends_on_later_masks()

    def causal(key_mask, dtype):
        n = key_mask.shape[1]
        future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        return block_attention_mask(key_mask, dtype).masked_fill(future, torch.finfo(dtype).min)

    monkeypatch.setattr(diffusion_drafter, "block_attention_mask", causal)
    assert not first_position_depends_on_later_masks()


def test_attention_mask_hides_only_padding():
    keys = torch.tensor([[False, True, True], [True, True, True]])
    mask = block_attention_mask(keys, torch.float32)  # [2, 1, 3, 3]
    assert mask.shape == (2, 1, 3, 3)
    assert (mask[0, 0, :, 0] == torch.finfo(torch.float32).min).all() and (mask[0, 0, :, 1:] == 0).all()
    assert (mask[1] == 0).all()


def test_left_padding_changes_nothing(drafter):
    short, full = [7, 11, 2], [1, 3, 5, 7, 11, 2]
    ids = torch.tensor([[0, 0, 0] + short, full])
    keys = torch.tensor([[False] * 3 + [True] * 3, [True] * 6])
    with torch.no_grad():
        batched = drafter.hidden(ids, keys)
        alone = drafter.hidden(torch.tensor([short]), torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(batched[0], alone[0])


# --------------------------------------------------------------------------- storing and loading


def test_save_load_round_trip_gives_identical_logits(tmp_path, tiny_target):
    drafter = new_diffusion_drafter(tiny_target, CONFIG)
    with torch.no_grad():  # float16 storage: make the weights exactly representable first
        for tensor in drafter.state_dict().values():
            tensor.copy_(tensor.half().float())
    save_diffusion_drafter(drafter, tiny_target, tmp_path, {"command": "test"})
    loaded = load_diffusion_drafter(tiny_target, tmp_path)
    assert loaded.config == CONFIG
    assert torch.equal(loaded.block_logits(CONTEXT, 4), drafter.block_logits(CONTEXT, 4))
    # the target's modules are shared, not stored
    inner = tiny_target.model.model
    assert loaded.shared.embed is inner.embed_tokens and loaded.shared.head is tiny_target.model.lm_head
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "diffusion.safetensors"))
    assert {k.split(".")[0] for k in stored} == {"layers", "norm", "mask_embedding"}
    config = read_diffusion_config(tmp_path)
    assert config["kind"] == "diffusion" and config["block"] == 4 and config["command"] == "test"


def test_load_errors(tmp_path, tiny_target, drafter):
    with pytest.raises(ModelLoadError, match="no diffusion drafter in .*specviz train-diffusion"):
        load_diffusion_drafter(tiny_target, tmp_path / "nothing")
    with pytest.raises(ModelLoadError, match="no diffusion drafter"):
        load_diffusion_drafter(tiny_target)  # nothing shipped for the tiny target
    save_diffusion_drafter(drafter, tiny_target, tmp_path)
    with pytest.raises(ModelLoadError, match="made for another target"):
        load_diffusion_drafter(make_tiny_loaded(5, hidden_size=48), tmp_path)
    config = json.loads((tmp_path / "diffusion.json").read_text())
    (tmp_path / "diffusion.json").write_text(json.dumps(config | {"source_layers": [0, 1, 2]}))
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_diffusion_drafter(tiny_target, tmp_path)
    (tmp_path / "diffusion.json").write_text(json.dumps(config | {"format": 99}))
    with pytest.raises(ModelLoadError, match="format 99"):
        load_diffusion_drafter(tiny_target, tmp_path)
    (tmp_path / "diffusion.json").write_text(json.dumps(config))
    (tmp_path / "diffusion.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="unreadable diffusion drafter"):
        load_diffusion_drafter(tiny_target, tmp_path)


def test_bad_sizes_are_refused(tiny_target):
    with pytest.raises(ConfigError, match="layers"):
        new_diffusion_drafter(tiny_target, DiffusionConfig(8, 4, (0, 3)))
    for context, block, layers in ((0, 4, (0,)), (8, 0, (0,)), (8, 65, (0,)), (8, 4, ())):
        with pytest.raises(ConfigError):
            DiffusionConfig(context, block, layers)


# --------------------------------------------------------------------------- training and evaluation


def _sequence(prompt: list[int], continuation: list[int], temperature: float = 0.0) -> Sequence:
    """A target sequence whose teacher puts most of its mass on the continuation's own tokens."""
    top_ids = torch.tensor([[t, (t + 1) % TINY_VOCAB, (t + 2) % TINY_VOCAB] for t in continuation])
    top_logprobs = torch.log_softmax(torch.tensor([[4.0, 0.0, -1.0]] * len(continuation)), -1).half()
    return Sequence("p", "test", temperature, len(prompt), torch.tensor(prompt + continuation), top_ids, top_logprobs)


def _counting_sequences(n: int, generator: torch.Generator) -> list[Sequence]:
    """Continuations that count up by 3 (mod 16) from a random prompt's last token: learnable from the context."""
    out = []
    for _ in range(n):
        prompt = torch.randint(0, TINY_VOCAB, (4,), generator=generator).tolist()
        out.append(_sequence(prompt, [(prompt[-1] + 3 * (j + 1)) % TINY_VOCAB for j in range(10)]))
    return out


def test_make_blocks_cuts_context_and_block():
    s = _sequence([1, 2], [3, 4, 5])  # [p0 p1 | c0 c1 c2]
    blocks = diffusion.make_blocks([s], [(0, 1), (0, 0)], context=2, block=3)
    assert blocks.context.tolist() == [[2, 3], [1, 2]] and blocks.key_mask.all()
    assert blocks.valid.tolist() == [[True, True, False], [True, True, True]]
    assert blocks.top_ids[0, :2, 0].tolist() == [4, 5] and blocks.top_ids[1, :, 0].tolist() == [3, 4, 5]
    short = diffusion.make_blocks([s], [(0, 0), (0, 2)], context=8, block=1)  # contexts of 2 and 4 tokens
    assert short.context.tolist() == [[0, 0, 1, 2], [1, 2, 3, 4]]
    assert short.key_mask.tolist() == [[False, False, True, True], [True] * 4]
    assert diffusion.block_starts([s, _sequence([1], [3, 4])], block=2) == [(0, 0), (0, 1), (1, 0)]
    assert diffusion.position_weights(4, 0.5).tolist() == [1.0, 0.5, 0.25, 0.125]


def test_training_lowers_the_loss(tmp_path, tiny_target):
    generator = torch.Generator().manual_seed(0)
    train_set, probe = _counting_sequences(24, generator), _counting_sequences(8, generator)
    drafter = new_diffusion_drafter(tiny_target, CONFIG)
    keep, slot = diffusion.training_vocabulary(torch.arange(TINY_VOCAB), TINY_VOCAB)
    head, weights = tiny_target.model.lm_head.weight[keep], diffusion.position_weights(4, 0.8)
    probe_blocks = diffusion.make_blocks(probe, diffusion.block_starts(probe), CONFIG.context, CONFIG.block)

    def probe_loss() -> float:
        with torch.no_grad():
            return diffusion.block_loss(drafter, probe_blocks, head, slot, weights)[0].item()

    before = probe_loss()
    config = diffusion.DiffusionTrainConfig(steps=60, batch=16, lr=1e-2, warmup_steps=5, train_vocab=TINY_VOCAB)
    log = RunLog(tmp_path / "log.txt", stream=open(os.devnull, "w"))
    stats = diffusion.train(drafter, train_set, torch.arange(TINY_VOCAB), config, torch.Generator().manual_seed(0), log,
                            progress=False)
    assert probe_loss() < 0.7 * before, (before, probe_loss())
    assert stats["final_loss"] < stats["first_loss"] and stats["steps"] == 60
    assert not any(p.requires_grad for p in drafter.parameters()) and not drafter.training
    assert "step 60/60" in (tmp_path / "log.txt").read_text()


def test_heldout_acceptance_counts_accepted_prefixes(drafter):
    prompt = [3, 5, 7]
    guess = drafter.block_logits(prompt, 4).argmax(-1).tolist()
    agreeing = _sequence(prompt, guess)
    result = diffusion.heldout_acceptance(drafter, [agreeing], stride=1)
    assert result == {"per_position": [1.0, 1.0, 1.0, 1.0], "mean_accepted": 4.0, "blocks": 1}
    wrong_third = guess[:2] + [(guess[2] + 1) % TINY_VOCAB, guess[3]]
    assert diffusion.heldout_acceptance(drafter, [_sequence(prompt, wrong_third)], stride=1)["per_position"] == [1.0, 1.0, 0.0, 0.0]
    sampled = _sequence(prompt, guess, temperature=1.0)  # only greedy continuations count
    assert diffusion.heldout_acceptance(drafter, [sampled], stride=1)["blocks"] == 0


def test_replace_section_keeps_the_rest_of_the_card():
    card = "# A\n\n## B\nold\n\n## C\nc\n"
    assert diffusion.replace_section(card, "## B", "## B\nnew\n") == "# A\n\n## B\nnew\n\n## C\nc\n"
    assert diffusion.replace_section("# A\n", "## B", "## B\nnew\n") == "# A\n\n## B\nnew\n"
    once = diffusion.replace_section("# A\n", "## B", "## B\nx\n")
    assert diffusion.replace_section(once, "## B", "## B\ny\n") == "# A\n\n## B\ny\n"


# --------------------------------------------------------------------------- hub adapter (no download)


def _stand_in(vocab_size: int, prefix: str = "t") -> tuple[torch.nn.Module, FakeTokenizer]:
    """A tiny model standing in for a hub diffusion LM: the target's tokens, then a mask token."""
    return make_tiny_llama(7, vocab_size=vocab_size), FakeTokenizer(vocab_size, prefix=prefix)


def test_hub_adapter_returns_the_mask_positions_in_the_target_vocabulary(tiny_target):
    model, tokenizer = _stand_in(TINY_VOCAB + 1)  # id 16 is the mask token
    ids = torch.tensor([CONTEXT + [TINY_VOCAB] * 3])
    with torch.no_grad():
        full = model(input_ids=ids).logits[0]  # [9, 17]
    own = HubDiffusionDrafter(tiny_target, model, tokenizer, mask_token_id=TINY_VOCAB)
    torch.testing.assert_close(own.block_logits(CONTEXT, 3), full[6:9, :TINY_VOCAB])
    shifted = HubDiffusionDrafter(tiny_target, model, tokenizer, mask_token_id=TINY_VOCAB, shifted=True)
    torch.testing.assert_close(shifted.block_logits(CONTEXT, 3), full[5:8, :TINY_VOCAB])
    # a mask id among the target's output rows is never drafted
    inside = HubDiffusionDrafter(tiny_target, model, tokenizer, mask_token_id=4)
    logits = inside.block_logits(CONTEXT, 3)
    assert (logits[:, 4] == masked_logit(torch.float32)).all() and (logits.argmax(-1) != 4).all()


def test_hub_adapter_refuses_another_tokenizer(tiny_target):
    model, tokenizer = _stand_in(TINY_VOCAB + 1, prefix="u")
    with pytest.raises(ModelLoadError, match="different tokenizer"):
        HubDiffusionDrafter(tiny_target, model, tokenizer, mask_token_id=TINY_VOCAB)
    model, tokenizer = _stand_in(TINY_VOCAB + 1)
    with pytest.raises(ModelLoadError, match="no mask token"):
        HubDiffusionDrafter(tiny_target, model, tokenizer)
    small = LoadedModel("small", *_stand_in(TINY_VOCAB - 4))
    with pytest.raises(ModelLoadError, match="predicts 12 tokens"):
        HubDiffusionDrafter(tiny_target, small.model, FakeTokenizer(TINY_VOCAB), mask_token_id=3)


# --------------------------------------------------------------------------- the command


@pytest.mark.parametrize("args, needle", [
    ([], "--out"),
    (["--block", "0"], "block"),
    (["--block", "65"], "block"),
    (["--decay", "2"], "decay"),
    (["--steps", "0"], "steps"),
    (["--steps", "many"], "invalid int"),
    (["--prompts", "0"], "prompts"),
    (["--threads", "-1"], "threads"),
])
def test_usage_errors_are_one_line(args, needle, tmp_path, capsys):
    out = [] if not args else ["--out", str(tmp_path / "out")]
    assert cli.main(["train-diffusion", *out, *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_diffusion_command_on_a_tiny_budget(tmp_path, capsys, real_model):
    out = tmp_path / "drafters"
    out.mkdir()
    (out / "README.md").write_text("# Trained drafters\n\n## Drafters\nkeep me\n")
    args = ["train-diffusion", "--out", str(out), "--data", str(tmp_path / "data.pt"), "--prompts", "2",
            "--max-new-tokens", "8", "--temperatures", "0", "--steps", "3", "--batch", "4", "--block", "4", "--context", "16",
            "--layers", "0,1", "--train-vocab", "512", "--quiet"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert {"diffusion.json", "diffusion.safetensors", "diffusion.log", "README.md"} <= {p.name for p in out.iterdir()}
    config = read_diffusion_config(out)
    assert config["training"]["steps"] == 3 and config["block"] == 4 and "after" in config["heldout"]
    card = (out / "README.md").read_text()
    assert "keep me" in card and "## Diffusion drafter" in card and "train-diffusion" in card
    assert "held-out greedy acceptance after training" in (out / "diffusion.log").read_text()
    drafter = load_diffusion_drafter(real_model, out)
    prompt_ids = encode_prompt(real_model.tokenizer, "Name two rivers in Europe.")
    logits = drafter.block_logits(prompt_ids, 4)
    assert logits.shape == (4, real_model.model.config.vocab_size) and torch.isfinite(logits).all()
