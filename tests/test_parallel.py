"""Data-parallel training under Accelerate: two CPU processes train the generator."""

from __future__ import annotations

import json
import shutil
import sys

import pyarrow.parquet as pq
import pytest
import torch

from recaption import parallel
from recaption.errors import UserError
from recaption.parallel import Parallel

# Two CPU processes on this machine (gloo), no config file needed.
TWO_CPU = {
    "RECAP_LAUNCHER": "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 "
    "--mixed_precision no --dynamo_backend no",
    "ACCELERATE_USE_CPU": "1",
}


def test_no_launcher_runs_the_stage_in_this_process(monkeypatch):
    monkeypatch.delenv(parallel.LAUNCHER_ENV, raising=False)
    assert parallel.launch_command(["train-generator"]) is None
    monkeypatch.setenv(parallel.LAUNCHER_ENV, "accelerate launch --num_processes 4")
    assert parallel.launch_command(["train-generator", "-p", "x.yaml"]) == [
        "accelerate", "launch", "--num_processes", "4", "-m", "recaption", "train-generator",
        "-p", "x.yaml",
    ]  # fmt: skip
    monkeypatch.setenv("RECAP_LAUNCHED", "1")  # inside the launched processes
    assert parallel.launch_command(["train-generator"]) is None


def test_a_launcher_that_is_not_installed_is_a_clear_error(monkeypatch):
    from typer.testing import CliRunner

    from recaption.cli import app

    monkeypatch.setenv(parallel.LAUNCHER_ENV, "no-such-launcher launch --num_processes 2")
    # Empty, so relaunch tries; set through monkeypatch, so the "1" it writes is undone.
    monkeypatch.setenv("RECAP_LAUNCHED", "")
    monkeypatch.setattr(sys, "argv", ["recap", "train-generator"])
    result = CliRunner().invoke(app, ["train-generator"])
    assert result.exit_code == 2
    assert "'no-such-launcher', which is not on PATH" in result.output


def test_each_process_takes_an_equal_slice_of_the_batch():
    batch = list(range(8))
    slices = [Parallel(rank=r, world=4).share(batch) for r in range(4)]
    assert slices == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert Parallel().share(batch) == batch
    with pytest.raises(UserError, match="multiple of the 3 training processes"):
        Parallel(rank=0, world=3).share(batch, "generator.batch_size")


def fixed_batch_loss(repo, pipe) -> float:
    """The denoising loss of `pipe` on the first 8 training images, fixed noise."""
    from recaption import datasets, paths
    from recaption.models.generator_train import denoising_loss, to_model_space

    rows = datasets.load_rows(repo / paths.DATASET, ["image", "caption"])[:8]
    images = datasets.images_tensor([r["image"] for r in rows], pipe.image_size)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x0 = to_model_space(pipe, images)
        return float(denoising_loss(pipe, x0, [r["caption"] for r in rows], gen))


@pytest.mark.slow
def test_generator_trains_in_two_cpu_processes(tiny_repro, tmp_path, monkeypatch):
    from recaption import datasets, paths
    from recaption.models import generator as gen_lib
    from recaption.params import load_params
    from recaption.stages import train_generator as stage

    from tiny_repo import read_failpoints, run, write_params

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repro.pristine, repo, symlinks=True)
    write_params(repo, generator={"steps": 40, "checkpoint_every": 10, "lr": 3e-3})
    run(["recap", "train-generator"], repo)  # one process: the reference
    alone = json.loads((repo / paths.GENERATOR / "lineage.json").read_text())["metrics"]
    trace = tmp_path / "failpoints.tsv"
    run(["recap", "train-generator"], repo, RECAPTION_FAILPOINTS=str(trace), **TWO_CPU)

    metrics = json.loads((repo / paths.GENERATOR / "lineage.json").read_text())["metrics"]
    assert metrics["processes"] == 2 and "processes" not in alone
    # The same training, spread: each process has half of every batch, and the gradient
    # average is the whole batch's, so the loss follows the one-process run's closely.
    assert metrics["loss"] == pytest.approx(alone["loss"], rel=0.02)
    renames = [name for _, name in read_failpoints(trace) if name.startswith("before-rename:")]
    assert renames.count(f"before-rename:{paths.GENERATOR.as_posix()}") == 1
    checkpoints = [n for n in renames if n.startswith(f"before-rename:{paths.WORK / stage.STAGE}")]
    assert len(checkpoints) == 4  # steps 10, 20, 30, 40, by the main process alone
    # The loss falls: the trained model denoises a fixed batch better than its start.
    monkeypatch.chdir(repo)
    params = load_params(paths.PARAMS)
    heldout = datasets.read_splits(paths.SPLITS)["heldout"]
    rows = pq.read_table(paths.RELABELED_CAPTIONS).to_pylist()
    texts = [r["caption"] for r in rows if r["key"] not in heldout]  # as the stage starts
    start = fixed_batch_loss(repo, stage.start_pipeline(params, texts))
    trained = fixed_batch_loss(repo, gen_lib.load(paths.GENERATOR))
    assert trained < 0.8 * start
