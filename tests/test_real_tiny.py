"""The real path end to end: `dvc repro` on the real-tiny profile (configs/profiles/
real-tiny.yaml) in a temporary git repository, on what tests/real_tiny.py writes (a JPEG
folder with a captions CSV, an open_clip ViT in safetensors, a GPT-2 folder, a Stable
Diffusion folder), offline."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import real_tiny
from tiny_repo import ROOT, make_project, run, stale

pytestmark = pytest.mark.slow

PROFILE = "configs/profiles/real-tiny.yaml"


def apply_real_tiny(repo: Path) -> None:
    """What a user does: write the data and models, then merge the profile over the
    default params.yaml with `recap apply-profile`."""
    real_tiny.build(repo)
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    run(["recap", "apply-profile", PROFILE], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("real-tiny") / "repo"
    repo.mkdir()
    make_project(repo, apply_real_tiny)
    run(["dvc", "repro"], repo, HF_HUB_OFFLINE="1")
    return repo


def read_json(repo: Path, path: str) -> dict:
    return json.loads((repo / path).read_text())


def test_every_stage_runs_and_nothing_is_left_stale(repo):
    assert stale(repo) == set()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    ingest = read_json(repo, "reports/ingest.json")
    assert ingest["images_accepted"] == real_tiny.NUM_IMAGES
    assert ingest["images_stored_original"] == real_tiny.NUM_IMAGES  # 64 px JPEGs, kept
    annotate = yaml.safe_load((repo / "params.yaml").read_text())["annotate"]
    assert annotate["source"] == "column"


def test_the_pretrained_models_named_are_the_ones_used(repo):
    assets = repo / real_tiny.ASSETS
    given = load_file(assets / "clip.safetensors")
    saved = load_file(repo / "models/clip/open_clip_model.safetensors")
    assert given.keys() == saved.keys()
    assert all(torch.equal(given[k], saved[k]) for k in given)  # loaded, not trained
    # The captioner trained the GPT-2 folder's LM through its own tokenizer.
    vocab = json.loads((assets / "gpt2/tokenizer.json").read_text())["model"]["vocab"]
    trained = json.loads((repo / "models/captioner/stage2/tokenizer.json").read_text())
    assert trained["model"]["vocab"] == vocab
    upsample = read_json(repo, "reports/upsample.json")
    assert upsample["lm"] == str(real_tiny.ASSETS / "gpt2") and not upsample["builtin"]
    assert read_json(repo, "reports/oracle.json")["skipped"].startswith("skipped: data.source")


def test_the_evaluation_reports_what_a_real_source_allows(repo):
    metrics = read_json(repo, "reports/metrics.json")
    assert set(metrics["clip_score"]) == {"prompts", "heldout"}
    assert set(metrics["clip_score"]["heldout"]) == {"ground_truth", "short", "descriptive"}
    assert set(metrics["image_distance"]) == {"prompts", "heldout"}
    distance = metrics["image_distance"]["prompts"]["as_written"]
    assert distance["images"] == len(real_tiny.PROMPTS) and distance["fid_clip"] >= 0
    assert set(metrics["not_measured"]) == {"prompt_following (GenEval)", "fact_accuracy"}
    assert "prompt_following" not in metrics and "fact_accuracy" not in metrics
    captions = read_json(repo, "reports/captions.json")["kinds"]
    # blend.use_upsampled: the upsampled ground truth is a caption set too
    assert set(captions) == {"ground truth", "short", "descriptive", "upsampled"}
    assert all(0 <= kind["clipscore"] <= 2.5 for kind in captions.values()), captions
    assert "bleu4" in captions["short"]  # the captions CSV's short column is the reference


def test_the_fine_tuned_generator_is_a_stable_diffusion_folder_diffusers_draws_with(repo):
    from diffusers import StableDiffusionPipeline

    folder = repo / "models/generator"
    sd = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    images = sd("a red ball", num_inference_steps=2, output_type="np").images
    assert images.shape == (1, real_tiny.IMAGE_SIZE, real_tiny.IMAGE_SIZE, 3)
    given = load_file(repo / real_tiny.ASSETS / "sd/unet/diffusion_pytorch_model.safetensors")
    tuned = load_file(folder / "unet/diffusion_pytorch_model.safetensors")
    assert not all(torch.equal(given[k], tuned[k]) for k in given)  # fine-tuned


def test_recap_generate_draws_with_the_sd_folder_through_the_instruction_lm(repo):
    out = run(["recap", "generate", "a red ball", "--upsample", "--n", "2", "--steps", "2",
               "--scale", "1", "--out", "drawn/ball.png"], repo)  # fmt: skip
    first, *written = out.splitlines()
    assert first.startswith("upsampled: ")
    assert [Path(p).name for p in written] == ["ball-0.png", "ball-1.png", "ball-grid.png"]
    assert Image.open(repo / written[0]).size == (real_tiny.IMAGE_SIZE, real_tiny.IMAGE_SIZE)
