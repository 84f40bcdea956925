"""A Stable Diffusion folder fine-tuned through the stages as users know it: its frozen VAE's
latents cached by encode_latents, its frozen text encoder's states cached per caption,
and, optionally, a LoRA on its UNet merged in before saving."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from diffusers import AutoencoderKL, StableDiffusionPipeline
from transformers import CLIPTextModel

from recaption import datasets, devices, io, latents, paths, text_states
from recaption.errors import UserError
from recaption.models import generator as gen_lib
from recaption.models import lora
from recaption.models.generator_train import to_model_space
from recaption.params import ParamsError, load_params
from recaption.stages import train_autoencoder as encode_stage
from recaption.stages import train_generator as stage
from test_devices import with_cuda
from test_generator import dataset
from test_generator_sd import weights, write_stage_inputs

from real_tiny import write_sd_folder

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def sd_params(sd, **generator) -> dict:
    return {
        "model": str(sd), "steps": 8, "batch_size": 4, "lr": 2e-3, "warmup_steps": 2,
        "ema_decay": 0.0, "checkpoint_every": 0, "train_text_encoder": False,
        "cond_dropout": 0.5, "precision": "fp32", "device": "cpu", **generator,
    }  # fmt: skip


@pytest.fixture
def sd_project(project, tmp_path):
    images, captions = dataset()
    sd = write_sd_folder(tmp_path / "sd")
    write_stage_inputs(images, captions)
    project.write_params(generator=sd_params(sd))
    return sd, images, captions


def refuse(monkeypatch, cls, method: str) -> None:
    """Make `cls.method` fail: what runs it is caught."""

    def fail(*args, **kwargs):
        raise AssertionError(f"{cls.__name__}.{method} ran")

    monkeypatch.setattr(cls, method, fail)


def cached_texts() -> list[str]:
    return [t for p in sorted(paths.TEXT_STATES.rglob(io.SHARD_GLOB))
            for t in pq.read_table(p).column("text").to_pylist()]  # fmt: skip


def test_encode_latents_caches_the_folders_vae_and_a_rerun_encodes_nothing(sd_project):
    sd, images, _ = sd_project
    first = encode_stage.encode_main()
    assert (first["images"], first["encoded"], first["reused"]) == (8, 8, 0)
    _, identity, size = latents.pipeline_vae(sd)
    assert size == 16
    assert first["autoencoder"] == latents.cache_fingerprint(identity)
    assert latents.stored_fingerprint(paths.LATENTS) == first["autoencoder"]
    # The cached latents, scaled, are what the pipeline's VAE makes of each batch.
    pipe = gen_lib.load(sd)
    keys = [f"{i:04d}" for i in range(8)]
    cached = latents.read(paths.LATENTS, keys) * pipe.vae.config.scaling_factor
    assert torch.allclose(cached, to_model_space(pipe, images), atol=1e-5)

    again = encode_stage.encode_main()
    assert (again["encoded"], again["reused"]) == (0, 8)


class Started(Exception):
    """Raised in place of latents.update, once the VAE it was handed is known."""


def test_encode_latents_encodes_where_autoencoder_device_resolves(project, sd_project, monkeypatch):
    """The VAE goes to the device `autoencoder.device` resolves to (the meta device stands
    in for a GPU here), and `cpu` writes the bytes `auto` writes on a machine without one."""
    with_cuda(monkeypatch, False)
    first = encode_stage.encode_main()
    written = {p.name: p.read_bytes() for p in paths.LATENTS.glob(io.SHARD_GLOB)}
    assert first["encoded"] == 8 and written
    project.write_params(generator=sd_params(sd_project[0]), autoencoder={"device": "cpu"})
    for shard in paths.LATENTS.glob(io.SHARD_GLOB):
        shard.unlink()
    again = encode_stage.encode_main()
    assert again["encoded"] == 8  # encoded anew on the CPU, to the same bytes
    assert {p.name: p.read_bytes() for p in paths.LATENTS.glob(io.SHARD_GLOB)} == written

    resolved: list[tuple[str, str]] = []

    def resolve(device: str, key: str) -> str:
        resolved.append((key, device))
        return "meta"

    def update(vae, *args, **kwargs):
        raise Started(next(vae.parameters()).device)

    monkeypatch.setattr(devices, "resolve", resolve)
    monkeypatch.setattr(latents, "update", update)
    with pytest.raises(Started) as started:
        encode_stage.encode_main()
    assert resolved == [("autoencoder.device", "cpu")]
    assert started.value.args == (torch.device("meta"),)


@pytest.mark.parametrize(
    ("device", "error", "message"),
    [("cuda", UserError, "autoencoder.device is 'cuda' but no CUDA device"),
     ("gpu", ParamsError, "autoencoder.device")],
)  # fmt: skip
def test_encode_latents_refuses_a_device_it_cannot_use_before_any_work(
    project, sd_project, monkeypatch, device, error, message
):
    with_cuda(monkeypatch, False)
    project.write_params(generator=sd_params(sd_project[0]), autoencoder={"device": device})
    with pytest.raises(error, match=message):
        encode_stage.encode_main()
    assert not paths.LATENTS.exists() and not paths.LATENTS_REPORT.exists()


def test_the_folders_vae_identity_is_its_weights_config_and_size(tmp_path):
    a = latents.pipeline_vae(write_sd_folder(tmp_path / "a"))[1]
    assert latents.pipeline_vae(write_sd_folder(tmp_path / "b"))[1] == a  # same seeds, same VAE
    assert latents.pipeline_vae(write_sd_folder(tmp_path / "c", image_size=32))[1] != a
    assert latents.pipeline_vae(tmp_path / "nothing") is None
    assert latents.pipeline_vae("configs/generator/tiny-unet-32.json") is None


def test_a_saved_pipelines_vae_encodes_as_many_pixels_at_once_at_any_size():
    assert [latents.batch_for(s) for s in (16, 32, 64, 512, 1024)] == [1024, 256, 64, 1, 1]


def test_train_generator_reads_cached_latents_and_text_states_and_a_rerun_encodes_nothing(
    project, sd_project, monkeypatch
):
    encode_stage.encode_main()
    project.write_params(generator=sd_params(sd_project[0], edge_weight=20.0))  # its maps too
    with monkeypatch.context() as m:
        refuse(m, AutoencoderKL, "encode")  # the latents come from data/latents
        refuse(m, datasets, "images_tensor")  # and their edge maps: no pixel is decoded
        first = stage.main()
    distinct = first["text_states"]["encoded"]
    # Every caption once: eight captions and the empty one (half of them dropped), never
    # once per draw (8 steps x 4 captions).
    assert first["text_states"]["loaded"] == 0 and 2 <= distinct <= 9
    texts = cached_texts()
    assert len(texts) == len(set(texts)) == distinct and "" in texts
    unet = weights(paths.GENERATOR, "unet")

    with monkeypatch.context() as m:
        refuse(m, AutoencoderKL, "encode")
        refuse(m, CLIPTextModel, "forward")  # nothing re-encoded: every state is on disk
        second = stage.main()
    assert second["text_states"] == {"loaded": distinct, "encoded": 0}
    assert cached_texts() == texts  # nothing new written
    again = weights(paths.GENERATOR, "unet")
    assert all(torch.equal(again[n], unet[n]) for n in unet)  # the same training


def test_the_stage_streams_cached_latents_that_do_not_fit_and_never_holds_them(
    project, sd_project, monkeypatch
):
    sd, _, _ = sd_project
    encode_stage.encode_main()
    data = {"stream": {"mode": "auto", "memory_gb": 1e-6, "buffer": 4, "workers": 0}}
    project.write_params(data=data, generator=sd_params(sd, edge_weight=20.0))
    params = load_params(paths.PARAMS)
    assert stage.streams(params, latents.row_bytes(paths.LATENTS))  # one row is too many
    with monkeypatch.context() as m:
        refuse(m, latents, "read")  # never read whole
        refuse(m, datasets, "images_tensor")  # nor the pixels
        refuse(m, AutoencoderKL, "encode")
        metrics = stage.main()
    assert metrics["steps"] == 8 and metrics["loss"] > 0
    streamed = weights(paths.GENERATOR, "unet")
    # Held, the same latents train another model (another order), from the same start.
    project.write_params(generator=sd_params(sd, edge_weight=20.0))
    stage.main()
    held = weights(paths.GENERATOR, "unet")
    assert any(not torch.equal(streamed[n], held[n]) for n in held)


def test_training_with_and_without_the_caches_gives_the_same_unet(sd_project, monkeypatch):
    encode_stage.encode_main()
    stage.main()
    with_caches = weights(paths.GENERATOR, "unet")
    assert paths.TEXT_STATES.is_dir()

    for shard in paths.LATENTS.glob(io.SHARD_GLOB):  # no latents: each batch is encoded
        shard.unlink()
    monkeypatch.setattr(stage, "text_cache", lambda params, pipe: None)  # encoded each step
    result = stage.main()
    assert "text_states" not in result
    without = weights(paths.GENERATOR, "unet")
    original = weights(sd_project[0], "unet")
    flat = lambda state: torch.cat([state[n].flatten() for n in sorted(original)])  # noqa: E731
    moved = flat(with_caches) - flat(original)
    gap = flat(with_caches) - flat(without)
    assert moved.norm() > 1e-2  # it trained
    # Adam turns float-rounding differences in near-zero gradients into steps of lr: the
    # two runs agree to float tolerance, not to the bit.
    assert gap.norm() < 1e-3 * moved.norm()


def test_text_states_are_keyed_by_encoder_and_caption(tmp_path):
    calls = []

    def encode(captions):
        calls.append(list(captions))
        return torch.stack([torch.full((3, 2), float(len(c))) for c in captions])

    cache = text_states.TextStates(encode, "f" * 64, tmp_path)
    out = cache(["red", "", "red", "blue"])
    assert out.shape == (4, 3, 2) and out[:, 0, 0].tolist() == [3, 0, 3, 4]
    assert calls == [["red", "", "blue"]]  # each distinct caption once
    cache(["blue", "red"])
    assert len(calls) == 1  # all seen
    assert cache.save() == 3
    assert text_states.TextStates(encode, "f" * 64, tmp_path).loaded == 3
    assert text_states.TextStates(encode, "e" * 64, tmp_path).loaded == 0  # another encoder


def test_lora_trains_only_the_adapter_and_saves_a_merged_unet_diffusers_loads(
    project, sd_project, monkeypatch
):
    sd, _, _ = sd_project
    project.write_params(generator=sd_params(sd, lora={"rank": 2, "alpha": 4.0}, lr=1e-2))
    original = weights(sd, "unet")
    seen = {}
    merge = lora.merge

    def check_then_merge(unet):  # the trained UNet, before its adapters are merged
        state = {n: p.detach().clone() for n, p in unet.named_parameters()}
        seen["adapters"] = {n: v for n, v in state.items() if lora.is_adapter(n)}
        seen["base"] = {n.replace(".base_layer", ""): v for n, v in state.items()
                        if not lora.is_adapter(n)}  # fmt: skip
        merge(unet)

    monkeypatch.setattr(stage.lora, "merge", check_then_merge)
    encode_stage.encode_main()
    stage.main()

    assert seen["base"].keys() == original.keys()
    assert all(torch.equal(seen["base"][n], original[n]) for n in original)  # base frozen
    b = [v for n, v in seen["adapters"].items() if ".lora_B." in n]
    wrapped = [n for n in original if n.endswith(tuple(f"{t}.weight" for t in TARGETS))]
    assert len(b) == len(wrapped) > 0  # every target layer has its adapter
    assert all(v.abs().max() > 0 for v in b)  # B starts at 0: each adapter trained

    merged = weights(paths.GENERATOR, "unet")
    assert merged.keys() == original.keys()  # plain names: no adapter left
    changed = {n for n in original if not torch.equal(merged[n], original[n])}
    assert changed == set(wrapped)  # only the adapted layers' weights, biases not
    for n in changed:  # W + (alpha / r) B A: a change of rank at most r
        assert torch.linalg.matrix_rank((merged[n] - original[n]).double(), rtol=1e-6) <= 2
    recorded = json.loads((paths.GENERATOR / "lineage.json").read_text())["params"]
    assert recorded["generator"]["lora"] == {"rank": 2, "alpha": 4.0, "targets": list(TARGETS)}

    sd_pipe = StableDiffusionPipeline.from_pretrained(
        paths.GENERATOR, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    state = sd_pipe.unet.state_dict()
    assert all(torch.equal(state[n], merged[n]) for n in merged)
    out = sd_pipe(["red on the left"], num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 16, 16, 3)


def test_lora_needs_a_saved_pipeline(project):
    with pytest.raises(UserError, match="lora.rank=2 adapts a pretrained UNet"):
        load_params(project.write_params(generator={"lora": {"rank": 2}}))


def test_the_stages_that_read_a_saved_pipeline_depend_on_its_folder():
    """A folder edited in place (new VAE or UNet weights) must rerun both stages: DVC
    hashes only what a stage lists."""
    stages = yaml.safe_load((Path(__file__).parents[1] / "dvc.yaml").read_text())["stages"]
    for name in ("encode_latents", "train_generator"):
        assert "${generator.model}" in stages[name]["deps"], name
