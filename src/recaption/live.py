"""dvclive for the training stages: where each run logs, and how a loop's steps reach it.

The library's training loops take a plain `log_step(step, metrics)` callback; this
module is the pipeline's side of it (the loops never see dvclive).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from dvclive import Live

from recaption import io, paths


@contextlib.contextmanager
def main_live(name: str, is_main: bool) -> Iterator[Live | None]:
    """dvclive under dvclive/<name> in the main training process (`is_main`, as
    `Parallel.is_main` says); None in the others."""
    if not is_main:
        yield None
        return
    with Live(str(paths.DVCLIVE / name), dvcyaml=False, save_dvc_exp=False) as live:
        yield live


def step_logger(live: Live) -> Callable[[int, dict], None]:
    """A `log_step(step, metrics)` callback that records each metric at that step."""

    def log_step(step: int, metrics: dict) -> None:
        live.step = step
        for name, value in metrics.items():
            live.log_metric(name, value)
        live.next_step()

    return log_step


def write_skipped(name: str, record: dict) -> None:
    """dvclive/<name>/skipped.json: the folder is a DVC output, so a stage that trained
    nothing (a real source, a pretrained model used as it is) still writes it, saying why."""
    io.write_json(paths.DVCLIVE / name / "skipped.json", record)
