"""Trained drafters and VocabTrim.

- TrimmedHead: exact zeros outside the kept ids; rejection sampling with a trimmed drafter stays
  lossless (exact enumeration with the engine's verification functions, and a seeded chi-square
  test through the engine on the tiny models);
- drafter folders: save / load round trip, Kangaroo's shared-prefix training path, clear errors;
- `specviz train-drafter` on a tiny budget, then greedy drafting identical to the baseline (slow);
- the shipped drafters in assets/ load and match the baseline on a real prompt (slow).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from conftest import TINY_VOCAB, chi_square_critical, chi_square_statistic, load_prompts
from engine import ModelLoadError, SamplingConfig, SpeculativeDecoder, encode_prompt, logits_to_probs, run_to_completion
from engine.drafting.policies import ConstantLength
from engine.drafting.proposers import DraftModelProposer
from engine.sampling import check_finite
from engine.loading.trained_drafters import (
    DrafterSpec,
    available,
    drafters_dir,
    load_trained_drafter,
    new_distilled,
    new_kangaroo,
    target_key,
    trained_drafter_name,
)
from engine.decoding.verification import acceptance_probability, residual_distribution
from engine.loading.vocab_trim import FREQUENCY_FILE, TrimmedHead, kept_ids, masked_logit, save_frequency_table
from specviz import cli
from specviz.training.data import Sequence
from specviz.training.distill import DistilledStudent, KangarooStudent, make_batch, save_student, write_model_card
from specviz.training.prompts import candidates, training_prompts

# --------------------------------------------------------------------------- VocabTrim


def test_trimmed_head_zero_probability_outside_the_kept_ids():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(TINY_VOCAB, 8, generator=generator)
    keep = torch.tensor([1, 4, 5, 9, 15])
    head = TrimmedHead(weight, keep)
    hidden = torch.randn(3, 2, 8, generator=generator)
    logits = head(hidden)  # [3, 2, V]
    assert logits.shape == (3, 2, TINY_VOCAB)
    torch.testing.assert_close(logits[..., keep], hidden @ weight[keep].T)
    check_finite(logits, "drafter")  # finite: the engine accepts it
    outside = torch.ones(TINY_VOCAB, dtype=torch.bool)
    outside[keep] = False
    for sampling in (SamplingConfig(), SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.05),
                     SamplingConfig(temperature=1.5, top_k=3), SamplingConfig(temperature=0.7, top_p=0.9)):
        probs = logits_to_probs(logits.reshape(-1, TINY_VOCAB), sampling)
        assert torch.all(probs[:, outside] == 0.0), sampling
        torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    assert masked_logit(torch.float32) == -1e30 and masked_logit(torch.float16) == float(torch.finfo(torch.float16).min)


def test_trimmed_head_rejects_bad_ids():
    weight = torch.zeros(TINY_VOCAB, 4)
    for bad in ([], [0, 0], [TINY_VOCAB], [-1]):
        with pytest.raises(ValueError):
            TrimmedHead(weight, torch.tensor(bad, dtype=torch.long))


@pytest.mark.parametrize("seed", range(5))
def test_rejection_sampling_with_a_trimmed_drafter_is_exactly_lossless(seed):
    """The first output token of one draft-verify step, enumerated exactly over the drafter's
    choices: sum_d q(d) [a(d) 1{x=d} + (1 - a(d)) residual_d(x)] must equal p(x), although q is
    zero on tokens p likes (the target's favourite token is trimmed away on purpose)."""
    generator = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(TINY_VOCAB, generator=generator) * 2, dim=-1)
    keep = torch.randperm(TINY_VOCAB, generator=generator)[:6]
    keep = keep[keep != int(p.argmax())]
    head = TrimmedHead(torch.randn(TINY_VOCAB, 8, generator=generator), keep)
    q = logits_to_probs(head(torch.randn(1, 8, generator=generator)), SamplingConfig(temperature=1.0))[0]
    assert q[int(p.argmax())] == 0.0 and q.sum() > 0.999
    output = torch.zeros(TINY_VOCAB, dtype=torch.float64)
    for d in range(TINY_VOCAB):
        if q[d] == 0:
            continue  # the drafter never proposes a trimmed token
        a = acceptance_probability(float(q[d]), float(p[d]))
        output[d] += float(q[d]) * a
        output += float(q[d]) * (1 - a) * residual_distribution(p, q, d).double()
    torch.testing.assert_close(output, p.double(), atol=1e-6, rtol=0)


