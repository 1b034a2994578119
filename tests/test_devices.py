"""Device plumbing, checked on the CPU: choosing and validating a device, loading for it (cache keys,
the CPU-only kernels skipped elsewhere, drafters beside their target), CPU runs unchanged, the CLI's
error for a device this machine lacks, the ZeroGPU decorator, and `specviz gpu-check` on the CPU.

The "meta" device stands in for a GPU where moving tensors is all a test needs; monkeypatched device
counts stand in for CUDA machines where only the decision is tested.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from engine import ModelCache, SamplingConfig, build_decoder, parse_strategy, run_to_completion
from engine import devices
from engine.devices import (
    device_choices,
    from_pretrained_placement,
    model_device,
    place_own_tensors,
    resolve_device,
    uses_cpu_kernels,
)
from engine.errors import ConfigError
from engine.loading import models as models_module
from engine.loading.causal_lm import CachedCausalLM
from engine.loading.linear_kernels import PackedLinear, pack_linears, packed_kernel_available, unpack_linears
from engine.loading.models import LoadedModel, _finish_model, early_exit_drafter, load_model, to_device

from conftest import TINY_VOCAB, FakeTokenizer, make_tiny_llama, make_tiny_loaded

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 1, 4, 1, 5]


def _fake_cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


# --------------------------------------------------------------------------- choosing a device


def test_this_machine_resolves_auto_and_cpu_to_the_cpu():
    assert not torch.cuda.is_available(), "these tests describe a machine without CUDA"
    for choice in (None, "", "auto", " AUTO ", "cpu", "CPU"):
        assert resolve_device(choice) == "cpu"
    assert device_choices() == ["cpu"]


@pytest.mark.parametrize("choice", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_a_clear_config_error(choice):
    with pytest.raises(ConfigError, match=r"^device: no CUDA device here .*choose cpu") as err:
        resolve_device(choice)
    assert err.value.field == "device"
    with pytest.raises(ConfigError, match=r"^--device: no CUDA device here"):
        resolve_device(choice, "--device")


@pytest.mark.parametrize("choice", ["gpu", "cuda:", "cuda:x", "cuda:-1", "mps", "cpu:0", 3])
def test_unknown_device_names_are_refused(choice):
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device(choice)


def test_device_choices_on_machines_with_gpus(monkeypatch):
    _fake_cuda(monkeypatch, 1)
    assert [resolve_device(c) for c in ("auto", "cuda", "cuda:0", "cpu")] == ["cuda:0", "cuda:0", "cuda:0", "cpu"]
    assert device_choices() == ["cuda:0", "cpu"]
    with pytest.raises(ConfigError, match=r"cuda:1 does not exist: this machine has 1 CUDA device \(cuda:0 \.\. cuda:0\)"):
        resolve_device("cuda:1")
    _fake_cuda(monkeypatch, 2)
    assert [resolve_device(c) for c in ("auto", "cuda", "cuda:1")] == ["cuda", "cuda", "cuda:1"]
    assert device_choices() == ["cuda:0", "cuda:1", "cuda", "cpu"]


def test_cpu_kernels_only_on_the_cpu_and_placement_arguments(monkeypatch):
    assert uses_cpu_kernels("cpu") and uses_cpu_kernels(torch.device("cpu"))
    assert not uses_cpu_kernels("cuda:0") and not uses_cpu_kernels("cuda") and not uses_cpu_kernels("meta")
    assert from_pretrained_placement("cpu") == {}  # the CPU loads exactly as before
    monkeypatch.setattr(devices, "accelerate_available", lambda: True)
    assert from_pretrained_placement("cuda:1") == {"device_map": {"": "cuda:1"}}
    assert from_pretrained_placement("cuda") == {"device_map": "sequential"}  # big models split over every GPU
    monkeypatch.setattr(devices, "accelerate_available", lambda: False)
    assert from_pretrained_placement("cuda:1") == {}  # then the loader moves the model with .to
    assert devices.single_device("cuda") == "cuda:0" and devices.single_device("cuda:1") == "cuda:1"


# --------------------------------------------------------------------------- loading for a device


@pytest.mark.skipif(not packed_kernel_available(), reason="this PyTorch has no oneDNN linear kernel")
@pytest.mark.parametrize("device", ["cuda:0", "cuda", "meta"])
def test_finishing_a_model_for_another_device_skips_the_cpu_kernels(device):
    assert any(isinstance(m, PackedLinear) for m in _finish_model(make_tiny_llama(0)).modules())
    assert any(isinstance(m, PackedLinear) for m in _finish_model(make_tiny_llama(0), "cpu").modules())
    finished = _finish_model(make_tiny_llama(0), device)
    assert not any(isinstance(m, PackedLinear) for m in finished.modules())
    assert not finished.training and not any(p.requires_grad for p in finished.parameters())


def test_unpacking_restores_plain_linears_with_the_same_parameters():
    model = make_tiny_llama(0)
    weights = {n: p for n, p in model.named_parameters()}
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    swapped = pack_linears(model)
    assert unpack_linears(model) == swapped
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert all(p is weights[n] for n, p in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_moving_a_cpu_loaded_model_to_another_device():
    loaded = make_tiny_loaded(0)
    assert to_device(loaded, "cpu") is loaded and loaded.device == "cpu"
    pack_linears(loaded.model)
    moved = to_device(loaded, "meta")  # "meta" stands in for a GPU
    assert moved.device == "meta"
    assert not any(isinstance(m, PackedLinear) for m in moved.model.modules())
    assert {p.device.type for p in moved.model.parameters()} == {"meta"}
    assert model_device(moved.model) == torch.device("meta")


def test_load_model_hands_the_device_to_the_loaders(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(models_module, "_load_folder", lambda spec, device="cpu", **kw: calls.append((str(spec), device))
                        or make_tiny_loaded(0))
    load_model(str(tmp_path), device="cuda:1")
    load_model(str(tmp_path))
    assert calls == [(str(tmp_path), "cuda:1"), (str(tmp_path), "cpu")]
    monkeypatch.setattr(models_module, "load_embedded", lambda spec, progress=None: make_tiny_loaded(0, name=spec))
    embedded = load_model("smollm2-135m-instruct", device="meta")
    assert embedded.device == "meta" and model_device(embedded.model).type == "meta"
    assert load_model("smollm2-135m-instruct").device == "cpu"


def test_model_cache_keys_include_the_device(monkeypatch):
    _fake_cuda(monkeypatch, 2)  # only the cache's bookkeeping runs: the fake loader moves nothing
    calls = []

    def loader(spec, progress=None, **kwargs):
        calls.append((spec, kwargs.get("device")))
        return LoadedModel(spec, make_tiny_llama(len(calls)), FakeTokenizer(TINY_VOCAB), kwargs.get("device", "cpu"))

    cache = ModelCache(max_models=4, loader=loader)
    on_cpu = cache.get("m")
    on_gpu = cache.get("m", device="cuda:0")
    assert on_gpu is not on_cpu and on_gpu.device == "cuda:0"
    assert cache.get("m") is on_cpu and cache.get("m", device="cpu") is on_cpu
    assert cache.get("m", device="cuda:0") is on_gpu
    assert calls == [("m", None), ("m", "cuda:0")]  # a loader is told of devices other than the CPU only
    assert cache.get("m", device="cuda").device == "cuda" and calls[-1] == ("m", "cuda")  # every GPU: another entry
    with pytest.raises(ConfigError, match="cuda:2 does not exist"):
        cache.get("m", device="cuda:2")
    # a drafter loaded by spec goes beside its target
    drafter = cache.drafter(on_gpu, "d")
    assert calls[-1] == ("d", "cuda:0") and drafter.device == "cuda:0"
    # the cache's own device serves callers that name none
    elsewhere = ModelCache(loader=loader, device="cuda:1")
    assert elsewhere.get("m").device == "cuda:1" and calls[-1] == ("m", "cuda:1")


def test_runner_resolves_the_device_before_loading(tmp_path):
    from specviz.runner import RunRequest, Runner

    runner = Runner(ModelCache(loader=lambda spec, progress=None, **kw: pytest.fail("nothing may load")))
    with pytest.raises(ConfigError, match="^device: no CUDA device here"):
        runner.prepare(RunRequest("hello", parse_strategy("ar"), device="cuda"))


# --------------------------------------------------------------------------- drafters beside their target


def test_early_exit_drafters_share_the_targets_device_and_kernels():
    target = make_tiny_loaded(0)
    drafter = early_exit_drafter(target, 2)
    assert drafter.device == target.device == "cpu"
    assert model_device(drafter.model) == model_device(target.model)
    target.device = "cuda:0"  # what the early-exit drafter of a GPU target is recorded as
    assert early_exit_drafter(target, 1).device == "cuda:0"


def test_own_tensors_move_shared_ones_stay():
    shared = nn.Linear(3, 3).to("meta")  # the target's module, already on the device
    own = nn.Linear(3, 3)
    module = nn.ModuleDict({"shared": shared, "own": own, "tied": nn.Linear(3, 3)})
    module["tied"].weight = own.weight  # tied parameters stay tied
    module.own.register_buffer("ids", torch.arange(3))
    shared_weight = shared.weight
    assert place_own_tensors(module, "cpu") is module and module.own.weight.device.type == "cpu"
    place_own_tensors(module, "meta")
    assert {t.device.type for t in list(module.parameters()) + list(module.buffers())} == {"meta"}
    assert module.shared.weight is shared_weight
    assert module.tied.weight is module.own.weight
    assert isinstance(module.own.weight, nn.Parameter) and module.own.ids.dtype == torch.long


def test_feature_heads_and_diffusion_drafters_build_their_own_tensors_on_the_targets_device(monkeypatch):
    from engine.drafting import diffusion_drafter
    from engine.drafting.diffusion_drafter import DiffusionConfig, MaskedDiffusionDrafter
    from engine.loading import feature_drafters
    from engine.loading.feature_drafters import EagleHead, MedusaHeads

    target = make_tiny_loaded(0)
    meta = lambda model: torch.device("meta")  # noqa: E731 - a target "on another device"
    monkeypatch.setattr(feature_drafters, "model_device", meta)
    monkeypatch.setattr(diffusion_drafter, "model_device", meta)
    eagle = EagleHead(target)
    assert {t.device.type for t in eagle.own_state().values()} == {"meta"}
    assert eagle.lm_head.weight.device.type == "cpu"  # shared with the target, where the target keeps it
    medusa = MedusaHeads(target, 2)
    assert {t.device.type for t in medusa.own_state().values()} == {"meta"}
    diffusion = MaskedDiffusionDrafter(target, DiffusionConfig(context=8, block=4, source_layers=(0,)))
    assert {t.device.type for t in diffusion.state_dict().values()} == {"meta"}
    assert diffusion.shared.embed.weight.device.type == "cpu"


def test_a_trimmed_head_keeps_its_ids_beside_its_weight():
    from engine.loading.vocab_trim import TrimmedHead

    head = TrimmedHead(torch.randn(TINY_VOCAB, 4).to("meta"), torch.tensor([1, 5, 7]))
    assert head.keep_ids.device.type == "meta" and head.rows.weight.device.type == "meta"


# --------------------------------------------------------------------------- CPU runs unchanged


@pytest.mark.parametrize("strategy, params, temperature", [
    ("ar", {}, 0.0),
    ("early_exit", {"exit_layer": "1", "k": "3"}, 0.0),
    ("dynamic_tree", {"drafter": "early-exit:2", "vocab_trim": "0"}, 0.0),
    ("early_exit", {"exit_layer": "2", "k": "3"}, 0.8),
])
def test_a_cpu_run_through_the_runner_is_the_engine_run_of_before(strategy, params, temperature, single_thread):
    """device "cpu" (and "auto" on this machine) runs exactly what the engine ran without devices."""
    from specviz.runner import RunRequest, Runner

    target = make_tiny_loaded(0, name="tiny-target")
    models = ModelCache(loader=lambda spec, progress=None: {"tiny-target": target}[spec])
    sampling = SamplingConfig(temperature=temperature, seed=7)
    config = parse_strategy(strategy, dict(params))
    before = run_to_completion(build_decoder(config, target, models, sampling), PROMPT, 24)
    runner = Runner(models)
    for device in ("cpu", "auto"):
        request = RunRequest("unused", config, sampling, 24, target="tiny-target", device=device)
        prepared = _prepared(runner, request, PROMPT)  # the fake tokenizer cannot encode text
        updates = list(runner.stream(prepared))
        assert updates[-1].token_ids == before.token_ids
        assert [_untimed(u.event) for u in updates] == [_untimed(e) for e in before.events]  # drafts, verdicts, probabilities
    assert CachedCausalLM(target.model).device == torch.device("cpu")


def _untimed(event) -> dict:
    return {k: v for k, v in event.to_dict().items() if k != "timings"}


def _prepared(runner, request, prompt_ids):
    """Runner.prepare for a tokenizer-free tiny target: the same steps with the prompt given as ids."""
    from engine.devices import resolve_device
    from specviz.runner import PreparedRun

    target = runner.models.get(request.target, device=resolve_device(request.device))
    decoder = build_decoder(request.strategy, target, runner.models, request.sampling)
    return PreparedRun(request, decoder, list(prompt_ids))


# --------------------------------------------------------------------------- CLI


def test_cli_refuses_cuda_here_with_one_line_and_status_2(tmp_path, capsys):
    from specviz import cli

    db = tmp_path / "runs.db"
    code = cli.main(["run", "--prompt", "hi", "--strategy", "ar", "--device", "cuda", "--db", str(db)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("specviz: error: --device: no CUDA device here") and "choose cpu" in err
    assert not db.exists()  # refused before anything was logged
    assert cli.main(["run", "--prompt", "hi", "--strategy", "ar", "--device", "tpu", "--db", str(db)]) == 2
    assert "unknown device" in capsys.readouterr().err


def test_bench_refuses_cuda_here(capsys):
    from specviz import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--device", "cuda:0"])
    assert exc.value.code == 2
    assert "no CUDA device here" in capsys.readouterr().err


# --------------------------------------------------------------------------- ZeroGPU


def _fake_spaces(calls: list) -> types.ModuleType:
    spaces = types.ModuleType("spaces")

    def GPU(fn=None, duration=None):  # noqa: N802 - the spaces package's name
        def decorate(f):
            def wrapper(*args, **kwargs):
                calls.append(("call", f.__name__, duration))
                return f(*args, **kwargs)
            wrapper.zero_gpu = (f, duration)
            return wrapper
        return decorate(fn) if fn is not None else decorate

    spaces.GPU = GPU
    return spaces


def test_on_gpu_applies_spaces_gpu_only_when_spaces_is_importable(monkeypatch):
    from specviz.gpu import ZERO_GPU_DURATION_S, on_gpu

    def work(x):
        return x + 1

    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError
    assert on_gpu(work) is work
    calls = []
    monkeypatch.setitem(sys.modules, "spaces", _fake_spaces(calls))
    wrapped = on_gpu(work)
    assert wrapped.zero_gpu == (work, ZERO_GPU_DURATION_S)
    assert wrapped(1) == 2 and calls == [("call", "work", ZERO_GPU_DURATION_S)]


def test_the_runner_streams_a_run_inside_spaces_gpu(monkeypatch, single_thread):
    """specviz.runner, imported where `spaces` is importable, runs every step inside spaces.GPU."""
    from specviz import runner as plain_runner

    assert not hasattr(plain_runner.generate_steps, "zero_gpu")  # here: no spaces package, nothing wrapped
    calls = []
    monkeypatch.setitem(sys.modules, "spaces", _fake_spaces(calls))
    name = "specviz._runner_on_zero_gpu"
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "specviz" / "runner.py")
    probe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, probe)
    spec.loader.exec_module(probe)
    assert probe.generate_steps.zero_gpu[0].__name__ == "generate_steps"
    target = make_tiny_loaded(0, name="tiny-target")
    runner = probe.Runner(ModelCache(loader=lambda spec, progress=None: target))
    request = probe.RunRequest("unused", parse_strategy("ar"), max_new_tokens=5, target="tiny-target")
    decoder = build_decoder(request.strategy, target, runner.models, request.sampling)
    updates = list(runner.stream(probe.PreparedRun(request, decoder, PROMPT)))
    assert updates[-1].done and len(updates[-1].token_ids) == 5
    assert calls == [("call", "generate_steps", probe.on_gpu.__globals__["ZERO_GPU_DURATION_S"])]


# --------------------------------------------------------------------------- UI and the GPU check


def test_the_device_dropdown_appears_only_with_cuda(monkeypatch):
    import gradio as gr

    from specviz.ui import controls

    with gr.Blocks():
        assert controls.build_device_control("device") is None  # no CUDA: no control, no API parameter, the CPU
        monkeypatch.setattr(controls, "device_choices", lambda: ["cuda:0", "cpu"])
        dropdown = controls.build_device_control("device")
    assert isinstance(dropdown, gr.Dropdown) and dropdown.value == "cuda:0"
    assert [c[1] if isinstance(c, tuple) else c for c in dropdown.choices] == ["cuda:0", "cpu"]


def test_gpu_check_runs_on_the_cpu_and_refuses_cuda_here(tmp_path, capsys, single_thread):
    import json

    from specviz import gpu_check

    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--no-embedded", "--max-new-tokens", "12", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["strategy"].split(":")[0] for r in rows] == [name for name, _ in gpu_check.TINY_STRATEGIES]
    assert all(r["new_tokens"] == 12 and r["error"] is None for r in rows)
    assert all(r["same_as_ar"] for r in rows[1:]) and result["failures"] == []
    assert any(r["mean_acceptance_length"] > 1 for r in rows[1:])  # the speculative strategies did accept drafts
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--device", "cuda"])
    assert exc.value.code == 2 and "no CUDA device here" in capsys.readouterr().err
