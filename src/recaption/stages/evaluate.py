"""evaluate: draw the generator on the evaluation prompts and score what it drew.

Two prompt sets, each in several phrasings of the same content:

- the suite (built-in world): every prompt of data/prompts/suite.parquet as written
  (short, GenEval style), in its reference descriptive form and as the upsampler
  rewrote it (data/upsampled/prompts.parquet), `evaluate.images_per_prompt` images
  each; the oracle detector judges each image against the prompt's demands
  (`recaption.metrics.geneval`), giving prompt-following accuracy per category, and
  fact by fact, giving graded fact accuracy with a bootstrap interval
  (`recaption.metrics.fact_scores`, which also refuses images that look like noise);
- or, with `evaluate.prompts_file`, the user's own suite (PartiPrompts, DrawBench style)
  in its place, as written and as the upsampler (models/upsampler) rewrites it here, on
  `upsample.device`, scored by CLIP score per phrasing and category (no oracle reads real
  pictures). The rewrites are made here rather than in the upsample stage, which trains
  the upsampler and so must not rerun when only the prompt file changes;
- held-out captions: the first `evaluate.heldout_prompts` held-out images' ground
  truth (alt-text style), short and descriptive captions, one image each.

With a real source the oracle stage did no work (its folder's lineage says why), so
GenEval prompt following and fact accuracy are left out, and `not_measured` in
metrics.json and the page say so. Each prompt set and phrasing's images are also
compared with the held-out split's real images: `fid_clip` and `kid_clip`, FID and KID
on the evaluation CLIP's image embeddings (`recaption.metrics.feature_distance`).

Every image gets a CLIP score from the evaluation CLIP (a model the generator never
trained with), in both conventions in use: 2.5 * max(cos, 0) (CLIPScore) and
100 * cos (the DALL-E 3 study). Image i of an item is drawn from a seed fixed by the
item and i, the same for every phrasing, so phrasings are compared on the same noise.
Sampling runs in resumable chunks (data/.work/evaluate/).
"""

from __future__ import annotations

import io as stdio
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from recaption import datasets, devices, io, lineage, paths, precision, prompt_file, runner
from recaption.metrics import (
    evaluation_page,
    evaluation_summary,
    fact_scores,
    feature_distance,
    geneval,
)
from recaption.metrics.evaluation_summary import USER_SET
from recaption.models import clip as clip_lib
from recaption.models import generator as gen_lib
from recaption.models import oracle as oracle_lib
from recaption.models import upsampler as up_lib
from recaption.params import Params, load_params

log = logging.getLogger(__name__)
WORK_DIR = paths.WORK / "evaluate"
# phrasing -> suite column ("upsampled" joined from the upsample stage's rewrites)
SUITE_PHRASINGS = {"short": "prompt", "descriptive": "descriptive", "upsampled": "upsampled"}
HELDOUT_PHRASINGS = {"ground_truth": "caption", "short": "short", "descriptive": "descriptive"}
# The phrasings of the prompts of `evaluate.prompts_file`, drawn on the same seeds.
USER_PHRASINGS = ("as_written", "upsampled")
# metrics.json keys that only the oracle (the built-in world) can give.
WORLD_ONLY = ("prompt_following", "fact_accuracy", "fact_accuracy_heldout", "fact_accuracy_by_kind")
# Render indices of the scenes behind the chance baseline (apart from the oracle's and CLIP's).
CHANCE_SCENES = 2 << 30


@dataclass(frozen=True)
class Job:
    """One image to draw."""

    key: str  # "<set>/<item>/<phrasing>/<i>", unique
    set: str  # suite | prompts (evaluate.prompts_file) | heldout
    item: str  # prompt id or dataset key
    category: str  # GenEval category, the prompt file's, or "heldout"
    phrasing: str
    prompt: str
    seed: int
    demands: str  # JSON; "" for held-out captions and user prompts


