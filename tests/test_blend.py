"""Blended relabeling: known answers for the draw, and the stage's outputs."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption import io, lineage, paths
from recaption.blend import Blend, binomial_bounds, uniform
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


def write_inputs(keys: list[str]) -> None:
    paths.DATASET.mkdir(parents=True)
    io.write_shard(paths.DATASET, 0, pa.table({
        "key": pa.array(keys), "caption": pa.array([f"gt {k}" for k in keys])}))  # fmt: skip
    io.write_table(paths.SYNTHETIC_CAPTIONS, pa.table({
        "key": pa.array(keys),
        "short": pa.array([f"short {k}" for k in keys]),
        "descriptive": pa.array([f"descriptive {k}" for k in keys]),
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
