"""The lineage audit: which captions trained a generator, checked against the disk.

Every model folder carries a `lineage.json` with the content hash of each input it
was made from (`recaption.lineage`), and the per-image outputs name the models that
wrote them (the synthetic captions name both captioners; the blend names the
synthetic captions and the dataset). `chain` follows those records from a
generator down to the dataset:

    generator <- caption version (data/relabeled: ratio, kind) <- synthetic captions
      <- captioner stage 2 <- stage 1 <- pretrain <- annotations, subset <- dataset

(with `blend.use_upsampled`, the caption version also names the upsampled captions,
and they name the upsampler that wrote them; with `blend.synthetic_source: reference`,
its synthetic captions are the dataset's own reference captions, a perfect captioner,
and the chain names those columns of the dataset instead of the captioners)

and, for each link, compares the hash the model above it recorded with the hash of
what is on disk now. A link whose file changed since the model above it was
trained is flagged "changed"; `dvc status` adds the outputs DVC itself sees
modified (a model file edited in place). `history` answers the question across
commits and experiments: which caption version trained which generator, read from
every `dvc.lock` in git.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from recaption import experiments, lineage, paths
from recaption.blend import SYNTHETIC
from recaption.errors import UserError


class AuditError(UserError):
    """A model without the records an audit needs."""


@dataclass
class Link:
    """One step of the chain: what it is, where, the hash recorded for it by the model
    above it (None: nothing recorded), the hash on disk now (None: missing), its params."""

    name: str
    path: str
    recorded: str | None
    actual: str | None
    params: dict[str, Any] = field(default_factory=dict)
    dvc_modified: bool = False

    @property
    def status(self) -> str:
        if self.actual is None:
            return "missing"
        if self.dvc_modified or (self.recorded is not None and self.recorded != self.actual):
            return "changed"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def _hash(path: Path) -> str | None:
    return lineage.tree_hash(path) if path.exists() else None


def _link(name: str, root: Path, rel: str | Path, recorded: str | None, **params) -> Link:
    return Link(name, str(rel), recorded, _hash(root / rel), params)


def _recorded(record: dict, name: str) -> tuple[str, str | None]:
    entry = record.get("inputs", {}).get(name, {})
    return entry.get("path", ""), entry.get("sha256")


def _column_value(path: Path, column: str) -> str | None:
    """The single value of a column naming the model that wrote a file (None if mixed)."""
    if not path.is_file():
        return None
    values = set(pq.read_table(path, columns=[column]).column(column).to_pylist())
    return values.pop() if len(values) == 1 else None


def chain(generator: str | Path, root: str | Path = ".") -> list[Link]:
    """The lineage of a generator folder, from the generator down to the dataset."""
    root, generator = Path(root), Path(generator)
    record = lineage.read_lineage(root / generator)
    if record.get("stage") != "train_generator":
        raise AuditError(f"{generator}: no generator lineage.json (is it a generator folder?)")
    links = [Link("generator", str(generator), None, _hash(root / generator), record["params"])]
    rel, caption_version = _recorded(record, "captions")
    blend = {}
    if (root / rel / "blend.json").is_file():
        blend = json.loads((root / rel / "blend.json").read_text())
    links.append(_link("caption version", root, rel, caption_version, **blend))
    reference = blend.get("synthetic_source") == "reference"
    if reference:  # no captioner wrote them: the dataset's own short and descriptive columns
        links.append(_link("reference captions", root, paths.DATASET, blend.get("dataset"),
                           columns=list(SYNTHETIC)))  # fmt: skip
    else:
        synthetic = paths.SYNTHETIC_CAPTIONS
        links.append(_link("synthetic captions", root, synthetic, blend.get("synthetic_captions")))
    if blend.get("upsampled_captions"):  # blend.use_upsampled: the upsampler's rewrites
        upsampled = paths.UPSAMPLED_CAPTIONS
        links.append(_link("upsampled captions", root, upsampled, blend["upsampled_captions"]))
        own = lineage.read_lineage(root / paths.UPSAMPLER)
        links.append(_link("upsampler", root, paths.UPSAMPLER,
                           _column_value(root / upsampled, "upsampler"),
                           **own.get("params", {})))  # fmt: skip
    if not reference:
        links += _captioner_links(root)
    for name in ("splits", "dataset"):
        rel, recorded = _recorded(record, name)
        links.append(_link(name, root, rel, recorded))
    modified = dvc_modified_outputs(root)
    for link in links:
        link.dvc_modified = experiments.within(link.path, modified)
    return links


def _captioner_links(root: Path) -> list[Link]:
    """The captioners that wrote the synthetic captions, stage 2 down to pretraining, each
    followed by the captions it was trained on."""
    synthetic = root / paths.SYNTHETIC_CAPTIONS
    parents = {
        "stage2": _column_value(synthetic, "descriptive_captioner"),
        "stage1": _column_value(synthetic, "short_captioner"),
    }
    links = []
    for stage, child in (("stage2", None), ("stage1", "stage2"), ("pretrain", "stage1")):
        folder = paths.CAPTIONER / stage
        if child is not None:  # the stage below names its parent
            child_record = lineage.read_lineage(root / paths.CAPTIONER / child)
            parents.setdefault(stage, _recorded(child_record, "parent")[1])
        own = lineage.read_lineage(root / folder)
        links.append(_link(f"captioner {stage}", root, folder, parents.get(stage),
                           **own.get("params", {})))  # fmt: skip
        captions_rel, captions_hash = _recorded(own, "captions")
        if captions_rel:
            links.append(_link(f"{stage} captions", root, captions_rel, captions_hash))
    return links


def dvc_modified_outputs(root: Path) -> set[str]:
    """Outputs `dvc status` reports modified or deleted (empty outside a DVC project)."""
    if not (root / "dvc.yaml").is_file():
        return set()
    proc = subprocess.run(
        ["dvc", "status", "--json"], cwd=root, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return set()
    out = set()
    for entries in json.loads(proc.stdout or "{}").values():
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                out.update(entry.get("changed outs", {}))
    return out


# ---- across commits and experiments --------------------------------------------------------


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def _lock_row(lock: dict) -> dict[str, Any] | None:
    """Generator, caption version and captioner of one dvc.lock, in DVC's own hashes."""
    stages = lock.get("stages", {})
    train = stages.get("train_generator")
    if not train:
        return None
    outs = {o["path"]: o.get("md5") for o in train.get("outs", [])}
    deps = {d["path"]: d.get("md5") for d in train.get("deps", [])}
    params = train.get("params", {}).get("params.yaml", {})
    blend = params.get("blend", {})
    recaption = stages.get("recaption", {})
    captioner = {d["path"]: d.get("md5") for d in recaption.get("deps", [])}
    source = blend.get("synthetic_source", "captioner")
    return {
        "generator": outs.get(str(paths.GENERATOR)),
        "caption_version": deps.get(str(paths.RELABELED)),
        "synthetic_ratio": blend.get("synthetic_ratio"),
        "synthetic_kind": blend.get("synthetic_kind"),
        "synthetic_source": source,
        "use_upsampled": blend.get("use_upsampled", False),
        "generator_seed": params.get("generator", {}).get("seed", 0),
        # the dataset's reference captions: no captioner wrote them
        "captioner_stage2": None
        if source == "reference"
        else captioner.get(str(paths.CAPTIONER / "stage2")),
    }


