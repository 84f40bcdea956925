"""Reruns agree and crashes lose nothing: two clean runs, and every stage killed mid-write."""

from pathlib import Path

import pytest
import yaml

from recaption import io

from tiny_repo import clone, read_failpoints, run, stale

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def second_run(tiny_repro, tmp_path_factory) -> Path:
    """Another clean `dvc repro` of the same project, in a fresh clone with its own cache."""
    again = clone(tiny_repro.path, tiny_repro.commit, tmp_path_factory.mktemp("again") / "repo")
    run(["dvc", "repro"], again)
    return again


def test_two_clean_runs_write_the_same_dvc_lock(tiny_repro, second_run):
    assert (second_run / "dvc.lock").read_text() == tiny_repro.lock  # every output's hash


def test_outputs_pushed_to_a_remote_pull_into_a_fresh_clone_with_nothing_to_run(
    second_run, tmp_path
):
    storage = tmp_path / "storage"  # a local-folder remote; s3:// or gs:// work the same
    run(["dvc", "remote", "add", "--default", "shared", str(storage)], second_run)
    run(["git", "add", "-A"], second_run)  # dvc.lock, the remote, the uncached metrics
    run(["git", "commit", "-qm", "pipeline run"], second_run)
    run(["dvc", "push"], second_run)

    fresh = tmp_path / "fresh"
    run(["git", "clone", "-q", str(second_run), str(fresh)], tmp_path)
    assert not (fresh / "models" / "generator").exists()
    run(["dvc", "pull"], fresh)
    assert stale(fresh) == set()
    assert "Running stage" not in run(["dvc", "repro"], fresh)
    for path in ("models/generator/model_index.json", "data/evaluation/samples.parquet"):
        assert (fresh / path).read_bytes() == (second_run / path).read_bytes(), path


def kill_points(failpoints: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Two points to kill each stage's command at, stages in the order a run reaches them.

    With two writes or more: after the middle write is renamed into place (part of the
    output there, the rest not) and just before the last rename (all the work done, the
    last output missing). With one write: just before and just after its rename.
    """
    names: dict[str, list[str]] = {}
    for command, name in failpoints:
        names.setdefault(command, []).append(name)
    points = []
    for command, passed in names.items():
        renamed = [n.split(":", 1)[1] for n in passed if n.startswith("before-rename:")]
        if len(renamed) == 1:
            chosen = [f"before-rename:{renamed[0]}", f"after-rename:{renamed[0]}"]
        else:
            middle = renamed[(len(renamed) - 1) // 2]
            chosen = [f"after-rename:{middle}", f"before-rename:{renamed[-1]}"]
        points += [(command, point) for point in chosen]
    return points


def leftovers(repo: Path) -> list[str]:
    """Temporary files and resume folders left among the outputs."""
    found = [
        str(p.relative_to(repo))
        for top in ("data", "models", "reports", "dvclive")
        for p in (repo / top).rglob("*")
        if p.name.startswith(io.TEMP_PREFIX)
    ]
    work = repo / "data" / ".work"
    return found + [str(p.relative_to(repo)) for p in work.rglob("*")] if work.exists() else found


def test_every_stage_killed_at_several_points_recovers_to_the_same_outputs(tiny_repro, tmp_path):
    """A forward sweep from clean: each `dvc repro` finishes what the last one left (a
    killed stage reruns over its own debris) and is killed at the next point; a last
    plain `dvc repro` must then end where an uninterrupted run ended."""
    points = kill_points(tiny_repro.failpoints)
    stages = yaml.safe_load((tiny_repro.path / "dvc.yaml").read_text())["stages"]
    commands = {spec["cmd"].removeprefix("recap "): name for name, spec in stages.items()}
    assert {commands[c] for c, _ in points} == set(stages)  # every stage is killed
    assert len(points) == 2 * len(stages)

    repo = clone(tiny_repro.path, tiny_repro.commit, tmp_path / "faults")
    trace = tmp_path / "failpoints.tsv"
    for command, point in points:
        proc = run(["dvc", "repro"], repo, check=False, RECAPTION_KILL_AT=point,
                   RECAPTION_FAILPOINTS=str(trace))  # fmt: skip
        assert proc.returncode != 0, f"{commands[command]} was not killed at {point}"
        assert read_failpoints(trace)[-1] == (command, point)  # died there, not elsewhere
        assert commands[command] in stale(repo)

    run(["dvc", "repro"], repo)
    assert yaml.safe_load((repo / "dvc.lock").read_text()) == yaml.safe_load(tiny_repro.lock)
    assert stale(repo) == set()
    assert leftovers(repo) == []
