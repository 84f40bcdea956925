"""Tests for caption metrics (facts, CHAIR, BLEU-4, CIDEr-D) and the HTML caption table."""

from __future__ import annotations

import io
import json
import math

import pytest

from recaption.metrics.caption_table import CaptionMarks, caption_marks, render_caption_table
from recaption.metrics.captions import (
    attribute_scores,
    bleu4,
    cider_d,
    main_subject_accuracy,
    mean_words,
    scene_from_meta,
    tokens,
)
from recaption.world import (
    Scene,
    SceneObject,
    SceneText,
    WorldConfig,
    make_example,
    parse_caption,
    scene_facts,
)

CFG = WorldConfig()


@pytest.fixture(scope="module")
def examples():
    return [make_example(7, i, CFG) for i in range(50)]


def hand_scene() -> Scene:
    """White background; a large red circle (main) in the center, a small one top left,
    a small blue square bottom right, and the letter A at the top: 8 facts."""
    objects = (
        SceneObject("circle", "red", "small", "top left"),
        SceneObject("circle", "red", "large", "center"),
        SceneObject("square", "blue", "small", "bottom right"),
    )
    return Scene("white", objects, main=1, text=SceneText("A", "top", "black"))


# --- tokens and words -----------------------------------------------------------------


def test_tokens_split_on_punctuation_and_underscore():
    assert tokens("IMG_0042.jpg") == ["img", "0042", "jpg"]
    assert tokens('The letter "A" -- top-left!') == ["the", "letter", "a", "top", "left"]


def test_mean_words():
    assert mean_words(["a red circle", "IMG_0042.jpg", "x"]) == pytest.approx(7 / 3)
    with pytest.raises(ValueError):
        mean_words([])


# --- facts against the scene ----------------------------------------------------------


def test_hand_scene_has_the_expected_facts():
    assert len(scene_facts(hand_scene())) == 8


def test_attribute_scores_known_answer():
    caption = "Two red circles and a green star in the center, on a black background."
    # The parser attaches "in the center" to the nearest mention, the green star.
    assert parse_caption(caption) == {
        ("object", "red", "circle"),  # true
        ("count", "red", "circle", 2),  # true
        ("object", "green", "star"),  # absent
        ("position", "green", "star", "center"),  # false
        ("background", "black"),  # false
    }
    s = attribute_scores([caption], [hand_scene()])
    assert s["precision"] == pytest.approx(2 / 5)
    assert s["recall"] == pytest.approx(2 / 8)
    assert s["hallucination"] == pytest.approx(1 / 2)
    assert s["hallucination_captions"] == 1.0
    assert s["n_captions"] == 1
    assert s["by_kind"] == {
        "object": {"precision": 0.5, "recall": 0.5},
        "count": {"precision": 1.0, "recall": 1.0},
        "position": {"precision": 0.0, "recall": 0.0},
        "background": {"precision": 0.0, "recall": 0.0},
        "text": {"precision": None, "recall": 0.0},  # nothing stated: undefined, not 0
    }


def test_chair_with_one_absent_object():
    scene = hand_scene()
    captions = ["a red circle and a yellow triangle", "a blue square"]
    s = attribute_scores(captions, [scene, scene])
    assert s["hallucination"] == pytest.approx(1 / 3)  # 3 objects named, 1 absent
    assert s["hallucination_captions"] == pytest.approx(1 / 2)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 16)  # pooled over both captions' 8 facts


def test_nothing_stated_gives_none_not_zero():
    s = attribute_scores(["IMG_0042.jpg"], [hand_scene()])
    assert s["precision"] is None and s["hallucination"] is None
    assert s["recall"] == 0.0 and s["hallucination_captions"] == 0.0


def test_main_subject_accuracy():
    scene = hand_scene()
    captions = ["a small red circle", "a red square", "a blue square", "photo"]
    assert main_subject_accuracy(captions, [scene] * 4) == 0.25


def test_mismatched_or_empty_inputs_raise():
    with pytest.raises(ValueError, match="same length"):
        attribute_scores(["a red circle"], [])
    with pytest.raises(ValueError, match="empty"):
        main_subject_accuracy([], [])


