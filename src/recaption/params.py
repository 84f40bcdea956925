"""Typed, validated params.

`params.yaml` has one section per stage plus a shared `seed`. It is loaded once,
validated as a whole before any work starts, and handed to the stage layer as
frozen models. Errors name the key, the value given and what is allowed; unknown
keys (typos) are errors, with a did-you-mean suggestion.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from recaption import checkpoints, paths
from recaption.errors import UserError


class ParamsError(UserError, ValueError):
    """params.yaml is unreadable or does not validate; the message says what to fix."""


def _not_pickled(value: str) -> str:
    try:
        checkpoints.check_local_weights(value)
    except checkpoints.PickledCheckpointError as exc:
        raise ValueError(str(exc)) from None
    return value


# A model named in params (architecture file, local folder or file, hub id or tag): a
# local pickled checkpoint is refused here, before any stage runs.
ModelRef = Annotated[str, AfterValidator(_not_pickled)]
# Autocast precision (recaption.precision): auto is bf16 where the device computes it
# natively (a bf16 GPU, a CPU with AVX-512 BF16 or AMX) and fp32 elsewhere; fp16 is for
# GPUs without bf16 (with a gradient scaler).
Precision = Literal["auto", "fp32", "bf16", "fp16"]
# Where a stage computes (recaption.devices.resolve): auto is cuda when a GPU is visible,
# else cpu; cuda without one is an error. It decides how the arithmetic is spread, not
# what is computed, except through the precision auto resolves to on it.
Device = Literal["auto", "cpu", "cuda"]


class Section(BaseModel):
    """Base of every params section: frozen, and strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainingSection(Section):
    """A section whose stage trains through `training.fit`, which may split each step's
    batch into `grad_accumulation` micro-batches (less activation memory, the same
    gradient up to float rounding; see recaption.models.training)."""

    grad_accumulation: int = Field(1, ge=1, le=4096)

    @model_validator(mode="after")
    def _micro_batches_divide_the_batch(self) -> TrainingSection:
        if self.batch_size % self.grad_accumulation:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of grad_accumulation "
                f"({self.grad_accumulation}): the micro-batches are equal"
            )
        return self


class AltTextMix(Section):
    """Proportions of the kinds of web alt-text the synthetic ground truth imitates."""

    off_topic: float = Field(0.4, ge=0, le=1)
    partial: float = Field(0.4, ge=0, le=1)
    good: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> AltTextMix:
        total = self.off_topic + self.partial + self.good
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"off_topic + partial + good must sum to 1, got {total:g}")
        return self


class SyntheticParams(Section):
    """The built-in synthetic world (`data.source: synthetic`)."""

    num_images: int = Field(8000, ge=1, le=10_000_000)
    min_objects: int = Field(1, ge=1, le=4)
    max_objects: int = Field(4, ge=1, le=4)
    text_probability: float = Field(0.3, ge=0, le=1)
    repeat_probability: float = Field(0.3, ge=0, le=1)
    alt_text: AltTextMix = AltTextMix()

    @model_validator(mode="after")
    def _objects_range(self) -> SyntheticParams:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects ({self.min_objects}) must not exceed max_objects ({self.max_objects})"
            )
        return self


class Columns(Section):
    """Where each field lives in a real source (CSV/JSONL columns, parquet columns, JSON keys)."""

    key: str | None = None
    file: str = "file"
    image: str = "image"
    caption: str = "caption"
    short: str = "short"
    descriptive: str = "descriptive"


class StreamParams(Section):
    """How a training stage reads images too many to hold (see recaption.streaming)."""

    # auto: stream when the training images would take more than `memory_gb` as uint8
    # pixels, else hold them (the order a run trains in depends on which).
    mode: Literal["auto", "always", "never"] = "auto"
    memory_gb: float = Field(4.0, gt=0)
    buffer: int = Field(4096, ge=1)  # shuffle-buffer rows per loader worker
    workers: int = Field(2, ge=0, le=256)  # loader processes (0: in-process); part of the order


