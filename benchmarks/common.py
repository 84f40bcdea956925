"""Shared by the benchmarks: a scratch git + DVC repo built from this checkout, and a timer
that samples the peak memory of a command's whole process tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

from recaption.world.vocab import DIGITS, LETTERS

ROOT = Path(__file__).resolve().parents[1]
GLYPHS = LETTERS + DIGITS  # every glyph a render may show, in a fixed order
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def timed(
    cmd: list[str], cwd: Path, stderr: list[str] | None = None, memory: str = "rss"
) -> tuple[float, float]:
    """Run `cmd`; return (seconds, peak summed memory of its process tree in MiB).

    memory: "rss" sums resident sets, counting pages that forked workers share with
    their parent once per process (an upper bound); "pss" sums proportional sets, each
    shared page split among its sharers (what the tree takes from the machine).
    Its stderr (the log) is appended to `stderr` when given.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(_memory(p, memory) for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    if stderr is not None:
        stderr.append(err)
    return time.perf_counter() - start, peak / 2**20


def _memory(process: psutil.Process, kind: str) -> int:
    """A process's resident ("rss") or proportional ("pss") set, in bytes."""
    return process.memory_info().rss if kind == "rss" else process.memory_full_info().pss


def make_repo(where: Path, overrides: dict) -> Path:
    """A fresh git + DVC repo with this checkout's pipeline and params updated by `overrides`."""
    repo = where / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("src", "configs", "data/raw"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    write_params(repo, overrides)
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "bench"],
    ):
        subprocess.run(cmd, cwd=repo, env=ENV, check=True, capture_output=True)
    return repo


def write_params(repo: Path, overrides: dict) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        target = params
        *parents, last = section.split(".")
        for part in parents:
            target = target[part]
        if isinstance(values, dict):
            target[last].update(values)
        else:
            target[last] = values
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def incremental_figures(
    images: int, added: int, runs: dict[str, tuple[float, float, dict]], done: str
) -> dict:
    """An incremental benchmark's figures from its three runs, each (seconds, peak MiB,
    the stage's counts): "full" on `images`, "unchanged" (nothing new: the fixed cost)
    and "more" after `added` images; `done` names the count ("decoded", "rewritten")."""
    (full_s, full_mib, full), (noop_s, _, noop), (more_s, _, more) = (
        runs[k] for k in ("full", "unchanged", "more")
    )
    return {
        "full_images": images,
        "full_s": round(full_s, 1),
        "full_peak_rss_mib": round(full_mib),
        f"full_{done}": full[done],
        "unchanged_s": round(noop_s, 1),
        f"unchanged_{done}": noop[done],
        "plus_1pct_images": added,
        "plus_1pct_s": round(more_s, 1),
        f"plus_1pct_{done}": more[done],
        "plus_1pct_over_full": round(more_s / full_s, 4),
        "plus_1pct_minus_fixed_over_full": round((more_s - noop_s) / full_s, 4),
    }