def item_seed(base: int, item: str, index: int) -> int:
    """The noise seed of image `index` of `item`: fixed, and shared by its phrasings."""
    return int(io.sha256_bytes(f"{base}/{item}".encode())[:8], 16) + index


def make_jobs(params: Params) -> list[Job]:
    """The user's prompts or the world's suite (none on a real source without a prompts
    file), then the held-out captions."""
    ep = params.evaluate
    if ep.prompts_file:
        jobs = prompt_file_jobs(params)
    elif params.data.source == "synthetic":
        jobs = suite_jobs(params)
    else:
        jobs = []
    return jobs + heldout_jobs(params)


def prompt_file_jobs(params: Params) -> list[Job]:
    """Every prompt of `evaluate.prompts_file`, as written and upsampled, `images_per_prompt`
    images each; image i of both phrasings of a prompt is drawn from the same seed."""
    ep = params.evaluate
    rows = prompt_file.read_prompts(ep.prompts_file)
    rewrites = upsample_user_prompts(params, [row.prompt for row in rows])
    jobs = []
    for n, (row, rewrite) in enumerate(zip(rows, rewrites, strict=True)):
        item = f"{n:05d}"  # file order: the same prompt twice is two items
        for phrasing, text in zip(USER_PHRASINGS, (row.prompt, rewrite), strict=True):
            jobs += [
                Job(f"{USER_SET}/{item}/{phrasing}/{i}", USER_SET, item, row.category,
                    phrasing, text, item_seed(ep.seed, f"{USER_SET}/{item}", i), "")
                for i in range(ep.images_per_prompt)
            ]  # fmt: skip
    return jobs


def upsample_user_prompts(params: Params, prompts: list[str]) -> list[str]:
    """The upsampler's rewrite of each prompt, made as the upsample stage rewrites the
    suite (its saved decoding, `upsample.generate_batch_size`, the global seed), on
    `upsample.device`. An empty rewrite is drawn as it is: it is what the upsampler wrote."""
    us = params.upsample
    device = devices.resolve(us.device, "upsample.device")
    model = up_lib.load(paths.UPSAMPLER)
    model.lm.to(device)
    rewrites = model.rewrite(
        prompts, None, us.generate_batch_size, params.seed, desc="upsample prompts file"
    )
    del model
    if device == "cuda":  # the generator may load in other processes (engine: ray)
        torch.cuda.empty_cache()
    empty = sum(not r for r in rewrites)
    if empty:
        log.warning("the upsampler wrote nothing for %d of %d prompts", empty, len(prompts))
    return rewrites


def suite_jobs(params: Params) -> list[Job]:
    """The world's suite in each phrasing it has, `images_per_prompt` images each."""
    ep = params.evaluate
    jobs: list[Job] = []
    suite = pq.read_table(paths.PROMPTS).to_pylist()
    rewrites = upsampled_prompts()
    for row in suite:
        row["upsampled"] = rewrites.get(row["id"])
        for phrasing, column in SUITE_PHRASINGS.items():
            if row[column] is None:
                continue
            for i in range(ep.images_per_prompt):
                jobs.append(
                    Job(f"suite/{row['id']}/{phrasing}/{i}", "suite", row["id"],
                        row["category"], phrasing, row[column],
                        item_seed(ep.seed, row["id"], i), row["demands"])
                )  # fmt: skip
    return jobs


def heldout_jobs(params: Params) -> list[Job]:
    """The first `heldout_prompts` held-out images' captions, one image each."""
    ep = params.evaluate
    jobs: list[Job] = []
    held = sorted(datasets.read_splits(paths.SPLITS)["heldout"])[: ep.heldout_prompts]
    rows = datasets.load_rows(paths.DATASET, list(HELDOUT_PHRASINGS.values()), set(held))
    for row in rows:
        for phrasing, column in HELDOUT_PHRASINGS.items():
            if row[column]:
                jobs.append(
                    Job(f"heldout/{row['key']}/{phrasing}/0", "heldout", row["key"], "heldout",
                        phrasing, row[column], item_seed(ep.seed, row["key"], 0), "")
                )  # fmt: skip
    return jobs


