"""recap compare: the study's comparison of caption variants, as DVC experiments.

Each variant (`params.COMPARE_VARIANTS`: ground truth only, short or descriptive
synthetic captions at several shares, the dataset's reference captions, a perfect
captioner, as the upper bound, and descriptive-95 with the ground truth upsampled) is
trained with `compare.seeds` generator seeds (`generator.seed`), each one a DVC
experiment named `<variant>-s<seed>` that sets the variant's blend params and
`compare.overrides` (none by default: a lighter generator draws near chance).
Fact accuracy is the primary score; the findings are the study's claims and the
targets, each a difference of means judged against its standard error over seeds.
Only the stages below the changed params run in an experiment, so the captioner
trains once for the whole comparison; `stages_run` in reports/compare.json says
which stages each experiment ran, read from its queue log.

    plan -> run the experiments (recaption.experiments: queue, run, collect, reusing
    finished ones) -> reports/compare.{json,md,png}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recaption import io, paths
from recaption.experiments import PARAMS_FILE, Experiment, Result, check, metric, run_all
from recaption.params import COMPARE_VARIANTS, Params, parse_params

# Experiment, Result and check come from recaption.experiments, kept here for callers.
__all__ = ["Claim", "Experiment", "Result", "check", "figure", "findings", "format_cell",
           "judge", "markdown", "mean_std", "plan", "run", "seed_cell", "summarise"]  # fmt: skip
REPORT_JSON = paths.REPORTS / "compare.json"
REPORT_MD = paths.REPORTS / "compare.md"
REPORT_PNG = paths.REPORTS / "compare.png"
FACT_SHORT = "fact accuracy, short prompts"
FACT_DESC = "fact accuracy, descriptive prompts"
FACT_UP = "fact accuracy, upsampled prompts"
# The figures compared, as (label, path in reports/metrics.json): fact accuracy first,
# the primary score (graded; its interval over prompts is kept for one seed), then
# GenEval's all-or-nothing prompt following and the CLIP score.
SCORES: dict[str, tuple[str, ...]] = {
    FACT_SHORT: ("fact_accuracy", "short", "overall"),
    FACT_DESC: ("fact_accuracy", "descriptive", "overall"),
    FACT_UP: ("fact_accuracy", "upsampled", "overall"),
    "GenEval, short prompts": ("prompt_following", "short", "overall"),
    "GenEval, descriptive prompts": ("prompt_following", "descriptive", "overall"),
    "CLIP score, ground-truth prompts": ("clip_score", "heldout", "ground_truth", "clipscore"),
    "CLIP score, descriptive prompts": ("clip_score", "heldout", "descriptive", "clipscore"),
}
CATEGORY_PHRASING = "descriptive"  # per-category fact accuracy is given for these prompts


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


def _interval(metrics: dict, path: tuple[str, ...]) -> list[float] | None:
    """A fact accuracy's 95 % interval over prompts ({"ci95": {category: [lo, hi]}})."""
    if path[0] != "fact_accuracy":
        return None
    ci = metrics.get(path[0], {}).get(path[1], {}).get("ci95", {}).get(path[2])
    return [float(x) for x in ci] if ci else None


def seed_cell(values: Sequence[float], intervals: Sequence[list[float] | None] = ()) -> dict | None:
    """Mean and spread over seeds; with one seed, its interval over prompts too."""
    if not values:
        return None
    mean, std = mean_std(values)
    cell: dict[str, Any] = {"mean": mean, "std": std}
    if len(values) == 1 and intervals and intervals[0]:
        cell["ci95"] = intervals[0]
    return cell


def summarise(results: Sequence[Result], params: Params) -> dict[str, Any]:
    """Per variant: mean and spread of every score over seeds; per experiment: its figures
    and the stages it ran; and the study's findings, each checked against the spread."""
    per_seed: dict[str, dict[str, dict[int, float]]] = {}  # variant -> score -> seed -> value
    for r in results:
        scores = per_seed.setdefault(r.experiment.variant, {})
        for label, path in SCORES.items():
            if (v := metric(r.metrics, path)) is not None:
                scores.setdefault(label, {})[r.experiment.seed] = v
    categories = sorted(
        {c for r in results for c in r.metrics.get("fact_accuracy", {}).get(CATEGORY_PHRASING, {})}
        - {"overall", "ci95"}
    )
    variants: dict[str, dict[str, Any]] = {}
    for variant in params.compare.variants:
        runs = [r for r in results if r.experiment.variant == variant]
        row: dict[str, Any] = {"params": COMPARE_VARIANTS[variant], "seeds": len(runs)}
        for label, path in SCORES.items():
            values = list(per_seed.get(variant, {}).get(label, {}).values())
            row[label] = seed_cell(values, [_interval(r.metrics, path) for r in runs])
        row["categories"] = {}
        for cat in categories:
            path = ("fact_accuracy", CATEGORY_PHRASING, cat)
            values = [v for r in runs if (v := metric(r.metrics, path)) is not None]
            if values:
                row["categories"][cat] = seed_cell(values)
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
        "findings": findings(per_seed),
        "experiments": experiments,
    }


