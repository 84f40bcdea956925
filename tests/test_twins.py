"""Twins: a scene's minimal pair, one shape changed and everything else the same."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from recaption.models import clip as clip_lib
from recaption.models import clip_train
from recaption.models.clip_train import ClipTrainConfig, Twins, _step_texts, train_clip
from recaption.world import (
    SHAPES,
    WorldConfig,
    make_example,
    parse_caption,
    sample_scene,
    scene_facts,
    twin_example,
    twin_scene,
)
from recaption.world.vocab import SHAPE_PLURALS, alternation

CFG = WorldConfig()
TINY_ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 4},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CROWDED = WorldConfig(max_objects=7, text_probability=0.6, repeat_probability=0.6)
_SHAPE_WORDS = re.compile(rf"\b({alternation([*SHAPES, *SHAPE_PLURALS.values()])})\b", re.I)


def masked(text: str) -> str:
    """`text` with every shape word blanked out."""
    return _SHAPE_WORDS.sub("_", text)


def changed(a, b) -> list[int]:
    """Indices of the objects whose shape differs between scenes `a` and `b`."""
    return [i for i, (x, y) in enumerate(zip(a.objects, b.objects, strict=True)) if x != y]


@pytest.mark.parametrize("cfg", [CFG, CROWDED], ids=["default", "crowded"])
def test_a_twin_changes_one_group_s_shape_and_nothing_else(cfg):
    rng, draws = np.random.default_rng(1), np.random.default_rng(2)
    single = 0
    for _ in range(400):
        scene = sample_scene(rng, cfg)
        twin = twin_scene(scene, draws)
        diff = changed(scene, twin)
        assert diff
        # Only the shape moves: colour, size, cell, jitter, background, glyph, main.
        for i in diff:
            assert twin.objects[i] == replace(scene.objects[i], shape=twin.objects[i].shape)
        assert (twin.background, twin.text, twin.main) == (scene.background, scene.text, scene.main)
        # One (colour, shape) group changed, whole, to one new shape no object of its
        # colour had: so every count the captions state is the same.
        old = {(scene.objects[i].colour, scene.objects[i].shape) for i in diff}
        new = {(twin.objects[i].colour, twin.objects[i].shape) for i in diff}
        assert len(old) == len(new) == 1
        assert not new & {(o.colour, o.shape) for o in scene.objects}
        assert diff == [i for i, o in enumerate(scene.objects) if (o.colour, o.shape) in old]
        counts = Counter((o.colour, o.shape) for o in scene.objects)
        twin_counts = Counter((o.colour, o.shape) for o in twin.objects)
        assert sorted(counts.values()) == sorted(twin_counts.values())
        single += len(diff) == 1
    assert single > 200  # most groups are one object


def test_twin_scene_draws_the_group_and_the_shape_from_its_rng():
    scene = sample_scene(np.random.default_rng(7), CROWDED)
    twins = {twin_scene(scene, np.random.default_rng(s)) for s in range(40)}
    same = twin_scene(scene, np.random.default_rng(3))
    assert same == twin_scene(scene, np.random.default_rng(3))
    assert len({tuple(changed(scene, t)) for t in twins}) > 1  # different groups
    assert len({t.objects[changed(scene, t)[0]].shape for t in twins}) > 1  # different shapes


def test_twin_example_known_answer():
    # Pinned: example 5 of seed 5 has three yellow stars; its twin has three yellow squares.
    original, twin = make_example(5, 5, CFG), twin_example(5, 5, CFG)
    assert [o.shape for o in original.scene.objects] == ["star", "star", "star"]
    assert [o.shape for o in twin.scene.objects] == ["square", "square", "square"]
    assert original.short == "a yellow star" and twin.short == "a yellow square"
    assert twin.descriptive == original.descriptive.replace("stars", "squares")
    assert twin.caption == original.caption == "IMG_4965.jpg"


def test_twin_example_is_deterministic_and_order_independent():
    later = twin_example(11, 5, CFG)
    for i in range(5):
        twin_example(11, i, CFG)
    again = twin_example(11, 5, CFG)
    assert later.to_dict() == again.to_dict()
    assert later.image.tobytes() == again.image.tobytes()
    assert twin_example(12, 5, CFG).to_dict() != later.to_dict()


def test_a_twin_s_captions_differ_from_the_original_s_in_shape_words_only():
    differ = Counter()
    for i in range(300):
        original, twin = make_example(3, i, CFG), twin_example(3, i, CFG)
        assert original.image.tobytes() != twin.image.tobytes()
        assert twin.alt_kind == original.alt_kind
        for kind in ("caption", "short", "descriptive"):
            a, b = getattr(original, kind), getattr(twin, kind)
            assert masked(a) == masked(b), (a, b)
            differ[kind] += a != b
        # The descriptive caption names every object: the new shape, and exactly the twin.
        assert parse_caption(twin.descriptive) == scene_facts(twin.scene)
        new = {twin.scene.objects[i].shape for i in changed(original.scene, twin.scene)}
        assert any(s in twin.descriptive or SHAPE_PLURALS[s] in twin.descriptive for s in new)
    assert differ["descriptive"] == 300
    assert 100 < differ["short"] < 300  # the short caption names the main group only


def test_the_share_decides_which_examples_have_a_twin():
    assert all(twin_example(9, i, CFG, share=0.0) is None for i in range(50))
    assert all(twin_example(9, i, CFG, share=1.0) is not None for i in range(50))
    half = {i for i in range(400) if twin_example(9, i, CFG, share=0.5) is not None}
    fifth = {i for i in range(400) if twin_example(9, i, CFG, share=0.2) is not None}
    assert 160 < len(half) < 240 and 50 < len(fifth) < 110
    assert fifth <= half  # one draw per index: a larger share adds twins, keeps the rest


# --- training: twins share their original's batch ------------------------------------------


def twin_pairs(n: int, every: int) -> list[tuple[int, int]]:
    """Images 0..n-1, and a twin n + j for every `every`-th of them."""
    return [(i, n + j) for j, i in enumerate(range(0, n, every))]


def twin_captions(n: int, pairs) -> list[list[str]]:
    """Three captions an image: an off-topic one a twin shares, two that name its shape."""
    captions = [[f"IMG_{i}.jpg", f"a red circle {i}", f"a large red circle {i}"] for i in range(n)]
    for o, _ in pairs:
        captions.append([f"IMG_{o}.jpg", f"a red star {o}", f"a large red star {o}"])
    return captions


def test_every_twin_lands_in_its_original_s_batch():
    pairs = twin_pairs(200, 3)  # 67 twins: 267 images
    twins = Twins(pairs, twin_captions(200, pairs))
    partner = dict(pairs)
    for batch_size in (16, 32, 50):
        per_epoch = 267 // batch_size
        for epoch in range(2):
            seen = []
            for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
                idx = twins.batch(batch_size, step, seed=4)
                assert abs(len(idx) - batch_size) <= 1
                for o, t in pairs:
                    assert (o in idx) == (t in idx)
                    if o in idx:
                        assert idx.index(t) == idx.index(o) + 1
                seen += idx
            assert len(seen) == len(set(seen))  # without replacement within an epoch
            assert len(seen) > 267 - batch_size - 2  # the remainder only is left out
            assert {t for o, t in partner.items() if o in seen} <= set(seen)
    assert twins.batch(32, 0, seed=4) == twins.batch(32, 0, seed=4)
    assert twins.batch(32, 0, seed=4) != twins.batch(32, 0, seed=5)
    assert twins.batch(32, 0, seed=4) != twins.batch(32, 8, seed=4)  # epoch 2 reshuffles


def test_a_pair_takes_the_same_kind_of_caption_and_never_one_they_share():
    pairs = twin_pairs(40, 2)
    captions = twin_captions(40, pairs)
    twins = Twins(pairs, captions)
    idx = twins.batch(30, 0, seed=0)
    kinds = Counter()
    for trial in range(50):
        gen = torch.Generator().manual_seed(trial)
        texts = dict(zip(idx, _step_texts(captions, idx, gen, twins), strict=True))
        for o, t in pairs:
            if o in texts:
                k = captions[o].index(texts[o])
                assert k in (1, 2) and texts[t] == captions[t][k]
                kinds[k] += 1
    assert kinds[1] > 0 and kinds[2] > 0
    # Images outside a pair draw from all their captions, as without twins.
    lone = [i for i in idx if i % 2 and i < 40]
    gen = torch.Generator().manual_seed(0)
    plain = _step_texts(captions, idx, torch.Generator().manual_seed(0))
    paired = _step_texts(captions, idx, gen, twins)
    assert all(plain[idx.index(i)] == paired[idx.index(i)] for i in lone)


def test_overlapping_twin_pairs_are_refused():
    captions = twin_captions(4, [])
    with pytest.raises(ValueError, match="overlaps"):
        Twins([(0, 1), (1, 2)], captions)
    with pytest.raises(ValueError, match="overlaps"):
        Twins([(0, 1), (2, 1)], captions)


def test_train_clip_draws_every_twin_into_its_original_s_batch(tmp_path, monkeypatch):
    arch = tmp_path / "tiny-clip.json"
    arch.write_text(json.dumps(TINY_ARCH))
    clip = clip_lib.create(str(arch), None, seed=0)
    pairs = twin_pairs(24, 2)  # 12 twins: 36 images
    captions = twin_captions(24, pairs)
    images = torch.randint(0, 256, (36, 3, 16, 16), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)  # fmt: skip
    batches = []

    class Recording(Twins):
        def batch(self, batch_size, step, seed):
            batches.append(super().batch(batch_size, step, seed))
            return batches[-1]

    monkeypatch.setattr(clip_train, "Twins", Recording)
    config = ClipTrainConfig(steps=4, batch_size=8, lr=1e-3, warmup_steps=1, weight_decay=0.1,
                             grad_clip=1.0, eval_every=100, seed=0, precision="fp32")  # fmt: skip
    train_clip(clip, images, captions, config, twins=pairs)
    assert len(batches) == 4
    for idx in batches:
        assert all((o in idx) == (t in idx) for o, t in pairs)
        assert any(o in idx for o, _ in pairs)
