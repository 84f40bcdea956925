"""recaption: short and descriptive synthetic captions for every dataset image.

Both tuned captioners decode from the cached embeddings (no pixels needed), in
batches with the LM's KV cache. Work is done in resumable chunks, so a killed
run restarts where it stopped. Output: data/captions/synthetic.parquet with
key, short, descriptive and the content hash of each captioner, and
data/captions/tags.parquet, the classification tags each descriptive caption
states (main subject, background, colours, text; `recaption.metrics.tags`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import torch

from recaption import devices, embed, io, paths, precision, runner
from recaption.metrics import tags
from recaption.models import captioner as captioner_lib
from recaption.models.captioner import Captioner, Decoding
from recaption.params import Params, load_params

log = logging.getLogger(__name__)
WORK_DIR = paths.WORK / "recaption"
KINDS = {"short": "stage1", "descriptive": "stage2"}  # caption kind -> captioner stage


def caption_batches(
    model: Captioner,
    features: torch.Tensor,
    decoding: Decoding,
    batch_size: int,
    seed: int,
    compute: str = "fp32",
) -> list[str]:
    """Captions of every row of `features`, batch by batch; batch b samples with seed + b.

    `compute` is the resolved precision (recaption.precision): "bf16" decodes under bf16
    autocast (faster where the hardware has it; a few captions differ).
    """
    out: list[str] = []
    with precision.autocast(compute, features.device):
        for b, start in enumerate(range(0, len(features), batch_size)):
            out += model.generate(features[start : start + batch_size], decoding, seed=seed + b)
    return out


class Worker:
    """Both tuned captioners and the cached embeddings, loaded once; one chunk per call."""

    def __init__(self, params: Params):
        self.rp, self.seed = params.recaption, params.seed
        self.device = torch.device(devices.resolve(self.rp.device, "recaption.device"))
        self.compute, _ = compute_of(params)
        self.emb = embed.read_dir(paths.IMAGE_EMBEDDINGS)
        self.models = {
            kind: captioner_lib.load(paths.CAPTIONER / stage).to(self.device).eval()
            for kind, stage in KINDS.items()
        }
        self.hashes = captioner_hashes()
        self.decodings = {kind: Decoding(**getattr(self.rp, kind).model_dump()) for kind in KINDS}

    def __call__(self, unit: dict) -> pa.Table:
        index, keys = unit["index"], unit["keys"]
        features = torch.from_numpy(self.emb.features_of(keys)).to(self.device)
        seed = self.seed * 1_000_003 + index * 10_007  # a chunk's draw never depends on others
        columns = {"key": pa.array(keys, pa.string())}
        for kind, model in self.models.items():
            captions = caption_batches(
                model, features, self.decodings[kind], self.rp.batch_size, seed, self.compute
            )
            columns[kind] = pa.array(captions, pa.string())
        for kind in KINDS:
            columns[f"{kind}_captioner"] = pa.array([self.hashes[kind]] * len(keys), pa.string())
        return pa.table(columns)


def compute_of(params: Params) -> tuple[str, dict]:
    """The resolved decoding precision and the record the report keeps of it."""
    device = devices.resolve(params.recaption.device, "recaption.device")
    return precision.settle(params.recaption.precision, device, "recaption.precision")


def captioner_hashes() -> dict[str, str]:
    """Caption kind -> the content hash of the captioner that writes it."""
    return {kind: captioner_lib.fingerprint(paths.CAPTIONER / s) for kind, s in KINDS.items()}


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    rp = params.recaption
    keys, clip = embed.read_keys(paths.IMAGE_EMBEDDINGS)
    hashes = captioner_hashes()
    _, record = compute_of(params)
    fingerprint = io.sha256_bytes(
        json.dumps(
            {
                "captioners": hashes,
                "compute": record,
                "embeddings": clip,
                "recaption": rp.model_dump(exclude={"device"}),
                "seed": params.seed,
            },
            sort_keys=True,
        ).encode()
    )
    run = runner.run_chunks(
        keys, rp.chunk_size, WORK_DIR, fingerprint, Worker, {"params": params}, params, "recaption"
    )
    summary = {**runner.finish(run, paths.SYNTHETIC_CAPTIONS, WORK_DIR), "captioners": hashes}
    captions = run.table.select(["key", "descriptive"]).to_pydict()
    io.write_table(paths.CAPTION_TAGS, tags.tags_table(captions["key"], captions["descriptive"]))
    # What the captions' bytes depend on besides the inputs; no run history (chunks
    # reused), so the report is the same for the same captions.
    io.write_json(paths.RECAPTION_REPORT, {"images": summary["images"], "captioners": hashes,
                                          "compute": record})  # fmt: skip
    log.info("recaption: %s", summary)
    return summary
