"""Model cards: the README.md of every model folder, written from its lineage record.

A card says what the model is, what it was trained on (each input's path and content
hash, and for the generator the caption version), the params and the figures of its
run, and how to load it. It is written with `lineage.json` from the same record, so
the two never disagree, and it holds nothing that changes between identical runs.
"""

from __future__ import annotations

from typing import Any

import yaml

from recaption import paths

# stage -> (folder, title, what it is for, how to load it)
_ABOUT: dict[str, tuple[str, str, str, str]] = {
    "clip_pretrain": (
        str(paths.CLIP), "CLIP (image and text encoders)",
        "The CLIP every dataset image is embedded with; the captioner is conditioned on "
        "its cached embeddings.",
        'import open_clip\nimport recaption.models.towers  # the built-in conv tower, if used\n'
        'model, _, preprocess = open_clip.create_model_and_transforms(\n'
        '    "local-dir:{folder}")',
    ),
    "captioner_pretrain": (
        str(paths.CAPTIONER / "pretrain"), "Captioner, pretrained",
        "A causal language model conditioned on CLIP embeddings through a prefix mapper, "
        "trained on the dataset's ground-truth captions.",
        'from recaption.models import captioner\nmodel = captioner.load("{folder}")',
    ),
    "captioner_stage1": (
        str(paths.CAPTIONER / "stage1"), "Captioner, stage 1 (short captions)",
        "The captioner tuned on short captions of each image's main subject; it writes "
        "the dataset's synthetic short captions.",
        'from recaption.models import captioner\nmodel = captioner.load("{folder}")',
    ),
    "captioner_stage2": (
        str(paths.CAPTIONER / "stage2"), "Captioner, stage 2 (descriptive captions)",
        "The captioner tuned from stage 1 on descriptive captions (subject, surroundings, "
        "background, text, colours); it writes the dataset's synthetic descriptive captions.",
        'from recaption.models import captioner\nmodel = captioner.load("{folder}")',
    ),
    "upsample": (
        str(paths.UPSAMPLER), "Upsampler (short text -> descriptive caption)",
        "A causal language model that rewrites a short prompt or caption as one descriptive "
        "caption, keeping what it states; built in, it was trained on the text pairs below.",
        'from recaption.models import upsampler\nmodel = upsampler.load("{folder}")\n'
        'model.rewrite(["a photo of two red circles"])\n'
        '# or: recap generate "a photo of two red circles" --upsample',
    ),
    "train_generator": (
        str(paths.GENERATOR), "Text-to-image generator",
        "A diffusers pipeline (UNet2DConditionModel, DDIM scheduler, CLIP text encoder) "
        "trained on the blend of synthetic and ground-truth captions named below.",
        'from recaption.models.generator import GeneratorPipeline\n'
        'pipe = GeneratorPipeline.from_pretrained("{folder}", use_safetensors=True)\n'
        '# or: recap generate "a red circle on the left" --model {folder}',
    ),
    "oracle": (
        str(paths.ORACLE), "Oracle detector (evaluation only)",
        "Reads a built-in-world image back into a scene (each grid cell's shape or glyph "
        "and colour, the background); trained on fresh renders, never on the dataset.",
        'from recaption.models import oracle\nmodel = oracle.load("{folder}")',
    ),
    "eval_clip": (
        str(paths.EVAL_CLIP), "Evaluation CLIP (evaluation only)",
        "The CLIP that gives generated images their CLIP scores; trained on fresh renders, "
        "so the generator never saw it.",
        'import open_clip\nmodel, _, preprocess = open_clip.create_model_and_transforms(\n'
        '    "local-dir:{folder}")',
    ),
}  # fmt: skip


def _is_vlm(record: dict[str, Any]) -> bool:
    """Whether a captioner stage's record is a vision-language captioner's."""
    return (record.get("params", {}).get("captioner") or {}).get("kind") == "vlm"


