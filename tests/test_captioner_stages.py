"""The three captioner stages in-process on a tiny project: switches, epochs, lineage, real LMs."""

import json
import math
from pathlib import Path

import pytest
import torch

from recaption import embed, lineage, paths, precision, streaming
from recaption.models import captioner as cap
from recaption.stages import captioner as stages
from recaption.stages import clip_pretrain
from recaption.stages import embed as embed_stage
from test_captioner import assert_holds_saved_weights, save_local_lm
from test_clip_embed import TINY_ARCH, TRAIN, prepare

TINY_LM = str(Path(__file__).parent / "data" / "tiny-gpt2.json")
STAGE = {"batch_size": 4, "warmup_steps": 1, "eval_every": 2}


@pytest.fixture
def arch(project) -> Path:
    path = project.root / "tiny-clip.json"
    path.write_text(json.dumps(TINY_ARCH))
    return path


@pytest.fixture
def embedded(project, arch):
    write(project, arch)
    prepare(project)
    clip_pretrain.main()
    embed_stage.main()
    return project


def captioner_params(**stages_overrides) -> dict:
    return {
        "lm": TINY_LM,
        "vocab_size": 300,
        "mapper_hidden": 16,
        "val_fraction": 0.2,
        "pretrain": {**STAGE, "steps": 3},
        "stage1": {**STAGE, "steps": 3},
        "stage2": {**STAGE, "steps": 3, "max_tokens": 40},
        **stages_overrides,
    }


def write(project, arch, **captioner) -> None:
    project.write_params(
        clip={"model": str(arch), "train": TRAIN},
        embed={"num_workers": 0, "batch_size": 8, "probe_train_size": 20},
        captioner=captioner_params(**captioner),
    )


def read_lineage(stage: str) -> dict:
    return json.loads((paths.CAPTIONER / stage / "lineage.json").read_text())


def test_stages_chain_with_pretraining_off_and_epochs(embedded, arch):
    write(embedded, arch, pretrain={**STAGE, "steps": 3, "enabled": False},
          stage1={**STAGE, "epochs": 2})  # fmt: skip
    for stage in stages.STAGES:
        stages.main(stage)
    assert read_lineage("pretrain")["metrics"]["steps"] == 0  # passed on untrained
    stage1 = read_lineage("stage1")
    n_train = 10 - 2  # sample.size 10, val_fraction 0.2
    assert stage1["metrics"]["steps"] == math.ceil(2 * n_train / 4)
    # Each lineage names the precision `auto` resolved to on this machine, and why.
    _, expected = precision.settle("auto", "cpu", "test")
    assert stage1["compute"] == expected
    assert (
        f"Trained in **{expected['precision']}**"
        in (paths.CAPTIONER / "stage1" / "README.md").read_text()
    )
    stage2 = read_lineage("stage2")
    assert stage2["inputs"]["parent"]["sha256"] == lineage.tree_hash(paths.CAPTIONER / "stage1")
    assert stage2["inputs"]["captions"]["path"] == str(paths.DESCRIPTIVE)
    assert (paths.DVCLIVE / "captioner_stage2" / "metrics.json").is_file()
    model = cap.load(paths.CAPTIONER / "stage2")
    assert model.mapper.config.grid_cells == 16  # the embeddings' 4x4 grid reaches the mapper


def test_a_local_lm_folder_named_in_params_is_trained_with_its_own_tokenizer(
    embedded, arch, tmp_path
):
    save_local_lm(tmp_path / "lm")
    # A frozen LM: the mapper trains through it, and it comes back as the folder holds it.
    write(
        embedded, arch, lm=str(tmp_path / "lm"), pretrain={**STAGE, "steps": 3, "train_lm": False}
    )
    stages.main("pretrain")
    model = cap.load(paths.CAPTIONER / "pretrain")
    assert_holds_saved_weights(model.lm, tmp_path / "lm")  # the folder's weights, not fresh ones
    assert model.mapper.config.d_model == 24  # the local LM's width, not the built-in's
    assert model.tokenizer.eos_token == "<eos>"  # its own tokenizer, not one trained here
    record = read_lineage("pretrain")
    assert record["params"]["captioner"]["lm"] == str(tmp_path / "lm")
    assert record["metrics"]["steps"] == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_a_feature_stream_gives_each_pair_once_an_epoch_with_its_images_features(embedded, workers):
    folder = embed.EmbeddingFolder(paths.IMAGE_EMBEDDINGS)
    keys = folder.keys[:7]
    pairs = [*keys, keys[0], keys[3]]  # two images with a second caption: 9 pairs
    index = streaming.shard_index(paths.IMAGE_EMBEDDINGS, pairs)
    stream = streaming.FeatureStream(index, True, 3, seed=2, buffer=2, workers=workers)
    assert len(stream) == 9
    features = torch.from_numpy(folder.features_of(pairs))
    seen = []
    for step in range(3):
        idx, (batch,) = stream.batch(step)
        assert batch.dtype == torch.float32 and torch.equal(batch, features[idx])
        seen += idx
    assert sorted(seen) == list(range(9)) and seen == stream.epoch_order(0)


def test_pretraining_streams_features_that_do_not_fit_and_reads_only_the_validation_rows(
    embedded, arch, monkeypatch
):
    write(embedded, arch)
    stages.main("pretrain")
    held = read_lineage("pretrain")["metrics"]
    embedded.write_params(
        clip={"model": str(arch), "train": TRAIN},
        embed={"num_workers": 0, "batch_size": 8, "probe_train_size": 20},
        captioner=captioner_params(),
        data={"stream": {"mode": "auto", "memory_gb": 1e-9, "buffer": 4, "workers": 0}},
    )
    asked = []
    features_of = embed.EmbeddingFolder.features_of

    def spy(self, keys):
        asked.append(len(keys))
        return features_of(self, keys)

    monkeypatch.setattr(embed.EmbeddingFolder, "features_of", spy)
    stages.main("pretrain")
    streamed = read_lineage("pretrain")["metrics"]
    n_val = len(stages.split_pairs("pretrain", stages.stage_pairs("pretrain"),
                                   stages.load_params())[1])  # fmt: skip
    assert asked == [n_val]  # the validation pairs' rows alone were read whole
    assert streamed["steps"] == held["steps"] == 3
    assert streamed["train_loss"] != held["train_loss"]  # the stream's order, not the held one


def test_an_lm_spec_that_does_not_exist_is_a_clear_error(embedded, arch, tmp_path):
    write(embedded, arch, lm=str(tmp_path / "missing.json"))
    with pytest.raises(cap.CaptionerError, match="does not exist"):
        stages.main("pretrain")
