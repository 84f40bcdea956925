"""Classification tags: read from captions with known answers, scored against scenes."""

from __future__ import annotations

import pyarrow as pa
import pytest

from recaption import io
from recaption.metrics import tags
from recaption.stages import caption_report
from recaption.world import Scene, SceneObject, SceneText, WorldConfig, make_example

NONE = {
    "main_shape": None,
    "main_colour": None,
    "background": None,
    "colours": [],
    "has_text": False,
    "text": None,
}


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        (
            "There are three blue squares: a large one in the center and two small ones at "
            'the top and the bottom, and a small red star on the left. The letter "Q" is '
            "written in white at the top right.",
            {"main_shape": "square", "main_colour": "blue", "colours": ["red", "blue"],
             "has_text": True, "text": "Q"},
        ),
        (
            "On a beige background, a large pink cross in the upper left.",
            {"main_shape": "cross", "main_colour": "pink", "background": "beige",
             "colours": ["pink"]},
        ),
        (
            "An image with a checkered background showing a small green diamond at the top"
            ' and a small yellow circle on the right. The digit "7" appears at the bottom.',
            {"main_shape": "diamond", "main_colour": "green", "background": "checkered",
             "colours": ["yellow", "green"], "has_text": True, "text": "7"},
        ),
        # No colour with the shape: the main subject is known, its colour not.
        ("a picture of some circles", {"main_shape": "circle"}),
        # Real alt-text: colour words and "text" are read; the rest stays unstated.
        ("a red bus with text on its side", {"colours": ["red"], "has_text": True}),
        ("IMG_0042.jpg", {}),
    ],
    ids=["counted-with-glyph", "one-object", "two-objects-digit", "shape-only", "real", "none"],
)  # fmt: skip
def test_caption_tags_read_what_the_caption_states(caption, expected):
    assert tags.caption_tags(caption) == {**NONE, **expected}


def test_the_worlds_descriptive_references_give_every_tag_of_their_scene():
    examples = [make_example(11, i, WorldConfig()) for i in range(200)]
    said = [tags.caption_tags(ex.descriptive) for ex in examples]
    assert said == [tags.scene_tags(ex.scene) for ex in examples]
    assert any(ex.scene.text for ex in examples)  # the glyph tags are exercised
    assert any(len(ex.scene.objects) > 2 for ex in examples)


def scene(shape: str, colour: str, background: str, glyph: str | None = None) -> Scene:
    """A large main object in the center, a small blue star at the top left, maybe a glyph."""
    main = SceneObject(shape, colour, "large", "center")
    star = SceneObject("star", "blue", "small", "top left")
    text = SceneText(glyph, "bottom", "black") if glyph else None
    return Scene(background, (star, main), main=1, text=text)


SCENES = [scene("circle", "red", "white", "A"), scene("square", "green", "striped")]


def test_tag_accuracy_against_hand_made_scenes():
    said = [
        # All right but the background.
        {"main_shape": "circle", "main_colour": "red", "background": "gray",
         "colours": ["red", "blue"], "has_text": True, "text": "A"},
        # The main colour wrong, the star missed, text that is not there.
        {"main_shape": "square", "main_colour": "pink", "background": "striped",
         "colours": ["pink"], "has_text": True, "text": None},
    ]  # fmt: skip
    assert tags.scene_tags(SCENES[0])["colours"] == ["red", "blue"]  # vocabulary order
    assert tags.tag_accuracy(said, SCENES) == {
        "main_shape": 1.0,
        "main_colour": 0.5,
        "background": 0.5,
        "colours": 0.5,
        "has_text": 0.5,
        "text": 1.0,  # nothing stated of a scene without text is right
        "main_subject": 0.5,
    }
    with pytest.raises(ValueError, match="as many tag rows as scenes"):
        tags.tag_accuracy(said, SCENES[:1])


def test_tag_coverage_counts_the_stated_tags():
    rows = [tags.caption_tags(c) for c in ("a red circle", "a shape", "a white background")]
    assert tags.tag_coverage(rows) == pytest.approx(
        {"main_shape": 1 / 3, "main_colour": 1 / 3, "background": 1 / 3, "colours": 1 / 3,
         "has_text": 0.0, "text": 0.0}
    )  # fmt: skip


def test_tags_table_is_typed_sorted_and_byte_stable(tmp_path):
    table = tags.tags_table(["b", "a"], ["a blue star", 'the digit "3"'])
    assert table.schema.equals(tags.TAG_SCHEMA)
    assert table.column("key").to_pylist() == ["a", "b"]
    assert table.column("text").to_pylist() == ["3", None]
    assert table.column("colours").type == pa.list_(pa.string())
    io.write_table(tmp_path / "one.parquet", table)
    io.write_table(
        tmp_path / "two.parquet", tags.tags_table(["a", "b"], ['the digit "3"', "a blue star"])
    )
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()


def test_the_report_scores_tags_in_the_world_and_covers_them_on_real_data():
    said = [tags.scene_tags(s) for s in SCENES]
    world = caption_report.tag_scores(said, SCENES)
    assert set(world["accuracy"].values()) == {1.0} and world["coverage"]["text"] == 0.5
    real = caption_report.tag_scores(said, None)
    assert "accuracy" not in real and real["reference"].startswith("none")
    assert real["coverage"] == world["coverage"]
