"""recaption: short and descriptive synthetic captions for every dataset image.

Both tuned captioners decode from the cached embeddings (no pixels needed; with
`captioner.kind: vlm`, from the cached vision-tower features), in batches with the
LM's KV cache. Work is done in resumable chunks, so a killed
run restarts where it stopped. Output: data/captions/synthetic.parquet with
key, the pixel hash, short, descriptive, the content hash of each captioner and
the recipe (everything else a caption is a function of), and
data/captions/tags.parquet, the classification tags each descriptive caption
states (main subject, background, colours, text; `recaption.metrics.tags`).

synthetic.parquet is a persistent DVC output and its own cache: with greedy or
beam decoding an image whose pixels already have a caption under the same recipe
keeps it, so after the dataset grows only the new or changed images are decoded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recaption import devices, embed, io, paths, precision, runner
from recaption.metrics import tags
from recaption.models import captioner as captioner_lib
from recaption.models import captioners
from recaption.models.captioner import Captioner, Decoding
from recaption.params import Params, RecaptionParams, load_params

log = logging.getLogger(__name__)
WORK_DIR = paths.WORK / "recaption"
KINDS = {"short": "stage1", "descriptive": "stage2"}  # caption kind -> captioner stage
# Part of every caption's recipe: bump it whenever decoding changes, so captions made
# the old way are never reused as if they were current. 2: bf16/fp16 decoding loads
# the captioners' weights in that dtype (precision.weights_dtype), not fp32 under autocast.
RECIPE_VERSION = 2


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
        self.emb = embed.EmbeddingFolder(paths.IMAGE_EMBEDDINGS)  # a chunk's rows, read as needed
        dtype = precision.weights_dtype(self.compute)  # a big LM: half the memory in bf16
        self.models = {
            kind: captioners.load(paths.CAPTIONER / stage, dtype).to(self.device).eval()
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


def recipe(hashes: dict[str, str], record: dict, clip: str, rp: RecaptionParams) -> str:
    """The hash of everything a greedy or beam caption is a function of besides its
    image's pixels: the captioners, their decoding, the precision and the embeddings
    (the cache fingerprint: CLIP, grid, procedure). Not the batch: rows decode
    independently (tests/test_recaption.py checks it on the CPU)."""
    decodings = {kind: getattr(rp, kind).model_dump() for kind in KINDS}
    return io.sha256_bytes(
        json.dumps(
            {"captioners": hashes, "compute": record, "embeddings": clip,
             "decoding": decodings, "version": RECIPE_VERSION},
            sort_keys=True,
        ).encode()
    )  # fmt: skip


def previous_captions(path: Path, recipe: str) -> dict[str, tuple[str, str]]:
    """Pixel hash -> (short, descriptive) of the previous output's rows, if it was made
    under `recipe`; empty otherwise (no output yet, another recipe, an older schema)."""
    if not path.is_file() or not {"sha256", "recipe"} <= set(pq.read_schema(path).names):
        return {}
    table = pq.read_table(path, columns=["sha256", "short", "descriptive", "recipe"])
    if set(table.column("recipe").unique().to_pylist()) != {recipe}:
        return {}
    columns = [table.column(c).to_pylist() for c in ("sha256", "short", "descriptive")]
    return {sha: (short, desc) for sha, short, desc in zip(*columns, strict=True)}


def captions_table(
    keys: list[str],
    shas: list[str],
    old: dict[str, tuple[str, str]],
    fresh: pa.Table,
    hashes: dict[str, str],
    recipe: str,
) -> pa.Table:
    """Every image's row in key order: its freshly decoded captions if it has some,
    else the previous run's for its pixels. Built the same way whatever was reused,
    so an incremental run writes the bytes of a full one."""
    made = {row["key"]: (row["short"], row["descriptive"]) for row in fresh.to_pylist()}
    pairs = [made[k] if k in made else old[s] for k, s in zip(keys, shas, strict=True)]
    n = len(keys)
    columns = {"key": keys, "sha256": shas, "short": [p[0] for p in pairs],
               "descriptive": [p[1] for p in pairs],
               **{f"{kind}_captioner": [hashes[kind]] * n for kind in KINDS},
               "recipe": [recipe] * n}  # fmt: skip
    return pa.table({name: pa.array(c, pa.string()) for name, c in columns.items()})


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    rp = params.recaption
    keys, shas, clip = embed.read_keys(paths.IMAGE_EMBEDDINGS)
    hashes = captioner_hashes()
    _, record = compute_of(params)
    made_under = recipe(hashes, record, clip, rp)
    old = previous_captions(paths.SYNTHETIC_CAPTIONS, made_under)
    if any(getattr(rp, kind).strategy == "sample" for kind in KINDS):
        old = {}  # a drawn caption depends on its batch's draw, not on its image alone
        log.info("recaption: a caption is sampled, so none is reused")
    todo = [k for k, s in zip(keys, shas, strict=True) if s not in old]
    # A chunk's rows also depend on its batches and, when sampling, on its seed.
    batching = {"recaption": rp.model_dump(exclude={"device"}), "seed": params.seed}
    fingerprint = io.sha256_bytes(json.dumps([made_under, batching], sort_keys=True).encode())
    run = runner.run_chunks(
        todo, rp.chunk_size, WORK_DIR, fingerprint, Worker, {"params": params}, params, "recaption"
    )
    table = captions_table(keys, shas, old, run.table, hashes, made_under)
    io.write_table(paths.SYNTHETIC_CAPTIONS, table)
    runner.clear(WORK_DIR)
    captions = table.select(["key", "descriptive"]).to_pydict()
    io.write_table(paths.CAPTION_TAGS, tags.tags_table(captions["key"], captions["descriptive"]))
    # What the captions' bytes depend on besides the inputs; no run history (captions and
    # chunks reused), so the report is the same for the same captions.
    io.write_json(paths.RECAPTION_REPORT, {"images": len(keys), "captioners": hashes,
                                          "compute": record})  # fmt: skip
    summary = {"images": len(keys), "decoded": len(todo), "reused": len(keys) - len(todo),
               "chunks_computed": run.computed, "chunks_reused": run.reused,
               "captioners": hashes}  # fmt: skip
    log.info("recaption: %s", summary)
    return summary
