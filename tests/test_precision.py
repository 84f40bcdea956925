"""precision: `auto` follows the hardware; explicit choices are kept, and said to be slow."""

from __future__ import annotations

import logging

import pytest
import torch

from recaption import precision
from recaption.errors import UserError
from recaption.precision import Hardware

NATIVE = Hardware("cpu", "AVX512", native_bf16=True)
AVX2 = Hardware("cpu", "AVX2", native_bf16=False)
OLD_GPU = Hardware("cuda", "Tesla T4", native_bf16=False)


@pytest.mark.parametrize(
    ("capability", "avx512_bf16", "amx", "native"),
    [
        ("AVX2", True, True, False),  # torch dispatches to AVX2 kernels: no bf16 ones
        ("AVX512", False, False, False),  # AVX-512 without BF16: emulated
        ("AVX512", True, False, True),
        ("AVX512", False, True, True),
        ("DEFAULT", False, False, False),
    ],
)
def test_cpu_hardware_reads_the_capability(monkeypatch, capability, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    hw = precision.hardware("cpu")
    assert hw == Hardware("cpu", capability, native)
    assert precision.resolve("auto", hw) == ("bf16" if native else "fp32")


def test_auto_is_bf16_only_where_it_is_native():
    assert precision.resolve("auto", NATIVE) == "bf16"
    assert precision.resolve("auto", AVX2) == "fp32"
    assert precision.resolve("auto", OLD_GPU) == "fp32"
    assert precision.resolve("auto", Hardware("cuda", "H100", True)) == "bf16"


def test_explicit_choices_are_kept():
    for hw in (NATIVE, AVX2):
        assert precision.resolve("fp32", hw) == "fp32"
        assert precision.resolve("bf16", hw) == "bf16"
    assert precision.resolve("fp16", OLD_GPU) == "fp16"


def test_explicit_bf16_without_native_support_warns_with_the_slowdown(caplog):
    with caplog.at_level(logging.WARNING, logger="recaption.precision"):
        precision.resolve("bf16", NATIVE, "generator.precision")
        assert not caplog.records
        precision.resolve("bf16", AVX2, "generator.precision")
    (record,) = caplog.records
    assert "generator.precision" in record.message and "AVX2" in record.message
    assert precision.EMULATED_BF16_SLOWDOWN in record.message


def test_fp16_needs_a_gpu_and_unknown_values_are_refused():
    with pytest.raises(UserError, match="recaption.precision.*CUDA"):
        precision.resolve("fp16", NATIVE, "recaption.precision")
    with pytest.raises(UserError, match="'fp8'.*auto, fp32, bf16, fp16"):
        precision.resolve("fp8", NATIVE)


def test_settle_returns_what_a_lineage_records(monkeypatch):
    monkeypatch.setattr(precision, "hardware", lambda device: AVX2)
    resolved, record = precision.settle("auto", "cpu", "clip.train.precision")
    assert resolved == "fp32"
    assert record == {"precision": "fp32", "device": "cpu", "hardware": "AVX2",
                      "native_bf16": False}  # fmt: skip


def test_autocast_computes_in_the_resolved_precision():
    a = torch.randn(4, 8)
    layer = torch.nn.Linear(8, 3)
    with precision.autocast("fp32", "cpu"):
        assert layer(a).dtype == torch.float32
    with precision.autocast("bf16", "cpu"):
        assert layer(a).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        precision.autocast("auto", "cpu")


def test_a_clipped_step_without_scaling_is_the_plain_step_to_the_bit():
    def run(step) -> torch.Tensor:
        torch.manual_seed(0)
        layer = torch.nn.Linear(8, 3)
        opt = torch.optim.AdamW(layer.parameters(), lr=0.1)
        x = torch.randn(16, 8)
        for _ in range(3):
            step(layer, opt, (layer(x) ** 2).mean())
        return layer.weight.detach().clone()

    def plain(layer, opt, loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(layer.parameters()), 0.5)
        opt.step()

    def shared(layer, opt, loss):
        scaler = precision.grad_scaler("bf16", "cpu")
        assert not scaler.is_enabled()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        precision.clipped_step(opt, list(layer.parameters()), 0.5, scaler)

    assert torch.equal(run(plain), run(shared))
