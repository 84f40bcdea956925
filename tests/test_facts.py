"""Fact accuracy (graded prompt following) and the noise guard, on hand-made known answers."""

import numpy as np
import pytest

from recaption.metrics import facts, geneval
from recaption.metrics.noise_guard import NoiseError, check_noise, refuse_noise, roughness
from recaption.models import oracle as oracle_lib
from recaption.world import (
    Scene,
    SceneObject,
    WorldConfig,
    descriptive_caption,
    make_example,
    prompt_suite,
    sample_scene,
)


def detection(*objects, background="white"):
    """objects: (shape, colour, row, col)."""
    return {
        "background": background,
        "objects": [{"shape": s, "colour": c, "row": r, "col": k} for s, c, r, k in objects],
        "glyph": None,
    }


def demands(*objects, relation=None, **extra):
    """objects: (shape, colour, count)."""
    objs = [{"shape": s, "colour": c, "count": n} for s, c, n in objects]
    return {"objects": objs, "relation": relation, **extra}


def failed(det, dem):
    return [f.id for f, held in facts.verdicts(det, dem) if not held]


# "a red circle to the left of a blue square": 5 facts.
LEFT_OF = demands(("circle", "red", 1), ("square", "blue", 1), relation="left of")


def test_the_facts_of_a_prompt_and_their_parents():
    got = [(f.id, f.kind, f.parents) for f in facts.decompose(LEFT_OF)]
    assert got == [
        ("object 0", "object", ()),
        ("object 0: colour", "colour", ("object 0",)),
        ("object 1", "object", ()),
        ("object 1: colour", "colour", ("object 1",)),
        ("relation", "relation", ("object 0", "object 1")),
    ]
    counting = facts.decompose(demands(("star", "pink", 3), background="black"))
    assert [f.text for f in counting] == [
        "a star", "a pink star", "exactly 3 pink stars", "a black background",
    ]  # fmt: skip


def test_a_perfect_image_scores_one():
    det = detection(("circle", "red", 1, 0), ("square", "blue", 1, 2))
    assert facts.fact_accuracy(det, LEFT_OF) == 1.0
    assert failed(det, LEFT_OF) == []


def test_a_wrong_colour_loses_exactly_the_colour_fact():
    det = detection(("circle", "green", 1, 0), ("square", "blue", 1, 2))
    assert failed(det, LEFT_OF) == ["object 0: colour"]
    assert facts.fact_accuracy(det, LEFT_OF) == pytest.approx(4 / 5)
    three_red = detection(("square", "red", 0, 0), ("square", "red", 0, 1), ("square", "red", 0, 2))
    assert failed(three_red, demands(("square", "blue", 3))) == ["object 0: colour"]


def test_a_missing_object_loses_the_object_and_all_its_children():
    det = detection(("square", "blue", 1, 2), ("star", "red", 1, 0))
    assert failed(det, LEFT_OF) == ["object 0", "object 0: colour", "relation"]
    assert facts.fact_accuracy(det, LEFT_OF) == pytest.approx(2 / 5)
    # A child fails with its parent even where its own test alone would pass: no circle,
    # but "exactly 0 circles" is not what "two circles" asked.
    assert failed(detection(), demands(("circle", "red", 2))) == [
        "object 0", "object 0: colour", "object 0: count",
    ]  # fmt: skip


def test_a_count_off_by_one_loses_the_count():
    dem = demands(("square", "blue", 3))
    two = detection(("square", "blue", 0, 0), ("square", "blue", 2, 2))
    assert failed(two, dem) == ["object 0: count"]
    assert facts.fact_accuracy(two, dem) == pytest.approx(2 / 3)
    # Another colour of the same shape is not counted while some have the right colour.
    three_and_red = detection(("square", "blue", 0, 0), ("square", "blue", 0, 1),
                              ("square", "blue", 0, 2), ("square", "red", 2, 2))  # fmt: skip
    assert facts.fact_accuracy(three_and_red, dem) == 1.0


@pytest.mark.parametrize("relation", ["left of", "above"])
def test_a_reversed_relation_loses_the_relation(relation):
    dem = demands(("circle", "red", 1), ("square", "blue", 1), relation=relation)
    # The circle at the bottom right, the square at the top left: right of and below it.
    det = detection(("circle", "red", 2, 2), ("square", "blue", 0, 0))
    assert failed(det, dem) == ["relation"]
    assert facts.fact_accuracy(det, dem) == pytest.approx(4 / 5)


def test_background_and_positions_where_the_prompt_states_them():
    dem = {"objects": [{"shape": "circle", "colour": "red", "count": 2,
                        "positions": ["top left", "bottom"]}],
           "relation": None, "background": "gray"}  # fmt: skip
    det = detection(("circle", "red", 0, 0), ("circle", "red", 1, 1), background="white")
    assert failed(det, dem) == ["object 0: at bottom", "background"]
    assert facts.fact_accuracy(det, dem) == pytest.approx(4 / 6)


def test_no_detection_is_not_scored():
    assert facts.verdicts(None, LEFT_OF) == []
    assert facts.fact_accuracy(None, LEFT_OF) is None


