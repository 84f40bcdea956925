"""evaluate: draw the generator on the evaluation prompts and score what it drew.

Two prompt sets, each in several phrasings of the same content:

- the suite (built-in world): every prompt of data/prompts/suite.parquet as written
  (short, GenEval style), in its reference descriptive form and as the upsampler
  rewrote it (data/upsampled/prompts.parquet), `evaluate.images_per_prompt` images
  each; the oracle detector judges each image against the prompt's demands
  (`recaption.metrics.geneval`), giving prompt-following accuracy per category, and
  fact by fact, giving graded fact accuracy with a bootstrap interval
  (`recaption.metrics.fact_scores`, which also refuses images that look like noise);
- held-out captions: the first `evaluate.heldout_prompts` held-out images' ground
  truth (alt-text style), short and descriptive captions, one image each.

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

from recaption import datasets, devices, io, lineage, paths, precision, runner
from recaption.metrics import evaluation_page, fact_scores, geneval
from recaption.models import clip as clip_lib
from recaption.models import generator as gen_lib
from recaption.models import oracle as oracle_lib
from recaption.params import Params, load_params

log = logging.getLogger(__name__)
WORK_DIR = paths.WORK / "evaluate"
# phrasing -> suite column ("upsampled" joined from the upsample stage's rewrites)
SUITE_PHRASINGS = {"short": "prompt", "descriptive": "descriptive", "upsampled": "upsampled"}
HELDOUT_PHRASINGS = {"ground_truth": "caption", "short": "short", "descriptive": "descriptive"}
# Render indices of the scenes behind the chance baseline (apart from the oracle's and CLIP's).
CHANCE_SCENES = 2 << 30


@dataclass(frozen=True)
class Job:
    """One image to draw."""

    key: str  # "<set>/<item>/<phrasing>/<i>", unique
    set: str  # suite | heldout
    item: str  # prompt id or dataset key
    category: str  # GenEval category, or "heldout"
    phrasing: str
    prompt: str
    seed: int
    demands: str  # JSON; "" for held-out captions


def item_seed(base: int, item: str, index: int) -> int:
    """The noise seed of image `index` of `item`: fixed, and shared by its phrasings."""
    return int(io.sha256_bytes(f"{base}/{item}".encode())[:8], 16) + index


def make_jobs(params: Params) -> list[Job]:
    ep = params.evaluate
    jobs: list[Job] = []
    if params.data.source == "synthetic":
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


def clip_scores(cos: np.ndarray) -> dict[str, float]:
    """Mean CLIP score in both conventions: 2.5 * max(cos, 0) and 100 * cos."""
    return {
        "clipscore": round(float(np.mean(2.5 * np.maximum(cos, 0))), 4),
        "cos100": round(float(np.mean(100 * cos)), 3),
    }


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


def summarise(samples: pa.Table) -> dict:
    """Prompt following per phrasing and category, CLIP scores per set and phrasing."""
    rows = samples.to_pylist()
    follows: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    cosines: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cosines[r["set"]][r["phrasing"]].append(r["cos"])
        if r["follows"] is not None:
            follows[r["phrasing"]][r["category"]].append(r["follows"])
    following = {}
    for phrasing, by_category in follows.items():
        scores = {c: round(float(np.mean(v)), 4) for c, v in by_category.items()}
        # GenEval's overall score: the mean over categories, not over images.
        following[phrasing] = {"overall": round(float(np.mean(list(scores.values()))), 4), **scores}
    clip = {
        s: {p: clip_scores(np.asarray(v)) for p, v in by_phrasing.items()}
        for s, by_phrasing in cosines.items()
    }
    return {"prompt_following": following, "clip_score": clip, "images": len(rows)}


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


def _write_plots(metrics: dict, out: Path) -> None:
    """Per-category accuracy per phrasing, and CLIP score per set and phrasing (DVC plots)."""
    for phrasing, scores in metrics["prompt_following"].items():
        lines = ["category,accuracy"] + [f"{c},{v}" for c, v in scores.items() if c != "overall"]
        io.write_text(out / f"prompt_following_{phrasing}.csv", "\n".join(lines) + "\n")
    lines = ["prompts,clipscore,cos100"] + [
        f"{s} {p},{v['clipscore']},{v['cos100']}"
        for s, by_phrasing in metrics["clip_score"].items()
        for p, v in by_phrasing.items()
    ]
    io.write_text(out / "clip_score.csv", "\n".join(lines) + "\n")


def _grids(samples: pa.Table, per_category: int, scale: int = 3) -> dict[str, dict]:
    """For each category (and the held-out set) a grid of the first `per_category` items:
    one row per item with each phrasing's images, the row prompts and the column labels."""
    by_category: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in samples.to_pylist():
        by_category[r["category"]][r["item"]].append(r)
    grids = {}
    for category, items in by_category.items():
        rows = list(items.values())[:per_category]
        columns = max(len(row) for row in rows)
        tiles, prompts = [], []
        for row in rows:
            for r in row:
                image = Image.open(stdio.BytesIO(r["image"])).convert("RGB")
                tiles.append(image.resize((image.width * scale,) * 2, Image.NEAREST))
            tiles += [Image.new("RGB", tiles[-1].size, "white")] * (columns - len(row))
            prompts.append({r["phrasing"]: r["prompt"] for r in row})
        labels = [f"{r['phrasing']} #{r['key'].rsplit('/', 1)[1]}" for r in rows[0]]
        image = gen_lib.image_grid(tiles, columns)
        grids[category] = {"image": image, "prompts": prompts, "columns": labels}
    return grids


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


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    ep = params.evaluate
    synthetic = params.data.source == "synthetic"
    jobs = make_jobs(params)
    _, record = compute_of(params)
    models = {
        "generator": lineage.tree_hash(paths.GENERATOR),
        "clip": clip_lib.fingerprint(paths.EVAL_CLIP),
        "oracle": lineage.tree_hash(paths.ORACLE) if synthetic else None,
    }
    run = runner.run_chunks(
        [j.key for j in jobs], ep.chunk_size, WORK_DIR, _fingerprint(params, jobs, models, record),
        Worker, {"params": params, "jobs": [asdict(j) for j in jobs]}, params, "evaluate",
    )  # fmt: skip
    samples = pa.Table.from_pylist([asdict(j) for j in jobs])  # key first
    for name in ("image", "cos", "detection", "follows"):
        samples = samples.append_column(name, run.table.column(name))
    samples = fact_scores.score_facts(samples, _heldout_demands(params, jobs))
    io.write_table(paths.EVAL_SAMPLES, samples)
    noise = fact_scores.noise_check(
        samples, paths.DATASET, paths.SPLITS, ep.noise_guard
    )  # raises before any metric is written
    metrics = {**summarise(samples), **fact_scores.summarise_facts(samples)}
    if synthetic:
        metrics["prompt_following_chance"] = chance_following(params)
        metrics["fact_accuracy_chance"] = fact_scores.chance_fact_accuracy(
            chance_detections(params), pq.read_table(paths.PROMPTS).to_pylist()
        )
    metrics["noise_check"] = noise
    gen_lineage = lineage.read_lineage(paths.GENERATOR)
    metrics["generator"] = {
        "sha256": models["generator"],
        "caption_version": gen_lineage.get("caption_version"),
    }
    metrics["compute"] = record  # the images' bytes depend on it
    metrics["evaluation_models"] = {
        "oracle_accuracy": lineage.read_lineage(paths.ORACLE).get("metrics") if synthetic else None,
        "clip_heldout": lineage.read_lineage(paths.EVAL_CLIP).get("metrics"),
    }
    io.write_json(paths.METRICS, metrics)
    _write_plots(metrics, paths.EVAL_PLOTS)
    fact_scores.write_fact_plots(metrics, paths.EVAL_PLOTS)
    grids = _grids(samples, ep.grid_prompts)
    with io.atomic_path(paths.GRIDS) as tmp:
        tmp.mkdir()
        for category, grid in grids.items():
            grid["image"].save(tmp / f"{category}.png")
    io.write_text(paths.INDEX_HTML, evaluation_page.render_index(metrics, grids, paths.GRIDS.name))
    runner.clear(WORK_DIR)
    log.info("evaluate: %s", {k: metrics[k] for k in ("prompt_following", "clip_score")})
    return metrics
