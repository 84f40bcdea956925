"""recap budget: what the annotation budget buys, as DVC experiments.

The method's premise is that a small hand-captioned set is enough to tune a captioner
that recaptions a whole dataset. Each experiment sets `sample.size` (the number of
images given short and descriptive captions) to one of `budget.sizes`, with
`budget.seeds` generator seeds, and reruns what that changes: the subset, its
captions, the CLIP and captioner trained on them, the recaptioned dataset, the
generator and the evaluation. The report, reports/budget.{json,md,png}, gives for each
size the caption facts on the held-out images (reports/captions.json: descriptive
precision and recall, the short captions' main subject) and the generator's fact
accuracy (reports/metrics.json), against the number of annotated images.

    plan -> run the experiments (recaption.experiments, reusing finished ones) ->
    reports/budget.{json,md,png}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recaption import io, paths
from recaption.compare import FACT_DESC, FACT_SHORT, FACT_UP, format_cell, seed_cell
from recaption.experiments import (
    PARAMS_FILE,
    Experiment,
    Result,
    downstream,
    metric,
    read_file,
    run_all,
)
from recaption.params import Params, parse_params

REPORT_JSON = paths.REPORTS / "budget.json"
REPORT_MD = paths.REPORTS / "budget.md"
REPORT_PNG = paths.REPORTS / "budget.png"
CAPTIONS_FILE = "reports/captions.json"
# Each figure as (label, file it is read from, path in that file).
SCORES: dict[str, tuple[str, tuple[str, ...]]] = {
    "descriptive precision": ("captions", ("kinds", "descriptive", "precision")),
    "descriptive recall": ("captions", ("kinds", "descriptive", "recall")),
    "short: main subject": ("captions", ("kinds", "short", "main_subject")),
    FACT_SHORT: ("metrics", ("fact_accuracy", "short", "overall")),
    FACT_DESC: ("metrics", ("fact_accuracy", "descriptive", "overall")),
    FACT_UP: ("metrics", ("fact_accuracy", "upsampled", "overall")),
}
CAPTION_SCORES = [label for label, (source, _) in SCORES.items() if source == "captions"]
FACT_SCORES = [label for label, (source, _) in SCORES.items() if source == "metrics"]


def plan(params: Params) -> list[Experiment]:
    """One experiment per annotation budget and generator seed, `budget-<size>-s<seed>`."""
    bp = params.budget
    return [
        Experiment(
            f"budget-{size}-s{seed}",
            str(size),
            seed,
            {**bp.overrides, "sample.size": size, "generator.seed": seed},
        )
        for size in bp.sizes
        for seed in range(bp.seeds)
    ]


def run(root: str | Path = ".") -> dict:
    """Plan, run (or reuse) and collect the budget's experiments; writes
    reports/budget.{json,md,png}."""
    import yaml

    root = Path(root)
    raw = yaml.safe_load((root / PARAMS_FILE).read_text())
    params = parse_params(raw, source=PARAMS_FILE)
    sweep = run_all(root, plan(params), raw, rerun=downstream(root, "sample"))
    captions = {
        r.experiment.name: json.loads(data)
        for r in sweep.results
        if r.ref and (data := read_file(root, r.ref, CAPTIONS_FILE))
    }
    summary = summarise(sweep.results, captions, params)
    summary["queued"], summary["minutes"] = sweep.queued, round(sweep.minutes, 1)
    io.write_json(root / REPORT_JSON, summary)
    io.write_text(root / REPORT_MD, markdown(summary))
    figure(summary, root / REPORT_PNG)
    return summary


def summarise(
    results: Sequence[Result], captions: Mapping[str, Mapping[str, Any]], params: Params
) -> dict[str, Any]:
    """Per annotation budget: mean and spread over seeds of every figure. `captions`:
    each experiment's reports/captions.json, by experiment name."""
    sizes: dict[str, dict[str, Any]] = {}
    for size in params.budget.sizes:
        runs = [r for r in results if r.experiment.variant == str(size)]
        row: dict[str, Any] = {"size": size, "seeds": len(runs)}
        for label, (source, path) in SCORES.items():
            trees = [r.metrics if source == "metrics" else captions.get(r.experiment.name, {})
                     for r in runs]  # fmt: skip
            values = [v for tree in trees if (v := metric(tree, path)) is not None]
            row[label] = seed_cell(values)
        sizes[str(size)] = row
    return {
        "seeds": params.budget.seeds,
        "overrides": params.budget.overrides,
        "sizes": sizes,
        "experiments": [
            {
                "name": r.experiment.name,
                "size": int(r.experiment.variant),
                "seed": r.experiment.seed,
                "stages_run": r.stages_run,
            }
            for r in results
        ],  # fmt: skip
    }


def markdown(summary: Mapping[str, Any]) -> str:
    """reports/budget.md: one row per annotation budget."""
    overrides = summary["overrides"]
    lines = [
        "# What the annotation budget buys",
        "",
        "Each row: the pipeline with `sample.size` images given short and descriptive "
        f"captions (the rest of params.yaml as committed), {summary['seeds']} generator "
        "seed(s); cells are the mean (± sample standard deviation over seeds). Caption "
        "figures are the facts of the captioner's captions of the 500 held-out images "
        "against their scenes; fact accuracy is the generator's, as in reports/metrics.json.",
        "**Light settings:** "
        + (", ".join(f"`{k}={v}`" for k, v in overrides.items()) if overrides else "none")
        + ".",
        f"This `make budget`: {summary.get('queued', 0)} experiments run in "
        f"{summary.get('minutes')} min, the others reused.",
        "",
        "| annotated images | " + " | ".join(SCORES) + " |",
        "|" + " --- |" * (len(SCORES) + 1),
    ]
    for row in summary["sizes"].values():
        cells = (format_cell(row.get(label), row["seeds"]) for label in SCORES)
        lines.append(f"| {row['size']:,} | " + " | ".join(cells) + " |")
    lines += ["", "![The budget's two figures](budget.png)", ""]
    return "\n".join(lines)


def figure(summary: Mapping[str, Any], path: Path) -> None:
    """Caption facts, and the generator's fact accuracy, against the annotated images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(summary["sizes"].values(), key=lambda r: r["size"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, labels, title in ((axes[0], CAPTION_SCORES, "The captioner's captions"),
                              (axes[1], FACT_SCORES, "The generator's drawings")):  # fmt: skip
        for label in labels:
            pts = [(r["size"], r[label]) for r in rows if r.get(label)]
            ax.errorbar([s for s, _ in pts], [c["mean"] for _, c in pts],
                        yerr=[c["std"] for _, c in pts], marker="o", capsize=3,
                        label=label)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("annotated images (sample.size)")
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("share of facts right")
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
