"""Shared fixtures: a temporary project directory with a tiny params.yaml, and image makers."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import yaml
from PIL import Image

from recaption import io as recaption_io
from recaption.profiles import merge

TINY = {
    "seed": 7,
    "data": {
        "image_size": 16,
        "shard_size": 25,
        "num_workers": 0,
        "synthetic": {"num_images": 60},
    },
    "prompts": {"per_category": 3},
    "sample": {"size": 10, "overlap": 0.5, "heldout_size": 8},
    "clip": {"train": {"corpus": 40}},  # the default's 40,000 renders take seconds
    # Unit tests draw in pixel space, as a saved pipeline folder does in its own VAE's
    # (tests/tiny_repo.py runs the default's latent route end to end).
    "autoencoder": {"model": "none", "corpus": 40},  # (as clip's)
    "generator": {"model": "configs/generator/tiny-unet-32.json", "edge_weight": 0.0},
}


class Project:
    """A temporary working directory holding a params.yaml; stages run inside it."""

    def __init__(self, root: Path):
        self.root = root

    def write_params(self, **overrides) -> Path:
        path = self.root / "params.yaml"
        path.write_text(yaml.safe_dump(merge(TINY, overrides), sort_keys=False))
        return path


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    monkeypatch.chdir(tmp_path)
    proj = Project(tmp_path)
    proj.write_params()
    return proj


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def solid(colour=(200, 30, 30), size=(24, 20), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def distinct_png(i: int, size: int = 20) -> bytes:
    """A PNG whose pixels differ for every i (so no duplicate-image rejects)."""
    img = Image.new("RGB", (size, size), (i % 256, (i * 7) % 256, (i * 13) % 256))
    img.putpixel((0, 0), (i // 256 % 256, 1, 2))
    return encode(img)


def write_dataset(folder: Path, images: torch.Tensor, shard_size: int = 3) -> list[str]:
    """A dataset folder of PNG shards (key, sha256, image), as ingest writes them."""
    pngs = [encode(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in images]
    keys = [f"{i:04d}" for i in range(len(pngs))]
    folder.mkdir(exist_ok=True)
    for index, start in enumerate(range(0, len(pngs), shard_size)):
        part = slice(start, start + shard_size)
        hashes = [recaption_io.sha256_bytes(p) for p in pngs[part]]
        table = pa.table({"key": keys[part], "sha256": hashes, "image": pngs[part]})
        recaption_io.write_shard(folder, index, table)
    return keys


@pytest.fixture(scope="session")
def tiny_repro(tmp_path_factory):
    """The tiny project after one clean `dvc repro`, built once for every dvc test.

    The run records the failpoints each stage passed (see recaption.io), for the
    fault-injection tests, and the params keys each stage read (tiny_repo.reads_env).
    """
    from tiny_repo import Repro, make_project, read_failpoints, read_reads, reads_env, run

    repo = tmp_path_factory.mktemp("repo")
    commit = make_project(repo)
    trace = tmp_path_factory.mktemp("trace") / "failpoints.tsv"
    reads = trace.with_name("reads.tsv")
    run(["dvc", "repro"], repo, RECAPTION_FAILPOINTS=str(trace), **reads_env(reads))
    # Tests that change the project work on copies of it as the run left it.
    pristine = tmp_path_factory.mktemp("pristine") / "repo"
    shutil.copytree(repo, pristine, symlinks=True)
    lock = (repo / "dvc.lock").read_text()
    return Repro(repo, commit, lock, read_failpoints(trace), read_reads(reads), pristine)
