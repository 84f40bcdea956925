"""oracle and eval_clip: the evaluation's own models, trained on fresh renders.

Scoring a generator with models that saw its training data would flatter it, so
both are trained on scenes drawn from the built-in world with `evaluate.seed`
(which params validation keeps apart from the dataset's `seed`):

- the oracle detector (`recaption.models.oracle`) reads an image back into a
  scene; its held-out accuracy per attribute goes to reports/oracle.json and the
  stage fails when any is below `evaluate.oracle.min_accuracy`;
- the evaluation CLIP is trained contrastively on the renders' reference
  descriptive and short captions (or, with `evaluate.clip.pretrained`, loaded),
  and scores every generated image against its prompt.

With a real source (`data.source` not synthetic) there is no world to render: DVC
stages cannot vanish, so the oracle stage writes a small record that it was skipped
and why (models/eval/oracle/lineage.json, reports/oracle.json), which evaluate reads
to leave out the world-only metrics; the evaluation CLIP must then be pretrained, and
is saved as loaded, without the retrieval check on renders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from recaption import devices, io, lineage, paths, precision, resume
from recaption.errors import UserError
from recaption.live import main_live, step_logger, write_skipped
from recaption.models import clip as clip_lib
from recaption.models import oracle as oracle_lib
from recaption.models.clip_train import ClipTrainConfig, retrieval_recall, train_clip
from recaption.parallel import Parallel
from recaption.params import Params, load_params
from recaption.synthetic import world_config

log = logging.getLogger(__name__)
# Each model takes its own range of render indices, so none sees the other's held-out set.
ORACLE_RENDERS = 0
CLIP_RENDERS = 1 << 30
# The oracle's optimiser settings that params leave fixed: a short warm-up, light decay,
# no gradient clipping (an infinite norm bound leaves the gradients as they are).


class OracleAccuracyError(UserError):
    """The oracle reads held-out renders too poorly for its verdicts to mean anything."""


class EvalClipError(UserError):
    """No evaluation CLIP can be had: a real source and nothing pretrained to load."""


def world_skip(params: Params, what: str) -> str | None:
    """Why `what` (world-only work) is skipped, or None on the built-in world."""
    source = params.data.source
    if source == "synthetic":
        return None
    return f"skipped: data.source is {source!r}, and {what} needs the built-in world's renders"


def _write_skip(stage: str, report: Path, reason: str, extra: dict | None = None) -> dict:
    """The outputs of a stage that did no world work: its report, its dvclive folder (a DVC
    output) and, for the oracle, a model folder whose lineage holds the reason."""
    record = {"skipped": reason, **(extra or {})}
    io.write_json(report, record)
    write_skipped(stage, record)
    return record


def fresh_renders(params: Params, start: int, count: int, size: int | None = None):
    """Examples `start..start+count` of the world seeded by `evaluate.seed`, and their
    images as uint8 (count, 3, H, W) at `size` (default: the dataset's image size)."""
    from recaption.world import make_example

    cfg = world_config(params)
    examples = [make_example(params.evaluate.seed, start + i, cfg) for i in range(count)]
    arrays = [
        np.asarray(e.image if size is None else e.image.resize((size, size))) for e in examples
    ]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return examples, images


def _save(folder: Path, save: Callable[[Path], None], stage: str, params: Params,
          metrics: dict, compute: dict | None = None) -> None:  # fmt: skip
    """Write a model folder atomically with a lineage: its params, its held-out figures and
    (trained here in a chosen precision) the resolved precision and hardware."""
    section = {"oracle": params.evaluate.oracle, "eval_clip": params.evaluate.clip}[stage]
    section = section.model_dump(exclude={"device"})  # where it ran: in `compute`
    with io.atomic_path(folder) as tmp:
        save(tmp)
        lineage.write_lineage(
            tmp, stage, {}, {"evaluate.seed": params.evaluate.seed, stage: section},
            metrics=metrics, compute=compute,
        )  # fmt: skip


def _skip_oracle(reason: str) -> dict:
    """A real source: no detector; evaluate reads `skipped` from the folder's lineage."""
    with io.atomic_path(paths.ORACLE) as tmp:
        tmp.mkdir()
        lineage.write_lineage(tmp, "oracle", {}, {}, skipped=reason)
    log.info("oracle %s", reason)
    return _write_skip("oracle", paths.ORACLE_REPORT, reason)


def oracle_main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    reason = world_skip(params, "the oracle detector (GenEval and fact accuracy)")
    if reason:
        return _skip_oracle(reason)
    op = params.evaluate.oracle
    par = Parallel.start(devices.resolve(op.device, "evaluate.oracle.device"))
    torch.manual_seed(params.evaluate.seed)
    examples, images = fresh_renders(params, ORACLE_RENDERS, op.train_size + op.heldout_size)
    targets = oracle_lib.stack_targets([e.scene for e in examples])
    train = slice(0, op.train_size)
    held = slice(op.train_size, None)
    oracle = oracle_lib.Oracle()
    config = oracle_lib.OracleTrainConfig.of(op, seed=params.evaluate.seed)
    compute = precision.hardware(par.device).record()
    data = (images[train], {k: v[train] for k, v in targets.items()})
    checkpoints = resume.checkpoints("oracle", [oracle, *data, config], compute, op.steps,
                                     clean=par.is_main)  # fmt: skip
    with main_live("oracle", par.is_main) as live:
        oracle_lib.train_oracle(oracle, *data, config, step_logger(live) if live else None, par,
                                checkpoints)  # fmt: skip
    if not par.is_main:  # the main process measures and writes the oracle
        return {}
    pred = oracle_lib.predict(oracle, images[held])
    acc = {
        k: round(v, 4)
        for k, v in oracle_lib.accuracy(pred, {k: v[held] for k, v in targets.items()}).items()
    }
    report = {"heldout_renders": op.heldout_size, "accuracy": acc, "min_accuracy": op.min_accuracy}
    io.write_json(paths.ORACLE_REPORT, report)
    weak = {k: v for k, v in acc.items() if k != "scene" and v < op.min_accuracy}
    if weak:
        raise OracleAccuracyError(
            f"oracle held-out accuracy {weak} is below evaluate.oracle.min_accuracy="
            f"{op.min_accuracy}: raise evaluate.oracle.steps or train_size"
        )
    _save(paths.ORACLE, lambda tmp: oracle_lib.save(oracle, tmp), "oracle", params, acc)
    resume.finish("oracle")
    log.info("oracle held-out accuracy: %s", acc)
    return report


def _pretrained_only(params: Params, reason: str) -> dict:
    """A real source: the pretrained evaluation CLIP, saved as loaded; no retrieval check
    (there are no renders with known captions to measure it on)."""
    cp = params.evaluate.clip
    if cp.pretrained == "none":
        raise EvalClipError(
            f"evaluate.clip.pretrained is none, but data.source is {params.data.source!r}: "
            "the evaluation CLIP is trained only on the built-in world's renders. Set "
            "evaluate.clip.pretrained to an open_clip tag of evaluate.clip.model (e.g. "
            "model: ViT-B-32, pretrained: laion2b_s34b_b79k) or to a local .safetensors file"
        )
    clip = clip_lib.create(cp.model, cp.pretrained, seed=params.evaluate.seed)
    _save(paths.EVAL_CLIP, lambda tmp: clip_lib.save(clip, tmp), "eval_clip", params, {})
    log.info("evaluation CLIP loaded from %s; retrieval check %s", cp.pretrained, reason)
    return _write_skip("eval_clip", paths.EVAL_CLIP_REPORT, reason, {"pretrained": cp.pretrained})


def eval_clip_main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    reason = world_skip(params, "the evaluation CLIP's training and retrieval check")
    if reason:
        return _pretrained_only(params, reason)
    cp = params.evaluate.clip
    par = Parallel.start(devices.resolve(cp.device, "evaluate.clip.device"))
    pretrained = None if cp.pretrained == "none" else cp.pretrained
    clip = clip_lib.create(cp.model, pretrained, seed=params.evaluate.seed)
    examples, images = fresh_renders(
        params, CLIP_RENDERS, cp.train_size + cp.heldout_size, clip.image_size
    )
    held = (images[cp.train_size :], [e.descriptive for e in examples[cp.train_size :]])
    record = None
    if pretrained is None:
        compute, record = precision.settle(cp.precision, par.device, "evaluate.clip.precision")
        captions = [[e.descriptive, e.short] for e in examples[: cp.train_size]]
        config = ClipTrainConfig.of(cp, seed=params.evaluate.seed, eval_every=cp.steps,
                                    precision=compute)  # fmt: skip
        data = (images[: cp.train_size], captions)
        checkpoints = resume.checkpoints("eval_clip", [clip.model, *data, *held, config], record,
                                         cp.steps, clean=par.is_main)  # fmt: skip
        with main_live("eval_clip", par.is_main) as live:
            metrics = train_clip(clip, *data, config, held, step_logger(live) if live else None,
                                 par, desc="eval_clip", checkpoints=checkpoints)  # fmt: skip
    else:
        metrics = retrieval_recall(clip, *held)
    if not par.is_main:  # the main process writes the model
        return metrics
    metrics = {k: round(v, 4) for k, v in metrics.items()}
    report = {"heldout_renders": cp.heldout_size, **metrics, "compute": record}
    io.write_json(paths.EVAL_CLIP_REPORT, report)
    _save(paths.EVAL_CLIP, lambda tmp: clip_lib.save(clip, tmp), "eval_clip", params, metrics,
          record)  # fmt: skip
    resume.finish("eval_clip")
    log.info("evaluation CLIP held-out retrieval: %s", metrics)
    return metrics