def upsampled_prompts() -> dict[str, str]:
    """Prompt id -> the upsampler's rewrite (empty before the upsample stage has run)."""
    if not paths.UPSAMPLED_PROMPTS.is_file():
        log.info("no %s: the suite is drawn without upsampled prompts", paths.UPSAMPLED_PROMPTS)
        return {}
    table = pq.read_table(paths.UPSAMPLED_PROMPTS, columns=["id", "upsampled"])
    return dict(zip(table.column("id").to_pylist(), table.column("upsampled").to_pylist(),
                    strict=True))  # fmt: skip


def clip_cosines(clip: clip_lib.Clip, images: torch.Tensor, prompts: Sequence[str]) -> np.ndarray:
    """Cosine between each image and its own prompt under the evaluation CLIP."""
    with torch.inference_mode():
        size = clip.image_size
        if images.shape[-1] != size:
            images = F.interpolate(images.float(), size=(size, size), mode="bicubic").clamp(0, 255)
        img = F.normalize(clip.model.encode_image(clip.normalise(images)), dim=-1)
        txt = F.normalize(clip.model.encode_text(clip.tokenizer(list(prompts))), dim=-1)
        return (img * txt).sum(-1).float().numpy()


def _png(image: Image.Image) -> bytes:
    buf = stdio.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def compute_of(params: Params) -> tuple[str, dict]:
    """The resolved sampling precision and the record the report keeps of it."""
    device = devices.resolve(params.evaluate.device, "evaluate.device")
    return precision.settle(params.evaluate.precision, device, "evaluate.precision")


# evaluate keys that leave its samples as they are (the devices: `compute` says where).
_NOT_FINGERPRINTED = {
    "device": True, "chunk_size": True, "noise_guard": True,
    "oracle": {"device"}, "clip": {"device"},
}  # fmt: skip


def _fingerprint(params: Params, jobs: Sequence[Job], models: dict[str, str], compute: dict) -> str:
    return io.sha256_bytes(
        json.dumps(
            {
                "models": models,
                "compute": compute,
                "evaluate": params.evaluate.model_dump(exclude=_NOT_FINGERPRINTED),
                "jobs": io.sha256_bytes(json.dumps([asdict(j) for j in jobs]).encode()),
            },
            sort_keys=True,
        ).encode()
    )


def chance_detections(params: Params, scenes: int = 500) -> list[dict]:
    """Perfect detections of `scenes` scenes drawn from the world with the prompt ignored."""
    from recaption.synthetic import world_config
    from recaption.world import example_rng, sample_scene

    cfg = world_config(params)
    start = CHANCE_SCENES
    return [
        oracle_lib.scene_detection(sample_scene(example_rng(params.evaluate.seed, start + i), cfg))
        for i in range(scenes)
    ]


def chance_following(params: Params, scenes: int = 500) -> dict[str, float]:
    """Prompt following of scenes drawn from the world with the prompt ignored: what a
    generator that draws good pictures but does not read the prompt would score."""
    drawn = chance_detections(params, scenes)
    hits: dict[str, list[float]] = defaultdict(list)
    for row in pq.read_table(paths.PROMPTS).to_pylist():
        demands = json.loads(row["demands"])
        category = row["category"]
        hits[category].append(np.mean([geneval.follows(d, demands, category) for d in drawn]))
    scores = {c: round(float(np.mean(v)), 4) for c, v in hits.items()}
    return {"overall": round(float(np.mean(list(scores.values()))), 4), **scores}


def _heldout_demands(params: Params, jobs: Sequence[Job]) -> dict[str, dict]:
    """Demands of the held-out descriptive captions drawn (built-in world only)."""
    if params.data.source != "synthetic":
        return {}
    phrasing = fact_scores.HELDOUT_PHRASING
    return fact_scores.heldout_demands(
        paths.DATASET, (j.item for j in jobs if j.set == "heldout" and j.phrasing == phrasing)
    )


