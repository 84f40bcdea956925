"""recap compare: the plan, the statistics and findings, and a real sweep of DVC experiments."""

import json

import pytest
import yaml
from PIL import Image

from recaption import compare, ladder
from recaption.params import COMPARE_VARIANTS, Params, ParamsError, parse_params

from tiny_repo import finished_copy, run, stale


def params_with(**compare_section) -> Params:
    return parse_params({"compare": compare_section})


def test_plan_names_every_variant_and_seed_with_the_overrides_and_the_variant_last():
    overrides = {"generator.steps": 50, "blend.synthetic_ratio": 0.5}
    params = params_with(variants=["ground-truth", "short-95"], seeds=2, overrides=overrides)
    exps = compare.plan(params)
    assert [e.name for e in exps] == ["ground-truth-s0", "ground-truth-s1", "short-95-s0",
                                      "short-95-s1"]  # fmt: skip
    assert exps[1].params == {"generator.steps": 50, "blend.synthetic_ratio": 0.0,
                              "generator.seed": 1}  # the variant wins over an override  # fmt: skip
    assert exps[2].params["blend.synthetic_kind"] == "short"


def test_a_bad_variant_or_override_fails_before_anything_is_queued():
    with pytest.raises(ParamsError, match="compare.variants"):
        params_with(variants=["descriptive-42"])
    params = params_with(variants=["ground-truth"], seeds=1, overrides={"generator.stepz": 5})
    with pytest.raises(ParamsError, match="stepz"):
        compare.check({}, compare.plan(params))


def fake_metrics(short: float, desc: float, up: float | None = None) -> dict:
    """reports/metrics.json as evaluate writes it, with these fact accuracies."""

    def table(v: float) -> dict:
        return {"overall": v, "colors": v + 0.1, "ci95": {"overall": [v - 0.03, v + 0.03]}}

    return {
        "fact_accuracy": {"short": table(short), "descriptive": table(desc),
                          "upsampled": table(desc if up is None else up)},
        "clip_score": {"heldout": {"ground_truth": {"clipscore": 1.0},
                                   "descriptive": {"clipscore": 1.5}}},
        "prompt_following": {"short": {"overall": 0.1}, "descriptive": {"overall": 0.2}},
    }  # fmt: skip


def test_summary_gives_mean_and_spread_and_judges_each_finding_against_it():
    params = params_with(variants=["ground-truth", "short-95", "descriptive-95"], seeds=3)
    base = {"ground-truth": 0.40, "short-95": 0.42, "descriptive-95": 0.50}
    results = [
        compare.Result(exp, fake_metrics(0.45, base[exp.variant] + 0.01 * exp.seed))
        for exp in compare.plan(params)
    ]
    summary = compare.summarise(results, params)
    desc = summary["variants"]["descriptive-95"][compare.FACT_DESC]
    assert desc["mean"] == pytest.approx(0.51) and desc["std"] == pytest.approx(0.01)
    assert "ci95" not in desc  # three seeds: the spread over seeds, not over prompts
    colors = summary["variants"]["short-95"]["categories"]["colors"]
    assert colors["mean"] == pytest.approx(0.53)
    verdicts = {f["claim"]: f["verdict"] for f in summary["findings"]}
    d95_s95 = "with descriptive prompts, descriptive-95 beats short-95"
    assert verdicts[d95_s95] == "holds"  # 0.08 apart, standard error 0.008
    # 0.02 apart: 2.4 standard errors, so it holds too
    assert verdicts["with descriptive prompts, short-95 beats ground-truth"] == "holds"
    # equal short-prompt scores: "no worse" holds, with no difference
    assert verdicts["with short prompts, short-95 is no worse than ground-truth"] == (
        "holds (no worse)"
    )
    # 0.51 against 2 x 0.41: a target far from met
    assert verdicts["target: with descriptive prompts, descriptive-95 reaches 2x ground-truth"] == (
        "missed"
    )
    assert all("descriptive-80" not in f["claim"] for f in summary["findings"])  # not run
    assert all("reference-95" not in f["claim"] for f in summary["findings"])
    md = compare.markdown(summary)
    assert "| descriptive-95 | 0.450 ± 0.000 | 0.510 ± 0.010 |" in md
    assert d95_s95 in md and "default budget" in md  # no light settings to state


def test_one_seed_shows_the_interval_over_prompts_and_judges_nothing():
    params = params_with(variants=["ground-truth", "descriptive-95"], seeds=1,
                         overrides={"generator.steps": 400})  # fmt: skip
    results = [compare.Result(e, fake_metrics(0.3, 0.5)) for e in compare.plan(params)]
    summary = compare.summarise(results, params)
    md = compare.markdown(summary)
    assert "| descriptive-95 | 0.300 [0.270, 0.330] | 0.500 [0.470, 0.530] |" in md
    assert "every experiment also set `generator.steps=400`" in md
    assert {f["verdict"] for f in summary["findings"]} == {"one seed: no spread to judge by"}


