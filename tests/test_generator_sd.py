"""A Stable Diffusion folder as users know it: a CLIP tokenizer padded to its own 77, a
v-prediction UNet under an Euler scheduler, fine-tuned through the train_generator stage
and sampled as diffusers' StableDiffusionPipeline samples the same folder."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from recaption import io, paths
from recaption.blend import SOURCES
from recaption.models import generator as gen_lib
from recaption.models.generator_train import to_model_space
from recaption.params import load_params
from recaption.stages import train_generator as stage
from test_generator import dataset, fixed_loss, pixels

from conftest import write_dataset
from real_tiny import write_sd_folder


def write_stage_inputs(images: torch.Tensor, captions: list[str]) -> None:
    """What train_generator reads: the dataset, its splits (nothing held out) and the
    blend's captions (every source the same caption, so any blend gives it)."""
    paths.DATASET.mkdir(parents=True)
    keys = write_dataset(paths.DATASET, images)
    paths.SPLITS.parent.mkdir(parents=True)
    io.write_table(paths.SPLITS, pa.table({
        "key": keys, "first": [True] * len(keys), "second": [False] * len(keys),
        "heldout": [False] * len(keys),
    }))  # fmt: skip
    paths.RELABELED.mkdir(parents=True)
    columns = {"key": keys, "caption": captions, **{s: captions for s in SOURCES}}
    io.write_table(paths.RELABELED_CAPTIONS, pa.table(columns))


def sd_samples(folder: Path, scheduler: str, prompts: list[str], seeds: list[int], steps: int):
    """Images diffusers' own StableDiffusionPipeline draws from `folder`, from the noise
    our pipeline starts from for `seeds`: float (B, H, W, 3) in [0, 255]."""
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    if scheduler != "auto":
        sd.scheduler = gen_lib.SCHEDULERS[scheduler].from_config(sd.scheduler.config)
    size = sd.unet.config.sample_size
    noise = torch.stack([torch.randn((4, size, size), generator=torch.Generator().manual_seed(s))
                         for s in seeds])  # fmt: skip
    out = sd(prompts, num_inference_steps=steps, guidance_scale=3.0, latents=noise,
             output_type="np")  # fmt: skip
    return out.images * 255


def weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    return load_file(next((folder / part).glob("*.safetensors")))


def test_the_stage_fine_tunes_a_stable_diffusion_folder_that_diffusers_samples_alike(
    project, tmp_path
):
    images, captions = dataset()
    sd = write_sd_folder(tmp_path / "sd")
    write_stage_inputs(images, captions)
    project.write_params(generator={
        "model": str(sd), "steps": 40, "batch_size": 8, "lr": 2e-3, "warmup_steps": 5,
        "ema_decay": 0.0, "checkpoint_every": 0, "train_text_encoder": False,
        "precision": "fp32", "device": "cpu",
    })  # fmt: skip
    start = gen_lib.load(sd)
    before = fixed_loss(start, images, captions)

    stage.main()

    pipe = gen_lib.load(paths.GENERATOR)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"  # auto: the folder's
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.fixed_length == 77 and pipe.encode_prompts(["red", ""]).shape == (2, 77, 32)
    assert to_model_space(pipe, images).shape == (8, 4, 8, 8)  # trained on the VAE's latents
    assert fixed_loss(pipe, images, captions) < before
    for part in ("vae", "text_encoder"):  # frozen: saved to the bit as they came
        trained, original = weights(paths.GENERATOR, part), weights(sd, part)
        assert trained.keys() == original.keys()
        assert all(torch.equal(trained[n], original[n]) for n in original), part
    assert not all(torch.equal(a, weights(sd, "unet")[n])
                   for n, a in weights(paths.GENERATOR, "unet").items())  # fmt: skip

    # Drawn by our pipeline and by diffusers' from the same folder, noise and steps, with
    # the folder's Euler and with the two other samplers `generator.scheduler` offers.
    prompts, seeds = ["red on the left", "blue on the right"], [0, 1]
    for scheduler in ("auto", "ddim", "dpm"):
        pipe.set_scheduler(scheduler)
        ours = pixels(pipe(prompts, num_inference_steps=6, seed=seeds)).astype(float)
        theirs = sd_samples(paths.GENERATOR, scheduler, prompts, seeds, steps=6)
        assert ours.shape == theirs.shape == (2, 16, 16, 3)
        # Ours are rounded to uint8; theirs are the same floats unrounded.
        assert np.allclose(ours, theirs, atol=0.51), scheduler
        assert ours.std() > 1  # not a blank image that any pipeline would match


@pytest.mark.parametrize(("name", "kind"), [
    ("auto", "EulerDiscreteScheduler"), ("ddim", "DDIMScheduler"),
    ("euler", "EulerDiscreteScheduler"), ("dpm", "DPMSolverMultistepScheduler"),
])  # fmt: skip
def test_generator_scheduler_picks_the_sampler_and_keeps_the_folders_noise_schedule(
    project, tmp_path, name, kind
):
    sd = write_sd_folder(tmp_path / "sd")
    params = load_params(project.write_params(generator={"model": str(sd), "scheduler": name}))
    scheduler = stage.start_pipeline(params, []).scheduler
    assert type(scheduler).__name__ == kind
    assert scheduler.config.prediction_type == "v_prediction"
    assert (scheduler.config.beta_schedule, scheduler.config.beta_end) == ("scaled_linear", 0.012)


def test_the_built_in_tokenizer_pads_to_the_longest_prompt_as_before():
    """The built-in generator trains from scratch on prompts padded to the batch's longest
    (masked): its tokenizer states no length of its own, so nothing changes for it."""
    from test_generator import tiny_pipeline

    pipe = tiny_pipeline()
    assert pipe.fixed_length is None
    tokens = pipe.tokenizer(["red on the left", ""], padding=True, return_tensors="pt")
    states = pipe.encode_prompts(["red on the left", ""])
    assert states.shape[1] == tokens.input_ids.shape[1] < pipe.max_tokens