class Worker:
    """The generator, evaluation CLIP and oracle, loaded once; draws and scores one chunk
    of jobs per call."""

    def __init__(self, params: Params, jobs: Sequence[dict]):
        self.ep = params.evaluate
        self.device = torch.device(devices.resolve(self.ep.device, "evaluate.device"))
        self.compute, _ = compute_of(params)
        dtype = precision.weights_dtype(self.compute)  # a big pretrained pipeline: half the memory
        self.pipe = gen_lib.load(paths.GENERATOR, dtype).to(self.device)
        gen_lib.choose_attention(self.pipe, self.compute, self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.clip = clip_lib.load(paths.EVAL_CLIP, self.device)
        synthetic = params.data.source == "synthetic"
        self.oracle = oracle_lib.load(paths.ORACLE).to(self.device) if synthetic else None
        self.by_key = {j["key"]: Job(**j) for j in jobs}

    def __call__(self, unit: dict) -> pa.Table:
        keys, ep, device = unit["keys"], self.ep, self.device
        chunk = [self.by_key[k] for k in keys]
        images: list[Image.Image] = []
        with precision.autocast(self.compute, device):
            for start in range(0, len(chunk), ep.batch_size):
                batch = chunk[start : start + ep.batch_size]
                prompts, seeds = [j.prompt for j in batch], [j.seed for j in batch]
                images += self.pipe(prompts, ep.steps, ep.guidance, seed=seeds)
        pixels = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2)
        pixels = pixels.contiguous().to(device)
        cos = clip_cosines(self.clip, pixels, [j.prompt for j in chunk])
        detected: list[dict | None] = [None] * len(chunk)
        follows: list[bool | None] = [None] * len(chunk)
        if self.oracle is not None:
            detected = oracle_lib.detections(oracle_lib.predict(self.oracle, pixels))
            follows = [
                geneval.follows(d, json.loads(j.demands), j.category) if j.demands else None
                for d, j in zip(detected, chunk, strict=True)
            ]
        return pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "image": pa.array([_png(i) for i in images], pa.binary()),
                "cos": pa.array(cos.tolist(), pa.float32()),
                "detection": [json.dumps(d, sort_keys=True) if d else None for d in detected],
                "follows": pa.array(follows, pa.bool_()),
            }
        )


def draw(params: Params, jobs: Sequence[Job]) -> tuple[pa.Table, dict[str, str], dict]:
    """Draw and score every job (in resumable chunks) and write samples.parquet.

    Returns the samples, the hashes of the models that made them and the compute record.
    """
    synthetic = params.data.source == "synthetic"
    _, record = compute_of(params)
    models = {
        "generator": lineage.tree_hash(paths.GENERATOR),
        "clip": clip_lib.fingerprint(paths.EVAL_CLIP),
        "oracle": lineage.tree_hash(paths.ORACLE) if synthetic else None,
    }
    run = runner.run_chunks(
        [j.key for j in jobs], params.evaluate.chunk_size, WORK_DIR,
        _fingerprint(params, jobs, models, record), Worker,
        {"params": params, "jobs": [asdict(j) for j in jobs]}, params, "evaluate",
    )  # fmt: skip
    samples = pa.Table.from_pylist([asdict(j) for j in jobs])  # key first
    for name in ("image", "cos", "detection", "follows"):
        samples = samples.append_column(name, run.table.column(name))
    samples = fact_scores.score_facts(samples, _heldout_demands(params, jobs))
    io.write_table(paths.EVAL_SAMPLES, samples)
    return samples, models, record


def _decoded(pngs: Sequence[bytes]) -> list[Image.Image]:
    return [Image.open(stdio.BytesIO(b)) for b in pngs]


