"""recaption: short and descriptive synthetic captions for every dataset image.

Both tuned captioners decode from the cached embeddings (no pixels needed), in
batches with the LM's KV cache. Work is done in resumable chunks, so a killed
run restarts where it stopped. Output: data/captions/synthetic.parquet with
key, short, descriptive and the content hash of each captioner.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import torch

from recaption import devices, embed, io, paths, runner
from recaption.models import captioner as captioner_lib
from recaption.models.captioner import Captioner, Decoding
from recaption.params import load_params

log = logging.getLogger(__name__)
WORK_DIR = paths.WORK / "recaption"
KINDS = {"short": "stage1", "descriptive": "stage2"}  # caption kind -> captioner stage


def caption_batches(
    model: Captioner,
    features: torch.Tensor,
    decoding: Decoding,
    batch_size: int,
    seed: int,
    precision: str = "fp32",
) -> list[str]:
    """Captions of every row of `features`, batch by batch; batch b samples with seed + b.

    `precision` "bf16" decodes under bf16 autocast (faster; a few captions differ).
    """
    out: list[str] = []
    device = features.device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for b, start in enumerate(range(0, len(features), batch_size)):
            out += model.generate(features[start : start + batch_size], decoding, seed=seed + b)
    return out


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    rp = params.recaption
    device = torch.device(devices.resolve(rp.device, "recaption.device"))
    emb = embed.read_dir(paths.IMAGE_EMBEDDINGS)
    models = {
        kind: captioner_lib.load(paths.CAPTIONER / stage).to(device).eval()
        for kind, stage in KINDS.items()
    }
    hashes = {
        kind: captioner_lib.fingerprint(paths.CAPTIONER / stage) for kind, stage in KINDS.items()
    }
    decodings = {kind: Decoding(**getattr(rp, kind).model_dump()) for kind in KINDS}
    fingerprint = io.sha256_bytes(
        json.dumps(
            {
                "captioners": hashes,
                "embeddings": emb.clip,
                "recaption": rp.model_dump(exclude={"device"}),
                "seed": params.seed,
            },
            sort_keys=True,
        ).encode()
    )

    def compute(index: int, keys: list[str]) -> pa.Table:
        features = torch.from_numpy(emb.features_of(keys)).to(device)
        columns = {"key": pa.array(keys, pa.string())}
        for kind, model in models.items():
            seed = (
                params.seed * 1_000_003 + index * 10_007
            )  # a chunk's draw never depends on others
            captions = caption_batches(
                model, features, decodings[kind], rp.batch_size, seed, rp.precision
            )
            columns[kind] = pa.array(captions, pa.string())
        for kind in KINDS:
            columns[f"{kind}_captioner"] = pa.array([hashes[kind]] * len(keys), pa.string())
        return pa.table(columns)

    run = runner.run_chunks(emb.keys, rp.chunk_size, WORK_DIR, fingerprint, compute, "recaption")
    summary = {**runner.finish(run, paths.SYNTHETIC_CAPTIONS, WORK_DIR), "captioners": hashes}
    log.info("recaption: %s", summary)
    return summary
