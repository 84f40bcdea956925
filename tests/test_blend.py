"""Blended relabeling: known answers for the draw, and the stage's outputs."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption import audit, io, lineage, paths
from recaption.blend import Blend, binomial_bounds, uniform
from recaption.errors import UserError
from recaption.stages import blend as stage

KEYS = [f"{i:08d}" for i in range(4000)]


def synthetic_share(blend: Blend, epoch: int = 0) -> float:
    return sum(blend.source(k, epoch) != "ground_truth" for k in KEYS) / len(KEYS)


def test_uniform_is_a_pinned_function_of_seed_salt_and_key():
    # Known answer: the top 53 bits of sha256(b"0\x1fblend\x1f00000000"), whose hex
    # digest starts c2f7a7..., are 6859805286622229; over 2**53 that is 0.761591377365337.
    assert uniform(0, "blend", "00000000") == 6859805286622229 / 2**53
    assert uniform(0, "blend", "00000000") != uniform(1, "blend", "00000000")
    assert uniform(0, "blend", "00000000", epoch=0) != uniform(0, "blend", "00000000")


@pytest.mark.parametrize("ratio", [0.65, 0.8, 0.95])
def test_realised_ratio_is_within_binomial_bounds(ratio):
    low, high = binomial_bounds(len(KEYS), ratio)
    assert low <= synthetic_share(Blend(ratio)) <= high
    assert high - low < 0.05  # the bound is tight enough to catch a wrong ratio


def test_same_seed_same_choice_and_another_seed_another():
    a, b, c = Blend(0.5, seed=3), Blend(0.5, seed=3), Blend(0.5, seed=4)
    assert [a.source(k) for k in KEYS] == [b.source(k) for k in KEYS]
    assert [a.source(k) for k in KEYS] != [c.source(k) for k in KEYS]


def test_ratio_zero_is_exactly_the_ground_truth_and_one_exactly_synthetic():
    assert {Blend(0.0).source(k) for k in KEYS} == {"ground_truth"}
    assert {Blend(1.0).source(k) for k in KEYS} == {"descriptive"}
    assert {Blend(1.0, kind="short").source(k) for k in KEYS} == {"short"}


def test_raising_the_ratio_only_moves_images_to_synthetic():
    low, high = Blend(0.8), Blend(0.95)
    assert all(high.source(k) == "descriptive" for k in KEYS if low.source(k) == "descriptive")


def test_mixed_splits_synthetic_captions_by_short_fraction():
    blend = Blend(1.0, kind="mixed", short_fraction=0.3)
    short = sum(blend.source(k) == "short" for k in KEYS) / len(KEYS)
    low, high = binomial_bounds(len(KEYS), 0.3)
    assert low <= short <= high


def test_static_ignores_the_epoch_and_per_epoch_redraws_reproducibly():
    static, per_epoch = Blend(0.5), Blend(0.5, mode="per_epoch")
    assert [static.source(k, 0) for k in KEYS] == [static.source(k, 7) for k in KEYS]
    e0 = [per_epoch.source(k, 0) for k in KEYS]
    e1 = [per_epoch.source(k, 1) for k in KEYS]
    assert e0 != e1 and e1 == [per_epoch.source(k, 1) for k in KEYS]
    low, high = binomial_bounds(len(KEYS), 0.5)
    assert low <= synthetic_share(per_epoch, 1) <= high


def write_inputs(keys: list[str], references: bool = False) -> None:
    """The dataset (with `references`, its own short and descriptive captions too) and
    the captioner's synthetic captions."""
    paths.DATASET.mkdir(parents=True)
    columns = {"key": pa.array(keys), "caption": pa.array([f"gt {k}" for k in keys])}
    if references:
        columns["short"] = pa.array([f"ref short {k}" for k in keys])
        columns["descriptive"] = pa.array([f"ref descriptive {k}" for k in keys])
    io.write_shard(paths.DATASET, 0, pa.table(columns))
    io.write_table(paths.SYNTHETIC_CAPTIONS, pa.table({
        "key": pa.array(keys),
        "short": pa.array([f"short {k}" for k in keys]),
        "descriptive": pa.array([f"descriptive {k}" for k in keys]),
        "short_captioner": pa.array(["stage1-hash"] * len(keys)),
        "descriptive_captioner": pa.array(["stage2-hash"] * len(keys)),
    }))  # fmt: skip


