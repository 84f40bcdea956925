"""The captioner's ceiling: the same chain trained on features that hold the whole scene.

The captioner reads cached image features (the CLIP's pooled vector and its grid cells).
Its captions are wrong when the features do not carry a fact, or when the language
model does not learn to say what they carry. This benchmark separates the two: it
replaces every cached feature of a copy of the default run with an exact encoding of
the image's scene (one-hot blocks in the same layout: a pooled vector and the grid's
cells, each L2-normalised), then trains the three captioner stages, recaptions and
scores the captions as the pipeline does. What the captions get wrong then is the
language model's and its training data's share, not the representation's.

    .venv/bin/python benchmarks/captioner_ceiling.py WORKDIR [--threads 2]

WORKDIR is made from this checkout's params.yaml, configs/, data/ and models/ (a `make repro`
must have run). The figures are WORKDIR/reports/captions.json's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recaption import datasets, embed, io
from recaption.metrics.captions import scene_from_meta
from recaption.world.scene import Scene
from recaption.world.vocab import (
    BACKGROUNDS,
    COLOUR_NAMES,
    POSITION_NAMES,
    SHAPES,
    SIZES,
    TEXT_COLOURS,
)

from common import GLYPHS, ROOT

CHAIN = ["captioner-pretrain", "captioner-stage1", "captioner-stage2", "recaption",
         "caption-report"]  # fmt: skip
# Cell contents: empty, each shape, a glyph.
CONTENTS = ("empty", *SHAPES, "glyph")


def _one_hot(options, value) -> np.ndarray:
    v = np.zeros(len(options), np.float32)
    if value is not None:
        v[list(options).index(value)] = 1
    return v


def _unit(v: np.ndarray, width: int) -> np.ndarray:
    if v.size > width:
        raise ValueError(f"the encoding needs {v.size} dimensions, the layout has {width}")
    out = np.zeros(width, np.float32)
    out[: v.size] = v
    return out / np.linalg.norm(out)


def pooled(scene: Scene, width: int) -> np.ndarray:
    """The scene's global facts: background, main subject, object count, text."""
    main = scene.objects[scene.main]
    text = scene.text
    return _unit(np.concatenate([
        _one_hot(BACKGROUNDS, scene.background),
        _one_hot(SHAPES, main.shape),
        _one_hot(COLOUR_NAMES, main.colour),
        _one_hot(POSITION_NAMES, main.position),
        _one_hot(range(1, 10), len(scene.objects)),
        _one_hot(GLYPHS, None if text is None else text.glyph),
        _one_hot(TEXT_COLOURS, None if text is None else text.colour),
        _one_hot(POSITION_NAMES, None if text is None else text.position),
    ]), width)  # fmt: skip


def cells(scene: Scene, n_cells: int, width: int) -> np.ndarray:
    """(n_cells, width): the 3x3 grid's cells in reading order, what each holds; cells past
    the ninth are marked unused."""
    out = np.zeros((n_cells, width), np.float32)
    content: dict[int, np.ndarray] = {}
    for obj in scene.objects:
        content[obj.cell[0] * 3 + obj.cell[1]] = np.concatenate([
            _one_hot(CONTENTS, obj.shape), _one_hot(COLOUR_NAMES, obj.colour),
            _one_hot(SIZES, obj.size), _one_hot(GLYPHS, None),
            _one_hot(TEXT_COLOURS, None), [0.0],
        ])  # fmt: skip
    if scene.text is not None:
        t = scene.text
        content[t.cell[0] * 3 + t.cell[1]] = np.concatenate([
            _one_hot(CONTENTS, "glyph"), _one_hot(COLOUR_NAMES, None), _one_hot(SIZES, None),
            _one_hot(GLYPHS, t.glyph), _one_hot(TEXT_COLOURS, t.colour), [0.0],
        ])  # fmt: skip
    empty = np.concatenate([_one_hot(CONTENTS, "empty"), np.zeros(8 + 2 + 36 + len(TEXT_COLOURS)),
                            [0.0]])  # fmt: skip
    unused = np.zeros_like(empty)
    unused[-1] = 1
    for c in range(n_cells):
        v = content.get(c, empty) if c < 9 else unused
        out[c] = _unit(np.asarray(v, np.float32), width)
    return out


def write_scene_features(work: Path) -> int:
    """Replace every embedding shard's vectors with the scene encoding; return the rows."""
    rows = datasets.load_rows(work / "data" / "dataset", ["meta"])
    scenes = {r["key"]: scene_from_meta(r["meta"]) for r in rows}
    rows = 0
    for shard in io.shard_paths(work / "data" / "embeddings" / "images"):
        emb = embed.read(shard)
        n_cells = emb.grid.shape[1] // emb.vectors.shape[1] if emb.grid is not None else 0
        width = emb.vectors.shape[1]
        emb.vectors = np.stack([pooled(scenes[k], width) for k in emb.keys]).astype(np.float16)
        if emb.grid is not None:
            cell_width = emb.grid.shape[1] // n_cells
            emb.grid = np.stack(
                [cells(scenes[k], n_cells, cell_width).ravel() for k in emb.keys]
            ).astype(np.float16)
        pq.write_table(embed.to_table(emb), shard)
        rows += len(emb.keys)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    work = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in ("params.yaml", "configs", "data", "models"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)
    (work / "reports").mkdir()
    print(f"scene features for {write_scene_features(work)} images", flush=True)
    env = {"OMP_NUM_THREADS": str(args.threads)}
    recap = str(Path(sys.executable).parent / "recap")
    start = time.perf_counter()
    for stage in CHAIN:
        subprocess.run([recap, stage], cwd=work, check=True,
                       env={**os.environ, **env})  # fmt: skip
        print(f"{stage}: done at {time.perf_counter() - start:.0f} s", flush=True)
    report = json.loads((work / "reports" / "captions.json").read_text())
    print(json.dumps(report, indent=1)[:4000])


if __name__ == "__main__":
    main()
