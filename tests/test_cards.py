"""Model cards: written from the lineage record, beside lineage.json."""

import json

from recaption import cards, lineage

RECORD = {
    "stage": "train_generator",
    "inputs": {"captions": {"path": "data/relabeled", "sha256": "ab" * 32}},
    "params": {"seed": 0, "blend": {"synthetic_ratio": 0.95}},
    "caption_version": "cd" * 32,
    "metrics": {"loss": 0.0282, "steps": 1200},
    "compute": {"precision": "fp32", "device": "cpu", "hardware": "AVX2", "native_bf16": False},
}


def test_a_generator_card_names_its_caption_version_data_params_and_figures():
    card = cards.render(RECORD)
    assert card.startswith("# Text-to-image generator\n")
    assert f"**Caption version:** `{'cd' * 32}`" in card
    assert f"| captions | `data/relabeled` | `{'ab' * 8}` |" in card
    assert "synthetic_ratio: 0.95" in card
    assert "| loss | 0.0282 |" in card and "| steps | 1200 |" in card
    assert 'GeneratorPipeline.from_pretrained("models/generator"' in card
    assert "Trained in **fp32** on cpu (`AVX2`, no native bf16)" in card


def test_a_card_without_inputs_or_caption_version_says_where_its_data_came_from():
    card = cards.render({"stage": "oracle", "inputs": {}, "params": {"evaluate.seed": 3}})
    assert "Caption version" not in card
    assert "Fresh renders of the built-in world" in card
    assert "## Figures of the run" not in card
    assert "## Compute" not in card  # loaded, not trained here: nothing to say


def test_write_lineage_writes_the_card_from_the_same_record(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    record = lineage.write_lineage(tmp_path / "m", "captioner_stage1",
                                   {"captions": tmp_path / "data.txt"}, {"seed": 1},
                                   metrics={"val_loss": 0.5})  # fmt: skip
    assert json.loads((tmp_path / "m" / "lineage.json").read_text()) == record
    assert (tmp_path / "m" / "README.md").read_text() == cards.render(record)


def test_a_clip_card_names_its_pretraining_corpus_when_it_had_one():
    record = {
        "stage": "clip_pretrain",
        "inputs": {"dataset": {"path": "data/dataset", "sha256": "ef" * 32}},
        "params": {"clip": {"train": {"corpus": 40000, "corpus_seed": 2000003}}},
    }
    card = cards.render(record)
    assert (
        "a pretraining corpus of 40,000 fresh renders of the built-in world (seed 2000003" in card
    )
    assert 'create_model_and_transforms(\n    "local-dir:models/clip")' in card
    assert "twin" not in card and "scene loss" not in card
    record["params"]["clip"]["train"]["twins"] = 0.5
    assert "A share of 0.5 of them also has a twin" in cards.render(record)
    record["params"]["clip"]["train"]["scene_loss"] = 10.0
    assert "(scene loss, weight 10)" in cards.render(record)
    assert "The dataset's own scenes were never shown." in cards.render(record)
    record["params"]["data.source"] = "parquet"  # real data renders no corpus
    assert "pretraining corpus" not in cards.render(record)
    record["params"]["data.source"] = "synthetic"
    record["params"]["clip"]["train"]["corpus"] = 0
    assert "pretraining corpus" not in cards.render(record)