def test_stage_writes_captions_sources_and_a_caption_version(project):
    keys = KEYS[:300]
    write_inputs(keys)
    project.write_params(blend={"synthetic_ratio": 0.8})
    report = stage.main()
    table = pq.read_table(paths.RELABELED_CAPTIONS).to_pylist()
    assert [r["key"] for r in table] == keys
    for row in table:
        assert row["caption"] == row[row["source"]]
        assert row["caption"].split()[0] == {"ground_truth": "gt"}.get(row["source"], row["source"])
    assert report["within_interval"]
    assert report["shares"]["descriptive"] == pytest.approx(report["synthetic_share"])
    assert json.loads(paths.BLEND_CONFIG.read_text())["synthetic_ratio"] == 0.8
    first = report["caption_version"]
    assert stage.main()["caption_version"] == first  # deterministic
    project.write_params(blend={"synthetic_ratio": 0.9})
    assert stage.main()["caption_version"] != first  # a new blend is a new caption version


def test_stage_refuses_images_without_synthetic_captions(project):
    write_inputs(KEYS[:10])
    io.write_table(paths.SYNTHETIC_CAPTIONS, pa.table({
        "key": pa.array(KEYS[:9]), "short": pa.array(["s"] * 9),
        "descriptive": pa.array(["d"] * 9)}))  # fmt: skip
    with pytest.raises(Exception, match="1 dataset images have no synthetic caption"):
        stage.main()


def test_upsampled_takes_the_ground_truths_slot_and_changes_no_draw():
    plain, up = Blend(0.7), Blend(0.7, upsampled=True)
    for key in KEYS[:500]:
        expected = "upsampled" if plain.source(key) == "ground_truth" else plain.source(key)
        assert up.source(key) == expected
    assert {Blend(0.0, upsampled=True).source(k) for k in KEYS} == {"upsampled"}


def test_stage_blends_upsampled_captions_and_names_them_in_the_version(project):
    keys = KEYS[:300]
    write_inputs(keys)
    project.write_params(blend={"synthetic_ratio": 0.5})
    plain = stage.main()
    assert pq.read_table(paths.RELABELED_CAPTIONS).column("upsampled").null_count == len(keys)
    rewrites = [f"upsampled {k}" for k in keys]
    io.write_table(paths.UPSAMPLED_CAPTIONS, pa.table({"key": keys, "upsampled": rewrites}))
    project.write_params(blend={"synthetic_ratio": 0.5, "use_upsampled": True})
    report = stage.main()
    table = pq.read_table(paths.RELABELED_CAPTIONS).to_pylist()
    assert {r["source"] for r in table} == {"descriptive", "upsampled"}
    for row in table:
        assert row["caption"] == row[row["source"]]
        if row["source"] == "upsampled":
            assert row["caption"] == f"upsampled {row['key']}"
    assert report["synthetic_share"] == plain["synthetic_share"]  # the same draws
    assert report["shares"]["upsampled"] == plain["shares"]["ground_truth"] > 0
    config = json.loads(paths.BLEND_CONFIG.read_text())
    assert config["upsampled_captions"] == lineage.tree_hash(paths.UPSAMPLED_CAPTIONS)
    assert report["caption_version"] != plain["caption_version"]
    io.write_table(paths.UPSAMPLED_CAPTIONS, pa.table({
        "key": pa.array(keys[1:]), "upsampled": pa.array(["u"] * (len(keys) - 1))}))  # fmt: skip
    with pytest.raises(Exception, match="1 dataset images have no upsampled caption"):
        stage.main()


REFERENCE = {"synthetic_source": "reference"}


def test_reference_source_takes_the_datasets_own_captions_without_the_captioners(project):
    write_inputs(KEYS[:8], references=True)
    paths.SYNTHETIC_CAPTIONS.unlink()  # the reference source never reads them
    project.write_params(blend={**REFERENCE, "synthetic_ratio": 0.5, "synthetic_kind": "mixed"})
    report = stage.main()
    table = pq.read_table(paths.RELABELED_CAPTIONS).to_pydict()
    # Known answer: seed 7's draws for the first 8 keys at ratio 0.5, mixed kinds.
    assert table["caption"] == [
        "gt 00000000", "gt 00000001", "ref descriptive 00000002", "ref short 00000003",
        "gt 00000004", "ref short 00000005", "gt 00000006", "gt 00000007",
    ]  # fmt: skip
    assert table["source"] == ["ground_truth", "ground_truth", "descriptive", "short",
                               "ground_truth", "short", "ground_truth", "ground_truth"]  # fmt: skip
    assert report["synthetic_share"] == 0.375 and report["synthetic_source"] == "reference"
    config = json.loads(paths.BLEND_CONFIG.read_text())
    assert config["synthetic_source"] == "reference" and config["synthetic_captions"] is None


