"""recap compare: the study's comparison of caption variants, as DVC experiments.

Each variant (`params.COMPARE_VARIANTS`: ground truth only, short or descriptive
synthetic captions at several shares, and the dataset's reference captions, a perfect
captioner, as the upper bound) is trained with `compare.seeds` generator
seeds (`generator.seed`), each one a DVC experiment named `<variant>-s<seed>` that
sets the variant's blend params and `compare.overrides` (a lighter generator, say).
Only the stages below the changed params run in an experiment, so the captioner
trains once for the whole comparison; `stages_run` in reports/compare.json says
which stages each experiment ran, read from its queue log.

    plan -> run the experiments (recaption.experiments: queue, run, collect, reusing
    finished ones) -> reports/compare.{json,md,png}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recaption import io, paths
from recaption.experiments import PARAMS_FILE, Experiment, Result, check, metric, run_all
from recaption.params import COMPARE_VARIANTS, Params, parse_params

# Experiment, Result and check come from recaption.experiments, kept here for callers.
__all__ = ["Experiment", "Result", "check", "figure", "findings", "markdown", "mean_std",
           "plan", "run", "summarise"]  # fmt: skip
REPORT_JSON = paths.REPORTS / "compare.json"
REPORT_MD = paths.REPORTS / "compare.md"
REPORT_PNG = paths.REPORTS / "compare.png"
# The figures compared, as (label, path in reports/metrics.json).
SCORES: dict[str, tuple[str, ...]] = {
    "CLIP score, ground-truth prompts": ("clip_score", "heldout", "ground_truth", "clipscore"),
    "CLIP score, descriptive prompts": ("clip_score", "heldout", "descriptive", "clipscore"),
    "prompt following, short prompts": ("prompt_following", "short", "overall"),
    "prompt following, descriptive prompts": ("prompt_following", "descriptive", "overall"),
}
CATEGORY_PHRASING = "descriptive"  # per-category accuracy is given for descriptive prompts


def plan(params: Params) -> list[Experiment]:
    """Every experiment of the comparison, variant by variant, seed by seed."""
    cp = params.compare
    out = []
    for variant in cp.variants:
        for seed in range(cp.seeds):
            sets = {**cp.overrides, **COMPARE_VARIANTS[variant], "generator.seed": seed}
            out.append(Experiment(f"{variant}-s{seed}", variant, seed, sets))
    return out


def run(root: str | Path = ".", seeds: int | None = None) -> dict:
    """Plan, queue, run and collect the comparison; writes reports/compare.{json,md,png}.

    `seeds` overrides `compare.seeds` (a first pass with one seed is reused by the next).
    """
    import yaml

    root = Path(root)
    raw = yaml.safe_load((root / PARAMS_FILE).read_text())
    params = parse_params(raw, source=PARAMS_FILE)
    if seeds is not None:
        params = params.model_copy(update={"compare": params.compare.model_copy(
            update={"seeds": seeds})})  # fmt: skip
    sweep = run_all(root, plan(params), raw)
    summary = summarise(sweep.results, params)
    summary["sweep_minutes"] = round(sweep.minutes, 1)
    summary["queued"] = sweep.queued
    io.write_json(root / REPORT_JSON, summary)
    io.write_text(root / REPORT_MD, markdown(summary))
    figure(summary, root / REPORT_PNG)
    return summary


# ---- statistics and report ------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def summarise(results: Sequence[Result], params: Params) -> dict[str, Any]:
    """Per variant: mean and spread of every score over seeds; per experiment: its figures
    and the stages it ran; and the study's findings, each checked against the spread."""
    variants: dict[str, dict[str, Any]] = {}
    categories = sorted(
        {
            c
            for r in results
            for c in (r.metrics.get("prompt_following", {}).get(CATEGORY_PHRASING) or {})
        }
        - {"overall"}
    )
    for variant in params.compare.variants:
        runs = [r for r in results if r.experiment.variant == variant]
        row: dict[str, Any] = {"params": COMPARE_VARIANTS[variant], "seeds": len(runs)}
        for label, path in SCORES.items():
            values = [v for r in runs if (v := metric(r.metrics, path)) is not None]
            row[label] = (
                dict(zip(("mean", "std"), mean_std(values), strict=True)) if values else None
            )
        row["categories"] = {}
        for cat in categories:
            path = ("prompt_following", CATEGORY_PHRASING, cat)
            values = [v for r in runs if (v := metric(r.metrics, path)) is not None]
            if values:
                row["categories"][cat] = dict(zip(("mean", "std"), mean_std(values), strict=True))
        variants[variant] = row
    experiments = [
        {
            "name": r.experiment.name,
            "variant": r.experiment.variant,
            "seed": r.experiment.seed,
            "params": r.experiment.params,
            "stages_run": r.stages_run,
            **{label: metric(r.metrics, path) for label, path in SCORES.items()},
        }
        for r in results
    ]
    return {
        "seeds": params.compare.seeds,
        "overrides": params.compare.overrides,
        "variants": variants,
        "findings": findings(variants),
        "experiments": experiments,
    }


