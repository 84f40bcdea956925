"""What each grid cell of the cached embeddings says: a linear probe per cell of the world.

embed_probe asks for the main object's shape, which a linear map can read only when the
pooled vector names it; a captioner that reads the grid cells needs to know what each
cell holds. This probe reads, from everything the embedding stores (pooled vector and
grid cells), each of the 3x3 cells' content (empty, a shape, a glyph) and its object's
colour: one linear map trained with Adam on 4,000 non-held-out images, scored on the
held-out split. "Occupied" is the content accuracy over the cells that hold an object
or a glyph (chance about 1/7), the figure the captions' objects depend on.

    .venv/bin/python benchmarks/cell_probe.py [PROJECT ...]

Each PROJECT (default: this checkout) must hold a run's data/ (dataset, subset,
embeddings).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from recaption import datasets, embed
from recaption.metrics.captions import scene_from_meta
from recaption.models import oracle
from recaption.world import COLOUR_NAMES

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, STEPS, BATCH = 4000, 3000, 256


def cell_probe(project: Path, seed: int = 0) -> dict[str, float]:
    emb = embed.read_dir(project / "data" / "embeddings" / "images")
    meta = {r["key"]: r["meta"] for r in datasets.load_rows(project / "data" / "dataset", ["meta"])}
    heldout = datasets.read_splits(project / "data" / "subset" / "splits.parquet")["heldout"]
    x = torch.from_numpy(emb.features())
    target = oracle.stack_targets([scene_from_meta(meta[k]) for k in emb.keys])
    is_held = torch.tensor([k in heldout for k in emb.keys])
    train = (~is_held).nonzero().squeeze(1)[:TRAIN_IMAGES]
    test = is_held.nonzero().squeeze(1)
    n_content, n_colour, cells = len(oracle.CONTENTS), len(COLOUR_NAMES), oracle.CELLS
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], cells * (n_content + n_colour))
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=gen)
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)

    def logits(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = head(x[rows])
        content = out[:, : cells * n_content].reshape(-1, cells, n_content)
        return content, out[:, cells * n_content :].reshape(-1, cells, n_colour)

    for _ in range(STEPS):
        rows = train[torch.randint(len(train), (BATCH,), generator=gen)]
        content, colour = logits(rows)
        loss = F.cross_entropy(content.flatten(0, 1), target["content"][rows].flatten())
        loss = loss + F.cross_entropy(
            colour.flatten(0, 1), target["colour"][rows].flatten(), ignore_index=-100
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        content, colour = logits(test)
    said, truth = content.argmax(-1), target["content"][test]
    occupied = truth > 0
    coloured = target["colour"][test] >= 0
    return {
        "cells": round((said == truth).float().mean().item(), 3),
        "occupied": round((said[occupied] == truth[occupied]).float().mean().item(), 3),
        "colour": round(
            (colour.argmax(-1)[coloured] == target["colour"][test][coloured]).float().mean().item(),
            3,
        ),
        "whole_grid": round((said == truth).all(1).float().mean().item(), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("projects", nargs="*", type=Path, default=[ROOT])
    for project in ap.parse_args().projects:
        print(project.name or project, cell_probe(project), flush=True)


if __name__ == "__main__":
    main()