def test_reference_blend_draws_as_the_captioner_blend_and_is_another_caption_version(project):
    keys = KEYS[:300]
    write_inputs(keys, references=True)
    project.write_params(blend={"synthetic_ratio": 0.8})
    captioner = stage.main()
    drawn = pq.read_table(paths.RELABELED_CAPTIONS).column("source").to_pylist()
    # The default source goes unsaid in blend.json: captioner blends keep their versions.
    assert "synthetic_source" not in json.loads(paths.BLEND_CONFIG.read_text())
    project.write_params(blend={**REFERENCE, "synthetic_ratio": 0.8})
    reference = stage.main()
    table = pq.read_table(paths.RELABELED_CAPTIONS).to_pylist()
    assert [r["source"] for r in table] == drawn  # the same images are synthetic
    for row in table:
        assert row["caption"] == row[row["source"]]
        expected = "gt" if row["source"] == "ground_truth" else f"ref {row['source']}"
        assert row["caption"] == f"{expected} {row['key']}"
    assert reference["shares"] == captioner["shares"] and reference["within_interval"]
    assert reference["caption_version"] != captioner["caption_version"]
    assert stage.main()["caption_version"] == reference["caption_version"]  # deterministic


def test_reference_source_is_refused_where_the_dataset_has_no_references(project):
    keys = KEYS[:10]
    lacking = {keys[2], keys[5], keys[7]}  # real data: references for some images at most
    paths.DATASET.mkdir(parents=True)
    io.write_shard(paths.DATASET, 0, pa.table({
        "key": keys, "caption": [f"gt {k}" for k in keys], "short": [f"s {k}" for k in keys],
        "descriptive": [None if k in lacking else f"d {k}" for k in keys]}))  # fmt: skip
    project.write_params(blend=REFERENCE)
    with pytest.raises(UserError) as err:
        stage.main()
    message = str(err.value)
    assert (
        "blend.synthetic_source = 'reference': 3 of 10 dataset images have no reference "
        "descriptive caption (first: 00000002)" in message
    )
    assert "add `short`/`descriptive` columns to the source" in message
    assert not paths.RELABELED.exists()  # nothing half-written
    # Only the kinds the blend can draw are needed: every image has a short one.
    project.write_params(blend={**REFERENCE, "synthetic_kind": "short"})
    assert stage.main()["synthetic_kind"] == "short"
    project.write_params(blend={**REFERENCE, "synthetic_kind": "mixed"})
    with pytest.raises(UserError, match="3 of 10 dataset images have no reference short or "):
        stage.main()


def write_generator_lineage() -> None:
    """A generator's lineage.json as train_generator writes it, over the current blend."""
    io.write_table(paths.SPLITS, pa.table({"key": ["k"], "first": [True], "second": [False],
                                           "heldout": [False]}))  # fmt: skip
    inputs = {"captions": paths.RELABELED, "dataset": paths.DATASET, "splits": paths.SPLITS}
    io.write_json(paths.GENERATOR / lineage.LINEAGE_NAME, {
        "stage": "train_generator", "params": {},
        "inputs": {n: {"path": str(p), "sha256": lineage.tree_hash(p)} for n, p in inputs.items()},
    })  # fmt: skip


def test_audit_follows_a_reference_blend_to_the_dataset_not_to_a_captioner(project):
    write_inputs(KEYS[:50], references=True)
    project.write_params(blend=REFERENCE)
    stage.main()
    write_generator_lineage()
    links = audit.chain(paths.GENERATOR)
    names = [link.name for link in links]
    assert names == ["generator", "caption version", "reference captions", "splits", "dataset"]
    assert all(link.status == "ok" for link in links), [link.to_dict() for link in links]
    assert links[1].params["synthetic_source"] == "reference"
    assert links[2].path == str(paths.DATASET)
    assert links[2].params == {"columns": ["short", "descriptive"]}
    assert "every link matches the disk" in audit.format_chain(links)
    # The captioner blend is another caption version: the audit flags the switch.
    project.write_params(blend={"synthetic_source": "captioner"})
    stage.main()
    links = {link.name: link for link in audit.chain(paths.GENERATOR)}
    assert links["caption version"].status == "changed"
    assert {"synthetic captions", "captioner stage2"} <= set(links)
    assert links["captioner stage2"].recorded == "stage2-hash"
    assert "reference captions" not in links


def test_history_gives_the_source_and_no_captioner_for_reference_captions():
    lock = {"stages": {
        "train_generator": {"outs": [{"path": str(paths.GENERATOR), "md5": "g"}],
                            "deps": [{"path": str(paths.RELABELED), "md5": "c"}],
                            "params": {"params.yaml": {"blend": {**REFERENCE}}}},
        "recaption": {"deps": [{"path": str(paths.CAPTIONER / "stage2"), "md5": "s2"}]},
    }}  # fmt: skip
    row = audit._lock_row(lock)
    assert (row["synthetic_source"], row["captioner_stage2"]) == ("reference", None)
    del lock["stages"]["train_generator"]["params"]["params.yaml"]["blend"]["synthetic_source"]
    row = audit._lock_row(lock)  # a lock from before the switch: the captioner's
    assert (row["synthetic_source"], row["captioner_stage2"]) == ("captioner", "s2")
    assert "synthetic_source" in audit.format_history([row])
