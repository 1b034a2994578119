"""The memory benchmark's accounting (specviz bench-memory): what it counts, and its refusals."""

from __future__ import annotations

import torch

from conftest import make_tiny_llama
from engine import ModelCache
from engine.loading.linear_kernels import KernelCalibration, pack_linears, packed_kernel_available, pinned_kernel
from specviz.memory_bench import main, model_bytes, resident_bytes


def test_model_bytes_counts_shared_parameters_once_and_packed_copies_when_made():
    model = make_tiny_llama(0)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied: one tensor, counted once
    params = {id(p): p.numel() * 4 for p in model.parameters()}
    assert model_bytes(model) == (sum(params.values()), 0)
    if not packed_kernel_available():
        return
    pack_linears(model, KernelCalibration())
    assert model_bytes(model)[1] == 0  # the packed copy is made on first use, not when packing
    with pinned_kernel("packed"), torch.inference_mode():
        model(input_ids=torch.tensor([[1, 2, 3]]))
    linears = [m for m in model.modules() if hasattr(m, "_packed")]
    assert model_bytes(model)[1] == sum(m.weight.numel() * 4 for m in linears) > 0


def test_resident_bytes_sees_a_large_allocation():
    before = resident_bytes()
    block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB, touched
    during = resident_bytes()
    del block
    assert during - before > 48 * 1024 * 1024


def test_the_cache_lists_what_it_holds(tiny_target):
    cache = ModelCache(loader=lambda spec, progress=None: tiny_target)
    assert cache.loaded() == []
    cache.get("a")
    assert [(spec, device) for spec, device, _ in cache.loaded()] == [("a", "cpu")]


def test_bad_arguments_exit_2_before_loading(capsys):
    assert main(["--strategies", "no_such_strategy"]) == 2
    assert "no_such_strategy" in capsys.readouterr().err
    assert main(["--runs", "-1"]) == 2
