"""recap ladder: the three rungs the study is read against, as DVC experiments.

At the default budget (params.yaml as committed, its generator seed), three
generators, each a DVC experiment named `ladder-<rung>` run and reused as
`recaption.experiments` does for `recap compare`:

- reference-95: the dataset's reference captions at the study's blend, a perfect
  captioner (the top rung);
- descriptive-95: the pipeline's own captioner (the default params);
- ground-truth: no synthetic captions (the bottom rung);

and chance, from the chance keys of reports/metrics.json (no experiment). The report,
reports/ladder.{json,md}, gives each rung's fact accuracy (with its 95 % interval),
GenEval prompt following and CLIP score, the two gaps the ladder exists to show, the
issue's targets, and one sample grid per rung (reports/ladder/<rung>.png), read from
the experiment's own reports/grids/.
"""

from __future__ import annotations

import io as stdio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from recaption import io, paths
from recaption.experiments import PARAMS_FILE, Experiment, Result, metric, read_file, run_all
from recaption.params import COMPARE_VARIANTS, Params, parse_params

REPORT_JSON = paths.REPORTS / "ladder.json"
REPORT_MD = paths.REPORTS / "ladder.md"
GRID_DIR = paths.REPORTS / "ladder"
RUNGS = {
    "reference-95": "a perfect captioner: the dataset's reference captions",
    "descriptive-95": "the pipeline's captioner, the default params",
    "ground-truth": "no recaptioning: ground-truth captions only",
}
FACT_SHORT = "fact accuracy, short prompts"
FACT_DESC = "fact accuracy, descriptive prompts"
GENEVAL = "GenEval, short prompts"
GENEVAL_DESC = "GenEval, descriptive prompts"
# Each score as (path in reports/metrics.json, path of its chance figure or None).
# A fact accuracy path ends at its table ({"overall", ..., "ci95"}); GenEval's prompts
# are the short ones, as GenEval writes them.
SCORES: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    FACT_SHORT: (("fact_accuracy", "short"), ("fact_accuracy_chance", "overall")),
    FACT_DESC: (("fact_accuracy", "descriptive"), ("fact_accuracy_chance", "overall")),
    "fact accuracy, upsampled prompts": (
        ("fact_accuracy", "upsampled"),
        ("fact_accuracy_chance", "overall"),
    ),
    GENEVAL: (("prompt_following", "short", "overall"), ("prompt_following_chance", "overall")),
    GENEVAL_DESC: (
        ("prompt_following", "descriptive", "overall"),
        ("prompt_following_chance", "overall"),
    ),
    "CLIP score, held-out descriptive captions": (
        ("clip_score", "heldout", "descriptive", "clipscore"),
        None,
    ),
}
# (name, upper rung, lower rung): each a difference the ladder exists to show.
GAPS = (
    ("the captioner's cost", "reference-95", "descriptive-95"),
    ("what recaptioning buys", "descriptive-95", "ground-truth"),
)
# (target, rung, score, "<=" or ">=", bound): a bound is a number, or (rung, factor),
# that share of the other rung's score.
TARGETS: tuple[tuple[str, str, str, str, float | tuple[str, float]], ...] = (
    ("reference-95: descriptive fact accuracy ≥ 0.80", "reference-95", FACT_DESC, ">=", 0.80),
    ("reference-95: descriptive GenEval overall ≥ 0.50", "reference-95", GENEVAL_DESC, ">=",
     0.50),
    ("reference-95: short fact accuracy ≥ 0.65", "reference-95", FACT_SHORT, ">=", 0.65),
    ("ground truth: descriptive fact accuracy ≤ half of reference-95's", "ground-truth",
     FACT_DESC, "<=", ("reference-95", 0.5)),
)  # fmt: skip
# The categories of reports/grids/ drawn in each rung's figure, top to bottom.
GRID_CATEGORIES = ("color_attr", "position")


def plan(params: Params) -> list[Experiment]:
    """One experiment per rung: its blend params over params.yaml, nothing else."""
    seed = params.generator.seed
    return [
        Experiment(f"ladder-{rung}", rung, seed, dict(COMPARE_VARIANTS[rung])) for rung in RUNGS
    ]


def run(root: str | Path = ".") -> dict:
    """Run (or reuse) the rungs' experiments; writes reports/ladder.{json,md} and
    reports/ladder/<rung>.png."""
    import yaml

    root = Path(root)
    raw = yaml.safe_load((root / PARAMS_FILE).read_text())
    sweep = run_all(root, plan(parse_params(raw, source=PARAMS_FILE)), raw)
    grids = write_grids(root, sweep.results)
    summary = summarise(sweep.results, grids)
    summary["queued"], summary["minutes"] = sweep.queued, round(sweep.minutes, 1)
    io.write_json(root / REPORT_JSON, summary)
    io.write_text(root / REPORT_MD, markdown(summary))
    return summary


