"""`dvc repro` end to end in a temporary git repository, and which stages an edit makes stale."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY, merge

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
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
    "generator": {
        "model": "configs/generator/tiny-unet-16.json",
        "vocab_size": 300,
        "steps": 3,
        "batch_size": 8,
        "warmup_steps": 1,
        "checkpoint_every": 2,
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


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "configs", repo / "configs")
    shutil.copy(ROOT / "tests" / "data" / "tiny-clip-16.json", repo / "configs" / "clip")
    shutil.copy(ROOT / "tests" / "data" / "tiny-gpt2.json", repo / "configs" / "captioner")
    shutil.copy(ROOT / "tests" / "data" / "tiny-unet-16.json", repo / "configs" / "generator")
    (repo / "data" / "raw").mkdir(parents=True)
    shutil.copy(ROOT / "data" / "raw" / "README.md", repo / "data" / "raw" / "README.md")
    write_params(repo)
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny project"], repo)
    run(["dvc", "repro"], repo)
    return repo


def test_repro_runs_every_stage_and_leaves_nothing_stale(repo):
    for path in (
        "data/dataset",
        "data/rejects.parquet",
        "data/prompts/suite.parquet",
        "data/subset/splits.parquet",
        "data/annotations/short.parquet",
        "data/annotations/descriptive.parquet",
        "reports/ingest.json",
        "models/captioner/stage2/model.safetensors",
        "data/captions/synthetic.parquet",
        "reports/captions.json",
        "reports/captions.html",
        "data/relabeled/captions.parquet",
        "reports/blend.json",
        "models/generator/model_index.json",
    ):
        assert (repo / path).exists(), path
    assert stale(repo) == set()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {
        "ingest",
        "prompts",
        "sample",
        "annotate",
        "clip_pretrain",
        "embed",
        "embed_probe",
        "captioner_pretrain",
        "captioner_stage1",
        "captioner_stage2",
        "recaption",
        "caption_report",
        "blend",
        "train_generator",
    }
    trained_on = json.loads((repo / "models/generator/lineage.json").read_text())
    blend = json.loads((repo / "reports/blend.json").read_text())
    assert trained_on["caption_version"] == blend["caption_version"]
    assert not (repo / "data/.work/train_generator").exists()  # checkpoints cleared
    assert set(lock["stages"]["sample"]["params"]["params.yaml"]) == {"seed", "sample"}


def would_run(repo: Path) -> set[str]:
    """The stages `dvc status` reports plus every stage below them in `dvc dag`.

    dvc status names only stages whose own deps changed; a stage below one is stale
    through that stage's outputs, which change only once it reruns.
    """
    edges = [
        tuple(part.strip().strip('";') for part in line.split("->"))
        for line in run(["dvc", "dag", "--dot"], repo).splitlines()
        if "->" in line
    ]
    todo, seen = list(stale(repo)), set()
    while todo:
        stage = todo.pop()
        if stage not in seen:
            seen.add(stage)
            todo += [dst for src, dst in edges if src == stage]
    return seen


def test_sample_edit_makes_exactly_sample_and_what_is_below_it_stale(repo):
    write_params(repo, sample={"size": 12})
    # dvc status names the stage whose params changed; annotate is stale through its output.
    assert stale(repo) == {"sample"}
    # The CLIP trains on the subset's annotations, and embed probes the held-out split.
    assert would_run(repo) == {"sample", "annotate", "clip_pretrain", "embed", "embed_probe",
                               *CAPTIONER_AND_BELOW}  # fmt: skip
    run(["dvc", "repro", "--single-item", "sample"], repo)
    assert stale(repo) == {
        "annotate", "clip_pretrain", "embed_probe", "captioner_pretrain", "caption_report",
        "train_generator",  # it trains on every image outside the held-out split
    }  # fmt: skip
    run(["dvc", "repro"], repo)
    assert stale(repo) == set()


CAPTIONER_AND_BELOW = {
    "captioner_pretrain", "captioner_stage1", "captioner_stage2", "recaption", "caption_report",
    "blend", "train_generator",
}  # fmt: skip


def test_a_stage2_edit_retrains_only_stage2_and_recaptions(repo):
    write_params(repo, sample={"size": 12}, captioner={"stage2": {"lr": 0.002}})
    assert stale(repo) == {"captioner_stage2"}
    assert would_run(repo) == {
        "captioner_stage2", "recaption", "caption_report", "blend", "train_generator"
    }  # fmt: skip
    write_params(repo, sample={"size": 12}, recaption={"descriptive": {"max_new_tokens": 9}})
    assert would_run(repo) == {"recaption", "caption_report", "blend", "train_generator"}
    write_params(repo, sample={"size": 12}, blend={"synthetic_ratio": 0.8})
    assert would_run(repo) == {"blend", "train_generator"}


def test_prompts_edit_touches_only_prompts(repo):
    write_params(repo, sample={"size": 12}, prompts={"seed": 99})
    assert stale(repo) == {"prompts"}
    # embed reruns for the prompt embeddings, finds every image shard unchanged, and so
    # leaves its image output as it was: nothing below it runs.
    ran = {
        line.split("'")[1]
        for line in run(["dvc", "repro"], repo).splitlines()
        if line.startswith("Running stage")
    }
    assert ran == {"prompts", "embed"}
    assert stale(repo) == set()


def test_a_typo_in_params_fails_before_any_work(repo):
    write_params(repo, sample={"size": 12, "overlapp": 0.5})
    env_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(
        ["recap", "sample"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": env_path},
    )
    assert proc.returncode == 2
    assert "sample.overlapp: unknown key; did you mean 'overlap'?" in proc.stderr


def test_recap_generate_draws_with_the_trained_generator(repo):
    out = run(["recap", "generate", "a red circle on the left", "--n", "2", "--steps", "2",
               "--out", "drawn/circle.png"], repo)  # fmt: skip
    written = [repo / line for line in out.split()]
    assert [p.name for p in written] == ["circle-0.png", "circle-1.png", "circle-grid.png"]
    assert all(p.is_file() for p in written)
