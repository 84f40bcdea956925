"""The built-in conv image tower (through timm and open_clip) and hard-negative training."""

import json
import random

import open_clip
import pytest
import torch

from recaption.models import clip as clip_lib
from recaption.models.clip_train import hard_negative_loss
from recaption.models.towers import ConvTower
from recaption.world.negatives import swap_word

CNN_ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "timm_model_name": "recaption_convnet_small",
                   "timm_pool": "avg", "timm_proj": "linear"},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}  # fmt: skip


def test_conv_tower_halves_the_map_after_each_first_stage():
    tower = ConvTower((8, 16, 24))
    final, maps = tower.forward_intermediates(torch.randn(2, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 32, 32), (16, 16, 16), (24, 8, 8)]
    assert torch.equal(final, maps[-1])
    assert tower(torch.randn(2, 3, 32, 32)).shape == (2, 24)
    assert len(tower.forward_intermediates(torch.randn(1, 3, 32, 32), indices=1,
                                           intermediates_only=True)) == 1  # fmt: skip


def test_a_clip_with_the_conv_tower_loads_through_open_clip_local_dir(tmp_path):
    (tmp_path / "arch.json").write_text(json.dumps(CNN_ARCH))
    clip = clip_lib.create(str(tmp_path / "arch.json"), None, seed=1)
    clip_lib.save(clip, tmp_path / "clip")
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'clip'}")
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(clip.model.encode_image(x), model.encode_image(x))
        # The grid comes from the last 4x4 map (16 px halved twice), not a pooled vector.
        assert clip_lib.features(clip, x, 3).shape == (3, 32 + 9 * 128)


def test_the_conv_tower_has_no_pretrained_weights():
    import timm

    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("recaption_convnet_small", pretrained=True)


def test_swap_word_changes_exactly_one_shape_or_colour_word():
    rng = random.Random(0)
    text = "Two red squares: a large one at the top, and a blue star on a gray background."
    seen = set()
    for _ in range(200):
        out = swap_word(text, rng)
        changed = [(a, b) for a, b in zip(text.split(), out.split(), strict=True) if a != b]
        assert len(changed) == 1
        seen.add(changed[0][0].strip(":,."))
        assert changed[0][1].strip(":,.") != changed[0][0].strip(":,.")
    assert seen == {"red", "squares", "blue", "star"}  # "gray" is a background, not a colour
    assert swap_word("IMG_2118.jpg", rng) is None
    assert swap_word("Three Crosses", random.Random(1)).split()[1][0].isupper()


def test_squares_stay_plural():
    rng = random.Random(3)
    outs = {swap_word("two squares", rng) for _ in range(50)}
    assert outs == {"two circles", "two triangles", "two diamonds", "two crosses", "two stars"}


def test_hard_negative_loss_is_clip_loss_without_negatives_and_grows_with_a_close_one():
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.3 * torch.randn(4, 8, generator=gen), dim=-1)
    scale = torch.tensor(10.0)
    clip_loss = open_clip.ClipLoss()(img, txt, scale)
    assert torch.allclose(hard_negative_loss(img, txt, scale), clip_loss)
    close = torch.nn.functional.normalize(txt[:1] + 0.05 * torch.randn(1, 8, generator=gen), dim=-1)
    far = -txt[:1]
    with_close = hard_negative_loss(img, torch.cat([txt, close]), scale)
    with_far = hard_negative_loss(img, torch.cat([txt, far]), scale)
    assert with_close > with_far > clip_loss
