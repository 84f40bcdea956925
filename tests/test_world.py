"""Tests for the synthetic world: scenes, rendering, captions, parser and prompts."""

from __future__ import annotations

import json
import math
import time
from collections import Counter

import numpy as np
import pytest

from recaption.world import (
    ALT_KINDS,
    BACKGROUNDS,
    CATEGORIES,
    COLOURS,
    POSITIONS,
    SHAPES,
    Prompt,
    Scene,
    SceneObject,
    SceneText,
    WorldConfig,
    alt_text,
    descriptive_caption,
    fact_phrase,
    make_example,
    parse_caption,
    parse_spans,
    prompt_suite,
    render,
    sample_scene,
    scene_facts,
    scene_prompt,
    short_caption,
)

CFG = WorldConfig()
# Crowded scenes stress grouping, counting and the parser's clause rules.
CROWDED = WorldConfig(min_objects=1, max_objects=7, text_probability=0.6, repeat_probability=0.6)


def scenes(n: int, cfg: WorldConfig = CFG, seed: int = 0) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, cfg) for _ in range(n)]


# --- determinism --------------------------------------------------------------------------


def test_make_example_is_deterministic_and_order_independent():
    later = make_example(11, 5, CFG)
    for i in range(5):  # making other examples first must not change example 5
        make_example(11, i, CFG)
    again = make_example(11, 5, CFG)
    assert later.image.tobytes() == again.image.tobytes()
    assert later.to_dict() == again.to_dict()


def test_different_indices_and_seeds_give_different_examples():
    dicts = [json.dumps(make_example(3, i, CFG).to_dict()) for i in range(30)]
    assert len(set(dicts)) == 30
    assert make_example(3, 0, CFG).to_dict() != make_example(4, 0, CFG).to_dict()


def test_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="seed"):
        make_example(-1, 0, CFG)


# --- scenes -------------------------------------------------------------------------------


def test_object_counts_within_range_and_cells_distinct():
    cfg = WorldConfig(min_objects=2, max_objects=3, text_probability=1.0)
    counts = Counter()
    for scene in scenes(300, cfg):
        counts[len(scene.objects)] += 1
        cells = [o.cell for o in scene.objects] + ([scene.text.cell] if scene.text else [])
        assert len(cells) == len(set(cells))
        assert scene.text is not None  # a free cell always exists with <= 3 objects
        # reading order, so captions and the parser see a stable order
        assert [o.cell for o in scene.objects] == sorted(o.cell for o in scene.objects)
    assert set(counts) == {2, 3}


def test_main_object_is_the_only_large_one():
    sizes_alone = set()
    for scene in scenes(400):
        main = scene.main_object
        others = [o for i, o in enumerate(scene.objects) if i != scene.main]
        if others:
            assert main.size == "large" and all(o.size == "small" for o in others)
        else:
            sizes_alone.add(main.size)
    assert sizes_alone == {"small", "large"}  # alone, either size occurs


def test_repeats_make_counting_scenes():
    cfg = WorldConfig(min_objects=3, max_objects=4, repeat_probability=1.0)
    for scene in scenes(50, cfg):
        main = scene.main_object
        same = [o for o in scene.objects if (o.colour, o.shape) == (main.colour, main.shape)]
        assert len(same) >= 2
    never = WorldConfig(min_objects=2, max_objects=2, repeat_probability=0.0)
    repeated = sum(len({(o.colour, o.shape) for o in s.objects}) == 1 for s in scenes(400, never))
    assert repeated < 30  # only by chance: 1/48 per scene


def test_text_probability_is_respected():
    with_text = sum(s.text is not None for s in scenes(2000))
    assert abs(with_text / 2000 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 2000)
    assert all(s.text is None for s in scenes(100, WorldConfig(text_probability=0.0)))