# ---- summary ---------------------------------------------------------------------------------


def score(metrics: Mapping[str, Any], label: str) -> dict[str, Any] | None:
    """{"value", "ci95": [lo, hi] or None} of one score; None when not measured."""
    path = SCORES[label][0]
    if path[0] != "fact_accuracy":
        value = metric(metrics, path)
        return None if value is None else {"value": value, "ci95": None}
    table = metrics.get(path[0], {}).get(path[1])
    if not table or "overall" not in table:
        return None
    ci = table.get("ci95", {}).get("overall")
    return {"value": float(table["overall"]), "ci95": [float(x) for x in ci] if ci else None}


def chance(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """Each score's chance figure: the same rules on scenes drawn with the prompt ignored."""
    return {label: metric(metrics, path) if path else None for label, (_, path) in SCORES.items()}


def gap(upper: Mapping[str, Any] | None, lower: Mapping[str, Any] | None) -> dict | None:
    """upper - lower on one score, and whether their 95 % intervals are disjoint (None
    without intervals): one seed, so the intervals are over prompts, not generators."""
    if not upper or not lower:
        return None
    separated = None
    if upper["ci95"] and lower["ci95"]:
        separated = upper["ci95"][0] > lower["ci95"][1] or lower["ci95"][0] > upper["ci95"][1]
    return {"difference": upper["value"] - lower["value"], "separated": separated}


def _at(rungs: Mapping[str, Mapping[str, Any]], rung: str, label: str) -> dict | None:
    """A rung's score cell, None when the rung or the score is missing."""
    return rungs.get(rung, {}).get("scores", {}).get(label)


def targets(rungs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each target with the rung's value, the bound and whether it holds (None: not
    measured)."""
    out = []
    for text, rung, label, op, bound in TARGETS:
        cell = _at(rungs, rung, label)
        if isinstance(bound, tuple):
            other = _at(rungs, bound[0], label)
            limit = other["value"] * bound[1] if other else None
        else:
            limit = bound
        value = cell["value"] if cell else None
        holds = None
        if value is not None and limit is not None:
            holds = value >= limit if op == ">=" else value <= limit
        out.append({"target": text, "rung": rung, "score": label, "value": value,
                    "bound": limit, "holds": holds})  # fmt: skip
    return out


def summarise(results: Sequence[Result], grids: Mapping[str, str | None]) -> dict[str, Any]:
    """The ladder from each rung's experiment (`results`, one per rung) and the paths
    of their grids (relative to reports/; None where there is none)."""
    rungs: dict[str, dict[str, Any]] = {}
    for r in results:
        rung = r.experiment.variant
        rungs[rung] = {
            "about": RUNGS[rung],
            "experiment": r.experiment.name,
            "params": r.experiment.params,
            "stages_run": r.stages_run,
            "scores": {label: score(r.metrics, label) for label in SCORES},
            "grid": grids.get(rung),
        }
    # Chance depends on the prompts and the evaluation seed alone, the same in every rung.
    measured = [r.metrics for r in results if any(k.endswith("_chance") for k in r.metrics)]
    gaps = [
        {"gap": name, "upper": a, "lower": b,
         "scores": {label: gap(_at(rungs, a, label), _at(rungs, b, label)) for label in SCORES}}
        for name, a, b in GAPS
    ]  # fmt: skip
    return {
        "seed": results[0].experiment.seed if results else None,
        "rungs": rungs,
        "chance": chance(measured[0] if measured else {}),
        "gaps": gaps,
        "targets": targets(rungs),
    }


# ---- report ----------------------------------------------------------------------------------


_ABOUT = (
    "Chance is the same rules applied to scenes drawn from the world with the prompt "
    "ignored. Fact accuracy is given with its 95 % bootstrap interval over prompts: one seed, "
    "so no interval covers the spread between generators. GenEval: prompt following under "
    "GenEval's all-or-nothing rules, the mean over categories. CLIP score: 2.5 · max(cos, 0) "
    "under the evaluation CLIP."
)
_SAMPLES = (
    "Read from reports/grids/ of the rung's experiment: one row per prompt, the same prompts "
    "and noise seeds in every rung; the columns are the prompt's images under its short, "
    "descriptive and upsampled phrasing, as in reports/index.html."
)


def _cell(cell: Mapping[str, Any] | None) -> str:
    if not cell:
        return "-"
    ci = cell.get("ci95")
    return f"{cell['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _gap_cell(diff: Mapping[str, Any] | None) -> str:
    if not diff:
        return "-"
    note = {True: " (intervals disjoint)", False: " (intervals overlap)", None: ""}
    return f"{diff['difference']:+.3f}{note[diff['separated']]}"


def verdict(holds: bool | None) -> str:
    """A target's verdict in words."""
    return {True: "holds", False: "missed", None: "not measured"}[holds]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(header: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = [f"| {header} | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(summary: Mapping[str, Any]) -> str:
    """reports/ladder.md: the rungs, the chance row, the two gaps, the targets, the grids."""
    rungs = {r: summary["rungs"][r] for r in RUNGS if r in summary["rungs"]}  # ladder order
    queued = summary.get("queued", 0)
    rows = [
        [f"{r} ({row['about']})", f"`{row['experiment']}`"]
        + [_cell(row["scores"].get(label)) for label in SCORES]
        for r, row in rungs.items()
    ]
    rows.append(["chance (prompt ignored)", "-"]
                + [_number(summary["chance"].get(label)) for label in SCORES])  # fmt: skip
    gaps = [
        [f"{g['gap']} ({g['upper']} − {g['lower']})"]
        + [_gap_cell(g["scores"].get(label)) for label in SCORES]
        for g in summary["gaps"]
    ]
    goals = [[t["target"], _number(t["value"]), _number(t["bound"]), verdict(t["holds"])]
             for t in summary["targets"]]  # fmt: skip
    lines = [
        "# The ladder: a perfect captioner, ours, the ground truth, chance",
        "",
        f"One generator per rung at the default budget (params.yaml, generator seed "
        f"{summary['seed']}), each a DVC experiment. {_ABOUT}",
        f"This `make ladder`: {queued} experiments run in {summary.get('minutes')} min, "
        f"{len(rungs) - queued} reused from earlier runs.",
        "",
        *_table("rung", ["experiment", *SCORES], rows),
        "",
        "## Gaps",
        "",
        *_table("gap", list(SCORES), gaps),
        "",
        "## Targets",
        "",
        "A target holds on the point estimate; the intervals above say how firmly.",
        "",
        *_table("target", ["value", "bound", "verdict"], goals),
        "",
        "## Samples",
        "",
        f"Each rung's grids of {', '.join(GRID_CATEGORIES)}. {_SAMPLES}",
    ]
    for rung, row in rungs.items():
        image = f"![{rung}]({row['grid']})" if row["grid"] else "(no grids in the experiment)"
        lines += ["", f"### {rung}", "", image]
    return "\n".join(lines) + "\n"


# ---- grids -----------------------------------------------------------------------------------

LABEL_HEIGHT = 14  # px of the strip naming each grid


def stacked(grids: Mapping[str, Image.Image], title: str) -> Image.Image:
    """The grids one above the other, each under a strip naming it ("<title>: <name>")."""
    width = max(g.width for g in grids.values())
    height = sum(g.height + LABEL_HEIGHT for g in grids.values())
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for name, grid in grids.items():
        draw.text((2, y + 1), f"{title}: {name}", fill="black")
        canvas.paste(grid, (0, y + LABEL_HEIGHT))
        y += grid.height + LABEL_HEIGHT
    return canvas


def _grids_of(root: Path, ref: str | None) -> dict[str, Image.Image]:
    """GRID_CATEGORIES' grids in the experiment at `ref`, those it has."""
    out = {}
    for category in GRID_CATEGORIES:
        data = read_file(root, ref, f"{paths.GRIDS.as_posix()}/{category}.png") if ref else None
        if data:
            out[category] = Image.open(stdio.BytesIO(data)).convert("RGB")
    return out


def write_grids(root: Path, results: Sequence[Result]) -> dict[str, str | None]:
    """reports/ladder/<rung>.png per rung, from its experiment's reports/grids/; returns
    each rung's path relative to reports/ (None: the experiment has no grids)."""
    out: dict[str, str | None] = {}
    with io.atomic_path(root / GRID_DIR) as tmp:
        tmp.mkdir()
        for r in results:
            rung, grids = r.experiment.variant, _grids_of(root, r.ref)
            out[rung] = f"{GRID_DIR.name}/{rung}.png" if grids else None
            if grids:
                stacked(grids, rung).save(tmp / f"{rung}.png", format="PNG")
    return out