def image_distances(params: Params, samples: pa.Table) -> dict:
    """fid_clip and kid_clip of each prompt set and phrasing's images against the held-out
    split's real images, on the evaluation CLIP's image embeddings; sets of fewer than two
    images are left out."""
    clip = clip_lib.load(
        paths.EVAL_CLIP, devices.resolve(params.evaluate.device, "evaluate.device")
    )
    held = datasets.read_splits(paths.SPLITS)["heldout"]
    reference = [r["image"] for r in datasets.load_rows(paths.DATASET, ["image"], held)]
    ref = clip_lib.image_embeddings(clip, _decoded(reference))  # (M, D)
    groups: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for r in samples.select(["set", "phrasing", "image"]).to_pylist():
        groups[(r["set"], r["phrasing"])].append(r["image"])
    out: dict[str, dict] = defaultdict(dict)
    for (name, phrasing), pngs in groups.items():
        if len(pngs) >= 2:
            generated = clip_lib.image_embeddings(clip, _decoded(pngs))  # (N, D)
            out[name][phrasing] = feature_distance.distances(generated, ref)
    return dict(out)


def score(params: Params, samples: pa.Table, models: dict[str, str], record: dict) -> dict:
    """metrics.json: the summaries, the world's chance rows, the image distances and what
    made the images; with a real source, what was not measured and why."""
    metrics = {**evaluation_summary.summarise(samples), **fact_scores.summarise_facts(samples)}
    skipped = lineage.read_lineage(paths.ORACLE).get("skipped")
    if skipped:  # the oracle stage's record of a real source
        metrics = {k: v for k, v in metrics.items() if k not in WORLD_ONLY}
        metrics["not_measured"] = {"prompt_following (GenEval)": skipped, "fact_accuracy": skipped}
    if params.data.source == "synthetic":
        metrics["prompt_following_chance"] = chance_following(params)
        metrics["fact_accuracy_chance"] = fact_scores.chance_fact_accuracy(
            chance_detections(params), pq.read_table(paths.PROMPTS).to_pylist()
        )
    metrics["image_distance"] = image_distances(params, samples)
    if params.evaluate.prompts_file:
        metrics["prompts_file"] = {
            "path": params.evaluate.prompts_file,
            "sha256": io.sha256_file(params.evaluate.prompts_file),
            "upsampler": lineage.tree_hash(paths.UPSAMPLER),  # wrote the upsampled phrasing
        }
    metrics["generator"] = {
        "sha256": models["generator"],
        "caption_version": lineage.read_lineage(paths.GENERATOR).get("caption_version"),
    }
    metrics["compute"] = record  # the images' bytes depend on it
    metrics["evaluation_models"] = {
        "oracle_accuracy": lineage.read_lineage(paths.ORACLE).get("metrics")
        if not skipped
        else None,
        "clip_heldout": lineage.read_lineage(paths.EVAL_CLIP).get("metrics"),
    }
    return metrics


def write_reports(metrics: dict, samples: pa.Table, grid_prompts: int) -> None:
    """metrics.json, the plots, the sample grids and the page."""
    io.write_json(paths.METRICS, metrics)
    evaluation_summary.write_plots(metrics, paths.EVAL_PLOTS)
    fact_scores.write_fact_plots(metrics, paths.EVAL_PLOTS)
    grids = evaluation_summary.image_grids(samples, grid_prompts)
    with io.atomic_path(paths.GRIDS) as tmp:
        tmp.mkdir()
        for category, grid in grids.items():
            grid["image"].save(tmp / evaluation_page.grid_file(category))
    io.write_text(paths.INDEX_HTML, evaluation_page.render_index(metrics, grids, paths.GRIDS.name))


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    samples, models, record = draw(params, make_jobs(params))
    noise = fact_scores.noise_check(
        samples, paths.DATASET, paths.SPLITS, params.evaluate.noise_guard
    )  # raises before any metric is written
    metrics = {**score(params, samples, models, record), "noise_check": noise}
    write_reports(metrics, samples, params.evaluate.grid_prompts)
    runner.clear(WORK_DIR)
    log.info("evaluate: %s", {k: metrics.get(k) for k in ("prompt_following", "clip_score")})
    return metrics