def test_scene_dict_round_trip_is_json():
    for scene in scenes(100, CROWDED):
        d = json.loads(json.dumps(scene.to_dict()))
        assert Scene.from_dict(d) == scene
        assert set(d) == {"background", "objects", "main", "text"}
        assert set(d["objects"][0]) == {
            "shape",
            "colour",
            "size",
            "position",
            "row",
            "col",
            "offset",
            "scale",
        }
        if d["text"]:
            assert set(d["text"]) == {"glyph", "kind", "position", "row", "col", "colour"}
            assert d["text"]["kind"] == ("digit" if d["text"]["glyph"].isdigit() else "letter")


def test_scene_validation():
    square = SceneObject("square", "red", "large", "center")
    with pytest.raises(ValueError, match="distinct cells"):
        Scene("white", (square, SceneObject("star", "blue", "small", "center")), 0)
    with pytest.raises(ValueError, match="distinct cells"):
        Scene("white", (square,), 0, SceneText("K", "center", "black"))
    with pytest.raises(ValueError, match="background"):
        Scene("red", (square,), 0)
    with pytest.raises(ValueError, match="row/col"):
        SceneObject.from_dict({**square.to_dict(), "row": 0})


# --- rendering ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 48])
def test_image_size_and_mode(size):
    example = make_example(0, 1, WorldConfig(image_size=size))
    assert example.image.mode == "RGB"
    assert example.image.size == (size, size)


def test_main_object_centre_pixel_has_its_colour():
    shapes_seen = set()
    for scene in scenes(300, seed=1):
        main = scene.main_object
        pixels = np.asarray(render(scene, 32), dtype=int)  # (32, 32, 3)
        row, col = main.cell
        y, x = int((row + 0.5) * 32 / 3), int((col + 0.5) * 32 / 3)
        diff = np.abs(pixels[y, x] - np.array(COLOURS[main.colour])).max()
        assert diff <= 8, (scene, pixels[y, x])
        shapes_seen.add(main.shape)
    assert shapes_seen == set(SHAPES)


@pytest.mark.parametrize("position", list(POSITIONS))
def test_an_object_is_drawn_in_the_cell_its_position_names(position):
    # The cell is read off the name's words, not the world's table, for all 9 cells.
    row = 0 if "top" in position else 2 if "bottom" in position else 1
    col = 0 if "left" in position else 2 if "right" in position else 1
    scene = Scene("white", (SceneObject("square", "red", "large", position),), 0)
    pixels = np.asarray(render(scene, 48), dtype=int)  # (48, 48, 3)
    for r in range(3):
        for c in range(3):
            centre = pixels[r * 16 + 8, c * 16 + 8]
            expected = COLOURS["red"] if (r, c) == (row, col) else (255, 255, 255)
            assert np.abs(centre - np.array(expected)).max() <= 8, (position, (r, c), centre)


def test_render_is_deterministic_and_every_background_differs():
    obj = (SceneObject("star", "green", "large", "center"),)
    images = [render(Scene(bg, obj, 0), 32).tobytes() for bg in BACKGROUNDS]
    assert len(set(images)) == len(BACKGROUNDS)
    scene = Scene("checkered", obj, 0, SceneText("7", "top left", "black"))
    assert render(scene, 32).tobytes() == render(scene, 32).tobytes()
    # the glyph leaves ink in its cell
    with_glyph = np.asarray(render(scene, 32), dtype=int)[:10, :10]
    without = np.asarray(render(Scene("checkered", obj, 0), 32), dtype=int)[:10, :10]
    assert np.abs(with_glyph - without).sum() > 1000


def test_example_is_fast():
    start = time.perf_counter()
    for i in range(300):
        make_example(5, i, CFG)
    per_example = (time.perf_counter() - start) / 300
    assert per_example < 0.005  # measured ~0.1 ms; a loose bound for slow machines


# --- captions -----------------------------------------------------------------------------