def _difference(variants: dict, a: str, b: str, label: str) -> dict[str, Any] | None:
    """a - b on one score, with the standard error of the difference of two means."""
    if a not in variants or b not in variants:
        return None
    x, y = variants[a].get(label), variants[b].get(label)
    if not x or not y:
        return None
    n_a, n_b = variants[a]["seeds"], variants[b]["seeds"]
    diff = x["mean"] - y["mean"]
    se = math.sqrt(x["std"] ** 2 / n_a + y["std"] ** 2 / n_b)
    if n_a < 2 or n_b < 2:
        verdict = "one seed: no spread to judge by"
    elif diff > 2 * se:
        verdict = "holds"
    elif diff < -2 * se:
        verdict = "reversed"
    else:
        verdict = "within the seed-to-seed spread"
    return {
        "a": a,
        "b": b,
        "score": label,
        "difference": diff,
        "standard_error": se,
        "verdict": verdict,
    }


def findings(variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's claims as differences of means: a finding holds when a - b exceeds
    twice its standard error, is reversed below minus twice, and is noise between."""
    gt_prompts, desc_prompts = list(SCORES)[:2]
    d95, s95, gt = "descriptive-95", "short-95", "ground-truth"
    claims = [
        (f"with descriptive prompts, {d95} beats {s95}", d95, s95, desc_prompts),
        (f"with descriptive prompts, {d95} beats {gt}", d95, gt, desc_prompts),
        (f"with descriptive prompts, {s95} beats {gt}", s95, gt, desc_prompts),
        (f"with ground-truth prompts, {d95} is at least as good as {gt}", d95, gt, gt_prompts),
        (f"with ground-truth prompts, {s95} is at least as good as {gt}", s95, gt, gt_prompts),
    ]
    ratios = ["descriptive-65", "descriptive-80", "descriptive-90", "descriptive-95"]
    for low, high in zip(ratios, ratios[1:], strict=False):
        claims.append(
            (f"a higher synthetic share helps: {high} beats {low}", high, low, desc_prompts)
        )
    top = "past 0.95 more synthetic captions stop helping: descriptive-95 is at least as good"
    claims.append((top, d95, "descriptive-100", desc_prompts))
    ref = "reference-95"  # the upper bound: how far the trained captioner is from perfect
    bound = f"a perfect captioner is the upper bound: {ref} is at least as good as {d95}"
    claims.append((bound, ref, d95, desc_prompts))
    out = []
    for claim, a, b, label in claims:
        diff = _difference(variants, a, b, label)
        if diff is not None:
            at_least = "at least as good" in claim
            if at_least and diff["verdict"] == "within the seed-to-seed spread":
                diff["verdict"] = "holds (no worse)"
            out.append({"claim": claim, **diff})
    return out


def _fmt(cell: dict[str, float] | None, seeds: int) -> str:
    if not cell:
        return "-"
    return f"{cell['mean']:.3f}" if seeds < 2 else f"{cell['mean']:.3f} ± {cell['std']:.3f}"


def markdown(summary: dict[str, Any]) -> str:
    queued = summary.get("queued", 0)
    # In the study's order, whatever order the JSON was written in.
    variants = {v: summary["variants"][v] for v in COMPARE_VARIANTS if v in summary["variants"]}
    lines = [
        "# Caption variants compared",
        "",
        f"Each variant trained the generator with {summary['seeds']} seed(s) "
        "(`generator.seed`); cells are mean ± sample standard deviation over seeds "
        "(the mean alone for one seed).",
        "Every experiment also set: "
        + (", ".join(f"`{k}={v}`" for k, v in summary["overrides"].items()) or "nothing else")
        + ".",
        f"This `make compare`: {queued} experiments run in {summary.get('sweep_minutes')} min, "
        f"{len(summary['experiments']) - queued} reused from earlier runs.",
        "",
        "| variant | " + " | ".join(SCORES) + " |",
        "|" + " --- |" * (len(SCORES) + 1),
    ]
    for name, row in variants.items():
        cells = (_fmt(row.get(label), row["seeds"]) for label in SCORES)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cats = sorted({c for row in variants.values() for c in row["categories"]})
    if cats:
        lines += [
            "",
            f"Prompt following by category ({CATEGORY_PHRASING} prompts):",
            "",
            "| variant | " + " | ".join(cats) + " |",
            "|" + " --- |" * (len(cats) + 1),
        ]
        for name, row in variants.items():
            lines.append(
                f"| {name} | "
                + " | ".join(_fmt(row["categories"].get(c), row["seeds"]) for c in cats)
                + " |"
            )
    lines += [
        "",
        "## Findings",
        "",
        "A difference holds when it exceeds twice its standard error (over seeds).",
        "",
        "| claim | score | difference | standard error | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in summary["findings"]:
        lines.append(
            f"| {f['claim']} | {f['score']} | {f['difference']:+.4f} | "
            f"{f['standard_error']:.4f} | {f['verdict']} |"
        )
    lines += ["", "![The study's two figures](compare.png)", ""]
    return "\n".join(lines)


def figure(summary: dict[str, Any], path: Path) -> None:
    """The study's two figures: caption kind x prompt kind, and score against share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = summary["variants"]
    gt_prompts, desc_prompts = list(SCORES)[:2]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    kinds = [v for v in ("ground-truth", "short-95", "descriptive-95") if v in variants]
    width = 0.38
    for i, label in enumerate((gt_prompts, desc_prompts)):
        cells = [variants[k].get(label) or {"mean": math.nan, "std": 0} for k in kinds]
        xs = [j + (i - 0.5) * width for j in range(len(kinds))]
        left.bar(
            xs,
            [c["mean"] for c in cells],
            width,
            yerr=[c["std"] for c in cells],
            capsize=3,
            label=label.replace("CLIP score, ", ""),
        )
    left.set_xticks(range(len(kinds)), kinds)
    left.set_ylabel("CLIP score")
    left.set_title("Caption kind trained on x prompt kind")
    left.legend(fontsize=8)
    shares = {
        "ground-truth": 0.0,
        **{f"descriptive-{p}": int(p) / 100 for p in ("65", "80", "90", "95", "100")},
    }
    present = [(share, v) for v, share in shares.items() if v in variants]
    present.sort()
    for label in (gt_prompts, desc_prompts):
        pts = [(s, variants[v].get(label)) for s, v in present if variants[v].get(label)]
        right.errorbar(
            [s for s, _ in pts],
            [c["mean"] for _, c in pts],
            yerr=[c["std"] for _, c in pts],
            marker="o",
            capsize=3,
            label=label.replace("CLIP score, ", ""),
        )
    right.set_xlabel("share of descriptive synthetic captions")
    right.set_ylabel("CLIP score")
    right.set_title("Score against synthetic share")
    right.legend(fontsize=8)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
