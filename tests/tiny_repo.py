"""A tiny copy of the project in a temporary git repository, for tests that run dvc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from conftest import TINY, merge

ROOT = Path(__file__).resolve().parents[1]
READS_HOOK = ROOT / "tests" / "params_reads"  # its sitecustomize logs the params stages read


def run(cmd: list[str], cwd: Path, check: bool = True, **env_vars: str):
    """Run `cmd` in `cwd` with the test environment's dvc and recap on PATH.

    Returns stdout; with `check=False`, the completed process whatever its exit status.
    """
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        **env_vars,
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if not check:
        return proc
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


FAST = {
    "clip": {
        "model": "configs/clip/tiny-clip-16.json",
        "train": {"steps": 3, "batch_size": 16, "warmup_steps": 1},
    },
    "embed": {"num_workers": 0, "probe_train_size": 20},
    "captioner": {
        "lm": "configs/captioner/tiny-gpt2.json",
        "vocab_size": 300,
        "mapper_hidden": 16,
        "val_fraction": 0.2,
        **{
            stage: {"steps": 3, "batch_size": 8, "warmup_steps": 1, "eval_every": 2}
            for stage in ("pretrain", "stage1")
        },
        "stage2": {
            "steps": 3,
            "batch_size": 8,
            "warmup_steps": 1,
            "eval_every": 2,
            "max_tokens": 40,
        },  # fmt: skip
    },
    # The tiny run goes through latent space, so the autoencoder, the latent cache and
    # decoding are exercised end to end; a 3-step autoencoder keeps no scene.
    "autoencoder": {
        "model": "configs/autoencoder/tiny-kl-16.json",
        "steps": 3,
        "batch_size": 8,
        "warmup_steps": 1,
        "min_scene_accuracy": 0.0,
        "corpus": 40,  # the default's 40,000 renders take seconds
    },
    "generator": {
        "model": "configs/generator/tiny-unet-16.json",
        "vocab_size": 300,
        "steps": 3,
        "batch_size": 8,
        "warmup_steps": 1,
        "checkpoint_every": 2,
    },
    "evaluate": {
        "images_per_prompt": 1,
        "heldout_prompts": 3,
        "steps": 2,
        "batch_size": 16,
        "chunk_size": 16,
        "grid_prompts": 2,
        # A 3-step generator draws noise; the guard that refuses it is tested in-process
        # (tests/test_facts.py, tests/test_evaluate.py).
        "noise_guard": False,
        # A 3-step oracle cannot read images; the real threshold is tested in-process.
        "oracle": {
            "train_size": 100,
            "heldout_size": 20,
            "steps": 3,
            "batch_size": 16,
            "min_accuracy": 0.0,
        },
        "clip": {
            "model": "configs/clip/tiny-clip-16.json",
            "train_size": 60,
            "heldout_size": 20,
            "steps": 3,
            "batch_size": 16,
            "warmup_steps": 1,
        },
    },  # fmt: skip
    "upsample": {
        "lm": "configs/captioner/tiny-gpt2.json",
        "vocab_size": 300,
        "steps": 3,
        "chunk_size": 20,  # upsample_captions: 3 chunks of the 60 images
        "batch_size": 8,
        "warmup_steps": 1,
        "max_source_tokens": 20,
        "max_tokens": 30,
        "decoding": {"max_new_tokens": 12},
        "heldout_prompts": 5,
    },
    "recaption": {
        "batch_size": 16,
        "chunk_size": 25,
        "short": {"max_new_tokens": 6},
        "descriptive": {"max_new_tokens": 12},
    },
}


def write_params(repo: Path, **overrides) -> None:
    tiny = merge(merge(TINY, FAST), overrides)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), tiny)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stale(repo: Path) -> set[str]:
    return set(json.loads(run(["dvc", "status", "--json"], repo)))


def make_project(repo: Path, setup: Callable[[Path], None] = write_params) -> str:
    """Copy the project (code, dvc.yaml, configs) into `repo`, a fresh git and DVC
    repository, let `setup` write its params (default: the tiny ones), and commit it;
    returns the commit."""
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "configs", repo / "configs")
    shutil.copy(ROOT / "tests" / "data" / "tiny-clip-16.json", repo / "configs" / "clip")
    shutil.copy(ROOT / "tests" / "data" / "tiny-gpt2.json", repo / "configs" / "captioner")
    shutil.copy(ROOT / "tests" / "data" / "tiny-unet-16.json", repo / "configs" / "generator")
    shutil.copy(ROOT / "tests" / "data" / "tiny-kl-16.json", repo / "configs" / "autoencoder")
    (repo / "data" / "raw").mkdir(parents=True)
    shutil.copy(ROOT / "data" / "raw" / "README.md", repo / "data" / "raw" / "README.md")
    setup(repo)
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny project"], repo)
    return run(["git", "rev-parse", "HEAD"], repo).strip()


def clone(source: Path, commit: str, dest: Path) -> Path:
    """A fresh clone of `source` at `commit`, with its own empty DVC cache."""
    run(["git", "clone", "-q", str(source), str(dest)], source)
    run(["git", "checkout", "-q", commit], dest)
    run(["dvc", "config", "--local", "core.analytics", "false"], dest)
    return dest


@dataclass(frozen=True)
class Repro:
    """A tiny project after one clean `dvc repro`, as it was right after that run."""

    path: Path
    commit: str  # the project before the run
    lock: str  # dvc.lock as the run wrote it
    failpoints: list[tuple[str, str]]  # (command, failpoint) in the order the run passed them
    reads: dict[str, set[str]]  # stage -> the params keys it read
    pristine: Path  # a copy of `path` right after the run, never changed


def finished_copy(repro: Repro, dest: Path) -> Path:
    """A copy of the tiny project as its clean run left it (outputs, uncached reports and
    its own DVC cache), with the run committed."""
    shutil.copytree(repro.pristine, dest, symlinks=True)
    assert stale(dest) == set()
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "pipeline run"], dest)
    return dest


def read_failpoints(trace: Path) -> list[tuple[str, str]]:
    """The (command, failpoint) pairs a traced run appended to `trace`, in order."""
    if not trace.exists():
        return []
    return [tuple(line.split("\t")) for line in trace.read_text().splitlines()]


def reads_env(log: Path) -> dict[str, str]:
    """Environment for `run` under which every stage DVC runs appends the params keys it
    reads to `log` (tests/params_reads/sitecustomize.py)."""
    path = [str(READS_HOOK), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"RECAPTION_PARAMS_READS": str(log), "PYTHONPATH": os.pathsep.join(path)}


def read_reads(log: Path) -> dict[str, set[str]]:
    """Stage -> the params keys it read, from a log written under `reads_env`."""
    reads: dict[str, set[str]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        stage, key = line.split("\t")
        reads.setdefault(stage, set()).add(key)
    return reads