def test_alt_text_kind_proportions_within_binomial_bounds():
    rng = np.random.default_rng(0)
    pool = scenes(50)
    n = 2000
    kinds = Counter(alt_text(pool[i % 50], rng, CFG.alt_mix)[1] for i in range(n))
    for kind in ALT_KINDS:
        p = CFG.alt_mix[kind]
        assert abs(kinds[kind] / n - p) < 4 * math.sqrt(p * (1 - p) / n), kinds
    only_good = {"off_topic": 0.0, "partial": 0.0, "good": 1.0}
    assert {alt_text(pool[0], rng, only_good)[1] for _ in range(50)} == {"good"}


def test_alt_text_is_true_or_unrelated():
    rng = np.random.default_rng(1)
    texts = Counter()
    for scene in scenes(400, CROWDED):
        text, kind = alt_text(scene, rng, CFG.alt_mix)
        texts[kind] += 1
        facts = parse_caption(text)
        if kind == "off_topic":
            assert facts == set(), text  # unrelated: no vocabulary at all
            assert not any(c in text.lower() for c in COLOURS), text
        else:
            assert facts <= scene_facts(scene), (text, facts - scene_facts(scene))
    assert set(texts) == set(ALT_KINDS)


def test_good_alt_text_names_the_main_object():
    rng = np.random.default_rng(2)
    mix = {"good": 1.0}
    for scene in scenes(200):
        main = scene.main_object
        text, _ = alt_text(scene, rng, mix)
        assert ("object", main.colour, main.shape) in parse_caption(text), text


def test_short_caption_names_main_subject_only():
    rng = np.random.default_rng(3)
    phrasings = set()
    for scene in scenes(300, CROWDED):
        main = scene.main_object
        text = short_caption(scene, rng)
        assert main.colour in text and main.shape in text
        assert parse_caption(text) == {("object", main.colour, main.shape)}, text
        phrasings.add(text.replace(main.colour, "C").replace(main.shape, "S"))
    assert len(phrasings) >= 4


@pytest.mark.parametrize("cfg", [CFG, CROWDED], ids=["default", "crowded"])
def test_descriptive_caption_parses_back_to_exactly_the_scene(cfg):
    rng = np.random.default_rng(4)
    openings = set()
    for scene in scenes(300, cfg, seed=5):
        text = descriptive_caption(scene, rng)
        facts, truth = parse_caption(text), scene_facts(scene)
        assert facts <= truth, (text, facts - truth)  # precision 1.0
        assert truth <= facts, (text, truth - facts)  # recall 1.0, positions and counts too
        openings.add(text.split()[0])
    assert len(openings) >= 4  # varied sentence orders


