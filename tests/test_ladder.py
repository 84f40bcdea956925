"""recap ladder: the plan, the summary, gaps and targets from hand-made metrics, the report
and the grids read from experiment refs (the real experiments run in tests/test_compare.py)."""

import json

import pytest
from PIL import Image

from recaption import compare, ladder
from recaption.experiments import Experiment, Result, check
from recaption.params import COMPARE_VARIANTS, Params, parse_params

from tiny_repo import run

FACT_UPS = "fact accuracy, upsampled prompts"
GENEVAL_DESC = "GenEval, descriptive prompts"
CLIP = "CLIP score, held-out descriptive captions"


def fact_table(value: float, half: float = 0.04) -> dict:
    return {"overall": value, "colors": 0.0, "ci95": {"overall": [value - half, value + half],
                                                      "colors": [0.0, 0.0]}}  # fmt: skip


def metrics(short: float, desc: float, ups: float, geneval: float, clip: float) -> dict:
    """reports/metrics.json as the evaluate stage shapes it, with these overall figures."""
    return {
        "fact_accuracy": {"short": fact_table(short), "descriptive": fact_table(desc),
                          "upsampled": fact_table(ups)},
        "prompt_following": {"short": {"overall": geneval, "colors": 1.0},
                             "descriptive": {"overall": geneval + 0.1}},
        "clip_score": {"heldout": {"descriptive": {"clipscore": clip, "cos100": 30.0},
                                   "ground_truth": {"clipscore": 0.9}}},
        "fact_accuracy_chance": {"overall": 0.3, "colors": 0.5},
        "prompt_following_chance": {"overall": 0.08},
    }  # fmt: skip


FIGURES = {
    "reference-95": metrics(0.70, 0.85, 0.80, 0.45, 0.60),
    "descriptive-95": metrics(0.60, 0.70, 0.68, 0.40, 0.55),
    "ground-truth": metrics(0.50, 0.45, 0.62, 0.30, 0.50),
}


def results(rungs=("ground-truth", "descriptive-95", "reference-95")) -> list[Result]:
    """One result per rung, out of the ladder's order."""
    by_rung = {e.variant: e for e in ladder.plan(Params())}
    return [Result(by_rung[r], FIGURES[r], stages_run=[]) for r in rungs]


def test_plan_runs_each_rung_at_the_default_budget_under_its_own_name():
    params = parse_params({"generator": {"seed": 4}})
    exps = ladder.plan(params)
    assert [e.name for e in exps] == ["ladder-reference-95", "ladder-descriptive-95",
                                      "ladder-ground-truth"]  # fmt: skip
    assert exps[2].params == {"blend.synthetic_ratio": 0.0}  # no compare.overrides
    assert exps[0].params == COMPARE_VARIANTS["reference-95"] and exps[0].seed == 4
    check({}, exps)
    # Never the name of a compare experiment, whose params differ (compare.overrides).
    every = parse_params({"compare": {"variants": list(COMPARE_VARIANTS), "seeds": 3}})
    assert not {e.name for e in exps} & {e.name for e in compare.plan(every)}


def test_summary_gives_each_rung_chance_the_two_gaps_and_the_targets():
    summary = ladder.summarise(results(), {"reference-95": "ladder/reference-95.png"})
    ref = summary["rungs"]["reference-95"]
    assert ref["scores"][ladder.FACT_DESC] == {"value": 0.85, "ci95": pytest.approx([0.81, 0.89])}
    assert ref["scores"][ladder.GENEVAL] == {"value": 0.45, "ci95": None}
    assert ref["scores"][GENEVAL_DESC]["value"] == pytest.approx(0.55)
    assert ref["scores"][CLIP] == {"value": 0.60, "ci95": None}
    assert ref["experiment"] == "ladder-reference-95" and ref["grid"] == "ladder/reference-95.png"
    assert summary["rungs"]["ground-truth"]["grid"] is None
    assert summary["chance"] == {ladder.FACT_SHORT: 0.3, ladder.FACT_DESC: 0.3, FACT_UPS: 0.3,
                                 ladder.GENEVAL: 0.08, GENEVAL_DESC: 0.08, CLIP: None}  # fmt: skip
    cost, buys = summary["gaps"]
    assert (cost["upper"], cost["lower"], buys["upper"], buys["lower"]) == (
        "reference-95", "descriptive-95", "descriptive-95", "ground-truth")  # fmt: skip
    # 0.85 - 0.70: [0.81, 0.89] against [0.66, 0.74], disjoint
    assert cost["scores"][ladder.FACT_DESC]["difference"] == pytest.approx(0.15)
    assert cost["scores"][ladder.FACT_DESC]["separated"] is True
    # 0.68 - 0.62: [0.64, 0.72] against [0.58, 0.66], overlapping
    assert buys["scores"][FACT_UPS]["difference"] == pytest.approx(0.06)
    assert buys["scores"][FACT_UPS]["separated"] is False
    # no intervals for GenEval: a difference alone
    assert buys["scores"][ladder.GENEVAL] == {"difference": pytest.approx(0.10), "separated": None}
    holds = {t["target"]: (t["value"], t["bound"], t["holds"]) for t in summary["targets"]}
    assert holds == {
        "reference-95: descriptive fact accuracy ≥ 0.80": (0.85, 0.80, True),
        "reference-95: descriptive GenEval overall ≥ 0.50": (pytest.approx(0.55), 0.50, True),
        "reference-95: short fact accuracy ≥ 0.65": (0.70, 0.65, True),
        # 0.45 against half of 0.85
        "ground truth: descriptive fact accuracy ≤ half of reference-95's": (
            0.45, pytest.approx(0.425), False),
    }  # fmt: skip