def test_world_reference_captions_are_all_true(examples):
    """Invariant: the world's own descriptive and short captions state only true facts."""
    scenes = [ex.scene for ex in examples]
    desc = attribute_scores([ex.descriptive for ex in examples], scenes)
    assert desc["precision"] == 1.0 and desc["recall"] == 1.0
    assert desc["hallucination"] == 0.0 and desc["hallucination_captions"] == 0.0
    short = [ex.short for ex in examples]
    assert attribute_scores(short, scenes)["precision"] == 1.0
    assert main_subject_accuracy(short, scenes) == 1.0
    # Alt-text is partial or off topic, never false.
    alt = attribute_scores([ex.caption for ex in examples], scenes)
    assert alt["precision"] == 1.0 and alt["recall"] < 0.5


def test_scene_from_meta_round_trips(examples):
    ex = examples[0]
    meta = json.dumps(ex.to_dict())
    assert scene_from_meta(meta) == ex.scene
    assert scene_from_meta(json.loads(meta)) == ex.scene


# --- BLEU-4 ---------------------------------------------------------------------------


def test_bleu4_identical_is_one():
    text = "a large red circle in the center"
    assert (
        bleu4([text, "two blue squares at the top"], [[text], ["two blue squares at the top"]])
        == 1.0
    )


def test_bleu4_known_answer():
    # cand: the red circle is on the left        (7 words)
    # ref:  a red circle is on the left side     (8 words)
    # 1-grams: "the" twice, clipped to 1 -> 6/7;  2-grams: all but "the red" -> 5/6
    # 3-grams: all but "the red circle" -> 4/5;   4-grams: all but "the red circle is" -> 3/4
    # geometric mean = (6/7 * 5/6 * 4/5 * 3/4) ** (1/4) = (3/7) ** (1/4)
    # brevity: c = 7 < r = 8 -> exp(1 - 8/7) = exp(-1/7)
    expected = (3 / 7) ** 0.25 * math.exp(-1 / 7)
    cand = "The red circle is on the left."
    ref = "a red circle is on the left side"
    assert bleu4([cand], [[ref]]) == pytest.approx(expected, rel=1e-12)
    # A 3-word reference adds no n-gram the candidate has and is not the closest length.
    assert bleu4([cand], [[ref, "red circle left"]]) == pytest.approx(expected, rel=1e-12)


def test_bleu4_no_four_gram_match_is_zero():
    assert bleu4(["the cat sat on the mat"], [["the cat is on the mat"]]) == 0.0


def test_references_must_be_lists():
    with pytest.raises(TypeError):
        bleu4(["a red circle"], ["a red circle"])


# --- CIDEr-D --------------------------------------------------------------------------


def test_cider_d_equal_to_single_reference_is_ten():
    refs = [["a large red circle in the center"], ["two blue squares at the top"]]
    assert cider_d([r[0] for r in refs], refs) == pytest.approx(10.0, rel=1e-12)


def test_cider_d_known_answer_with_length_penalty():
    # Two images, refs "a b c d" and "e f g h": every reference n-gram has df 1 and the
    # unseen "x" counts as df 1, so all weights are log 2 and cosines are count ratios.
    # Image 2, cand "e f g h x" vs ref "e f g h" (n-grams 5/4, 4/3, 3/2, 2/1):
    #   n=1: 4 / (sqrt5 * 2); n=2: 3 / (2 * sqrt3); n=3: 2 / (sqrt3 * sqrt2); n=4: 1 / sqrt2
    #   times exp(-(5 - 4)^2 / (2 * 36)).
    cos = [4 / (2 * math.sqrt(5)), 3 / (2 * math.sqrt(3)), 2 / math.sqrt(6), 1 / math.sqrt(2)]
    second = 10 * sum(cos) / 4 * math.exp(-1 / 72)
    score = cider_d(["a b c d", "e f g h x"], [["a b c d"], ["e f g h"]])
    assert score == pytest.approx((10.0 + second) / 2, rel=1e-12)


def test_cider_d_clips_repeated_ngrams():
    # Refs "a b c d" and "e f g h": every weight is a count times log 2 (as above). Image 1's
    # candidate says its reference twice, "a b c d a b c d"; its reference n-grams have
    # count 2, clipped to the reference's 1 in the dot product (not in the norm), and
    # the joins ("d a", ...) are unseen:
    #   n=1: 4 / (4 * 2);  n=2: 3 / (sqrt13 * sqrt3);  n=3: 2 / (sqrt10 * sqrt2);
    #   n=4: 1 / (sqrt7 * 1);  times exp(-(8 - 4)^2 / (2 * 36)).
    # Unclipped, every dot product doubles and so would the score of image 1.
    cos = [4 / 8, 3 / math.sqrt(39), 2 / math.sqrt(20), 1 / math.sqrt(7)]
    first = 10 * sum(cos) / 4 * math.exp(-16 / 72)
    score = cider_d(["a b c d a b c d", "e f g h"], [["a b c d"], ["e f g h"]])
    assert score == pytest.approx((first + 10.0) / 2, rel=1e-12)