def _vlm_card(about: str) -> tuple[str, str]:
    """(about, usage) of a vision-language captioner's card: another model, another loader."""
    prefix = "A causal language model conditioned on CLIP embeddings through a prefix mapper"
    vlm = ("A LLaVA-style vision-language model (frozen vision tower, projector and language "
           "model) tuned from its tower's cached features")  # fmt: skip
    usage = 'from recaption.models import captioners\nmodel = captioners.load("{folder}")'
    if prefix in about:
        return about.replace(prefix, vlm), usage
    return f"{about} {vlm}.", usage


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _compute_lines(compute: dict[str, Any] | None) -> list[str]:
    """What the weights were computed with: their bytes depend on it."""
    if not compute:
        return []
    native = "native bf16" if compute.get("native_bf16") else "no native bf16"
    return [
        "", "## Compute", "",
        f"Trained in **{compute['precision']}** on {compute['device']} "
        f"(`{compute['hardware']}`, {native}). The same params and inputs give the same bytes "
        "on hardware of the same class; another class or precision gives other, equally "
        "valid bytes.",
    ]  # fmt: skip


def _corpus_lines(params: dict[str, Any]) -> list[str]:
    """The CLIP's pretraining corpus, when it had one (clip.train.corpus; built-in world
    only, see clip_pretrain.corpus_size)."""
    train = (params.get("clip") or {}).get("train") or {}
    if not train.get("corpus") or params.get("data.source", "synthetic") != "synthetic":
        return []
    lines = [
        "", f"Beside these pairs, a pretraining corpus of {train['corpus']:,} fresh renders of "
        f"the built-in world (seed {train['corpus_seed']}, never the dataset's or the "
        "evaluation's), each with its alt-text, short and descriptive caption.",
    ]  # fmt: skip
    if train.get("twins"):
        lines[-1] += (
            f" A share of {train['twins']:g} of them also has a twin, the same scene with one "
            "shape changed and captioned to match, trained in the same batch."
        )
    if train.get("scene_loss"):
        lines[-1] += (
            " The corpus renders' scenes were known, and the image tower also learnt them "
            f"(scene loss, weight {train['scene_loss']:g}): what each cell of the world's 3x3 "
            "grid holds and in which colour, and the background, read linearly from the "
            "features the embed stage caches. The dataset's own scenes were never shown."
        )
    return lines


def render(record: dict[str, Any]) -> str:
    """The card of a model whose lineage record is `record`."""
    stage = record["stage"]
    folder, title, about, usage = _ABOUT.get(
        stage, ("", stage, "A model written by the recaption pipeline.", "")
    )
    if stage.startswith("captioner_") and _is_vlm(record):
        about, usage = _vlm_card(about)
    lines = [f"# {title}", "", about, ""]
    if record.get("caption_version"):
        lines += [
            f"**Caption version:** `{record['caption_version']}`: the content hash of the "
            "relabeled dataset (`data/relabeled/`) it was trained on. `recap lineage` follows "
            "it down to the captioners and the dataset and checks every hash against the disk.",
            "",
        ]
    inputs = record.get("inputs", {})
    lines += ["## Training data", ""]
    if inputs:
        rows = [(n, f"`{i['path']}`", f"`{i['sha256'][:16]}`") for n, i in sorted(inputs.items())]
        lines += _table(("input", "path", "sha256 (first 16)"), rows)
    else:
        lines.append("Fresh renders of the built-in world (see the params below).")
    lines += _corpus_lines(record.get("params", {}))
    params = yaml.safe_dump(record.get("params", {}), sort_keys=True, default_flow_style=False)
    lines += ["", "## Params", "", "```yaml", params.rstrip(), "```"]
    lines += _compute_lines(record.get("compute"))
    metrics = record.get("metrics") or {}
    if metrics:
        lines += ["", "## Figures of the run", ""]
        lines += _table(("figure", "value"), sorted(metrics.items()))
    if usage:
        lines += ["", "## Use", "", "```python", usage.format(folder=folder), "```"]
    lines += [
        "",
        f"Written by the `{stage}` stage of recaption (`dvc repro`); `lineage.json` beside "
        "this file holds the same record.",
    ]
    return "\n".join(lines) + "\n"