class DataParams(Section):
    """ingest: where the dataset comes from and how images are normalised."""

    source: Literal["synthetic", "folder", "parquet", "webdataset"] = "synthetic"
    path: str = "data/raw"
    captions_file: str = "captions.csv"
    columns: Columns = Columns()
    image_size: int = Field(32, ge=8, le=4096)
    resize: Literal["center_crop", "none"] = "center_crop"
    # original: a real source's JPEG/PNG/WebP bytes kept when they already decode to the
    # normalised pixels; png: always re-encoded. The built-in world always stores PNG.
    store: Literal["original", "png"] = "original"
    shard_size: int = Field(2000, ge=1, le=1_000_000)
    max_reject_fraction: float = Field(0.05, ge=0, le=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_caption_chars: int = Field(4000, ge=1)
    num_workers: int = Field(2, ge=0, le=256)
    stream: StreamParams = StreamParams()
    synthetic: SyntheticParams = SyntheticParams()


class PromptsParams(Section):
    """prompts: the evaluation prompt suite (GenEval categories), from its own seed."""

    seed: int = Field(1234, ge=0)
    per_category: int = Field(50, ge=1, le=10_000)


class SampleParams(Section):
    """sample: the captioner-tuning subset, its two parts, and the held-out split."""

    size: int = Field(1000, ge=1)
    overlap: float = Field(1.0, ge=0, le=1)
    heldout_size: int = Field(500, ge=0)
    stratify: str | None = None


class DecodingParams(Section):
    """How one kind of caption is decoded (`max_new_tokens`' default is each use's own)."""

    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    max_new_tokens: int = Field(ge=1, le=1024)
    num_beams: int = Field(3, ge=1, le=64)  # beam
    top_p: float = Field(0.9, gt=0, le=1)  # sample
    temperature: float = Field(1.0, gt=0)  # sample


class AnnotateLMTrain(TrainingSection):
    """annotate.lm_train: how the built-in LM (a GPT-2 config JSON) is trained, inside the
    stage, on fresh scenes of the built-in world (recaption.lm_annotations.world_pairs)."""

    scenes: int = Field(2000, ge=1)  # fresh scenes, each giving one pair per task
    # Their own seed, never the dataset's or the evaluation's: the LM writes captions for
    # subset images it never saw (checked in Params).
    scenes_seed: int = Field(3_000_017, ge=0)
    vocab_size: int = Field(1024, ge=64)  # built-in tokenizer
    steps: int = Field(600, ge=1)  # about 10 minutes on one CPU thread
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    max_source_tokens: int = Field(56, ge=1)  # "<task>: <description or caption>", cut here
    max_tokens: int = Field(64, ge=2)  # the written caption, in training
    precision: Precision = "auto"


_ANNOTATE_DEFAULTS = {
    "decoding": {"max_new_tokens": 64},
    "rewrite_decoding": {"strategy": "sample", "max_new_tokens": 64},
}


class AnnotateParams(Section):
    """annotate: where the short and descriptive caption sets for the subset come from."""

    source: Literal["synthetic", "column", "file", "lm"] = "synthetic"
    short_column: str = "short"
    descriptive_column: str = "descriptive"
    short_file: str | None = None
    descriptive_file: str | None = None
    # source lm: the dataset columns or meta fields that describe each image (alt-text,
    # tags, metadata); empty: each image's scene record (the built-in world only).
    describe_columns: list[str] = []
    augment: int = Field(0, ge=0, le=64)  # LM rewrites of each caption that join its set
    # The LM for source lm and augment: a GPT-2 config JSON (built-in world only: trained
    # here, see lm_train) or an instruction LM with a chat template (model id or folder).
    lm: ModelRef = "configs/captioner/tiny-gpt2.json"
    lm_train: AnnotateLMTrain = AnnotateLMTrain()
    device: Device = "auto"  # where the LM trains and writes
    decoding: DecodingParams = DecodingParams(**_ANNOTATE_DEFAULTS["decoding"])  # the sets
    rewrite_decoding: DecodingParams = DecodingParams(**_ANNOTATE_DEFAULTS["rewrite_decoding"])
    generate_batch_size: int = Field(64, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _decoding_defaults(cls, data: Any) -> Any:
        return _with_defaults(data, _ANNOTATE_DEFAULTS)

    @model_validator(mode="after")
    def _files_given(self) -> AnnotateParams:
        if self.source == "file" and not (self.short_file and self.descriptive_file):
            raise ValueError("source 'file' needs both short_file and descriptive_file")
        return self

    @property
    def uses_lm(self) -> bool:
        """Whether the stage runs the LM: it writes the sets or rewrites their captions."""
        return self.source == "lm" or self.augment > 0


class ContrastiveParams(Section):
    """Contrastive CLIP training (`ClipTrainConfig`): clip_pretrain's and eval_clip's."""

    steps: int = Field(1200, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    precision: Precision = "auto"
    device: Device = "auto"


class ClipTrainParams(ContrastiveParams):
    """clip_pretrain: contrastive training when no pretrained CLIP is given."""

    captions: Literal["ground_truth", "ground_truth+annotations"] = "ground_truth+annotations"
    annotated_repeat: int = Field(5, ge=1, le=1000)
    eval_every: int = Field(200, ge=1)
    # A pretraining corpus, as a real CLIP has: fresh renders of the built-in world (its
    # own seed, never the dataset's or the evaluation's), each with its alt-text, short
    # and descriptive caption, beside the dataset's pairs. Built-in world only: real data
    # trains on its own pairs (or takes a pretrained CLIP).
    corpus: int = Field(40000, ge=0)
    corpus_seed: int = 2000003
    hard_negatives: bool = False  # NegCLIP: each caption also meets a copy with one
    # shape or colour word swapped (recaption.world.negatives)
    # Image-level minimal pairs: the share of corpus renders that also get a twin, the
    # same scene with one shape changed, trained in the same batch (recaption.world.twins).
    twins: float = Field(0.0, ge=0, le=1)
    # A captioning loss beside the contrastive one (CoCa, CapPa): a small decoder writes
    # each image's longest caption from its embedding and embed.grid cells, so the tower
    # must keep what captions name. Its weight (0: contrastive only) and the decoder (a
    # GPT-2 config JSON, trained with the CLIP and then dropped).
    caption_loss: float = Field(0.0, ge=0)
    caption_decoder: str = "configs/clip/caption-decoder.json"
    # Supervised pretraining on the corpus's scenes beside the contrastive loss: a linear
    # head reads each grid cell's content and colour and the background from the features
    # the embed stage caches (recaption.models.clip_train.SceneLoss). Its weight (0: off).
    # The corpus renders only: the dataset's own scenes are never a training signal.
    scene_loss: float = Field(10.0, ge=0)


class ClipParams(Section):
    """The CLIP whose image embeddings the captioner is conditioned on."""

    model: str = "configs/clip/tiny-cnn-32.json"
    pretrained: ModelRef = "none"
    train: ClipTrainParams = ClipTrainParams()


class EmbedParams(Section):
    """embed: cached CLIP embeddings of every image and of the prompt suite."""

    batch_size: int = Field(512, ge=1)
    # auto: 0 on the CPU (the forward pass already uses every core; measured faster),
    # up to 8 beside a GPU.
    num_workers: int | Literal["auto"] = Field("auto", union_mode="left_to_right")
    device: Device = "auto"
    grid: int = Field(4, ge=0, le=16)
    probe_train_size: int = Field(4000, ge=10)


class CaptionerStageParams(TrainingSection):
    """One captioner training stage (pretrain, stage1 or stage2): same loop, own knobs.

    The knobs whose default differs between stages have none here: each stage's comes
    from `_STAGE_DEFAULTS`, so there is one place for it.
    """

    enabled: bool = True  # False: the stage passes its starting weights on untrained
    steps: int | None = Field(None, ge=0)  # give steps or epochs, not both
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    train_lm: bool = True  # False: only the mapping network learns
    eval_every: int = Field(ge=1)
    keep: Literal["best", "last"]  # best: the lowest val loss, with early stopping; last: the
    # schedule's end (the val loss is logged; on few pairs it rises while captions improve)
    patience: int = Field(3, ge=1)  # keep best: evaluations without a better val loss
    max_tokens: int = Field(ge=2)  # caption tokens kept, EOS included
    precision: Precision = "auto"
    device: Device = "auto"

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> CaptionerStageParams:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps and epochs")
        return self

    def total_steps(self, examples: int) -> int:
        """Optimizer steps this stage runs on `examples` training pairs."""
        if not self.enabled:
            return 0
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * examples / self.batch_size))


def _with_defaults(data: Any, defaults: dict[str, dict[str, Any]]) -> Any:
    """Fill a section's sub-sections given in part with *their* defaults, not the class's.

    The three captioner stages share one class but not every default (steps, warm-up,
    eval_every, max_tokens); a stage written as `stage2: {lr: 0.002}` keeps stage 2's own.
    """
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for name, base in defaults.items():
        given = data.get(name)
        if isinstance(given, dict):
            base = {k: v for k, v in base.items() if not (k == "steps" and "epochs" in given)}
            data[name] = {**base, **given}
    return data


_STAGE_DEFAULTS = {
    "pretrain": {"steps": 600, "warmup_steps": 50, "eval_every": 100, "max_tokens": 32,
                 "keep": "best"},
    "stage1": {"steps": 200, "warmup_steps": 20, "eval_every": 50, "max_tokens": 24,
               "keep": "best"},
    "stage2": {"steps": 1200, "warmup_steps": 20, "eval_every": 100, "max_tokens": 80,
               "keep": "last"},
}  # fmt: skip


class LoraParams(Section):
    """generator.lora: a low-rank adapter on a saved pipeline's UNet (recaption.models.lora),
    merged into the UNet before it is saved."""

    rank: int = Field(0, ge=0)  # 0: off, the whole UNet trains
    alpha: float | None = Field(None, gt=0)  # the update is scaled by alpha / rank; None: rank
    targets: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]  # layer names the adapters wrap

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    @model_validator(mode="after")
    def _targets_when_on(self) -> LoraParams:
        if self.rank and not self.targets:
            raise ValueError("lora.targets is empty: name the layers the adapters wrap")
        return self


