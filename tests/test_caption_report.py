"""The caption page of the caption_report stage: 24 held-out images, marked in the world."""

from __future__ import annotations

import io

import pytest

from recaption import paths
from recaption.stages import caption_report
from recaption.world import WorldConfig, make_example

N = 30


@pytest.fixture(scope="module")
def examples():
    """N examples without a cyan cross, so "a cyan cross" is false of every one."""
    made = (make_example(3, i, WorldConfig()) for i in range(3 * N))
    kept = [
        ex
        for ex in made
        if ("cyan", "cross") not in {(o.colour, o.shape) for o in ex.scene.objects}
    ]
    return kept[:N]


def page_inputs(examples) -> tuple[list[dict], dict[str, list[str]]]:
    rows = []
    for i, ex in enumerate(examples):
        buf = io.BytesIO()
        ex.image.save(buf, format="PNG")
        rows.append({"key": f"k{i:02d}", "image": buf.getvalue()})
    texts = {
        "ground truth": [ex.caption for ex in examples],
        "short": [ex.short for ex in examples],
        # Every image's descriptive caption states one object too many.
        "descriptive": [f"{ex.descriptive} Also a cyan cross." for ex in examples],
    }
    return rows, texts


def test_table_row_marks_only_where_the_scene_is_known(examples):
    rows, texts = page_inputs(examples[:1])
    captions = {kind: texts[kind][0] for kind in caption_report.KINDS}
    assert "marks" not in caption_report.table_row(rows[0], captions, None)
    marked = caption_report.table_row(rows[0], captions, examples[0].scene)
    assert set(marked["marks"]) == set(caption_report.KINDS)


@pytest.mark.parametrize("with_scenes", [True, False], ids=["synthetic", "real"])
def test_caption_page_shows_24_images_marked_in_the_world(
    examples, tmp_path, monkeypatch, with_scenes
):
    monkeypatch.chdir(tmp_path)
    rows, texts = page_inputs(examples)
    scenes = [ex.scene for ex in examples] if with_scenes else None
    caption_report.write_table_page(rows, texts, {"kinds": {}}, seed=0, scenes=scenes)
    page = paths.CAPTIONS_HTML.read_text(encoding="utf-8")
    assert caption_report.TABLE_ROWS == 24 and page.count("<img ") == 24
    wrong = '<del class="wrong" title="not in the image: cyan cross">cyan cross</del>'
    if with_scenes:
        assert page.count(wrong) == 24 and 'class="legend"' in page
    else:  # real data: the same page, unmarked
        assert "<del" not in page and 'class="missed"' not in page
        assert 'class="legend"' not in page and page.count("Also a cyan cross.") == 24


def test_reference_free_scores_each_caption_set_against_its_images(examples, tmp_path, monkeypatch):
    from pathlib import Path

    from recaption.models import clip as clip_lib

    monkeypatch.chdir(tmp_path)
    arch = Path(__file__).parent / "data" / "tiny-clip-16.json"
    clip_lib.save(clip_lib.create(str(arch), None, seed=1), paths.EVAL_CLIP)
    rows, texts = page_inputs(examples[:6])
    texts["again"] = list(texts["short"])
    texts["words"] = ["a red circle", "A red square!"] + ["red"] * 4
    scores = caption_report.reference_free([r["image"] for r in rows], texts)
    assert set(scores) == {*caption_report.KINDS, "again", "words"}
    assert scores["again"] == scores["short"]  # each set is scored on its own, the same way
    assert scores["words"]["vocabulary"] == 4  # a, red, circle, square
    assert all(0 <= s["clipscore"] <= 2.5 for s in scores.values())


def test_upsampled_captions_are_scored_only_where_every_image_has_one(tmp_path, monkeypatch):
    import pyarrow as pa

    from recaption import io as rio

    monkeypatch.chdir(tmp_path)
    table = {"key": ["a", "b"], "upsampled": ["a long caption", "another long one"]}
    rio.write_table(paths.UPSAMPLED_CAPTIONS, pa.table(table))
    assert caption_report.upsampled_captions(["b", "a"]) == ["another long one", "a long caption"]
    assert caption_report.upsampled_captions(["a", "c"]) is None
    rio.write_table(
        paths.UPSAMPLED_CAPTIONS,
        pa.table({"key": pa.array([], pa.string()), "upsampled": pa.array([], pa.string())}),
    )
    assert caption_report.upsampled_captions(["a"]) is None


def test_the_length_ratio_is_none_when_every_short_caption_is_empty():
    assert caption_report.length_ratio(12.0, 4.0) == 3.0
    assert caption_report.length_ratio(7.5, 0.0) is None  # not 7.5e9