def test_descriptive_caption_mentions_counts_and_glyphs():
    scene = Scene(
        "striped",
        (
            SceneObject("square", "blue", "small", "top left"),
            SceneObject("square", "blue", "large", "center"),
            SceneObject("square", "blue", "small", "bottom right"),
        ),
        1,
        SceneText("K", "top right", "black"),
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = descriptive_caption(scene, rng)
        assert "three blue squares" in text.lower() and '"K"' in text and "striped" in text


# --- parser -------------------------------------------------------------------------------


def test_parse_caption_known_answer():
    text = (
        "Three blue squares: a large one in the center and two small ones at the top left and "
        "the bottom right, and a small red star in the lower right, on a grey background. "
        'In the top right corner is the letter "K".'
    )
    assert parse_caption(text) == {
        ("object", "blue", "square"),
        ("count", "blue", "square", 3),
        ("position", "blue", "square", "center"),
        ("position", "blue", "square", "top left"),
        ("position", "blue", "square", "bottom right"),
        ("object", "red", "star"),
        ("position", "red", "star", "bottom right"),
        ("background", "gray"),
        ("text", "K"),
    }


def test_parse_caption_ignores_relations_and_unknown_words():
    assert parse_caption("a photo of a red circle to the left of a green star") == {
        ("object", "red", "circle"),
        ("object", "green", "star"),
    }
    assert parse_caption("IMG_4032.jpg free shipping on orders over $50") == set()
    assert parse_caption("the number of orders") == set()


def test_parse_spans_known_answer():
    text = (
        "Three Blue squares: a large one in the center and two small ones at the top-left, "
        'a red star in the lower right, on a grey background, and the letter "K".'
    )
    stated = [(text[start:end], fact) for start, end, fact in parse_spans(text)]
    assert stated == [
        ("Three Blue squares", ("object", "blue", "square")),
        ("Three Blue squares", ("count", "blue", "square", 3)),
        ("center", ("position", "blue", "square", "center")),
        ("top-left", ("position", "blue", "square", "top left")),
        ("red star", ("object", "red", "star")),
        ("lower right", ("position", "red", "star", "bottom right")),
        ("grey background", ("background", "gray")),
        ('letter "K"', ("text", "K")),
    ]


def test_parse_spans_point_at_pending_positions_and_repeats():
    text = "In the center there is a red circle; a red circle again."
    assert parse_spans(text) == [
        (7, 13, ("position", "red", "circle", "center")),  # placed when the object comes
        (25, 35, ("object", "red", "circle")),
        (39, 49, ("object", "red", "circle")),  # each mention marked
    ]


def generated_captions(n: int) -> list[str]:
    rng = np.random.default_rng(11)
    out = []
    for cfg in (CFG, CROWDED):
        for scene in scenes(n, cfg, seed=12):
            out += [descriptive_caption(scene, rng), short_caption(scene, rng)]
            out += [alt_text(scene, rng, cfg.alt_mix)[0], scene_prompt(scene, rng)[0]]
    return out


def test_parse_caption_is_the_facts_of_parse_spans_and_spans_say_them():
    for text in generated_captions(150):
        spans = parse_spans(text)
        assert parse_caption(text) == {fact for _, _, fact in spans}, text
        for (s0, e0, _), (s1, e1, _) in zip(spans[:-1], spans[1:], strict=True):
            assert (s0, e0) == (s1, e1) or e0 <= s1, text  # in order, never overlapping
        for start, end, fact in spans:
            assert 0 <= start < end <= len(text), text
            said = text[start:end]
            if fact[0] == "position":  # a position phrase only reads with its object
                said = f"a {fact[1]} {fact[2]} {said}"
            assert fact in parse_caption(said), (text, said, fact)


def test_fact_phrase():
    assert [
        fact_phrase(fact)
        for fact in [
            ("object", "blue", "star"),
            ("count", "red", "cross", 2),
            ("position", "red", "circle", "top left"),
            ("background", "gray"),
            ("text", "K"),
            ("text", "7"),
        ]
    ] == [
        "blue star",
        "2 red crosses",
        "red circle at top left",
        "background gray",
        'letter "K"',
        'digit "7"',
    ]
    with pytest.raises(ValueError, match="not a fact"):
        fact_phrase(("colour", "red"))


# --- prompts ------------------------------------------------------------------------------


def test_prompt_suite_shape_and_determinism():
    suite = prompt_suite(0, 6)
    assert len(suite) == 6 * len(CATEGORIES)
    assert Counter(p.category for p in suite) == {c: 6 for c in CATEGORIES}
    assert len({p.id for p in suite}) == len(suite)
    assert suite[0].id == "single_object-000"
    assert [p.to_dict() for p in suite] == [p.to_dict() for p in prompt_suite(0, 6)]
    assert [p.prompt for p in suite] != [p.prompt for p in prompt_suite(1, 6)]
    json.dumps([p.to_dict() for p in suite])
    # no duplicates within a category while the category has enough distinct prompts
    for category in CATEGORIES:
        prompts = [p.prompt for p in suite if p.category == category]
        assert len(set(prompts)) == 6, category


def test_prompt_suite_cycles_small_categories_and_keeps_large_ones_distinct():
    suite = prompt_suite(2, 24)
    single = Counter(p.prompt for p in suite if p.category == "single_object")
    assert len(single) == len(SHAPES) and set(single.values()) == {24 // len(SHAPES)}
    for category in ("two_objects", "counting", "colors", "position", "color_attr"):
        prompts = [p.prompt for p in suite if p.category == category]
        assert len(set(prompts)) == 24, category


def _check_demands(prompt: Prompt) -> None:
    facts = parse_caption(prompt.descriptive)
    objects = prompt.demands["objects"]
    for obj in objects:
        shapes = {f[2] for f in facts if f[0] == "object" and f[1] == (obj["colour"] or f[1])}
        assert obj["shape"] in shapes, prompt
        if obj["count"] > 1:
            assert ("count", obj["colour"], obj["shape"], obj["count"]) in facts
            assert prompt.prompt.startswith("a photo of ")
    relation = prompt.demands["relation"]
    assert (relation is not None) == (prompt.category == "position")
    if relation:
        a, b = objects
        (ra, ca), (rb, cb) = (
            POSITIONS[next(f[3] for f in facts if f[:3] == ("position", o["colour"], o["shape"]))]
            for o in (a, b)
        )
        holds = {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}
        assert holds[relation], prompt


def test_prompt_descriptive_satisfies_demands():
    suite = prompt_suite(3, 20)
    for prompt in suite:
        _check_demands(prompt)
        assert any(f[0] == "background" for f in parse_caption(prompt.descriptive))
    examples = {p.category: p.prompt for p in suite}
    assert examples["counting"].split()[3] in {"two", "three", "four"}
    assert (
        " of a " in examples["position"]
        or " above " in examples["position"]
        or (" below " in examples["position"])
    )


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alt_mix": {"off_topic": 0.5, "partial": 0.4, "good": 0.2}}, "alt_mix"),
        ({"alt_mix": {"spam": 1.0}}, "alt_mix"),
        ({"alt_mix": {"good": 1.5, "partial": -0.5}}, "alt_mix.good"),
        ({"max_objects": 10}, "max_objects"),
        ({"min_objects": 0}, "min_objects"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"text_probability": 1.5}, "text_probability"),
        ({"repeat_probability": -0.1}, "repeat_probability"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": 32.0}, "image_size"),
    ],
)
def test_world_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        WorldConfig(**kwargs)


