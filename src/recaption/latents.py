"""Autoencoder latents of every dataset image, content-addressed, computed once per image.

The latent-space generator trains on these instead of encoding each batch again. One
shard per dataset shard under data/latents/, each row the image's key, its pixel hash,
the autoencoder's fingerprint, its latent (the posterior mean, unscaled, float32; the
generator multiplies by the autoencoder's `scaling_factor`) and its edge map on the
latent grid (`autoencoder.pooled_edges`, what the generator's edge-weighted loss reads,
so training on cached latents never needs the pixels). A rerun leaves a
shard alone when its keys, pixel hashes and autoencoder are unchanged, rebuilds the
others from latents already computed for the same (pixels, autoencoder), and encodes
only the rest: adding images to the dataset encodes only the new ones.

The same cache serves a saved pipeline's frozen VAE (a Stable Diffusion folder as
`generator.model`): its identity is then the folder VAE's weights and config and the
size the pipeline draws at (`pipeline_vae`). `text_states` keeps a frozen text
encoder's states in the same format.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from recaption import datasets, io
from recaption.models import autoencoder as ae_lib

log = logging.getLogger(__name__)
# Part of every cache key: bump it whenever decoding, `autoencoder.encode` or what a row
# holds changes (2: the edge map).
PROCEDURE_VERSION = 2


def cache_fingerprint(autoencoder_fingerprint: str) -> str:
    """The key cached latents are valid under: the autoencoder and this procedure."""
    return io.sha256_bytes(f"{autoencoder_fingerprint}:{PROCEDURE_VERSION}".encode())


@dataclass
class CacheResult:
    images: int = 0
    encoded: int = 0
    reused: int = 0
    shards_written: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def array_columns(name: str, arrays: np.ndarray) -> dict[str, pa.Array]:
    """(N, ...) float32 arrays as two columns: "shape" (of one row) and `name`."""
    flat = pa.array(np.ascontiguousarray(arrays, dtype=np.float32).ravel(), pa.float32())
    size = int(np.prod(arrays.shape[1:]))
    shape = ",".join(map(str, arrays.shape[1:]))
    return {
        "shape": pa.array([shape] * len(arrays), pa.string()),
        name: pa.FixedSizeListArray.from_arrays(flat, size),
    }


def stacked(table: pa.Table, name: str) -> np.ndarray:
    """The (N, ...) float32 arrays `array_columns` wrote as column `name`."""
    shapes = set(table.column("shape").to_pylist()) or {"0"}
    shape = tuple(int(s) for s in shapes.pop().split(","))
    flat = table.column(name).combine_chunks().flatten().to_numpy()
    return flat.reshape(table.num_rows, *shape)


def _table(keys, shas, fingerprint: str, latents: np.ndarray, edges: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(edges, dtype=np.float32).ravel(), pa.float32())
    return pa.table({
        "key": pa.array(keys, pa.string()),
        "sha256": pa.array(shas, pa.string()),
        "autoencoder": pa.array([fingerprint] * len(keys), pa.string()),
        **array_columns("latent", latents),  # shape: (C, h, w) of `latent`
        # (1, h, w): the latent's grid
        "edge": pa.FixedSizeListArray.from_arrays(flat, int(np.prod(edges.shape[1:]))),
    })  # fmt: skip


class _Old:
    """The previous run's shards made with this fingerprint: each shard's rows, and each
    pixel hash's latent."""

    def __init__(self, folder: Path, fingerprint: str):
        self.rows: dict[Path, tuple[list[str], list[str]]] = {}
        self.by_sha: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # (latent, edge map)
        for path in sorted(folder.glob(io.SHARD_GLOB)) if folder.is_dir() else []:
            table = pq.read_table(path)
            if set(table.column("autoencoder").to_pylist()) != {fingerprint}:
                continue
            shas = table.column("sha256").to_pylist()
            self.rows[path] = (table.column("key").to_pylist(), shas)
            pairs = zip(stacked(table, "latent"), _edges(table), strict=True)
            self.by_sha.update(zip(shas, pairs, strict=True))