class CaptionerLoraParams(LoraParams):
    """captioner.lora: low-rank adapters on a VLM's language model (recaption.models.lora),
    merged before each stage saves; rank 0: off (train_lm trains the whole language model)."""

    targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]  # Llama-style attention


# Keys only `captioner.kind: vlm` reads: a prefix captioner's lineage leaves them out.
VLM_ONLY_KEYS = frozenset({"kind", "prompt", "lora"})


class CaptionerParams(Section):
    """The captioner: an LM conditioned on CLIP embeddings (kind prefix) or a LLaVA-style
    vision-language model tuned from its frozen tower's features (kind vlm), and its
    three training stages."""

    kind: Literal["prefix", "vlm"] = "prefix"
    # prefix: a GPT-2 config JSON, a causal LM id or folder; vlm: a VLM id or folder
    lm: ModelRef = "configs/captioner/tiny-gpt2.json"
    # kind vlm only: the text around the image tokens, e.g. "USER: <image>\nCaption it.
    # ASSISTANT:" (the caption follows it); "<image>": the image tokens alone
    prompt: str = "<image>"
    lora: CaptionerLoraParams = CaptionerLoraParams()  # kind vlm only
    vocab_size: int = Field(1024, ge=64)  # built-in tokenizer (trained on the captions)
    prefix_length: int = Field(4, ge=1, le=64)  # vectors from the pooled embedding
    mapper_hidden: int = Field(512, ge=1)
    val_fraction: float = Field(0.05, gt=0, lt=1)  # of each stage's pairs, for early stopping
    pretrain: CaptionerStageParams = CaptionerStageParams(**_STAGE_DEFAULTS["pretrain"])
    stage1: CaptionerStageParams = CaptionerStageParams(**_STAGE_DEFAULTS["stage1"])
    stage2: CaptionerStageParams = CaptionerStageParams(**_STAGE_DEFAULTS["stage2"])

    @model_validator(mode="before")
    @classmethod
    def _stage_defaults(cls, data: Any) -> Any:
        return _with_defaults(data, _STAGE_DEFAULTS)

    @model_validator(mode="after")
    def _kind_fits(self) -> CaptionerParams:
        if self.kind == "vlm" and Path(self.lm).suffix == ".json":
            raise ValueError(
                f"captioner.lm = {self.lm!r} is a config JSON, but captioner.kind: vlm needs "
                "a saved vision-language model (a local save_pretrained folder or a model id)"
            )
        if self.prompt.count("<image>") != 1:
            raise ValueError(
                f"captioner.prompt = {self.prompt!r}: it must hold <image> exactly once "
                "(where the image tokens go)"
            )
        if self.kind == "prefix" and self.lora.rank:
            raise ValueError(
                f"captioner.lora.rank = {self.lora.rank}: LoRA tunes a VLM's language model "
                "(captioner.kind: vlm); with kind prefix set it to 0 (train_lm trains the LM)"
            )
        return self


