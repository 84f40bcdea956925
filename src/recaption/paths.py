"""Where each stage reads and writes, relative to the project root.

One place for every path: dvc.yaml names the same files, and the stages default
to these constants so a path is never spelled twice in code.
"""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")

DATA = Path("data")
DATASET = DATA / "dataset"
REJECTS = DATA / "rejects.parquet"
PROMPTS = DATA / "prompts" / "suite.parquet"
SPLITS = DATA / "subset" / "splits.parquet"
ANNOTATIONS = DATA / "annotations"
SHORT = ANNOTATIONS / "short.parquet"
DESCRIPTIVE = ANNOTATIONS / "descriptive.parquet"

LATENTS = DATA / "latents"  # the autoencoder's latents, one shard per dataset shard
EMBEDDINGS = DATA / "embeddings"
IMAGE_EMBEDDINGS = EMBEDDINGS / "images"  # one shard per dataset shard
PROMPT_EMBEDDINGS = EMBEDDINGS / "prompts.parquet"

MODELS = Path("models")
CLIP = MODELS / "clip"
CAPTIONER = MODELS / "captioner"  # pretrain/, stage1/, stage2/
AUTOENCODER = MODELS / "autoencoder"  # the generator's latent space (built in)
GENERATOR = MODELS / "generator"
EVAL_MODELS = MODELS / "eval"  # the evaluation's own models, never seen by the generator
ORACLE = EVAL_MODELS / "oracle"
EVAL_CLIP = EVAL_MODELS / "clip"
UPSAMPLER = MODELS / "upsampler"

CAPTIONS = DATA / "captions"
SYNTHETIC_CAPTIONS = CAPTIONS / "synthetic.parquet"
CAPTION_TAGS = CAPTIONS / "tags.parquet"  # classification tags read from the descriptive captions
UPSAMPLED_CAPTIONS = CAPTIONS / "upsampled.parquet"  # the ground truth, upsampled
EVALUATION = DATA / "evaluation"  # generated samples with their scores
EVAL_SAMPLES = EVALUATION / "samples.parquet"
RELABELED = DATA / "relabeled"  # the blend: one caption per image, and its config
RELABELED_CAPTIONS = RELABELED / "captions.parquet"
BLEND_CONFIG = RELABELED / "blend.json"
UPSAMPLED = DATA / "upsampled"  # rewrites of the prompt suite and held-out short captions
UPSAMPLED_PROMPTS = UPSAMPLED / "prompts.parquet"
UPSAMPLED_HELDOUT = UPSAMPLED / "heldout.parquet"
WORK = DATA / ".work"  # resumable stages' finished chunks (not outputs; git-ignored)
# Content-addressed caches that outlive a run (not outputs; git-ignored; `recap clean`).
CACHE = DATA / ".cache"
TEXT_STATES = CACHE / "text_states"  # a frozen text encoder's states by caption

DVCLIVE = Path("dvclive")

REPORTS = Path("reports")
INGEST_REPORT = REPORTS / "ingest.json"
SAMPLE_REPORT = REPORTS / "sample.json"
ANNOTATE_REPORT = REPORTS / "annotate.json"
EMBED_CACHE_REPORT = REPORTS / "embed_cache.json"
EMBED_REPORT = REPORTS / "embed.json"
RECAPTION_REPORT = REPORTS / "recaption.json"
UPSAMPLE_REPORT = REPORTS / "upsample.json"
CAPTIONS_REPORT = REPORTS / "captions.json"
CAPTIONS_HTML = REPORTS / "captions.html"
BLEND_REPORT = REPORTS / "blend.json"
AUTOENCODER_REPORT = REPORTS / "autoencoder.json"
AUTOENCODER_FIGURE = REPORTS / "autoencoder.png"
LATENTS_REPORT = REPORTS / "latents.json"
ORACLE_REPORT = REPORTS / "oracle.json"
EVAL_CLIP_REPORT = REPORTS / "eval_clip.json"
METRICS = REPORTS / "metrics.json"
EVAL_PLOTS = REPORTS / "plots"  # per-category CSVs (DVC plots)
GRIDS = REPORTS / "grids"  # sample grids per category
INDEX_HTML = REPORTS / "index.html"
