"""Safe model loading: pickled checkpoints are refused, and a trusted one converts once."""

import inspect
import os

import open_clip
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from typer.testing import CliRunner

from recaption import checkpoints
from recaption.cli import app
from recaption.params import ParamsError, load_params


class Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickled_gpt2(folder):
    """A tiny GPT-2 folder whose weights are a pickled pytorch_model.bin (older layout)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1,
                                       n_head=2, bos_token_id=0, eos_token_id=0))  # fmt: skip
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return model


def params_naming(tmp_path, section: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(section))
    return path


def test_params_refuse_a_pickled_file_or_folder_and_name_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.ones(2)}, tmp_path / "clip.bin")
    pickled_gpt2(tmp_path / "lm")
    (tmp_path / "pipe" / "unet").mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.bin")
    cases = {
        "clip.pretrained": {"clip": {"pretrained": "clip.bin"}},
        "captioner.lm": {"captioner": {"lm": "lm"}},
        "generator.model": {"generator": {"model": "pipe"}},
        "evaluate.clip.pretrained": {"evaluate": {"clip": {"pretrained": "clip.bin"}}},
    }
    for key, section in cases.items():
        with pytest.raises(ParamsError) as err:
            load_params(params_naming(tmp_path, section))
        message = str(err.value)
        assert f"{key} = " in message, message
        assert "runs any code it carries" in message
        assert "recap convert-checkpoint" in message and "--trust-pickle" in message


def test_conversion_needs_the_flag_and_never_runs_a_payload(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2), "x": Payload(marker)}, tmp_path / "evil.bin")
    with pytest.raises(checkpoints.PickledCheckpointError, match="--trust-pickle"):
        checkpoints.convert(tmp_path / "evil.bin")
    with pytest.raises(checkpoints.PickledCheckpointError, match="more than tensors"):
        checkpoints.convert(tmp_path / "evil.bin", trust_pickle=True)  # weights_only refuses
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()

    result = CliRunner().invoke(app, ["convert-checkpoint", str(tmp_path / "evil.bin")])
    assert result.exit_code == 2 and "--trust-pickle" in result.output
    assert not marker.exists()


def test_a_trusted_lm_folder_converts_and_then_loads_as_safetensors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    original = pickled_gpt2(tmp_path / "lm")
    assert (tmp_path / "lm" / "pytorch_model.bin").is_file()
    result = CliRunner().invoke(app, ["convert-checkpoint", "lm", "--trust-pickle"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [os.path.join("lm", "model.safetensors")]
    load_params(params_naming(tmp_path, {"captioner": {"lm": "lm"}}))  # accepted now
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "lm", use_safetensors=True)
    for (name, a), b in zip(original.state_dict().items(), loaded.state_dict().values(),
                            strict=True):  # fmt: skip
        assert torch.equal(a, b), name
    # A training checkpoint's state_dict is unwrapped; names follow the library's.
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "epoch": 3}, tmp_path / "run.ckpt")
    (out,) = checkpoints.convert(tmp_path / "run.ckpt", trust_pickle=True)
    assert out.name == "run.safetensors" and torch.equal(load_file(out)["w"], torch.arange(3.0))
    shard = tmp_path / "pytorch_model-00001-of-00002.bin"
    assert checkpoints.safetensors_name(shard).name == "model-00001-of-00002.safetensors"


def test_open_clip_loads_hub_checkpoints_weights_only():
    """Pretrained tags may download a pickled file: open_clip must read it weights_only."""
    for fn in (open_clip.create_model_and_transforms, open_clip.create_model):
        assert inspect.signature(fn).parameters["weights_only"].default is True