def test_cider_d_needs_two_images():
    with pytest.raises(ValueError, match="2 images"):
        cider_d(["a red circle"], [["a red circle"]])


# --- HTML caption table ---------------------------------------------------------------


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_caption_table_embeds_image_and_escapes_text(examples):
    ex = examples[0]
    rows = [
        {
            "image": png_bytes(ex.image),
            "label": "id<1>",
            "captions": {
                "ground truth": "<script>alert(1)</script>",
                "descriptive": ex.descriptive,
            },
        }
    ]
    summary = {"short": {"bleu4": 0.25, "precision": None}, "descriptive": {"bleu4": 0.5}}
    page = render_caption_table(rows, title="Captions & <b>", summary=summary)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Captions &amp; &lt;b&gt;" in page and "id&lt;1&gt;" in page
    assert "data:image/png;base64," in page
    assert "image-rendering: pixelated" in page
    assert "0.250" in page and "0.500" in page and "\u2013" in page  # None as a dash
    # Caption columns keep the row's order.
    assert page.index("ground truth") < page.index("descriptive</span>")
    assert "http" not in page  # standalone: no external assets


def test_caption_table_without_summary_has_no_summary_table(examples):
    rows = [{"image": png_bytes(examples[1].image), "captions": {"short": examples[1].short}}]
    page = render_caption_table(rows, title="t")
    assert 'class="summary"' not in page
    assert 'class="legend"' not in page and "<del" not in page  # no scenes, no marks
    assert page.count("<img ") == 1


# --- marks: what a caption gets wrong against its scene -------------------------------


def wrong_text(text: str, marks: CaptionMarks) -> list[tuple[str, str]]:
    return [(text[start:end], note) for start, end, note in marks.wrong]


def test_caption_marks_wrong_position():
    text = "A red circle in the upper right and a blue square at the bottom right."
    marks = caption_marks(text, hand_scene())
    assert wrong_text(text, marks) == [("upper right", "not in the image: red circle at top right")]
    assert marks.missed == (
        "2 red circles",
        "red circle at center",
        "red circle at top left",
        "background white",
        'letter "A"',
    )


def test_caption_marks_wrong_count_and_absent_object():
    text = "Three red circles and two green stars on a white background, and the letter A."
    marks = caption_marks(text, hand_scene())
    assert wrong_text(text, marks) == [
        ("Three red circles", "not in the image: 3 red circles"),
        ("two green stars", "not in the image: green star; 2 green stars"),
    ]
    assert marks.missed == (
        "blue square",
        "2 red circles",
        "blue square at bottom right",
        "red circle at center",
        "red circle at top left",
    )


def test_caption_marks_of_a_true_caption_are_empty(examples):
    for ex in examples:
        assert caption_marks(ex.descriptive, ex.scene) == CaptionMarks(), ex.descriptive


def test_marked_cell_escapes_the_caption_not_the_marks(examples):
    text = '<i>"Two blue squares" & a red circle</i>'
    marks = caption_marks(text, hand_scene())
    row = {"image": png_bytes(examples[0].image), "captions": {"x": text}, "marks": {"x": marks}}
    page = render_caption_table([row], title="t")
    assert "<i>" not in page
    assert (
        '&lt;i&gt;&quot;<del class="wrong" title="not in the image: 2 blue squares">'
        "Two blue squares</del>&quot; &amp; a red circle&lt;/i&gt;"
    ) in page
    assert "letter &quot;A&quot;</span>" in page  # missed phrases escaped too
    assert page.index('class="legend"') < page.index('class="captions"')


def test_caption_table_names_a_stored_jpeg_as_jpeg(examples):
    # data.store: original keeps a real source's JPEG bytes in the dataset.
    buf = io.BytesIO()
    examples[0].image.save(buf, format="JPEG")
    page = render_caption_table([{"image": buf.getvalue(), "captions": {"a": "b"}}], title="t")
    assert "data:image/jpeg;base64," in page and "data:image/png" not in page