def test_world_config_round_trip_and_immutability():
    cfg = WorldConfig(alt_mix={"good": 0.5, "partial": 0.5})
    assert cfg.alt_mix == {"off_topic": 0.0, "partial": 0.5, "good": 0.5}
    assert WorldConfig(**cfg.to_dict()) == cfg
    assert hash(WorldConfig(**cfg.to_dict())) == hash(cfg)
    with pytest.raises(TypeError):
        cfg.alt_mix["good"] = 1.0  # type: ignore[index]
    json.dumps(cfg.to_dict())


def test_config_survives_pickling_for_worker_processes():
    import pickle

    cfg = WorldConfig(image_size=16, max_objects=2, alt_mix={"good": 1.0})
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_scene_prompt_is_satisfied_by_its_scene_and_phrased_like_the_suite():
    from recaption.metrics.geneval import follows

    rng = np.random.default_rng(5)
    suite_forms = {p.category: p.prompt.split()[:3] for p in prompt_suite(0, 5)}
    seen = Counter()
    for scene in scenes(600, CROWDED, seed=2):
        category, prompt, demands = scene_prompt(scene, rng)
        seen[category] += 1
        detection = {"objects": [o.to_dict() for o in scene.objects]}
        assert follows(detection, demands, category), (prompt, scene)
        assert parse_caption(prompt) <= scene_facts(scene), prompt
        assert prompt.split()[:3] == suite_forms[category] == ["a", "photo", "of"]
        if category == "counting":
            assert any(f[0] == "count" for f in parse_caption(prompt)), prompt
    assert set(seen) == set(CATEGORIES)
    # A one-object scene can only be named, with or without its colour.
    lone = Scene("white", (SceneObject("star", "red", "large", "center"),), 0)
    assert {scene_prompt(lone, rng)[0] for _ in range(20)} == {"single_object", "colors"}
