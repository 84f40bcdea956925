"""recaption.experiments reads DVC experiments through `dvc exp show --json`, never
through the git refs DVC happens to keep them under."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recaption import experiments
from recaption.errors import UserError
from recaption.experiments import Done, Experiment, ExperimentError

from tiny_repo import run

PARAMS = {"a": {"b": 1}, "compare": {"seeds": 2}}
METRICS = {"score": {"v": 6, "ci95": [5.5, 6.5]}, "note": "lists and strings too"}


@pytest.fixture
def dvc_path(monkeypatch):
    """dvc (this environment's) and a git identity for the calls made in-process."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.invalid")


def exp_show(baseline: str, *exps: tuple[str, str, dict | None]) -> list[dict]:
    """`dvc exp show --json` as DVC 3 prints it: one baseline, (name, rev, executor) each."""
    return [{"rev": baseline, "name": "main", "data": {}, "error": None, "experiments": [
        {"revs": [{"rev": rev, "name": name, "data": {}, "error": None, "experiments": None}],
         "executor": executor, "name": name}
        for name, rev, executor in exps
    ]}]  # fmt: skip


def test_experiments_are_the_ones_dvc_lists_not_git_refs(tmp_path, monkeypatch):
    # The experiment's commit sits under no ref at all: only DVC's listing names it.
    run(["git", "init", "-q"], tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    run(["git", "add", "-A"], tmp_path)
    run(["git", "commit", "-qm", "baseline"], tmp_path)
    baseline = run(["git", "rev-parse", "HEAD"], tmp_path).strip()
    (tmp_path / "params.yaml").write_text("a:\n  b: 3\n  lr: 1e-4\ncompare:\n  seeds: 2\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps(METRICS))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {"m": {"cmd": "true"}}}))
    run(["git", "add", "-A"], tmp_path)
    tree = run(["git", "write-tree"], tmp_path).strip()
    sha = run(["git", "commit-tree", tree, "-p", baseline, "-m", "experiment"], tmp_path).strip()
    success = {"state": "success", "name": "dvc-task", "local": None}
    shown = exp_show(baseline, ("ladder-ground-truth", sha, success),
                     ("ladder-reference-95", baseline, {"state": "running"}))  # fmt: skip
    calls = []
    real_run = subprocess.run

    def recorded(cmd, *args, **kwargs):
        calls.append(cmd)
        return real_run(cmd, *args, **kwargs)

    def dvc(root, *args, check=True):
        calls.append(["dvc", *args])
        assert args[:3] == ("exp", "show", "--json")
        return subprocess.CompletedProcess(["dvc", *args], 0, json.dumps(shown), "")

    monkeypatch.setattr(subprocess, "run", recorded)
    monkeypatch.setattr(experiments, "_dvc", dvc)
    found = experiments.finished(tmp_path)
    # The running experiment is left out; the finished one's files come from its commit,
    # params.yaml read as PyYAML reads the workspace's (`1e-4` a string, as DVC would not).
    lock = {"stages": {"m": {"cmd": "true"}}}
    params = {"a.b": 3, "a.lr": "1e-4"}
    assert found == {"ladder-ground-truth": [Done(sha, baseline, params, METRICS, lock)]}
    assert all("refs/exps" not in " ".join(map(str, cmd)) for cmd in calls)
    assert not any("for-each-ref" in cmd for cmd in calls)


def test_a_repository_dvc_cannot_read_is_a_user_error(tmp_path, dvc_path):
    run(["git", "init", "-q"], tmp_path)  # git, but no DVC project
    with pytest.raises(ExperimentError, match="DVC cannot read the experiments") as caught:
        experiments.listed(tmp_path)
    assert isinstance(caught.value, UserError) and "not inside of a DVC" in str(caught.value)


def test_a_sweep_that_dvc_lists_no_experiments_for_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "committed_lock", lambda root: ("HEAD", {}))
    monkeypatch.setattr(experiments, "queue", lambda *args: [])
    monkeypatch.setattr(experiments, "finished", lambda root: {})
    with pytest.raises(ExperimentError, match="DVC lists no finished experiments"):
        experiments.run_all(tmp_path, [Experiment("ground-truth-s0", "ground-truth", 0, {})], {})


def entry(path: str, md5: str) -> dict:
    return {"path": path, "hash": "md5", "md5": md5, "size": 1}


def lock_of(ingest_code="c1", dataset="d1", blend_code="b1", relabeled="r1") -> dict:
    """A two-stage dvc.lock: ingest above the blend, the blend a stage variants rerun."""
    return {"schema": "2.0", "stages": {
        "ingest": {"cmd": "recap ingest", "deps": [entry("src/ingest.py", ingest_code)],
                   "params": {"params.yaml": {"data": {"n": 1}}},
                   "outs": [entry("data/dataset", dataset)]},
        "blend": {"cmd": "recap blend",
                  "deps": [entry("data/dataset/shard-0.parquet", dataset),
                           entry("src/blend.py", blend_code)],
                  "params": {"params.yaml": {"blend": {"synthetic_ratio": 0.95}}},
                  "outs": [entry("data/relabeled", relabeled)]},
    }}  # fmt: skip


def test_reuse_survives_a_change_upstream_that_keeps_its_outputs_bytes():
    key = experiments.reuse_key(lock_of())
    # Upstream code edited, its output the same bytes (a refactoring): the same inputs.
    assert experiments.reuse_key(lock_of(ingest_code="c2")) == key
    # What the variant's own stages wrote, and their params, are the experiment's business.
    assert experiments.reuse_key(lock_of(relabeled="r2")) == key
    # Other upstream bytes, or other code below the blend: other inputs.
    assert experiments.reuse_key(lock_of(dataset="d2")) != key
    assert experiments.reuse_key(lock_of(blend_code="b2")) != key
    # An upstream file read below, but written by a stage, counts through that stage only.
    assert "data/dataset/shard-0.parquet" not in key["blend"]


def test_a_sweep_that_reruns_upstream_stages_compares_their_code_not_their_bytes():
    rerun = {"ingest", "blend"}  # a sweep over the data's params: both stages rerun
    key = experiments.reuse_key(lock_of(), rerun)
    assert key == {"ingest": {"src/ingest.py": experiments._bytes(entry("", "c1"))},
                   "blend": {"src/blend.py": experiments._bytes(entry("", "b1"))}}  # fmt: skip
    assert experiments.reuse_key(lock_of(dataset="d2"), rerun) == key  # the sweep's own
    assert experiments.reuse_key(lock_of(ingest_code="c2"), rerun) != key


def test_downstream_follows_what_each_stage_reads_through_the_real_pipeline():
    root = Path(__file__).resolve().parents[1]
    assert experiments.downstream(root, "blend") == {"blend", "train_generator", "evaluate"}
    below_sample = experiments.downstream(root, "sample")
    assert {"sample", "captioner_stage2", "recaption", "blend", "evaluate"} <= below_sample
    assert not {"ingest", "prompts", "oracle", "eval_clip"} & below_sample
    with pytest.raises(ExperimentError, match="no stage 'sampel'"):
        experiments.downstream(root, "sampel")


def test_a_path_is_within_an_output_when_it_is_one_or_lies_inside_one():
    outs = {"data/dataset", "models/clip/"}  # `dvc status` may end a folder with "/"
    assert experiments.within("data/dataset", outs)
    assert experiments.within("data/dataset/shard-0.parquet", outs)
    assert experiments.within("models/clip/model.safetensors", outs)
    assert not experiments.within("data/dataset2/shard-0.parquet", outs)  # a prefix only
    assert not experiments.within("data", outs)


def test_an_earlier_experiment_is_reused_only_on_the_same_params_and_inputs():
    exp = Experiment("ground-truth-s0", "ground-truth", 0, {"blend.synthetic_ratio": 0.0})
    raw = {"blend": {"synthetic_ratio": 0.95}, "compare": {"seeds": 1}}
    want = {"blend.synthetic_ratio": 0.0}

    def done(params=want, metrics=METRICS, **lock) -> Done:
        return Done("e1", "b0", params, metrics, lock_of(**lock))

    refactored = done(ingest_code="c0", relabeled="r9")
    assert experiments.reusable(exp, raw, lock_of(), {exp.name: [refactored]}) is refactored
    for stale in (done(dataset="d0"), done(blend_code="b0"), done(metrics=None),
                  done(params={"blend.synthetic_ratio": 0.5})):  # fmt: skip
        assert experiments.reusable(exp, raw, lock_of(), {exp.name: [stale]}) is None
    assert experiments.reusable(exp, raw, lock_of(), {"other-s0": [refactored]}) is None


STAGE = """stages:
  m:
    cmd: python m.py
    deps: [m.py]
    params: [a.b]
    metrics: [reports/metrics.json: {cache: false}]
"""
SCRIPT = """import json, yaml
b = yaml.safe_load(open("params.yaml"))["a"]["b"]
json.dump({"v": 2 * b, "n": [b]}, open("reports/metrics.json", "w"))
"""


@pytest.mark.slow
def test_a_real_experiment_is_listed_and_an_outdated_one_makes_way(tmp_path, dvc_path):
    """Against the installed DVC: what `dvc exp run` made, `finished` reads; queueing the
    same name with other params removes the old one through `dvc exp remove`."""
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        run(cmd, tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"a": {"b": 1}}))
    (tmp_path / "dvc.yaml").write_text(STAGE)
    (tmp_path / "m.py").write_text(SCRIPT)
    run(["dvc", "repro", "-q"], tmp_path)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "commit", "-qm", "baseline"], tmp_path)
    baseline = run(["git", "rev-parse", "HEAD"], tmp_path).strip()
    run(["dvc", "exp", "run", "-q", "--name", "b-3", "-S", "a.b=3"], tmp_path)

    (done,) = experiments.finished(tmp_path)["b-3"]
    assert (done.baseline, done.params, done.metrics) == (baseline, {"a.b": 3}, {"v": 6, "n": [3]})

    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    again = Experiment("b-3", "b", 0, {"a.b": 5})
    assert experiments.queue(tmp_path, [again], raw, lock, baseline) == [again]
    assert experiments.listed(tmp_path) == []  # removed; the queued run is not finished
