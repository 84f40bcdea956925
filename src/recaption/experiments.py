"""Run a list of DVC experiments, reusing finished ones, and collect their metrics.

What `recap compare` and `recap ladder` share:

    check params -> queue (dvc exp run --queue) -> run (dvc exp run --run-all) -> collect
    (each experiment's reports/metrics.json, read from its commit)

Experiments are listed through DVC's public interface, `dvc exp show --json`, never
from the git refs DVC keeps them under (a layout DVC may change).

An experiment that already ran with the same name and params on the same inputs is
reused (see `reuse_key`): the bytes every stage above the blend wrote, and the code the
blend and the stages below it read. So an interrupted sweep picks up where it stopped,
and a rerun after a commit that left those inputs as they were (the README, a report, a
refactoring upstream that keeps its outputs' bytes) costs nothing. Experiments start
from the last commit, so the workspace pipeline must be up to date and committed.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recaption.errors import UserError
from recaption.params import parse_params

log = logging.getLogger(__name__)
PARAMS_FILE = "params.yaml"
METRICS_FILE = "reports/metrics.json"
# Stages a variant or a generator seed reruns; the rest of the pipeline must be the same
# for an earlier experiment to be reused. (A sweep over other params names its own: see
# `downstream`.)
VARIANT_STAGES = frozenset({"upsample_captions", "blend", "train_generator", "evaluate"})
# params.yaml sections that configure sweeps and that no stage reads: an experiment's
# params are compared without them.
SWEEP_SECTIONS = ("compare", "budget")


class ExperimentError(UserError):
    pass


@dataclass(frozen=True)
class Experiment:
    name: str
    variant: str
    seed: int
    params: dict[str, Any]  # dotted key -> value, what `dvc exp run -S` sets


@dataclass
class Result:
    experiment: Experiment
    metrics: dict[str, Any] = field(default_factory=dict)
    stages_run: list[str] | None = None  # None: reused from an earlier run, log not read
    ref: str | None = None  # the experiment's commit, to read its other outputs from


@dataclass(frozen=True)
class Sweep:
    """What `run_all` ran and collected."""

    results: list[Result]  # in the order of the experiments given
    queued: int  # experiments run this time; the others were reused
    minutes: float


def metric(tree: Mapping[str, Any], path: Sequence[str]) -> float | None:
    """The number at `path` in a metrics dict; None when absent or not a number."""
    node: Any = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def _set(raw: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ExperimentError(f"experiment params: {dotted}: {key} is not a section")
    node[last] = value


def applied(raw: dict, exp: Experiment) -> dict:
    """A copy of params.yaml's content with the experiment's settings applied."""
    trial = json.loads(json.dumps(raw))
    for key, value in exp.params.items():
        _set(trial, key, value)
    return trial


def check(raw: dict, experiments: Sequence[Experiment]) -> None:
    """Fail before queueing anything when an experiment's params would not validate."""
    for exp in experiments:
        parse_params(applied(raw, exp), source=f"experiment {exp.name}")


def _value(value: Any) -> str:
    """A value as `dvc exp run -S` reads it (YAML)."""
    return json.dumps(value) if isinstance(value, str | bool) or value is None else repr(value)


def _dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise ExperimentError(f"dvc {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


@dataclass(frozen=True)
class Listed:
    """A finished DVC experiment as `dvc exp show --json` lists it."""

    name: str
    rev: str  # the experiment's commit
    baseline: str  # the commit it ran from


def _exp_show(root: Path) -> list[dict[str, Any]]:
    """`dvc exp show --json` for every commit on a branch or tag, without the queued,
    failed and workspace rows."""
    args = ("exp", "show", "--json", "--all-commits", "--hide-workspace", "--hide-queued",
            "--hide-failed")  # fmt: skip
    proc = _dvc(root, *args, check=False)
    problem = f"`dvc {' '.join(args)}` failed:\n{proc.stdout}{proc.stderr}"
    if proc.returncode == 0:
        try:
            baselines = json.loads(proc.stdout or "[]")
        except json.JSONDecodeError:
            baselines = None
        if isinstance(baselines, list):
            return baselines
        problem = f"`dvc {' '.join(args)}` printed no list:\n{proc.stdout[:2000]}"
    raise ExperimentError(f"DVC cannot read the experiments in {root}: {problem}")


def listed(root: Path) -> list[Listed]:
    """Every finished DVC experiment of the repository, from any commit on a branch or tag.

    Raises:
        ExperimentError: DVC cannot read them (not a DVC project, say).
    """
    out = []
    for baseline in _exp_show(root):
        for exp in baseline.get("experiments") or []:
            executor = exp.get("executor") or {}  # None: run in the workspace, finished
            revs = exp.get("revs") or []
            if executor.get("state", "success") != "success" or not revs:
                continue  # still running
            name = exp.get("name") or revs[0].get("name")
            if name:  # revs[0]: the experiment's last commit
                out.append(Listed(name, revs[0]["rev"], baseline["rev"]))
    return out


def read_file(root: Path, ref: str, path: str) -> bytes | None:
    """The bytes of `path` at commit `ref` (an experiment's, say); None when it has none."""
    proc = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=root, capture_output=True,
                          check=False)  # fmt: skip
    return proc.stdout if proc.returncode == 0 else None