def trimmed_copy(drafter, keep: list[int]):
    """A copy of a tiny drafter whose LM head only computes the `keep` rows."""
    model = copy.deepcopy(drafter.model)
    model.lm_head = TrimmedHead(model.lm_head.weight, torch.tensor(keep))
    return model


N_RUNS = 800


@torch.no_grad()
def test_sampling_through_the_engine_with_a_trimmed_drafter_follows_the_target(tiny_target, tiny_noisy_drafter, single_thread):
    """N_RUNS seeded one-step runs (draft 1 token, verify): the first output token passes a
    chi-square test (alpha 1e-3) against the target's own distribution, although the target's
    favourite token is missing from the drafter's vocabulary (it can only come from the residual)."""
    sampling = SamplingConfig(temperature=1.0)
    prompt = [3, 5, 7, 11, 2, 9]
    p = logits_to_probs(tiny_target.model(input_ids=torch.tensor([prompt])).logits[0, -1:], sampling)[0]
    favourite = int(p.argmax())
    keep = [t for t in range(TINY_VOCAB) if t != favourite][: TINY_VOCAB // 2]
    drafter = trimmed_copy(tiny_noisy_drafter, keep)
    counts: dict[int, int] = {}
    for seed in range(N_RUNS):
        decoder = SpeculativeDecoder(tiny_target, DraftModelProposer(drafter), ConstantLength(1),
                                     SamplingConfig(temperature=1.0, seed=seed))
        first = next(decoder.generate(prompt, 2))  # budget 2: the first step drafts one token
        assert [d.token_id in keep for d in first.draft] == [True], "one kept token must be drafted"
        token = first.new_tokens[0].token_id
        counts[token] = counts.get(token, 0) + 1
    stat, df = chi_square_statistic(counts, {t: float(p[t]) for t in range(TINY_VOCAB)}, N_RUNS)
    assert stat < chi_square_critical(df, 1e-3), f"chi-square {stat:.1f} (df {df})"
    assert counts.get(favourite, 0) > 0.5 * N_RUNS * float(p[favourite]), "the residual must still produce the trimmed token"


# --------------------------------------------------------------------------- drafter folders (tiny target)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_target):
    """A drafter folder for the tiny target: distilled (2 layers) and Kangaroo exits 1 and 2, untrained."""
    folder = tmp_path_factory.mktemp("tiny-drafters")
    meta = {"command": "test", "torch_threads": 1, "data": {}, "training": {}}
    save_student(DistilledStudent(tiny_target, (0, 2)), folder, tiny_target, meta)
    save_student(KangarooStudent(tiny_target, (1, 2)), folder, tiny_target, meta)
    order = torch.randperm(TINY_VOCAB, generator=torch.Generator().manual_seed(0))
    save_frequency_table(folder / FREQUENCY_FILE, order, torch.arange(TINY_VOCAB))
    return folder


def test_saved_drafters_load_with_their_own_weights_and_shared_modules(tiny_folder, tiny_target):
    assert available(tiny_folder) == {"distilled": 2, "kangaroo": [1, 2]}
    ids = torch.tensor([[3, 5, 7, 11, 2, 9]])
    target_inner = tiny_target.model.model
    with torch.no_grad():
        for spec, fresh in (("distilled", new_distilled(tiny_target, (0, 2))), ("kangaroo:2", new_kangaroo(tiny_target, 2))):
            loaded = load_trained_drafter(tiny_target, spec, folder=tiny_folder)
            assert loaded.name == spec and loaded.tokenizer is None
            inner = loaded.model.model
            assert inner.embed_tokens is target_inner.embed_tokens and loaded.model.lm_head is tiny_target.model.lm_head
            assert inner.norm is not target_inner.norm
            # float16 storage: the reloaded drafter computes what the freshly initialised one did, up to rounding
            torch.testing.assert_close(loaded.model(ids).logits, fresh(ids).logits, atol=0.05, rtol=0.01)
        kangaroo = load_trained_drafter(tiny_target, "kangaroo:1", folder=tiny_folder).model.model
        assert kangaroo.layers[0] is target_inner.layers[0] and kangaroo.layers[1] is not target_inner.layers[1]
        assert kangaroo.layers[1].self_attn.layer_idx == 1


def test_packed_training_batches_compute_what_separate_sequences_do(tiny_target):
    """Training packs a prompt with all its continuations in one row (and runs Kangaroo's target
    prefix once for every exit); each scored position must get the hidden state the drafter's own
    forward pass gives that sequence alone."""
    generator = torch.Generator().manual_seed(0)

    def sequence(prompt_id, prompt, continuation):
        n = len(continuation)
        return Sequence(prompt_id, "test", 0.0, len(prompt), torch.tensor(prompt + continuation),
                        torch.randint(0, TINY_VOCAB, (n, 4), generator=generator), torch.zeros(n, 4).half())

    groups = [
        [sequence("a", [3, 5, 7], [1, 2, 3, 4]), sequence("a", [3, 5, 7], [9, 8]), sequence("a", [3, 5, 7], [6])],
        [sequence("b", [1, 2, 3, 4, 5, 6], [7, 7, 7])],
    ]
    batch = make_batch(groups)
    assert batch.rows.numel() == batch.top_ids.shape[0] == 10
    for student in (DistilledStudent(tiny_target, (0, 2)), KangarooStudent(tiny_target, (1, 2))):
        with torch.no_grad():
            for hidden, drafter in zip(student.hidden(batch), student.drafters):
                alone = [drafter.model(input_ids=s.ids[None]).last_hidden_state[0, s.prompt_length - 1 : -1]
                         for group in groups for s in group]
                torch.testing.assert_close(hidden[batch.rows, batch.cols], torch.cat(alone))


def _tiny_training_data(seed: int = 0):
    """Six sequences (two prompts x three temperatures) with random teacher top-4 distributions."""
    from specviz.training.data import DataConfig, TrainingData

    generator = torch.Generator().manual_seed(seed)
    sequences = []
    for prompt_id, prompt in (("a", [3, 5, 7]), ("b", [1, 2, 3, 4])):
        for temperature in (0.0, 0.7, 1.0):
            continuation = torch.randint(0, TINY_VOCAB, (5,), generator=generator).tolist()
            sequences.append(Sequence(prompt_id, "test", temperature, len(prompt), torch.tensor(prompt + continuation),
                                      torch.randint(0, TINY_VOCAB, (5, 4), generator=generator),
                                      torch.log_softmax(torch.randn(5, 4, generator=generator), -1).half()))
    order = torch.randperm(TINY_VOCAB, generator=generator)
    return TrainingData(DataConfig(prompts=2), "tiny", sequences, torch.zeros(TINY_VOCAB, dtype=torch.long), order, 0.0)


def test_a_killed_training_run_resumes_where_it_stopped(tmp_path, monkeypatch, tiny_target):
    """Kill a run after its step-2 checkpoint; the rerun resumes and ends with the weights of an uninterrupted run."""
    from specviz.training import distill

    data = _tiny_training_data()
    config = distill.TrainConfig(steps=4, batch_prompts=1, train_vocab=TINY_VOCAB, eval_vocab_trim=0)
    log = distill.RunLog(tmp_path / "log.txt", stream=open(os.devnull, "w"))
    monkeypatch.setattr(distill, "CHECKPOINT_EVERY", 2)

    def run(student, checkpoint):
        distill.train(student, tiny_target, data.sequences, data, config, torch.Generator().manual_seed(0), log, checkpoint)
        return distill.own_state(student.drafters[0], 0)

    uninterrupted = run(DistilledStudent(tiny_target, (0, 2)), tmp_path / "a.pt")
    real_loss, calls = distill.distill_loss, []

    def dies_at_step_3(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(distill, "distill_loss", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(DistilledStudent(tiny_target, (0, 2)), tmp_path / "b.pt")
    assert (tmp_path / "b.pt").is_file()
    monkeypatch.setattr(distill, "distill_loss", real_loss)
    resumed = run(DistilledStudent(tiny_target, (0, 2)), tmp_path / "b.pt")
    assert "Resuming from" in (tmp_path / "log.txt").read_text() and not (tmp_path / "b.pt").exists()
    for key, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[key], tensor, rtol=0, atol=0)


def test_vocab_trim_keeps_the_most_frequent_ids(tiny_folder, tiny_target):
    loaded = load_trained_drafter(tiny_target, "distilled", vocab_trim=5, folder=tiny_folder)
    assert loaded.name == "distilled+vocab-trim:5"
    order = torch.randperm(TINY_VOCAB, generator=torch.Generator().manual_seed(0))
    assert loaded.model.lm_head.keep_ids.tolist() == sorted(order[:5].tolist())
    assert kept_ids(order, 3).tolist() == sorted(order[:3].tolist())


@pytest.mark.parametrize("spec, vocab_trim, needle", [
    ("kangaroo:3", 0, "no Kangaroo adapter for exit layer 3"),
    ("kangaroo:0", 0, "unknown trained drafter"),
    ("early-exit:2", 0, "unknown trained drafter"),
    ("distilled", TINY_VOCAB + 1, "vocab_trim must be between 1 and 16"),
    ("distilled", -1, "vocab_trim must be an integer >= 0"),
    ("kangaroo:1", 2.5, "vocab_trim must be an integer >= 0"),
])
def test_clear_errors(spec, vocab_trim, needle, tiny_folder, tiny_target):
    with pytest.raises(ModelLoadError, match=needle):
        load_trained_drafter(tiny_target, spec, vocab_trim=vocab_trim, folder=tiny_folder)


def test_missing_folder_or_kind(tmp_path, tiny_target):
    with pytest.raises(ModelLoadError, match="no trained drafters for target"):
        load_trained_drafter(tiny_target, "distilled", folder=tmp_path / "nothing")
    with pytest.raises(ModelLoadError, match="no trained distilled drafter"):
        load_trained_drafter(tiny_target, "distilled", folder=tmp_path)
    with pytest.raises(ModelLoadError, match="no trained drafters for target"):
        load_trained_drafter(tiny_target, "distilled")  # nothing shipped for the tiny target


def test_drafter_for_another_target_is_refused(tiny_folder):
    from conftest import make_tiny_loaded

    wider = make_tiny_loaded(5, hidden_size=48)
    with pytest.raises(ModelLoadError, match="made for another target"):
        load_trained_drafter(wider, "distilled", folder=tiny_folder)


def test_spec_and_folder_names():
    assert trained_drafter_name("kangaroo:4", 8192) == "kangaroo:4+vocab-trim:8192" and trained_drafter_name("distilled") == "distilled"
    for other in ("early-exit:4", "kangaroo", "kangaroo:0", "HuggingFaceTB/SmolLM2-360M"):
        assert not DrafterSpec.matches(other)
    assert DrafterSpec.parse(" kangaroo:6 ") == DrafterSpec("kangaroo", 6) and str(DrafterSpec("kangaroo", 6)) == "kangaroo:6"
    assert target_key("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert target_key("HuggingFaceTB/SmolLM2-360M-Instruct") == "smollm2-360m-instruct"
    assert drafters_dir("smollm2-135m-instruct").parts[-3:] == ("assets", "drafters", "smollm2-135m-instruct")


def test_greedy_with_tiny_trained_drafters_equals_the_baseline(tiny_folder, tiny_target, single_thread):
    prompt = [3, 5, 7, 11, 2, 9]
    baseline = run_to_completion(SpeculativeDecoder(tiny_target), prompt, 20).token_ids
    for spec, trim in (("distilled", 0), ("distilled", 6), ("kangaroo:1", 4), ("kangaroo:2", 0)):
        drafter = load_trained_drafter(tiny_target, spec, vocab_trim=trim, folder=tiny_folder)
        decoder = SpeculativeDecoder(tiny_target, DraftModelProposer(drafter.model), ConstantLength(3))
        assert run_to_completion(decoder, prompt, 20).token_ids == baseline, (spec, trim)


def test_model_card_lists_what_the_folder_holds(tiny_folder):
    import json

    for kind in ("distilled", "kangaroo"):
        path = tiny_folder / f"{kind}.json"
        config = json.loads(path.read_text())
        names = ["distilled"] if kind == "distilled" else ["kangaroo:1", "kangaroo:2"]
        score = {"all": 0.5, "greedy": 0.5, "positions": 10}
        config |= {"heldout": {n: {"before": 0.1, "after": {"full": score}} for n in names},
                   "data": {"prompts": 1, "temperatures": [0.0], "max_new_tokens": 4, "top_k": 4, "seed": 0,
                            "sequences": 1, "continuation_tokens": 4, "wall_s": 1.0, "heldout_prompts": 1,
                            "heldout_positions": 4},
                   "training": {"steps": 1, "batch_prompts": 1, "lr": 0.001, "train_vocab": 8, "wall_s": 1.0}}
        path.write_text(json.dumps(config))
    write_model_card(tiny_folder)
    card = (tiny_folder / "README.md").read_text()
    assert "`kangaroo:2`" in card and "`distilled`" in card and "distilled.safetensors" in card
    # sections other commands add (train-predictor, train-diffusion) survive a rewrite; its own are not doubled
    (tiny_folder / "README.md").write_text(card + "\n## SpecDec++ acceptance predictor\n\nweights here\n")
    write_model_card(tiny_folder)
    rewritten = (tiny_folder / "README.md").read_text()
    assert "## SpecDec++ acceptance predictor" in rewritten and "weights here" in rewritten
    assert rewritten.count("## Drafters") == 1 and rewritten.count("## Files") == 1


# --------------------------------------------------------------------------- training prompts


def test_training_prompts_are_balanced_deterministic_and_apart_from_the_suite():
    prompts = training_prompts(300)
    assert len({p.text for p in prompts}) == 300
    assert [p.id for p in prompts] == [p.id for p in training_prompts(300)]
    categories = {p.category for p in prompts}
    assert categories == {"chat", "code", "code_edit", "summarization", "translation", "math", "rag"}
    grounded = sum(p.category in ("code_edit", "summarization", "rag") for p in prompts)
    assert grounded > 0.5 * len(prompts)
    # no suite prompt, passage, snippet or sentence appears in any training prompt
    every = [text for texts in candidates().values() for text in texts]
    for item in load_prompts():
        pieces = [piece.strip() for piece in item["prompt"].split("\n\n") if len(piece.strip()) > 30]
        pieces += [item["prompt"].split(": ", 1)[-1]]  # translation sentences, document bodies
        for piece in pieces:
            assert not any(piece in text for text in every), (item["id"], piece[:60])
    with pytest.raises(ValueError):
        training_prompts(0)


# --------------------------------------------------------------------------- the real model (slow)


def _greedy_matches_baseline(target, drafter, prompt_ids, max_new_tokens, k=3):
    baseline = run_to_completion(SpeculativeDecoder(target), prompt_ids, max_new_tokens)
    decoder = SpeculativeDecoder(target, DraftModelProposer(drafter.model), ConstantLength(k))
    result = run_to_completion(decoder, prompt_ids, max_new_tokens)
    assert result.token_ids == baseline.token_ids, drafter.name
    return result


@pytest.mark.slow
def test_train_drafter_command_on_a_tiny_budget(tmp_path, capsys, real_model):
    out, data = tmp_path / "drafters", tmp_path / "data.pt"
    args = ["train-drafter", "--out", str(out), "--data", str(data), "--prompts", "2", "--max-new-tokens", "6",
            "--steps", "2", "--batch", "2", "--layers", "0,1", "--exit-layers", "2,3", "--vocab-trim", "256",
            "--train-vocab", "512"]
    assert cli.main(args) == 0, capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    assert names >= {"distilled.json", "distilled.safetensors", "kangaroo.json", "kangaroo.safetensors",
                     FREQUENCY_FILE, "README.md", "training.log"}
    assert available(out) == {"distilled": 2, "kangaroo": [2, 3]}
    assert "held-out top-1 agreement" in (out / "training.log").read_text()
    # a second run with the same data settings reuses the data file
    assert cli.main(args[:-8] + ["--kind", "distilled", "--steps", "1", "--batch", "2", "--vocab-trim", "0"]) == 0
    assert "Reusing training data" in (out / "training.log").read_text()
    prompt_ids = encode_prompt(real_model.tokenizer, "Name two rivers in Europe.")
    for spec, trim in (("distilled", 0), ("kangaroo:2", 256)):
        _greedy_matches_baseline(real_model, load_trained_drafter(real_model, spec, trim, folder=out), prompt_ids, 16)


def test_train_drafter_usage_errors(tmp_path, capsys):
    assert cli.main(["train-drafter"]) == 2  # --out is required
    assert cli.main(["train-drafter", "--out", str(tmp_path), "--prompts", "0"]) == 2
    assert "prompts" in capsys.readouterr().err


SHIPPED = drafters_dir("smollm2-135m-instruct")


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "distilled.json").is_file(), reason=f"no shipped drafters in {SHIPPED}")
def test_shipped_drafters_load_and_match_the_baseline(real_model):
    shipped = available(SHIPPED)
    assert shipped["distilled"] and shipped["kangaroo"]
    suite = {p["id"]: p for p in load_prompts()}
    prompt_ids = encode_prompt(real_model.tokenizer, suite["code_edit-01"]["prompt"])
    accepted = {}
    for spec, trim in (("distilled", 0), ("distilled", 8192), (f"kangaroo:{shipped['kangaroo'][0]}", 8192)):
        drafter = load_trained_drafter(real_model, spec, trim)
        result = _greedy_matches_baseline(real_model, drafter, prompt_ids, 40)
        accepted[drafter.name] = result.metrics.acceptance_rate
    assert max(accepted.values()) > 0.2, accepted  # trained drafters agree often (raw early exit: a few percent)
    with pytest.raises(ModelLoadError, match="trained exit layers"):
        load_trained_drafter(real_model, "kangaroo:29")