def test_a_full_score_is_a_geneval_pass_on_the_suite():
    cfg = WorldConfig(image_size=32, min_objects=1, max_objects=5)
    scenes = [sample_scene(np.random.default_rng([5, i]), cfg) for i in range(150)]
    dets = [oracle_lib.scene_detection(s) for s in scenes]
    passes = 0
    for prompt in prompt_suite(3, 8):
        for det in dets:
            full = facts.fact_accuracy(det, prompt.demands) == 1.0
            passed = geneval.follows(det, prompt.demands, prompt.category)
            assert full == passed, (prompt.prompt, det)
            passes += passed
    assert passes > 100  # the check is not vacuous


def test_a_descriptive_captions_demands_are_true_of_its_scene():
    cfg = WorldConfig(image_size=32)
    for i in range(40):
        example = make_example(11, i, cfg)
        dem = facts.caption_demands(example.descriptive, example.scene)
        assert dem["background"] == example.scene.background
        assert facts.fact_accuracy(oracle_lib.scene_detection(example.scene), dem) == 1.0
    scene = Scene("black", (SceneObject("circle", "red", "large", "top left"),
                            SceneObject("circle", "red", "small", "bottom")), 0)  # fmt: skip
    caption = descriptive_caption(scene, np.random.default_rng(0))
    dem = facts.caption_demands(caption, scene)
    assert dem["objects"][0]["count"] == 2, caption


# ---- the bootstrap interval --------------------------------------------------------------


def test_the_bootstrap_interval_on_a_tiny_example():
    # Three prompts of two images: item means 1.0, 0.5, 0.0 (mean 0.5).
    stratum = {"b": [1.0, 0.0], "a": [1.0, 1.0], "c": [0.0, 0.0]}
    assert facts.stratified_mean([stratum]) == 0.5
    lo, hi = facts.bootstrap_interval([stratum])
    assert (lo, hi) == pytest.approx((0.0, 1.0))  # 3 items: all-0 / all-1 resamples are 1 in 27
    assert facts.bootstrap_interval([stratum]) == (lo, hi)  # seeded
    assert facts.bootstrap_interval([dict(reversed(stratum.items()))]) == (lo, hi)  # order-free
    # Four prompts, item means 0.25, 0.5, 0.75, 1.0; pinned from default_rng(0), 1000 draws.
    four = {"p0": [0.0, 0.5], "p1": [0.5, 0.5], "p2": [1.0, 0.5], "p3": [1.0, 1.0]}
    assert facts.stratified_mean([four]) == 0.625
    assert facts.bootstrap_interval([four]) == pytest.approx((0.375, 0.875))


def test_the_interval_contains_the_mean_and_narrows_with_more_prompts():
    rng = np.random.default_rng(0)
    widths = []
    for prompts in (10, 40, 160):
        stratum = {f"p{i}": rng.random(2).tolist() for i in range(prompts)}
        mean = facts.stratified_mean([stratum])
        lo, hi = facts.bootstrap_interval([stratum])
        assert lo < mean < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]


def test_a_mean_over_categories_resamples_within_each():
    easy = {f"e{i}": [1.0] for i in range(5)}
    mixed = {"m0": [0.0], "m1": [1.0]}
    assert facts.stratified_mean([easy, mixed]) == 0.75  # not 6 / 7 over prompts
    lo, hi = facts.bootstrap_interval([easy, mixed])
    assert (lo, hi) == pytest.approx((0.5, 1.0))  # the easy category never varies


# ---- the noise guard ---------------------------------------------------------------------


def renders(seed, n=64, size=32):
    cfg = WorldConfig(image_size=size)
    return np.stack([np.asarray(make_example(seed, i, cfg).image) for i in range(n)])


@pytest.mark.parametrize("size", [16, 32])
def test_world_renders_pass_the_noise_guard_and_uniform_noise_is_refused(size):
    reference, generated = renders(0, size=size), renders(1, size=size)
    check = refuse_noise(generated, reference)
    assert check.generated < check.threshold / 2  # a wide margin
    noise = np.random.default_rng(0).integers(0, 256, generated.shape, dtype=np.uint8)
    with pytest.raises(NoiseError, match="look like noise"):
        refuse_noise(noise, reference)


def test_the_noise_guard_looks_at_the_majority():
    reference = renders(0)
    noise = np.random.default_rng(0).integers(0, 256, reference.shape, dtype=np.uint8)
    some = np.concatenate([reference[:40], noise[:24]])
    assert not check_noise(some, reference).noise
    assert check_noise(np.concatenate([reference[:24], noise[:40]]), reference).noise


def test_roughness_known_answers():
    flat = np.full((1, 4, 4, 3), 90, np.uint8)
    assert roughness(flat).tolist() == [0.0]
    stripes = np.zeros((1, 4, 4, 3), np.uint8)
    stripes[:, :, 1::2] = 60  # columns alternate 0, 60: every horizontal step is 60
    assert roughness(stripes).tolist() == [30.0]  # (60 across + 0 down) / 2