def test_the_upsampling_finding_pairs_each_generator_with_itself():
    params = params_with(variants=["descriptive-95"], seeds=3)
    claim = next(c for c in compare._claims() if c.text.startswith("upsampling short prompts"))

    def judged(up_minus_short: float) -> dict:
        # Seeds differ a lot; each generator's upsampled prompts gain the same over its short.
        results = [compare.Result(e, fake_metrics(0.3 + 0.1 * e.seed, 0.5 + 0.1 * e.seed,
                                                  0.3 + up_minus_short + 0.1 * e.seed))
                   for e in compare.plan(params)]  # fmt: skip
        (found,) = [f for f in compare.summarise(results, params)["findings"]
                    if f["claim"] == claim.text]  # fmt: skip
        return found

    recovered = judged(0.15)  # 0.15 of a 0.20 gain
    assert recovered["difference"] == pytest.approx(0.05)
    assert recovered["standard_error"] == pytest.approx(0.0, abs=1e-9)  # paired: no spread
    assert recovered["verdict"] == "holds"
    assert judged(0.02)["verdict"] == "reversed"  # a tenth of the gain


def test_a_reversed_finding_is_reported_as_reversed(tmp_path):
    params = params_with(variants=["short-95", "descriptive-95"], seeds=2)
    results = [
        compare.Result(
            e, fake_metrics(0.4, (0.6 if e.variant == "short-95" else 0.3) + 0.01 * e.seed)
        )
        for e in compare.plan(params)
    ]
    summary = compare.summarise(results, params)
    (finding,) = [f for f in summary["findings"] if "beats short-95" in f["claim"]]
    assert finding["verdict"] == "reversed" and finding["difference"] == pytest.approx(-0.3)
    compare.figure(summary, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_variant_sets_only_blend_params_and_is_a_valid_choice():
    for name, sets in COMPARE_VARIANTS.items():
        assert all(key.startswith("blend.") for key in sets)
        assert params_with(variants=[name]).compare.variants == [name]
    study = list(COMPARE_VARIANTS)[:7]  # the study's seven, then the two rungs beside them
    assert Params().compare.variants == [*study, "reference-95", "upsampled-95"]
    assert Params().compare.overrides == {}  # the default budget: a light one draws noise
    exps = compare.plan(params_with(variants=["upsampled-95"], seeds=1))
    assert exps[0].params["blend.use_upsampled"] is True
    compare.check({}, exps)


def test_the_reference_variant_is_planned_validated_and_read_as_the_upper_bound():
    assert "reference-95" not in list(COMPARE_VARIANTS)[:7]  # not one of the study's
    params = params_with(variants=["descriptive-95", "reference-95"], seeds=2, overrides={})
    exps = compare.plan(params)
    ref = [e for e in exps if e.variant == "reference-95"]
    assert ref[0].params == {"blend.synthetic_source": "reference",
                             "blend.synthetic_kind": "descriptive",
                             "blend.synthetic_ratio": 0.95, "generator.seed": 0}  # fmt: skip
    compare.check({}, exps)  # every experiment's params validate
    scores = {"descriptive-95": 0.41, "reference-95": 0.47}
    results = [
        compare.Result(e, fake_metrics(0.4, scores[e.variant] + 0.01 * e.seed)) for e in exps
    ]
    summary = compare.summarise(results, params)
    verdicts = {f["claim"]: (f["verdict"], f["difference"]) for f in summary["findings"]}
    bound = "a perfect captioner is the upper bound: reference-95 is no worse than descriptive-95"
    assert verdicts[bound][0] == "holds" and verdicts[bound][1] == pytest.approx(0.06)
    close = "target: with descriptive prompts, descriptive-95 is within 0.10 of reference-95"
    assert verdicts[close][0] == "met" and verdicts[close][1] == pytest.approx(0.04)
    assert "| reference-95 | 0.400 ± 0.000 | 0.475 ± 0.007 |" in compare.markdown(summary)
    alone = params_with(variants=["reference-95"], seeds=1)
    no_pair = compare.summarise([compare.Result(e, fake_metrics(0.4, 0.5))
                                 for e in compare.plan(alone)], alone)  # fmt: skip
    assert all("reference-95" not in f["claim"] for f in no_pair["findings"])


@pytest.mark.slow
def test_compare_runs_each_experiment_below_the_changed_params_only(tiny_repro, tmp_path):
    repo = finished_copy(tiny_repro, tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["compare"] = {"variants": ["ground-truth", "descriptive-95"], "seeds": 1,
                         "overrides": {}}  # fmt: skip
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "compare two variants"], repo)

    out = run(["recap", "compare"], repo)
    assert "reports/compare.md: 2 experiments" in out
    summary = json.loads((repo / "reports" / "compare.json").read_text())
    ran = {e["name"]: e["stages_run"] for e in summary["experiments"]}
    # Ratio 0 reruns the blend and what is below it, never the captioner or embed;
    # descriptive-95 with generator seed 0 is the committed pipeline: nothing runs.
    assert ran == {"ground-truth-s0": ["blend", "train_generator", "evaluate"],
                   "descriptive-95-s0": []}  # fmt: skip
    assert (repo / "reports" / "compare.png").is_file()
    assert "| ground-truth |" in (repo / "reports" / "compare.md").read_text()
    # A commit that changes nothing upstream (a report, the README) keeps them reusable.
    run(["git", "add", "reports/compare.md"], repo)
    run(["git", "commit", "-qm", "the comparison"], repo)
    run(["recap", "compare"], repo)
    again = json.loads((repo / "reports" / "compare.json").read_text())
    assert again["queued"] == 0  # both experiments are reused
    # So does a change to an upstream stage's code that leaves its outputs' bytes as they
    # were (a refactoring): dvc.lock's entry for the stage moves, the inputs below do not.
    code = repo / "src" / "recaption" / "stages" / "prompts.py"
    code.write_text(code.read_text() + "# a refactoring\n")
    assert stale(repo) == {"prompts"}
    run(["dvc", "repro"], repo)
    run(["git", "commit", "-qam", "refactor the prompts stage"], repo)
    run(["recap", "compare"], repo)
    assert json.loads((repo / "reports" / "compare.json").read_text())["queued"] == 0
    # The two differ only in blend.synthetic_ratio: two caption versions, one captioner.
    rows = {r["ref"]: r for r in json.loads(run(["recap", "lineage", "--all", "--json"], repo))}
    gt, d95 = rows["exp ground-truth-s0"], rows["exp descriptive-95-s0"]
    assert (gt["synthetic_ratio"], d95["synthetic_ratio"]) == (0.0, 0.95)
    assert gt["caption_version"] != d95["caption_version"]
    assert gt["captioner_stage2"] == d95["captioner_stage2"]

    # The ladder runs on the same machinery, under its own names (compare's are not reused):
    # reference-95 and ground-truth rerun the blend and below; descriptive-95 is the
    # committed pipeline (the tiny default budget), so nothing runs.
    assert "reports/ladder.md: 3 rungs" in run(["recap", "ladder"], repo)
    report = json.loads((repo / "reports" / "ladder.json").read_text())
    rungs = report["rungs"]
    below = ["blend", "train_generator", "evaluate"]
    assert {r: row["stages_run"] for r, row in rungs.items()} == {
        "reference-95": below, "descriptive-95": [], "ground-truth": below}  # fmt: skip
    assert all(row["scores"][ladder.FACT_DESC]["ci95"] for row in rungs.values())
    assert report["chance"][ladder.FACT_DESC] is not None
    assert [t["holds"] is None for t in report["targets"]] == [False] * 4  # all measured
    # Each rung's figure is drawn from its own experiment's grids: descriptive-95's are
    # the workspace's, ground-truth's generator (other captions) drew other images.
    own = {c: Image.open(repo / "reports" / "grids" / f"{c}.png").convert("RGB")
           for c in ladder.GRID_CATEGORIES}  # fmt: skip
    figures = {r: Image.open(repo / "reports" / "ladder" / f"{r}.png").convert("RGB")
               for r in ladder.RUNGS}  # fmt: skip
    assert figures["descriptive-95"].tobytes() == ladder.stacked(own, "descriptive-95").tobytes()
    width, height = own["color_attr"].size
    grid = (0, ladder.LABEL_HEIGHT, width, ladder.LABEL_HEIGHT + height)  # below the label
    pixels = {r: figures[r].crop(grid).tobytes() for r in figures}
    assert pixels["ground-truth"] != pixels["descriptive-95"]
    md = (repo / "reports" / "ladder.md").read_text()
    assert all(f"![{r}](ladder/{r}.png)" in md for r in ladder.RUNGS)

    # The annotation budget reruns the subset and everything below it, and is reused
    # like the comparison: its key holds the code of those stages, not their bytes.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["budget"] = {"sizes": [6], "seeds": 1, "overrides": {}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "a budget of six annotated images"], repo)
    assert "reports/budget.md: 1 experiments" in run(["recap", "budget"], repo)
    (exp,) = json.loads((repo / "reports" / "budget.json").read_text())["experiments"]
    assert {"sample", "annotate", "captioner_stage2", "recaption", "train_generator",
            "evaluate"} <= set(exp["stages_run"])  # fmt: skip
    assert not {"ingest", "prompts", "oracle", "eval_clip"} & set(exp["stages_run"])
    budget = json.loads((repo / "reports" / "budget.json").read_text())["sizes"]["6"]
    # Read from the experiment's own captions.json (the tiny captioner states no facts,
    # so its precision is undefined and its recall 0).
    assert budget["descriptive recall"] == {"mean": 0.0, "std": 0.0}
    assert budget["descriptive precision"] is None
    assert budget[compare.FACT_DESC] is not None
    assert "| 6 |" in (repo / "reports" / "budget.md").read_text()
    run(["recap", "budget"], repo)
    assert json.loads((repo / "reports" / "budget.json").read_text())["queued"] == 0