def history(root: str | Path = ".") -> list[dict[str, Any]]:
    """For every commit that touched dvc.lock and every DVC experiment: which caption
    version (DVC's hash of data/relabeled) trained which generator (DVC's hash of
    models/generator), with the blend params and the stage-2 captioner (none for the
    dataset's reference captions). DVC lists the experiments (`experiments.listed`)."""
    root = Path(root)
    refs = [("commit", line) for line in _git(root, "log", "--format=%H", "--", "dvc.lock").split()]
    refs += [(f"exp {exp.name}", exp.rev) for exp in experiments.listed(root)]
    rows = []
    for kind, sha in refs:
        text = _git(root, "show", f"{sha}:dvc.lock")
        row = _lock_row(yaml.safe_load(text) or {}) if text else None
        if row is not None:
            rows.append({"ref": kind, "commit": sha[:10], **row})
    return rows


# ---- text -----------------------------------------------------------------------------------


def _short(digest: str | None) -> str:
    return "-" if digest is None else digest[:12]


def format_chain(links: list[Link]) -> str:
    """One line per link (status, path, hash on disk, hash recorded when they differ), each
    followed by its params."""
    lines = []
    for depth, link in enumerate(links):
        arrow = "" if depth == 0 else "<- "
        seen = "" if link.status == "ok" else f"  (recorded {_short(link.recorded)})"
        if link.dvc_modified:
            seen += "  (dvc status: modified)"
        lines.append(f"{arrow}{link.name:<20} {link.status.upper():<8} {link.path}  "
                     f"{_short(link.actual)}{seen}")  # fmt: skip
        if link.params:
            lines.append(f"      {json.dumps(link.params, sort_keys=True)}")
    flagged = [link.name for link in links if link.status != "ok"]
    lines.append(f"flagged: {', '.join(flagged)}" if flagged else "every link matches the disk")
    return "\n".join(lines)


def format_history(rows: list[dict[str, Any]]) -> str:
    """A table: ref, commit, generator, caption version, blend params, generator seed and
    stage-2 captioner."""
    head = ("ref", "commit", "generator", "caption_version", "synthetic_ratio", "synthetic_kind",
            "synthetic_source", "use_upsampled", "generator_seed",
            "captioner_stage2")  # fmt: skip
    digests = {"generator", "caption_version", "captioner_stage2"}
    table = [head] + [
        tuple(_short(r.get(k)) if k in digests else str(r.get(k)) for k in head) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table)
    return "\n".join(line.rstrip() for line in lines)
