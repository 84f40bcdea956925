"""A built-in upsampler trained inside a stage (upsample, annotate), one way for both.

The pipeline's side of `models.upsampler.train`: the precision settled for the device,
checkpoints keyed by what the run is a function of (so a killed run resumes), and
optionally the curve through dvclive. The stage calls `resume.finish` once its outputs
are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recaption import precision, resume
from recaption.live import main_live, step_logger
from recaption.models import upsampler as up_lib
from recaption.parallel import Parallel


def fit_builtin(
    model: up_lib.Upsampler,
    pairs: Sequence[tuple[str, str]],
    section: Any,
    seed: int,
    par: Parallel,
    stage: str,
    key: str,
    live: bool = True,
) -> tuple[dict, dict]:
    """Train the built-in `model` on (source, target) `pairs`.

    Args:
        section: the params section holding the loop's settings (`UpsampleTrainConfig`'s
            field names) and `precision`.
        stage: names the checkpoint folder and, with `live`, dvclive/<stage>/.
        key: the section's dotted params key, for messages ("upsample").
    Returns:
        (what training reported, the resolved precision and hardware it trained with).
    """
    compute, record = precision.settle(section.precision, par.device, f"{key}.precision")
    config = up_lib.UpsampleTrainConfig.of(section, seed=seed, precision=compute)
    identity = [model.lm, pairs, model.max_source_tokens, config]
    checkpoints = resume.checkpoints(stage, identity, record, config.steps, clean=par.is_main)
    with main_live(stage, par.is_main and live) as logger:
        step = step_logger(logger) if logger else None
        trained = up_lib.train(model, pairs, config, step, par, checkpoints)
    return trained, record