def downstream(root: Path, stage: str) -> frozenset[str]:
    """`stage` and every stage of root/dvc.yaml that reads what it writes, directly or
    through other stages."""
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]

    def paths(entries: list) -> list[str]:
        return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]

    if stage not in stages:
        raise ExperimentError(f"dvc.yaml has no stage {stage!r}")
    writer = {out: name for name, st in stages.items() for out in paths(st.get("outs"))}
    # The stages each stage reads from: a dep that is one of their outputs or lies inside.
    reads = {name: {w for dep in paths(st.get("deps")) for out, w in writer.items()
                    if within(dep, [out])} for name, st in stages.items()}  # fmt: skip
    found, grew = {stage}, True
    while grew:
        grew = False
        for name in stages:
            if name not in found and reads[name] & found:
                found.add(name)
                grew = True
    return frozenset(found)


def _upstream(lock: dict) -> dict:
    """The dvc.lock entries of every stage a variant does not rerun, whole."""
    return {k: v for k, v in (lock.get("stages") or {}).items() if k not in VARIANT_STAGES}


def within(path: str, outs: Collection[str]) -> bool:
    """Whether `path` is one of the DVC outputs `outs` or lies inside one (paths relative
    to the repository, as dvc.lock and `dvc status` give them)."""
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in outs)


def _bytes(entry: dict) -> dict:
    """A dvc.lock dep or out without its path: its hash, size and file count."""
    return {k: v for k, v in entry.items() if k != "path"}


def reuse_key(lock: dict, rerun: Collection[str] = VARIANT_STAGES) -> dict[str, dict[str, dict]]:
    """What an experiment's metrics depend on besides its params, from its dvc.lock.

    For each stage an experiment does not rerun (not in `rerun`), the outputs it wrote
    (path -> hash), not its whole entry: a change to its code that leaves the bytes it
    writes as they were reruns it in the workspace, but changes nothing below it. For
    each stage it reruns, the files it reads that no stage writes (its code, configs); what it reads
    from the stages above is in their outputs. Params are compared apart.
    """
    stages = lock.get("stages") or {}
    written = [out["path"] for stage in stages.values() for out in stage.get("outs") or []]
    key = {}
    for name, stage in stages.items():
        if name in rerun:
            read = [d for d in stage.get("deps") or [] if not within(d["path"], written)]
            key[name] = {d["path"]: _bytes(d) for d in read}
        else:
            key[name] = {out["path"]: _bytes(out) for out in stage.get("outs") or []}
    return key


def _expected(raw: dict, exp: Experiment) -> dict[str, Any]:
    """The flat params an experiment runs with: params.yaml plus its settings."""
    trial = applied(raw, exp)
    for section in SWEEP_SECTIONS:
        trial.pop(section, None)
    return _flatten(trial)


@dataclass(frozen=True)
class Done:
    """A finished DVC experiment, read from its commit."""

    rev: str  # the experiment's commit
    baseline: str  # the commit it ran from
    params: dict[str, Any]  # flat, without the sweep sections
    metrics: dict[str, Any] | None
    lock: dict


def finished(root: Path) -> dict[str, list[Done]]:
    """Every finished DVC experiment in the repository, by name (see `listed`).

    Its files are read at its commit: params.yaml as the workspace's is read (PyYAML; DVC's
    YAML 1.2 reads `1e-4` or `on` otherwise), reports/metrics.json whole (DVC's listing
    keeps numbers only) and dvc.lock (which it does not list).
    """
    import yaml

    out: dict[str, list[Done]] = {}
    for exp in listed(root):
        raw = yaml.safe_load(read_file(root, exp.rev, PARAMS_FILE) or b"{}") or {}
        for section in SWEEP_SECTIONS:
            raw.pop(section, None)
        metrics = read_file(root, exp.rev, METRICS_FILE)
        lock = yaml.safe_load(read_file(root, exp.rev, "dvc.lock") or b"{}") or {}
        done = Done(exp.rev, exp.baseline, _flatten(raw), json.loads(metrics) if metrics
                    else None, lock)  # fmt: skip
        out.setdefault(exp.name, []).append(done)
    return out


