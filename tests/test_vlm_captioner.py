"""captioner.kind: vlm on a tiny randomly initialised LLaVA-style model saved by the test:
the frozen tower's features as the embedding cache, three stages, recaption, LoRA, errors."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from recaption import embed, paths
from recaption.errors import UserError
from recaption.models import captioners, vision_tower, vlm
from recaption.models.captioner import CaptionerError
from recaption.models.tokenizer import train_tokenizer
from recaption.params import Params, ParamsError, load_params
from recaption.stages import captioner as stages
from recaption.stages import clip_pretrain, recaption
from recaption.stages import embed as embed_stage
from test_captioner_stages import STAGE, TINY_LM
from test_clip_embed import TINY_ARCH, TRAIN, prepare

WORDS = "a an the red green blue yellow circle square triangle on left right of big small"
TOWER_SIZE, PATCH, WIDTH = 16, 4, 16  # 16 patch tokens of width 16: 256 cached columns


def save_tiny_vlm(folder: Path, seed: int = 0) -> Path:
    """A LLaVA-style model as a user would have it saved: CLIP vision tower, projector,
    Llama language model, its tokenizer (EOS, no padding token) and image processor."""
    tokenizer = train_tokenizer([WORDS, *WORDS.split()], 300)
    tokenizer.pad_token = None
    vision = CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TOWER_SIZE,
        patch_size=PATCH,
    )
    text = LlamaConfig(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=0,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = {"height": TOWER_SIZE, "width": TOWER_SIZE}
    CLIPImageProcessor(size={"shortest_edge": TOWER_SIZE}, crop_size=size).save_pretrained(folder)
    return folder


@pytest.fixture
def vlm_folder(tmp_path) -> Path:
    return save_tiny_vlm(tmp_path / "tiny-vlm")


def write(project, lm: Path | str, **captioner) -> None:
    arch = project.root / "tiny-clip.json"
    arch.write_text(json.dumps(TINY_ARCH))
    stage = {**STAGE, "steps": 3, "lr": 0.01}
    project.write_params(
        clip={"model": str(arch), "train": TRAIN},
        embed={"num_workers": 0, "batch_size": 8, "probe_train_size": 20},
        captioner={"kind": "vlm", "lm": str(lm), "val_fraction": 0.2, "pretrain": {**stage},
                   "stage1": {**stage}, "stage2": {**stage, "max_tokens": 40}, **captioner},
        recaption={"batch_size": 8, "chunk_size": 16, "short": {"max_new_tokens": 6},
                   "descriptive": {"max_new_tokens": 8}},
    )  # fmt: skip


@pytest.fixture
def embedded(project, vlm_folder):
    write(project, vlm_folder)
    prepare(project)
    clip_pretrain.main()  # the prompts' embeddings are still CLIP's
    embed_stage.main()
    return project


def test_the_cache_holds_what_the_projector_reads(vlm_folder):
    """Known answer: the projector applied to the cached row of an image gives the image
    tokens the VLM itself computes from its pixels."""
    tower = vision_tower.load(str(vlm_folder))
    model = vlm.create(str(vlm_folder))
    images = torch.randint(0, 256, (3, 3, TOWER_SIZE, TOWER_SIZE), dtype=torch.uint8)
    cached = tower.encode(images, torch.device("cpu"))
    assert cached.shape == (3, 16 * WIDTH)  # 16 patches, CLS dropped ("default")
    pixels = (images.float() / 255 - tower.mean) / tower.std
    with torch.no_grad():
        expected = torch.stack(model.lm.model.get_image_features(pixel_values=pixels).pooler_output)
        got = model.mapper(cached)
    torch.testing.assert_close(got, expected)
    assert tower.fingerprint() == model.tower().fingerprint()


def test_vlm_captioner_goes_through_three_stages_and_recaption(embedded, vlm_folder):
    write(embedded, vlm_folder, prompt="the <image> shows")
    report = json.loads(paths.EMBED_CACHE_REPORT.read_text())
    assert report["grid"] == 0 and report["vision_tower"] == str(vlm_folder)
    emb = embed.read_dir(paths.IMAGE_EMBEDDINGS)
    assert emb.vectors.shape == (60, 16 * WIDTH) and emb.grid is None
    original = load_file(vlm_folder / "model.safetensors")
    for stage in stages.STAGES:
        metrics = stages.main(stage)
        assert metrics["steps"] == 3
    for stage in stages.STAGES:
        model = captioners.load(paths.CAPTIONER / stage)
        assert isinstance(model, vlm.VlmCaptioner) and model.prompt == "the <image> shows"
    saved = load_file(paths.CAPTIONER / "stage2" / "model.safetensors")
    tower = [n for n in original if "vision_tower" in n]
    assert tower and all(torch.equal(saved[n], original[n]) for n in tower)  # frozen
    for part in ("multi_modal_projector", "language_model"):  # both tuned
        names = [n for n in original if part in n]
        assert any(not torch.equal(saved[n], original[n]) for n in names), part
    lineage = json.loads((paths.CAPTIONER / "pretrain" / "lineage.json").read_text())
    assert lineage["params"]["captioner"]["kind"] == "vlm"
    for stage in stages.STAGES:  # each card names the model and the loader it is
        card = (paths.CAPTIONER / stage / "README.md").read_text()
        assert "vision-language" in card and "captioners.load" in card
        assert "prefix mapper" not in card
    summary = recaption.main()
    assert summary["decoded"] == 60
    table = pq.read_table(paths.SYNTHETIC_CAPTIONS).to_pydict()
    assert table["key"] == emb.keys
    # What the stage-1 captioner decodes from the cached features, image by image.
    stage1 = captioners.load(paths.CAPTIONER / "stage1").eval()
    direct = stage1.generate(torch.from_numpy(emb.features_of(emb.keys[:5])),
                             recaption.Decoding(max_new_tokens=6))  # fmt: skip
    assert table["short"][:5] == direct
    assert recaption.main()["decoded"] == 0  # the captions are reused by pixels + recipe


def test_the_prompt_frames_the_image_tokens_and_is_saved(vlm_folder, tmp_path):
    model = vlm.create(str(vlm_folder), prompt="a photo <image> of")
    before = model.tokenizer("a photo ")["input_ids"]
    after = model.tokenizer(" of", add_special_tokens=False)["input_ids"]
    assert before and after and model.prefix_tokens == len(before) + 16 + len(after)
    features = torch.randn(2, 16 * WIDTH)
    embed_ids = model.lm.get_input_embeddings()
    with torch.no_grad():
        prefix = model.prefix(features)
        assert prefix.shape == (2, model.prefix_tokens, 24)
        torch.testing.assert_close(prefix[1, : len(before)], embed_ids(torch.tensor(before)))
        torch.testing.assert_close(prefix[1, -len(after) :], embed_ids(torch.tensor(after)))
        torch.testing.assert_close(prefix[:, len(before) : -len(after)], model.mapper(features))
        model.save(tmp_path / "saved")
        assert torch.equal(vlm.load(tmp_path / "saved").prefix(features), prefix)
    with pytest.raises(CaptionerError, match="exactly once"):
        vlm.create(str(vlm_folder), prompt="no image here")


def test_a_rerun_of_embed_encodes_nothing_new(embedded, monkeypatch):
    encoded = []
    real = vision_tower.VisionTower.encode
    monkeypatch.setattr(vision_tower.VisionTower, "encode",
                        lambda self, b, d: encoded.append(len(b)) or real(self, b, d))  # fmt: skip
    result = embed_stage.main()
    assert (result["computed"], result["reused"], sum(encoded)) == (0, 60, 0)


def test_lora_tunes_adapters_then_merges_them(embedded, vlm_folder):
    write(embedded, vlm_folder, lora={"rank": 2, "targets": ["q_proj", "v_proj"]})
    stages.main("pretrain")
    params = load_params()
    model = stages.start_vlm("stage1", params, embed.read_dir(paths.IMAGE_EMBEDDINGS))
    named = model.trainable(True)
    assert named and all(".lora_" in n or "multi_modal_projector" in n for n in named)
    saved = load_file(paths.CAPTIONER / "pretrain" / "model.safetensors")
    original = load_file(vlm_folder / "model.safetensors")
    assert set(saved) == set(original)  # merged: the VLM's own names, no adapter left
    q_proj = [n for n in original if "q_proj" in n]
    assert any(not torch.equal(saved[n], original[n]) for n in q_proj)  # the update, merged
    k_proj = [n for n in original if "k_proj" in n]
    assert all(torch.equal(saved[n], original[n]) for n in k_proj)  # not a target


def test_train_lm_false_tunes_the_projector_only(vlm_folder):
    model = vlm.create(str(vlm_folder))
    named = model.trainable(False)
    assert named and all("multi_modal_projector" in n for n in named)


def test_features_from_another_tower_are_refused(embedded, tmp_path):
    write(embedded, save_tiny_vlm(tmp_path / "other", seed=1))
    with pytest.raises(UserError, match="rerun embed"):
        stages.main("pretrain")


def test_kind_vlm_refuses_a_gpt2_json_and_prefix_refuses_lora(project):
    project.write_params(captioner={"kind": "vlm", "lm": TINY_LM})
    with pytest.raises(ParamsError, match="captioner.kind: vlm needs"):
        load_params()
    project.write_params(captioner={"lora": {"rank": 4}})
    with pytest.raises(ParamsError, match="captioner.lora.rank = 4"):
        load_params()
    project.write_params(captioner={"kind": "vlm", "lm": "some/vlm", "prompt": "USER:"})
    with pytest.raises(ParamsError, match="<image> exactly once"):
        load_params()


def test_a_causal_lm_folder_is_not_a_vlm(tmp_path):
    from test_captioner import save_local_lm

    save_local_lm(tmp_path / "lm")
    with pytest.raises(vision_tower.VisionTowerError, match="not a LLaVA-style"):
        vision_tower.load(str(tmp_path / "lm"))
    with pytest.raises(UserError, match="not a LLaVA-style"):
        vlm.create(str(tmp_path / "lm"))
    with pytest.raises(UserError, match="is a config JSON"):
        vlm.create(TINY_LM)
    with pytest.raises(CaptionerError, match="vlm.json is missing"):
        vlm.load(tmp_path / "lm")


def test_a_prefix_captioners_lineage_records_what_it_always_did():
    """The default writes what it wrote before kind vlm existed: no vlm-only key in the
    lineage, so the captioner folders (and the captions naming their hashes) keep their
    bytes."""
    params = Params()
    pretrain = stages.lineage_params("pretrain", params, params.captioner.pretrain)
    assert list(pretrain) == ["seed", "pretrain", "captioner"]
    assert list(pretrain["captioner"]) == [
        "lm", "vocab_size", "prefix_length", "mapper_hidden", "val_fraction"
    ]  # fmt: skip
    assert list(stages.lineage_params("stage1", params, params.captioner.stage1)) == [
        "seed", "stage1"
    ]  # fmt: skip


def test_ray_replicas_load_the_tower_and_write_the_local_bytes(embedded, vlm_folder, monkeypatch):
    from recaption import engine, io

    local = {p.name: p.read_bytes() for p in io.shard_paths(paths.IMAGE_EMBEDDINGS)}
    shutil.rmtree(paths.IMAGE_EMBEDDINGS)
    loaded = []

    def replica(worker, kwargs, units, params, desc, unit_name="unit"):
        kwargs = pickle.loads(pickle.dumps(kwargs))  # they travel to Ray actors
        instance = worker(**kwargs)
        loaded.append(type(instance.encoder))
        for index, unit in enumerate(units):
            yield index, instance(unit)

    monkeypatch.setattr(engine, "map_units", replica)
    embedded.write_params(**{**yaml.safe_load(Path("params.yaml").read_text()), "engine": "ray"})
    embed_stage.main()
    assert loaded == [vision_tower.VisionTower]
    assert {p.name: p.read_bytes() for p in io.shard_paths(paths.IMAGE_EMBEDDINGS)} == local