def test_a_missing_rung_or_score_is_not_measured_never_a_verdict():
    partial = [r for r in results() if r.experiment.variant != "reference-95"]
    partial[0].metrics = {"prompt_following_chance": {"overall": 0.08}}  # ground truth: no facts
    summary = ladder.summarise(partial, {})
    assert [t["holds"] for t in summary["targets"]] == [None] * 4
    assert summary["rungs"]["ground-truth"]["scores"][ladder.FACT_DESC] is None
    assert all(s is None for s in summary["gaps"][0]["scores"].values())  # no reference-95
    assert summary["chance"][ladder.GENEVAL] == 0.08 and summary["chance"][FACT_UPS] is None
    md = ladder.markdown(summary)
    assert "| reference-95 (" not in md and "not measured" in md


def test_markdown_is_in_ladder_order_with_intervals_chance_gaps_targets_and_grids():
    summary = ladder.summarise(results(), {"reference-95": "ladder/reference-95.png"})
    summary["queued"], summary["minutes"] = 2, 12.5
    md = ladder.markdown(summary)
    assert md == ladder.markdown(json.loads(json.dumps(summary, sort_keys=True)))  # as read back
    ref_row = ("| reference-95 (a perfect captioner: the dataset's reference captions) | "
               "`ladder-reference-95` | 0.700 [0.660, 0.740] | 0.850 [0.810, 0.890] | "
               "0.800 [0.760, 0.840] | 0.450 | 0.550 | 0.600 |")  # fmt: skip
    assert ref_row in md
    assert "| chance (prompt ignored) | - | 0.300 | 0.300 | 0.300 | 0.080 | 0.080 | - |" in md
    rows = [line.split(" ")[1] for line in md.splitlines() if line.startswith("| ")]
    assert rows[2:5] == ["reference-95", "descriptive-95", "ground-truth"]
    assert ("| the captioner's cost (reference-95 − descriptive-95) | +0.100 (intervals "
            "disjoint) | +0.150 (intervals disjoint) |") in md  # fmt: skip
    assert "| reference-95: descriptive GenEval overall ≥ 0.50 | 0.550 | 0.500 | holds |" in md
    assert "| reference-95: short fact accuracy ≥ 0.65 | 0.700 | 0.650 | holds |" in md
    assert "2 experiments run in 12.5 min, 1 reused" in md
    assert "![reference-95](ladder/reference-95.png)" in md
    assert md.count("(no grids in the experiment)") == 2


def test_stacked_grids_sit_under_their_labels():
    red, blue = Image.new("RGB", (10, 8), (255, 0, 0)), Image.new("RGB", (6, 4), (0, 0, 255))
    image = ladder.stacked({"colors": red, "position": blue}, "ground-truth")
    label = ladder.LABEL_HEIGHT
    assert image.size == (10, 8 + 4 + 2 * label)
    assert image.getpixel((5, label + 4)) == (255, 0, 0)
    assert image.getpixel((3, 2 * label + 8 + 2)) == (0, 0, 255)
    assert image.getpixel((8, 2 * label + 8 + 2)) == (255, 255, 255)  # beyond the narrower grid
    strip = image.crop((0, 0, 10, label)).getcolors()
    assert len(strip) > 1  # the label is drawn


def test_each_rung_grid_is_read_from_its_experiment_ref_not_the_workspace(tmp_path):
    grids = tmp_path / "reports" / "grids"
    grids.mkdir(parents=True)
    Image.new("RGB", (12, 12), (255, 0, 0)).save(grids / "color_attr.png")
    run(["git", "init", "-q"], tmp_path)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "commit", "-qm", "an experiment's grids"], tmp_path)
    ref = run(["git", "rev-parse", "HEAD"], tmp_path).strip()
    Image.new("RGB", (12, 12), (0, 0, 255)).save(grids / "color_attr.png")  # the workspace's
    (tmp_path / "reports" / "ladder").mkdir()
    (tmp_path / "reports" / "ladder" / "stale.png").write_bytes(b"from an earlier run")
    rungs = [Result(Experiment("ladder-reference-95", "reference-95", 0, {}), ref=ref),
             Result(Experiment("ladder-ground-truth", "ground-truth", 0, {}))]  # fmt: skip
    written = ladder.write_grids(tmp_path, rungs)
    assert written == {"reference-95": "ladder/reference-95.png", "ground-truth": None}
    assert sorted(p.name for p in (tmp_path / "reports" / "ladder").iterdir()) == [
        "reference-95.png"
    ]
    image = Image.open(tmp_path / "reports" / "ladder" / "reference-95.png")
    assert image.size == (12, 12 + ladder.LABEL_HEIGHT)  # the ref has no position grid
    assert image.getpixel((6, ladder.LABEL_HEIGHT + 6)) == (255, 0, 0)
