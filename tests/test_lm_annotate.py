"""Caption sets written by a language model: scene descriptions, the built-in LM through
the annotate stage, augmentation, an instruction LM, and the refusals."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption import annotations, datasets, lm_annotations, paths
from recaption.annotations import AnnotationError
from recaption.models import upsampler as up_lib
from recaption.params import ParamsError, load_params
from recaption.stages import annotate, captioner, ingest, sample
from recaption.world import Scene, SceneObject, SceneText, WorldConfig
from recaption.world.describe import describe_scene
from test_sample_annotate import real_dataset
from test_upsample import TINY_LM

from real_tiny import write_lm

# The tests' GPT-2 (64 positions), trained for seconds: enough to write non-empty text.
TINY_ANNOTATE = {
    "lm": TINY_LM,
    "lm_train": {"scenes": 50, "steps": 150, "lr": 0.01, "warmup_steps": 5, "batch_size": 16,
                 "vocab_size": 300, "max_source_tokens": 40, "max_tokens": 20},
    "decoding": {"max_new_tokens": 12},
    "rewrite_decoding": {"max_new_tokens": 12},
}  # fmt: skip


def tiny_world(project, **annotate_params):
    project.write_params(annotate={**TINY_ANNOTATE, **annotate_params})
    ingest.main()
    sample.main()


def test_a_scene_is_described_as_plain_text():
    scene = Scene(
        "gray",
        (
            SceneObject("circle", "red", "large", "top left"),
            SceneObject("square", "blue", "small", "center"),
            SceneObject("circle", "red", "small", "bottom right"),
        ),
        main=0,
        text=SceneText("K", "top right", "white"),
    )
    assert describe_scene(scene) == (
        "background gray. red circle x2: top left large main, bottom right small. "
        "blue square: center small. letter K: top right."
    )


def test_world_pairs_are_seeded_and_cover_each_task():
    cfg = WorldConfig()
    pairs = lm_annotations.world_pairs(cfg, 3, seed=11, rewrite=True)
    assert pairs == lm_annotations.world_pairs(cfg, 3, seed=11, rewrite=True)
    assert [source.split(":")[0] for source, _ in pairs[:4]] == [
        "short", "descriptive", "rewrite", "rewrite"
    ]  # fmt: skip
    assert pairs[2][0] == "rewrite: " + pairs[0][1]  # a reference -> another phrasing of it
    assert len(lm_annotations.world_pairs(cfg, 3, seed=11, rewrite=False)) == 6
    assert pairs != lm_annotations.world_pairs(cfg, 3, seed=12, rewrite=True)


def test_a_real_row_is_described_by_the_named_columns_and_meta_fields():
    row = {"caption": "a  dog\non grass", "source": "", "meta": json.dumps({"tags": ["dog"]})}
    assert lm_annotations.describe_row(row, ["tags", "source", "caption"]) == (
        'tags: ["dog"]; caption: a dog on grass'
    )


def test_the_builtin_lm_writes_both_sets_from_the_scenes(project):
    tiny_world(project, source="lm")
    report = annotate.main()
    splits = datasets.read_splits(paths.SPLITS)
    for name, part in (("short", "first"), ("descriptive", "second")):
        table = pq.read_table(paths.SHORT if name == "short" else paths.DESCRIPTIVE)
        assert table.column_names == ["key", "caption", "origin"]
        assert table.column("key").to_pylist() == sorted(splits[part])
        assert set(table.column("origin").to_pylist()) == {"lm"}
        assert all(c.strip() for c in table.column("caption").to_pylist())
        facts = report[name]["facts"]
        assert set(facts) == {"lm", "reference"}
        assert set(facts["lm"]) == {"precision", "recall", "hallucination"}
    assert report["descriptive"]["facts"]["reference"]["recall"] == 1.0  # the scene, in full
    assert report["source"] == "lm" and report["lm"]["builtin"]
    assert report["lm"]["training"]["pairs"] == 2 * 50  # short and descriptive per scene
    assert json.loads(paths.ANNOTATE_REPORT.read_text()) == report


def test_augment_adds_n_rewrites_per_caption_the_same_bytes_twice(project):
    tiny_world(project, augment=2)  # source synthetic: the references, rewritten
    annotate.main()
    short = pq.read_table(paths.SHORT)
    references = datasets.load_rows(paths.DATASET, ["short"], set(short.column("key").to_pylist()))
    assert short.num_rows == 3 * len(references)
    rows = short.to_pylist()
    for i, ref in enumerate(references):  # key order: the reference, then two rewrites
        assert [r["key"] for r in rows[3 * i : 3 * i + 3]] == [ref["key"]] * 3
        assert [r["origin"] for r in rows[3 * i : 3 * i + 3]] == ["human", "lm", "lm"]
        assert rows[3 * i]["caption"] == ref["short"]
    assert datasets.read_captions(paths.SHORT) == {r["key"]: r["short"] for r in references}
    first = paths.SHORT.read_bytes(), paths.DESCRIPTIVE.read_bytes()
    annotate.main()
    assert (paths.SHORT.read_bytes(), paths.DESCRIPTIVE.read_bytes()) == first


def test_without_an_lm_the_sets_keep_their_two_columns(project):
    tiny_world(project)
    report = annotate.main()
    assert pq.read_table(paths.SHORT).column_names == ["key", "caption"]
    assert "lm" not in report and "origin" not in report["short"]


def test_an_instruction_lm_writes_from_the_named_columns(project):
    real_dataset(project, with_columns=False)
    sample.main()
    write_lm(project.root / "chat-lm", ["a red circle on a white background"])
    source = {"source": "parquet", "path": "src.parquet"}
    decoding = {"strategy": "greedy", "max_new_tokens": 8}  # a random LM: greedy, non-empty
    project.write_params(
        data=source,
        annotate={"source": "lm", "lm": "chat-lm", "augment": 1, "decoding": decoding,
                  "describe_columns": ["caption", "shape"], "rewrite_decoding": dict(decoding)},
    )  # fmt: skip
    report = annotate.main()
    assert not report["lm"]["builtin"] and "training" not in report["lm"]
    short = pq.read_table(paths.SHORT)
    assert short.num_rows == 2 * 10 and set(short.column("origin").to_pylist()) == {"lm"}
    assert "facts" not in report["short"]  # real data: no scenes to check against


def test_an_instruction_lm_is_told_each_task_through_its_chat_template(tmp_path):
    write_lm(tmp_path / "chat-lm", ["a red circle on a white background"])
    up = up_lib.create(str(tmp_path / "chat-lm"), [], 300, 0)
    short = up.instructed(lm_annotations.SHORT.instruction)
    prompt = short.tokenizer.decode(short.prompt_ids(lm_annotations.SHORT.input("caption: a dog")))
    assert prompt.strip() == (
        f"<|system|>{lm_annotations.SHORT.instruction}\n<|user|>short: caption: a dog\n"
        "<|assistant|>"
    )
    up.tokenizer.chat_template = None
    with pytest.raises(AnnotationError, match="no chat template"):
        lm_annotations.check_instruction_lm(up, "chat-lm")


def test_lm_annotation_refusals(project):
    real_dataset(project, with_columns=False)
    sample.main()
    write_lm(project.root / "chat-lm", ["a red circle on a white background"])
    source = {"source": "parquet", "path": "src.parquet"}
    project.write_params(data=source, annotate={"source": "lm", "lm": "chat-lm"})
    with pytest.raises(AnnotationError, match="needs annotate.describe_columns"):
        annotate.main()
    project.write_params(
        data=source, annotate={"source": "lm", "lm": "chat-lm", "describe_columns": ["alt"]}
    )
    with pytest.raises(AnnotationError, match="no dataset column or meta field 'alt'.*shape"):
        annotate.main()
    project.write_params(data=source, annotate={"source": "lm", "describe_columns": ["caption"]})
    with pytest.raises(AnnotationError, match="name an instruction LM"):
        annotate.main()


def test_the_lm_scenes_have_their_own_seed(project):
    path = project.write_params(annotate={"source": "lm", "lm_train": {"scenes_seed": 7}})
    with pytest.raises(ParamsError, match="scenes_seed"):
        load_params(path)
    project.write_params(annotate={"source": "lm", "lm_train": {"scenes_seed": 8}})
    assert load_params(path).annotate.lm_train.scenes_seed == 8


def test_with_origin_refuses_an_empty_rewrite():
    table = pa.table(
        {"key": ["a"], "caption": ["a red circle"]}, schema=annotations.ANNOTATION_SCHEMA
    )
    with pytest.raises(AnnotationError, match="1 of 2 are empty"):
        annotations.with_origin(table, annotations.HUMAN, [["two red circles", " "]], "rewrites")


def test_the_captioner_stages_train_on_every_row_of_an_augmented_set(project):
    table = annotations.with_origin(
        pa.table({"key": ["b", "a"], "caption": ["a blue star", "a red circle"]},
                 schema=annotations.ANNOTATION_SCHEMA),
        annotations.HUMAN, [["one blue star"], ["a circle in red"]], "rewrites",
    )  # fmt: skip
    paths.SHORT.parent.mkdir(parents=True)
    pq.write_table(table, paths.SHORT)
    pairs = captioner.stage_pairs("stage1")
    assert pairs == [("b", "a blue star"), ("b", "one blue star"),
                     ("a", "a red circle"), ("a", "a circle in red")]  # fmt: skip
    assert captioner.of_keys(pairs, ["a", "b"]) == [pairs[2], pairs[3], pairs[0], pairs[1]]
    assert captioner.of_keys(pairs, ["b"]) == pairs[:2]
    # Validation holds out whole images: an image's rewrites go where its caption goes.
    project.write_params(captioner={"val_fraction": 0.5})
    params = load_params(paths.PARAMS)
    train, val = captioner.split_pairs("stage1", pairs, params)
    assert sorted(train + val) == sorted(pairs)
    assert len({k for k, _ in val}) == 1 and not {k for k, _ in train} & {k for k, _ in val}
    assert captioner.split_pairs("stage1", pairs, params) == (train, val)
    assert datasets.read_captions(paths.SHORT) == {"b": "a blue star", "a": "a red circle"}