def reusable(exp: Experiment, raw: dict, lock: dict, found: dict[str, list[Done]],
             rerun: Collection[str] = VARIANT_STAGES) -> Done | None:  # fmt: skip
    """An earlier run of `exp`, from any commit: same name, same params, the same
    `reuse_key` (what the stages above wrote, the code of those below), with metrics."""
    want, inputs = _expected(raw, exp), reuse_key(lock, rerun)
    for done in found.get(exp.name, []):
        if done.metrics and done.params == want and reuse_key(done.lock, rerun) == inputs:
            return done
    return None


def queue(root: Path, experiments: Sequence[Experiment], raw: dict, lock: dict,
          baseline: str, rerun: Collection[str] = VARIANT_STAGES) -> list[Experiment]:  # fmt: skip
    """Queue the experiments that have no reusable earlier run; returns those queued."""
    found = finished(root)
    todo = [e for e in experiments if reusable(e, raw, lock, found, rerun) is None]
    # A name is unique per commit: an outdated experiment of this commit makes way (DVC
    # resolves a name that several commits share to the one of HEAD, the baseline).
    clash = [e.name for e in todo if any(d.baseline == baseline for d in found.get(e.name, []))]
    if clash:
        _dvc(root, "exp", "remove", *clash)
    if todo:  # tasks an interrupted sweep left in the queue are queued afresh
        _dvc(root, "queue", "remove", *(e.name for e in todo), check=False)
    for exp in todo:
        sets = [
            arg for key, value in exp.params.items() for arg in ("-S", f"{key}={_value(value)}")
        ]
        _dvc(root, "exp", "run", "--queue", "--name", exp.name, *sets)
    return todo


_RUNNING = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)


def stages_run(root: Path, name: str) -> list[str] | None:
    """The stages an experiment ran, from its queue log (None when there is none)."""
    proc = _dvc(root, "queue", "logs", name, check=False)
    return _RUNNING.findall(proc.stdout) if proc.returncode == 0 else None


def committed_lock(root: Path) -> tuple[str, dict]:
    """The baseline commit and the workspace's dvc.lock, once both are known to be what
    experiments start from: the pipeline up to date, and its dvc.lock committed."""
    import yaml

    if _dvc(root, "status", "--json").stdout.strip() not in ("{}", ""):
        raise ExperimentError(
            "the workspace pipeline is not up to date: run `make repro` and "
            "commit dvc.lock first (experiments start from the last commit)"
        )
    baseline = _git(root, "rev-parse", "HEAD").strip()
    committed = yaml.safe_load(_git(root, "show", "HEAD:dvc.lock") or "{}") or {}
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    if not baseline or _upstream(committed) != _upstream(lock):
        raise ExperimentError("commit dvc.lock first: experiments start from the last commit")
    return baseline, lock


def run_all(root: Path, experiments: Sequence[Experiment], raw: dict,
            rerun: Collection[str] = VARIANT_STAGES) -> Sweep:  # fmt: skip
    """Queue the experiments that have no reusable earlier run, run the queue one at a
    time, and collect every experiment's metrics.

    Args:
        raw: params.yaml's content, which every experiment's settings apply to.
        rerun: the stages the experiments' params may rerun (see `reuse_key`).
    """
    check(raw, experiments)
    baseline, lock = committed_lock(root)
    start = time.monotonic()
    queued = queue(root, experiments, raw, lock, baseline, rerun)
    log.info("%d experiments, %d queued", len(experiments), len(queued))
    if queued:
        proc = _dvc(root, "exp", "run", "--run-all", "--jobs", "1", check=False)
        if proc.returncode != 0:
            log.warning("dvc exp run --run-all: %s", proc.stderr.strip()[-2000:])
    minutes = (time.monotonic() - start) / 60
    found = finished(root)
    if experiments and not found:
        raise ExperimentError(
            f"DVC lists no finished experiments in {root} (`dvc exp show --all-commits`): "
            f"see `dvc queue logs {experiments[0].name}`"
        )
    results = []
    for exp in experiments:
        done = reusable(exp, raw, lock, found, rerun)
        if done is None:
            raise ExperimentError(
                f"experiment {exp.name} did not finish: see `dvc queue logs {exp.name}`"
            )
        ran = stages_run(root, exp.name) if exp in queued else None
        results.append(Result(exp, done.metrics or {}, ran, done.rev))
    return Sweep(results, len(queued), minutes)