_DECODING_DEFAULTS = {"short": {"max_new_tokens": 24}, "descriptive": {"max_new_tokens": 80}}


class RecaptionParams(Section):
    """recaption: short and descriptive synthetic captions for every dataset image."""

    batch_size: int = Field(256, ge=1)
    chunk_size: int = Field(2000, ge=1)  # images per resumable unit of work
    device: Device = "auto"
    precision: Precision = "auto"
    short: DecodingParams = DecodingParams(**_DECODING_DEFAULTS["short"])
    descriptive: DecodingParams = DecodingParams(**_DECODING_DEFAULTS["descriptive"])

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        return _with_defaults(data, _DECODING_DEFAULTS)


_UPSAMPLE_DEFAULTS = {"decoding": {"max_new_tokens": 80}}


class UpsampleParams(TrainingSection):
    """upsample: a language model that rewrites short text as descriptive captions."""

    # A GPT-2 config JSON (built-in: trained here on the subset's pairs), or an
    # instruction-tuned causal LM: a transformers model id or a local folder.
    lm: ModelRef = "configs/captioner/tiny-gpt2.json"
    vocab_size: int = Field(1024, ge=64)  # built-in tokenizer
    steps: int = Field(1600, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    max_source_tokens: int = Field(40, ge=1)  # the text to rewrite, truncated
    max_tokens: int = Field(80, ge=2)  # the rewrite, in training
    precision: Precision = "auto"
    device: Device = "auto"  # where it trains and rewrites (upsample, upsample_captions)
    decoding: DecodingParams = DecodingParams(**_UPSAMPLE_DEFAULTS["decoding"])
    generate_batch_size: int = Field(128, ge=1)
    heldout_prompts: int = Field(300, ge=0)  # held-out short captions the faithfulness uses
    # Synthetic world, built-in LM: also train on this many suite-style prompts per subset
    # scene ("a photo of two red circles") -> its descriptive caption. Ignored for real data.
    prompts_per_scene: int = Field(3, ge=0)
    chunk_size: int = Field(2000, ge=1)  # upsample_captions: captions per resumable unit

    @model_validator(mode="before")
    @classmethod
    def _decoding_defaults(cls, data: Any) -> Any:
        return _with_defaults(data, _UPSAMPLE_DEFAULTS)


class BlendParams(Section):
    """blend: which caption each image trains the generator with."""

    synthetic_ratio: float = Field(0.95, ge=0, le=1)  # chance of a synthetic caption
    synthetic_kind: Literal["descriptive", "short", "mixed"] = "descriptive"
    # Who writes the synthetic captions: "captioner", the trained captioner
    # (data/captions/synthetic.parquet), or "reference", the dataset's own `short` and
    # `descriptive` columns (a perfect captioner: the built-in world's scene descriptions;
    # real data needs those columns). Same kinds, ratio and draws either way.
    synthetic_source: Literal["captioner", "reference"] = "captioner"
    short_fraction: float = Field(0.5, ge=0, le=1)  # mixed: share of synthetic that is short
    mode: Literal["static", "per_epoch"] = "static"  # per_epoch: redrawn every epoch
    # true: the ground-truth captions are replaced by the upsampler's rewrites of them
    # (data/captions/upsampled.parquet), both where an image keeps its ground truth and
    # at synthetic_ratio 0.
    use_upsampled: bool = False


class GeneratorParams(TrainingSection):
    """train_generator: the text-to-image model trained on the blend."""

    # An architecture JSON, or a saved pipeline.
    model: ModelRef = "configs/generator/tiny-unet-latent-8.json"
    # The sampler saved with the model (evaluate and `recap generate` draw with it): auto
    # keeps the JSON's DDIM or the folder's own; training does not depend on it.
    scheduler: Literal["auto", "ddim", "euler", "dpm"] = "auto"
    vocab_size: int = Field(1024, ge=64)  # built-in text encoder's tokenizer
    # Added to the global seed for this model's own draws (initial weights, batches, noise,
    # caption dropout); the caption version does not change. Comparisons vary it.
    seed: int = Field(0, ge=0)
    steps: int = Field(4800, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    cond_dropout: float = Field(0.1, ge=0, lt=1)  # captions dropped, for classifier-free guidance
    ema_decay: float = Field(0.995, ge=0, lt=1)
    snr_gamma: float = Field(0.0, ge=0)  # Min-SNR-gamma loss weighting (0: plain MSE)
    edge_weight: float = Field(20.0, ge=0)  # extra denoising-loss weight near outlines
    checkpoint_every: int = Field(200, ge=0)  # steps between resumable checkpoints (0: none)
    train_text_encoder: bool = True  # built-in: trained jointly; false keeps it frozen
    # A built-in (JSON) generator's text encoder: own (the JSON's, with a tokenizer trained
    # on the blend) or clip (the text tower of the pipeline's CLIP, models/clip, as Stable
    # Diffusion reads prompts through a pretrained CLIP's; frozen unless train_text_encoder).
    text_encoder: Literal["own", "clip"] = "own"
    lora: LoraParams = LoraParams()  # a saved pipeline's UNet: train a LoRA (rank 0: off)
    precision: Precision = "auto"
    device: Device = "auto"

    @model_validator(mode="after")
    def _lora_needs_a_pretrained_unet(self) -> GeneratorParams:
        if self.lora.rank and self.model.endswith(".json"):
            raise ValueError(
                f"lora.rank={self.lora.rank} adapts a pretrained UNet, but generator.model is "
                f"an architecture JSON ({self.model}): name a saved pipeline folder, or set "
                "lora.rank: 0"
            )
        return self

    @model_validator(mode="after")
    def _clip_text_encoder_is_built_in(self) -> GeneratorParams:
        if self.text_encoder == "clip" and not self.model.endswith(".json"):
            raise ValueError(
                f"text_encoder: clip gives a built-in generator the pipeline's CLIP text "
                f"tower, but generator.model is a saved pipeline ({self.model}), which reads "
                "prompts through its own: set text_encoder: own"
            )
        return self


class AutoencoderParams(TrainingSection):
    """train_autoencoder: the latent space the built-in generator denoises in."""

    # an AutoencoderKL architecture JSON (trained here), or none (pixels, or a saved
    # pipeline's own VAE)
    model: str = "configs/autoencoder/tiny-kl-f4-c8.json"
    steps: int = Field(2400, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    kl_weight: float = Field(1e-4, ge=0)  # KL term against the per-pixel L1
    edge_weight: float = Field(20.0, ge=0)  # extra L1 weight on pixels near an edge
    grad_clip: float = Field(1.0, gt=0)
    # Built-in world only: fresh renders (their own seed) trained on beside the dataset's
    # images, as a real autoencoder is pretrained on far more images than one dataset.
    corpus: int = Field(40000, ge=0)
    corpus_seed: int = 4000037
    # Synthetic world: the stage fails when the oracle reads fewer held-out
    # reconstructions exactly right (every cell, colour and the background).
    min_scene_accuracy: float = Field(0.6, ge=0, le=1)
    precision: Precision = "auto"
    device: Device = "auto"

    @property
    def enabled(self) -> bool:
        return self.model != "none"


class OracleParams(TrainingSection):
    """oracle: the detector that reads generated built-in-world images back into scenes."""

    train_size: int = Field(20000, ge=100)  # fresh renders it trains on
    heldout_size: int = Field(2000, ge=10)  # fresh renders its reported accuracy is measured on
    steps: int = Field(800, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(math.inf, gt=0)  # .inf: no clipping
    noise: float = Field(0.06, ge=0, le=1)  # pixel-noise augmentation (generated images are grainy)
    min_accuracy: float = Field(0.97, ge=0, le=1)  # the stage fails below this on any attribute
    device: Device = "auto"


class EvalClipParams(ContrastiveParams):
    """eval_clip: the CLIP that scores generated images, one the generator never saw."""

    model: str = "configs/clip/tiny-rn-32.json"
    pretrained: ModelRef = "none"  # none (train on fresh renders), an open_clip tag, .safetensors
    train_size: int = Field(20000, ge=10)
    heldout_size: int = Field(1000, ge=10)
    steps: int = Field(600, ge=1)


class EvaluateParams(Section):
    """evaluate: sample the generator on the prompt suite and held-out captions, and score."""

    seed: int = Field(1_000_003, ge=0)  # fresh renders for the oracle and evaluation CLIP
    images_per_prompt: int = Field(2, ge=1)  # suite prompts; image i is drawn with seed i
    heldout_prompts: int = Field(100, ge=0)  # held-out images whose captions are drawn once
    steps: int = Field(20, ge=1)  # sampling steps, with the generator's own scheduler
    guidance: float = Field(3.0, ge=0)
    batch_size: int = Field(128, ge=1)
    chunk_size: int = Field(256, ge=1)  # images per resumable unit
    device: Device = "auto"
    precision: Precision = "auto"
    grid_prompts: int = Field(6, ge=1)  # prompts per category in reports/grids/
    # A prompt suite of one's own (CSV, TSV or JSONL: prompt, optional category) drawn in
    # place of the built-in world's; null: the world's suite (none on a real source).
    prompts_file: str | None = None
    # Refuse to report on generated images that look like noise (an untrained or broken
    # generator); false reports anyway, flagged as noise in metrics.json and the page.
    noise_guard: bool = True
    oracle: OracleParams = OracleParams()
    clip: EvalClipParams = EvalClipParams()


# The study's comparison (recap compare): each variant's blend params.
COMPARE_VARIANTS: dict[str, dict[str, Any]] = {
    "ground-truth": {"blend.synthetic_ratio": 0.0},
    "short-95": {"blend.synthetic_kind": "short", "blend.synthetic_ratio": 0.95},
    "descriptive-95": {"blend.synthetic_kind": "descriptive", "blend.synthetic_ratio": 0.95},
    "descriptive-65": {"blend.synthetic_kind": "descriptive", "blend.synthetic_ratio": 0.65},
    "descriptive-80": {"blend.synthetic_kind": "descriptive", "blend.synthetic_ratio": 0.8},
    "descriptive-90": {"blend.synthetic_kind": "descriptive", "blend.synthetic_ratio": 0.9},
    "descriptive-100": {"blend.synthetic_kind": "descriptive", "blend.synthetic_ratio": 1.0},
    # Not in the study's figures: the ground truth rewritten by the upsampler, no captioner.
    "upsampled-ground-truth": {"blend.synthetic_ratio": 0.0, "blend.use_upsampled": True},
    # The upper bound every variant is read against: a perfect captioner (the dataset's
    # reference captions) at the study's blend.
    "reference-95": {
        "blend.synthetic_source": "reference",
        "blend.synthetic_kind": "descriptive",
        "blend.synthetic_ratio": 0.95,
    },
    # descriptive-95 whose 5 % ground truth is the upsampler's rewrite of it.
    "upsampled-95": {
        "blend.synthetic_kind": "descriptive",
        "blend.synthetic_ratio": 0.95,
        "blend.use_upsampled": True,
    },
}
STUDY_VARIANTS = list(COMPARE_VARIANTS)[:7]
CompareVariant = Literal[
    "ground-truth", "short-95", "descriptive-95", "descriptive-65", "descriptive-80",
    "descriptive-90", "descriptive-100", "upsampled-ground-truth", "reference-95",
    "upsampled-95",
]  # fmt: skip


class CompareParams(Section):
    """recap compare (make compare): the study's comparison as DVC experiments. No stage
    reads this section, so editing it reruns nothing."""

    # The study's seven, the perfect captioner and descriptive-95 with upsampled ground truth.
    variants: list[CompareVariant] = [*STUDY_VARIANTS, "reference-95", "upsampled-95"]  # type: ignore[assignment]
    seeds: int = Field(3, ge=1)  # generator seeds per variant (generator.seed 0 .. seeds-1)
    # Dotted params every experiment of the sweep also sets (a lighter generator, say). None
    # by default: at 400 steps the generator draws near chance, and a comparison of such
    # generators measures nothing (docs/experiments.md).
    overrides: dict[str, bool | int | float | str | None] = {}

    @model_validator(mode="after")
    def _distinct(self) -> CompareParams:
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError("compare.variants: give each variant once, at least one")
        return self


class BudgetParams(Section):
    """recap budget (make budget): the annotation budget as DVC experiments over
    sample.size. No stage reads this section, so editing it reruns nothing."""

    sizes: list[Annotated[int, Field(ge=2)]] = Field([100, 300, 1000, 3000], min_length=1)
    seeds: int = Field(1, ge=1)  # generator seeds per size (generator.seed 0 .. seeds-1)
    overrides: dict[str, bool | int | float | str | None] = {}  # set in every experiment

    @model_validator(mode="after")
    def _distinct(self) -> BudgetParams:
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError("budget.sizes: give each size once")
        return self


class RayParams(Section):
    """`engine: ray`: the cluster the per-image stages use and how many model replicas.
    No stage reads this section into its outputs, so editing it reruns nothing."""

    address: str = ""  # a running cluster ("auto", "ray://head:10001"); empty: a local one
    replicas: int | Literal["auto"] = Field("auto", union_mode="left_to_right")  # no GPUs
    cpus_per_replica: int = Field(1, ge=1)
    replicas_per_gpu: int = Field(1, ge=1)  # with GPUs: replicas sharing each GPU

    @model_validator(mode="after")
    def _positive(self) -> RayParams:
        if self.replicas != "auto" and self.replicas < 1:
            raise ValueError("ray.replicas: give a positive count or auto")
        return self


class Params(Section):
    """The whole params.yaml."""

    seed: int = Field(0, ge=0)
    # Where embed, recaption, upsample_captions and evaluate's sampling run (same bytes).
    engine: Literal["local", "ray"] = "local"
    ray: RayParams = RayParams()
    data: DataParams = DataParams()
    prompts: PromptsParams = PromptsParams()
    sample: SampleParams = SampleParams()
    annotate: AnnotateParams = AnnotateParams()
    clip: ClipParams = ClipParams()
    embed: EmbedParams = EmbedParams()
    captioner: CaptionerParams = CaptionerParams()
    recaption: RecaptionParams = RecaptionParams()
    upsample: UpsampleParams = UpsampleParams()
    blend: BlendParams = BlendParams()
    autoencoder: AutoencoderParams = AutoencoderParams()
    generator: GeneratorParams = GeneratorParams()
    evaluate: EvaluateParams = EvaluateParams()
    compare: CompareParams = CompareParams()
    budget: BudgetParams = BudgetParams()

    @model_validator(mode="after")
    def _fresh_renders(self) -> Params:
        if self.data.source == "synthetic" and self.evaluate.seed == self.seed:
            raise ValueError(
                "evaluate.seed must differ from seed: the oracle and evaluation CLIP train on "
                "fresh renders, never on the dataset's images"
            )
        return self

    @model_validator(mode="after")
    def _own_corpus(self) -> Params:
        if self.data.source != "synthetic":
            return self  # real data: no corpus (see corpus_size)
        for key, corpus, seed in (
            ("clip.train", self.clip.train.corpus, self.clip.train.corpus_seed),
            ("autoencoder", self.autoencoder.corpus, self.autoencoder.corpus_seed),
        ):
            if corpus and seed in (self.seed, self.evaluate.seed):
                raise ValueError(
                    f"{key}.corpus_seed ({seed}) must differ from seed and evaluate.seed: "
                    "the corpus is fresh renders, never the dataset's images or the evaluation's"
                )
        return self

    @model_validator(mode="after")
    def _own_annotation_scenes(self) -> Params:
        ann = self.annotate
        if not ann.uses_lm or self.data.source != "synthetic":
            return self  # real data: the LM is an instruction LM, trained on nothing here
        if ann.lm_train.scenes_seed in (self.seed, self.evaluate.seed):
            raise ValueError(
                f"annotate.lm_train.scenes_seed ({ann.lm_train.scenes_seed}) must differ from "
                "seed and evaluate.seed: the LM learns from fresh scenes, never the dataset's "
                "or the evaluation's"
            )
        return self

    @model_validator(mode="after")
    def _one_latent_space(self) -> Params:
        if self.autoencoder.enabled and Path(self.generator.model).suffix != ".json":
            raise ValueError(
                "generator.model is a saved pipeline, which brings its own VAE (or none): "
                "set autoencoder.model: none"
            )
        return self


class _StrictLoader(yaml.SafeLoader):
    """Plain YAML only: no tags beyond the safe ones (SafeLoader), no aliases (a params
    file spells out every value, so an edit to one key never changes another), and no
    key given twice (YAML would silently keep the last)."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed: write the value out", mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = paths.PARAMS) -> Params:
    """Read and validate params.yaml; raise ParamsError with every problem found."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: not found") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    return parse_params(raw if raw is not None else {}, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already-parsed mapping (the content of params.yaml)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = list(dict.fromkeys(_describe(err, raw) for err in _merge_unions(exc.errors())))
        message = f"{source}: {len(lines)} invalid value(s)\n  " + "\n  ".join(lines)
        raise ParamsError(message) from None


def _merge_unions(errors: list[dict]) -> list[dict]:
    """One error per key: pydantic reports each member of a union (`int | 'auto'`) apart,
    with the member's tag in the location; join them into one message."""
    merged: dict[tuple, dict] = {}
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _is_union_tag(p)))
        if loc in merged:
            merged[loc]["msg"] += " or " + err["msg"][0].lower() + err["msg"][1:]
        else:
            merged[loc] = {**err, "loc": loc}
    return list(merged.values())


def _is_union_tag(part: str) -> bool:
    return part in ("int", "float", "str", "bool", "none") or part.startswith("literal[")


def _describe(err: dict, raw: dict) -> str:
    """One line per error: the dotted key, the value given, and what is allowed."""
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        model = _model_at(Params, loc[:-1])
        allowed = sorted(model.model_fields) if model else []
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"{key}: unknown key{suggestion} (allowed: {', '.join(allowed)})"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    message = err["msg"].removeprefix("Value error, ")
    return f"{key} = {shown}: {message}"


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The params model that owns the keys at `loc` (a list of nested section names)."""
    for part in loc:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
