"""Reruns agree and crashes lose nothing: every stage killed mid-write, in a fresh clone with
its own cache, still ends with the dvc.lock of the clean run; outputs travel through a remote."""

from pathlib import Path

import pytest
import yaml

from recaption import io

from tiny_repo import clone, finished_copy, read_failpoints, run, stale, write_params

pytestmark = pytest.mark.slow


def test_outputs_pushed_to_a_remote_pull_into_a_fresh_clone_with_nothing_to_run(
    tiny_repro, tmp_path
):
    repo = finished_copy(tiny_repro, tmp_path / "run")
    storage = tmp_path / "storage"  # a local-folder remote; s3:// or gs:// work the same
    run(["dvc", "remote", "add", "--default", "shared", str(storage)], repo)
    run(["git", "add", "-A"], repo)  # dvc.lock, the remote, the uncached metrics
    run(["git", "commit", "-qm", "pipeline run"], repo)
    run(["dvc", "push"], repo)

    fresh = tmp_path / "fresh"
    run(["git", "clone", "-q", str(repo), str(fresh)], tmp_path)
    assert not (fresh / "models" / "generator").exists()
    run(["dvc", "pull"], fresh)
    assert stale(fresh) == set()
    assert "Running stage" not in run(["dvc", "repro"], fresh)
    for path in ("models/generator/model_index.json", "data/evaluation/samples.parquet"):
        assert (fresh / path).read_bytes() == (repo / path).read_bytes(), path


def kill_points(failpoints: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A point to kill each stage's command at, stages in the order a run reaches them.

    The stages take turns between two kinds of point. With two writes or more: after
    the middle write is renamed into place (part of the output there, the rest not), or
    just before the last rename (all the work done, the last output missing). With one
    write: just before its rename, or just after it. (Both points for every stage took
    274 s, near half the suite.)
    """
    names: dict[str, list[str]] = {}
    for command, name in failpoints:
        names.setdefault(command, []).append(name)
    points = []
    for turn, (command, passed) in enumerate(names.items()):
        renamed = [n.split(":", 1)[1] for n in passed if n.startswith("before-rename:")]
        if len(renamed) == 1:
            chosen = [f"before-rename:{renamed[0]}", f"after-rename:{renamed[0]}"]
        else:
            middle = renamed[(len(renamed) - 1) // 2]
            chosen = [f"after-rename:{middle}", f"before-rename:{renamed[-1]}"]
        points.append((command, chosen[turn % 2]))
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


def test_every_stage_killed_mid_write_recovers_to_the_same_outputs(tiny_repro, tmp_path):
    """A forward sweep from clean: each `dvc repro` finishes what the last one left (a
    killed stage reruns over its own debris) and is killed at the next point; a last
    plain `dvc repro` must then end where an uninterrupted run ended. The sweep runs in
    a fresh clone with its own empty cache, so this is also the check that two runs
    from clean write the same dvc.lock: every output hash equal."""
    points = kill_points(tiny_repro.failpoints)
    stages = yaml.safe_load((tiny_repro.path / "dvc.yaml").read_text())["stages"]
    commands = {spec["cmd"].removeprefix("recap "): name for name, spec in stages.items()}
    assert {commands[c] for c, _ in points} == set(stages)  # every stage is killed
    assert len(points) == len(stages)
    kinds = [point.split(":")[0] for _, point in points]
    assert {"before-rename", "after-rename"} == set(kinds)

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


def lock_outs(repo: Path) -> dict[str, list[dict]]:
    """Stage -> the outputs dvc.lock records for it, with their hashes."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {name: stage.get("outs", []) for name, stage in stages.items()}


@pytest.mark.parametrize(
    "edit",
    [
        {"autoencoder": {"steps": 4}},  # upstream: other latents, another latent space
        {"generator": {"seed": 1}},  # the stage's own
    ],
    ids=["autoencoder-steps", "generator-seed"],
)
def test_a_training_killed_after_a_checkpoint_then_edited_ends_as_a_clean_run(
    tiny_repro, tmp_path, edit
):
    """train_generator is killed just after its first checkpoint, a param it depends on is
    edited, and `dvc repro` must end with the bytes of a clean run with the edit: the
    checkpoint, made from other inputs, is not resumed."""
    checkpoint = next(
        name
        for command, name in tiny_repro.failpoints
        if command == "train-generator" and name.startswith("after-rename:data/.work/")
    )
    killed = finished_copy(tiny_repro, tmp_path / "killed")
    proc = run(["dvc", "repro", "--force", "--single-item", "train_generator"], killed,
               check=False, RECAPTION_KILL_AT=checkpoint)  # fmt: skip
    assert proc.returncode != 0
    assert (killed / checkpoint.split(":", 1)[1] / "state.json").is_file()
    write_params(killed, **edit)
    run(["dvc", "repro"], killed)

    clean = finished_copy(tiny_repro, tmp_path / "clean")
    write_params(clean, **edit)
    run(["dvc", "repro"], clean)
    outs = lock_outs(clean)
    assert outs["train_generator"] != lock_outs(tiny_repro.pristine)["train_generator"]
    assert lock_outs(killed) == outs
