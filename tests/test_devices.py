"""Device selection: one resolver, and every training and inference stage goes through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recaption import devices, precision
from recaption.errors import UserError
from recaption.models import oracle as oracle_lib
from recaption.parallel import Parallel
from recaption.stages import (
    captioner,
    clip_pretrain,
    eval_models,
    train_autoencoder,
    train_generator,
    upsample,
)

# Each stage that trains through `Parallel`: its main and its device key.
PARALLEL_STAGES = {
    "clip.train.device": clip_pretrain.main,
    "captioner.pretrain.device": lambda: captioner.main("pretrain"),
    "captioner.stage1.device": lambda: captioner.main("stage1"),
    "captioner.stage2.device": lambda: captioner.main("stage2"),
    "generator.device": train_generator.main,
}
# Every stage with a device key: its main.
STAGES = {
    **PARALLEL_STAGES,
    "upsample.device": upsample.main,
    "autoencoder.device": train_autoencoder.main,
    "evaluate.oracle.device": eval_models.oracle_main,
    "evaluate.clip.device": eval_models.eval_clip_main,
}
# The evaluation's models on a few fresh renders.
FEW_RENDERS = {"train_size": 100, "heldout_size": 10, "steps": 2, "batch_size": 16}
CLIP_ARCH = str(Path(__file__).resolve().parents[1] / "configs" / "clip" / "tiny-rn-32.json")


class Started(Exception):
    """Raised in place of Parallel.start, to stop a stage once its device is known."""


def with_cuda(monkeypatch, available: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    # resolve asks cuDNN for deterministic kernels on cuda: restore its flags afterwards.
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)


def write_device(project, key: str, device: str) -> None:
    """params.yaml with `key` (dotted, ending in .device) set to `device`."""
    section: dict = {"device": device}
    for part in reversed(key.split(".")[:-1]):
        section = {part: section}
    project.write_params(**section)


def test_auto_is_the_cpu_without_a_gpu(monkeypatch):
    with_cuda(monkeypatch, False)
    assert devices.resolve("auto", "x.device") == "cpu"
    assert devices.resolve("cpu", "x.device") == "cpu"


def test_auto_is_cuda_with_a_gpu(monkeypatch):
    with_cuda(monkeypatch, True)
    assert devices.resolve("auto", "x.device") == "cuda"
    assert devices.resolve("cpu", "x.device") == "cpu"  # a GPU is never forced on


def test_cuda_without_a_gpu_is_an_error_naming_the_key(monkeypatch):
    with_cuda(monkeypatch, False)
    with pytest.raises(UserError, match="generator.device is 'cuda'"):
        devices.resolve("cuda", "generator.device")


@pytest.mark.parametrize("key", list(STAGES))
def test_each_stage_refuses_cuda_without_a_gpu_before_any_work(project, monkeypatch, key):
    """The tiny project has no data: the stage stops at its device, naming its own key."""
    with_cuda(monkeypatch, False)
    write_device(project, key, "cuda")
    with pytest.raises(UserError, match=f"{key} is 'cuda'"):
        STAGES[key]()


@pytest.mark.parametrize("key", list(PARALLEL_STAGES))
def test_each_training_stage_starts_on_the_device_it_resolves(project, monkeypatch, key):
    """auto on a machine with a GPU: the stage resolves its own key, and Parallel.start
    gets cuda (not the CPU it was given before the device params existed)."""
    with_cuda(monkeypatch, True)
    resolved: list[tuple[str, str]] = []
    resolve = devices.resolve

    def recording(device: str, name: str) -> str:
        resolved.append((name, out := resolve(device, name)))
        return out

    def start(device: str = "cpu") -> Parallel:
        raise Started(device)

    monkeypatch.setattr(devices, "resolve", recording)
    monkeypatch.setattr(Parallel, "start", start)
    with pytest.raises(Started) as started:
        PARALLEL_STAGES[key]()
    assert resolved == [(key, "cuda")]
    assert started.value.args == ("cuda",)


def test_the_evaluation_models_train_on_the_device_they_resolve(project, monkeypatch):
    """oracle and eval_clip, auto on a machine with a GPU: the training functions get cuda."""
    with_cuda(monkeypatch, True)
    gpu = precision.Hardware("cuda", "a GPU", native_bf16=True)
    monkeypatch.setattr(precision, "hardware", lambda device="cpu": gpu)
    clip = {**FEW_RENDERS, "model": CLIP_ARCH}
    project.write_params(evaluate={"oracle": FEW_RENDERS, "clip": clip})

    def train_oracle(oracle, images, targets, config, log, par, checkpoints):
        raise Started(par.device)

    def train_clip(clip, images, captions, config, heldout, log, par, **kwargs):
        raise Started(par.device)

    monkeypatch.setattr(oracle_lib, "train_oracle", train_oracle)
    monkeypatch.setattr(eval_models, "train_clip", train_clip)
    with pytest.raises(Started) as started:
        eval_models.oracle_main()
    assert started.value.args == (torch.device("cuda"),)
    with pytest.raises(Started) as started:
        eval_models.eval_clip_main()
    assert started.value.args == (torch.device("cuda"),)


def test_recap_generate_draws_on_the_device_it_is_given(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from recaption import generate
    from recaption.cli import app

    drawn: list[str] = []

    def write_images(model, prompt, n, seed, steps, guidance, out, scale, device="cpu"):
        drawn.append(device)
        return [out]

    monkeypatch.setattr(generate, "write_images", write_images)
    runner, out = CliRunner(), str(tmp_path / "a.png")
    with_cuda(monkeypatch, True)
    assert runner.invoke(app, ["generate", "a red circle", "--out", out]).exit_code == 0
    assert runner.invoke(app, ["generate", "x", "--out", out, "--device", "cpu"]).exit_code == 0
    assert drawn == ["cuda", "cpu"]
    with_cuda(monkeypatch, False)
    result = runner.invoke(app, ["generate", "x", "--out", out, "--device", "cuda"])
    assert result.exit_code == 2
    assert "--device is 'cuda' but no CUDA device is available" in result.output
    result = runner.invoke(app, ["generate", "x", "--out", out, "--device", "gpu"])
    assert result.exit_code == 2 and "use one of auto, cpu, cuda" in result.output


def test_recap_generate_upsamples_on_the_device_it_draws_on(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from recaption import generate
    from recaption.cli import app

    used: list[tuple[str, str]] = []

    def upsample_prompt(upsampler, prompt, device="cpu"):
        used.append(("upsample", device))
        return prompt + ", in detail"

    def write_images(model, prompt, n, seed, steps, guidance, out, scale, device="cpu"):
        used.append(("draw", device))
        return [out]

    monkeypatch.setattr(generate, "upsample_prompt", upsample_prompt)
    monkeypatch.setattr(generate, "write_images", write_images)
    runner, out = CliRunner(), str(tmp_path / "a.png")
    with_cuda(monkeypatch, True)
    result = runner.invoke(app, ["generate", "a red circle", "--upsample", "--out", out])
    assert result.exit_code == 0 and "upsampled: a red circle, in detail" in result.output
    assert used == [("upsample", "cuda"), ("draw", "cuda")]
    used.clear()
    with_cuda(monkeypatch, False)
    assert runner.invoke(app, ["generate", "x", "--upsample", "--out", out]).exit_code == 0
    assert used == [("upsample", "cpu"), ("draw", "cpu")]


def test_models_that_only_infer_load_in_the_resolved_precision():
    assert precision.weights_dtype("fp32") == torch.float32
    assert precision.weights_dtype("bf16") == torch.bfloat16
    assert precision.weights_dtype("fp16") == torch.float16
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        precision.weights_dtype("auto")