# ---- findings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A finding as a sign: sum(coefficient * score of variant) + offset > 0.

    Terms of one variant combine seed by seed (paired: the same generators), terms of
    different variants as independent means. `no_worse`: the claim is that the sum is not
    below 0, so a sum within the spread holds too."""

    text: str
    terms: tuple[tuple[float, str, str], ...]  # (coefficient, variant, score label)
    offset: float = 0.0
    no_worse: bool = False
    target: bool = False  # one of the targets: met or missed, not holds or reversed

    @property
    def score(self) -> str:
        labels = sorted({label for _, _, label in self.terms})
        return labels[0] if len(labels) == 1 else "; ".join(labels)


def _claims() -> list[Claim]:
    d95, s95, gt, ref = "descriptive-95", "short-95", "ground-truth", "reference-95"

    def beats(text: str, a: str, b: str, label: str, no_worse: bool = False) -> Claim:
        return Claim(text, ((1.0, a, label), (-1.0, b, label)), no_worse=no_worse)

    claims = [
        beats(f"with descriptive prompts, {d95} beats {s95}", d95, s95, FACT_DESC),
        beats(f"with descriptive prompts, {d95} beats {gt}", d95, gt, FACT_DESC),
        beats(f"with descriptive prompts, {s95} beats {gt}", s95, gt, FACT_DESC),
        beats(f"with short prompts, {d95} is no worse than {gt}", d95, gt, FACT_SHORT, True),
        beats(f"with short prompts, {s95} is no worse than {gt}", s95, gt, FACT_SHORT, True),
    ]
    shares = ["descriptive-65", "descriptive-80", "descriptive-90", d95]
    for low, high in zip(shares, shares[1:], strict=False):
        claims.append(beats(f"a higher synthetic share helps: {high} beats {low}", high, low,
                            FACT_DESC))  # fmt: skip
    claims += [
        beats(f"keeping 5 % ground truth helps short prompts: {d95} beats descriptive-100",
              d95, "descriptive-100", FACT_SHORT),
        beats(f"with descriptive prompts, {d95} is no worse than descriptive-100", d95,
              "descriptive-100", FACT_DESC, True),
        Claim(f"upsampling short prompts recovers most of {d95}'s descriptive-prompt gain: "
              "upsampled − short > half of descriptive − short",
              ((1.0, d95, FACT_UP), (-0.5, d95, FACT_DESC), (-0.5, d95, FACT_SHORT))),
        beats(f"a perfect captioner is the upper bound: {ref} is no worse than {d95}", ref, d95,
              FACT_DESC, True),
        Claim(f"target: with descriptive prompts, {d95} reaches 2x {gt}",
              ((1.0, d95, FACT_DESC), (-2.0, gt, FACT_DESC)), target=True),
        Claim(f"target: with descriptive prompts, {d95} is within 0.10 of {ref}",
              ((1.0, d95, FACT_DESC), (-1.0, ref, FACT_DESC)), offset=0.10, target=True),
    ]  # fmt: skip
    return claims


def judge(claim: Claim, per_seed: dict[str, dict[str, dict[int, float]]]) -> dict | None:
    """The claim's sum, its standard error and its verdict; None when a variant or score
    it needs was not measured."""
    by_variant: dict[str, list[tuple[float, str]]] = {}
    for coef, variant, label in claim.terms:
        by_variant.setdefault(variant, []).append((coef, label))
    total, var, least = claim.offset, 0.0, None
    for variant, terms in by_variant.items():
        scores = per_seed.get(variant, {})
        if any(label not in scores for _, label in terms):
            return None
        seeds = sorted(set.intersection(*(set(scores[label]) for _, label in terms)))
        if not seeds:
            return None
        values = [sum(c * scores[label][s] for c, label in terms) for s in seeds]
        mean, std = mean_std(values)
        total, var = total + mean, var + std**2 / len(values)
        least = len(values) if least is None else min(least, len(values))
    se = math.sqrt(var)
    if least is None or least < 2:
        verdict = "one seed: no spread to judge by"
    elif total > 2 * se:
        verdict = "holds"
    elif total < -2 * se:
        verdict = "reversed"
    else:
        verdict = "holds (no worse)" if claim.no_worse else "within the seed-to-seed spread"
    if claim.target:
        verdict = {"holds": "met", "reversed": "missed"}.get(verdict, verdict)
    return {"claim": claim.text, "score": claim.score, "difference": total,
            "standard_error": se, "verdict": verdict}  # fmt: skip


def findings(per_seed: dict[str, dict[str, dict[int, float]]]) -> list[dict[str, Any]]:
    """The study's claims, and the issue's targets, that the measured variants allow: a
    claim holds when its sum exceeds twice its standard error (over seeds), is reversed
    below minus twice, and is within the spread between."""
    return [f for claim in _claims() if (f := judge(claim, per_seed)) is not None]


# ---- report ----------------------------------------------------------------------------------


def format_cell(cell: dict[str, Any] | None, seeds: int) -> str:
    """A cell as the reports print it: mean ± std over seeds, or one seed's value and
    its interval over prompts when it has one."""
    if not cell:
        return "-"
    if seeds >= 2:
        return f"{cell['mean']:.3f} ± {cell['std']:.3f}"
    ci = cell.get("ci95")
    return f"{cell['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def markdown(summary: dict[str, Any]) -> str:
    queued = summary.get("queued", 0)
    # In the variants' order, whatever order the JSON was written in.
    variants = {v: summary["variants"][v] for v in COMPARE_VARIANTS if v in summary["variants"]}
    overrides = summary["overrides"]
    lines = [
        "# Caption variants compared",
        "",
        f"Each variant trained the generator with {summary['seeds']} seed(s) "
        "(`generator.seed`); cells are mean ± sample standard deviation over seeds (for one "
        "seed, the value and, for fact accuracy, its 95 % bootstrap interval over prompts). "
        "Fact accuracy is the primary score: the share of each prompt's facts (objects, "
        "colours, counts, positions) that the oracle reads in the drawings.",
        "**Light settings:** "
        + (
            "every experiment also set "
            + ", ".join(f"`{k}={v}`" for k, v in overrides.items())
            + " (params: `compare.overrides`)."
            if overrides
            else "none; every experiment trains at the default budget (params.yaml)."
        ),
        f"This `make compare`: {queued} experiments run in {summary.get('sweep_minutes')} min, "
        f"{len(summary['experiments']) - queued} reused from earlier runs.",
        "",
        "| variant | " + " | ".join(SCORES) + " |",
        "|" + " --- |" * (len(SCORES) + 1),
    ]
    for name, row in variants.items():
        cells = (format_cell(row.get(label), row["seeds"]) for label in SCORES)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cats = sorted({c for row in variants.values() for c in row["categories"]})
    if cats:
        lines += [
            "",
            f"Fact accuracy by category ({CATEGORY_PHRASING} prompts):",
            "",
            "| variant | " + " | ".join(cats) + " |",
            "|" + " --- |" * (len(cats) + 1),
        ]
        for name, row in variants.items():
            lines.append(
                f"| {name} | "
                + " | ".join(format_cell(row["categories"].get(c), row["seeds"]) for c in cats)
                + " |"
            )
    lines += [
        "",
        "## Findings",
        "",
        "Each claim is a difference of means (a target: a difference against its bound); it "
        "holds when it exceeds twice its standard error over seeds.",
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
    """The study's two figures, in fact accuracy: caption kind x prompt kind, and score
    against the synthetic share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = summary["variants"]
    phrasings = (FACT_SHORT, FACT_DESC, FACT_UP)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    kinds = [v for v in ("ground-truth", "short-95", "descriptive-95", "reference-95")
             if v in variants]  # fmt: skip
    width = 0.8 / len(phrasings)
    for i, label in enumerate(phrasings):
        cells = [variants[k].get(label) or {"mean": math.nan, "std": 0} for k in kinds]
        xs = [j + (i - (len(phrasings) - 1) / 2) * width for j in range(len(kinds))]
        left.bar(xs, [c["mean"] for c in cells], width, yerr=[c["std"] for c in cells],
                 capsize=3, label=label.replace("fact accuracy, ", ""))  # fmt: skip
    left.set_xticks(range(len(kinds)), kinds)
    left.set_ylabel("fact accuracy")
    left.set_title("Caption kind trained on x prompt kind")
    left.legend(fontsize=8)
    shares = {
        "ground-truth": 0.0,
        **{f"descriptive-{p}": int(p) / 100 for p in ("65", "80", "90", "95", "100")},
    }
    present = sorted((share, v) for v, share in shares.items() if v in variants)
    for label in (FACT_SHORT, FACT_DESC):
        pts = [(s, variants[v].get(label)) for s, v in present if variants[v].get(label)]
        right.errorbar([s for s, _ in pts], [c["mean"] for _, c in pts],
                       yerr=[c["std"] for _, c in pts], marker="o", capsize=3,
                       label=label.replace("fact accuracy, ", ""))  # fmt: skip
    right.set_xlabel("share of descriptive synthetic captions")
    right.set_ylabel("fact accuracy")
    right.set_title("Score against synthetic share")
    right.legend(fontsize=8)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