def update(
    vae, fingerprint: str, dataset_dir: str | Path, out_dir: str | Path, image_size: int,
    batch_size: int = 256,
) -> CacheResult:  # fmt: skip
    """Bring `out_dir` (one latent shard per dataset shard) up to date with the dataset,
    encoding with `vae`, on the device it is on, only the images whose (pixels,
    autoencoder) have no latent yet; latents are stored as float32 whatever the device,
    each with its image's edge map pooled to the latent grid."""
    out_dir, fingerprint = Path(out_dir), cache_fingerprint(fingerprint)
    if out_dir.is_dir():  # persistent: a killed run's temporaries may be here
        io.remove_abandoned(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = _Old(out_dir, fingerprint)
    result = CacheResult()
    shards = io.shard_paths(dataset_dir)
    bar = tqdm(desc="encode_latents", unit="img", mininterval=2)
    for index, shard in enumerate(shards):
        meta = pq.read_table(shard, columns=["key", "sha256"])
        keys, shas = meta.column("key").to_pylist(), meta.column("sha256").to_pylist()
        result.images += len(keys)
        target = out_dir / io.shard_name(index)
        if old.rows.get(target) == (keys, shas):
            result.reused += len(keys)
            continue
        fresh: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if any(s not in old.by_sha for s in shas):  # read this shard's images, only it
            rows = pq.read_table(shard, columns=["sha256", "image"]).to_pylist()
            rows = list({r["sha256"]: r for r in rows if r["sha256"] not in old.by_sha}.values())
            for start in range(0, len(rows), batch_size):
                part = rows[start : start + batch_size]
                images = datasets.images_tensor([r["image"] for r in part], image_size)
                encoded = ae_lib.encode(vae, images.to(vae.device)).float().cpu().numpy()
                edges = ae_lib.pooled_edges(images, encoded.shape[-1]).numpy()
                pairs = zip(encoded, edges, strict=True)
                fresh.update(zip([r["sha256"] for r in part], pairs, strict=True))
                bar.update(len(part))
        pairs = [fresh[s] if s in fresh else old.by_sha[s] for s in shas]
        latents, edges = (np.stack(x) for x in zip(*pairs, strict=True))
        io.write_table(target, _table(keys, shas, fingerprint, latents, edges))
        result.encoded += len(fresh)
        result.reused += len(keys) - len(fresh)
        result.shards_written += 1
    bar.close()
    for stale in sorted(out_dir.glob(io.SHARD_GLOB))[len(shards) :]:
        stale.unlink()
    log.info("encode_latents: %s", json.dumps(result.to_dict()))
    return result


def batch_for(size: int) -> int:
    """Images a saved pipeline's VAE encodes at once at `size` px: 256 at 32 px, as many
    pixels at larger sizes (one at 512 px), so a Stable Diffusion VAE fits in memory."""
    return max(1, 256 * 32 * 32 // (size * size))


def pipeline_vae(folder: str | Path) -> tuple[Path, str, int] | None:
    """A saved pipeline's VAE (a Stable Diffusion folder, or one this project saved in a
    latent space): (its folder, its identity, the image size the pipeline draws at), or
    None when `folder` is no saved pipeline with a VAE (an architecture JSON, pixels).

    The identity is the VAE's weights and config and the size: the same VAE under a UNet
    of another sample size encodes other images.
    """
    folder = Path(folder)
    vae_dir = folder / "vae"
    if not (folder / "model_index.json").is_file() or not (vae_dir / "config.json").is_file():
        return None
    vae_config = json.loads((vae_dir / "config.json").read_text())
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    size = unet_config["sample_size"] * 2 ** (len(vae_config["block_out_channels"]) - 1)
    identity = io.sha256_bytes(f"{ae_lib.fingerprint(vae_dir)}:{size}px".encode())
    return vae_dir, identity, size


def stored_fingerprint(folder: str | Path) -> str | None:
    """The cache fingerprint `folder`'s latents were encoded under (None: no latents)."""
    shards = sorted(Path(folder).glob(io.SHARD_GLOB)) if Path(folder).is_dir() else []
    found = {
        fp for path in shards
        for fp in pq.read_table(path, columns=["autoencoder"]).column("autoencoder").to_pylist()
    }  # fmt: skip
    return found.pop() if len(found) == 1 else None


def _edges(table: pa.Table) -> np.ndarray:
    """(N, 1, h, w) edge maps of a latent shard's rows (h, w: its latents')."""
    h, w = stacked(table.slice(0, 1), "latent").shape[-2:] if table.num_rows else (0, 0)
    return table.column("edge").combine_chunks().flatten().to_numpy().reshape(-1, 1, h, w)


def read(folder: str | Path, keys: list[str], edges: bool = False) -> torch.Tensor:
    """(len(keys), C, h, w) float32 latents of `keys`, in their order (unscaled); with
    `edges`, their (len(keys), 1, h, w) edge maps instead."""
    found: dict[str, np.ndarray] = {}
    wanted = set(keys)
    for path in io.shard_paths(folder):
        table = pq.read_table(path)
        values = _edges(table) if edges else stacked(table, "latent")
        for i, key in enumerate(table.column("key").to_pylist()):
            if key in wanted:
                found[key] = values[i]
    missing = [k for k in keys if k not in found]
    if missing:
        raise KeyError(f"{len(missing)} keys have no cached latent (first: {missing[0]}); "
                       "run `dvc repro encode_latents`")  # fmt: skip
    return torch.from_numpy(np.stack([found[k] for k in keys]))


def row_bytes(folder: str | Path) -> int:
    """The bytes one image's latent and edge map take in memory (float32), read from the
    first shard (0 when it has no rows)."""
    shape = pq.read_table(io.shard_paths(folder)[0], columns=["shape"]).column("shape")
    if not len(shape):
        return 0
    c, h, w = (int(x) for x in shape[0].as_py().split(","))
    return 4 * (c + 1) * h * w
