"""dvclive helpers shared by the training stages."""

from __future__ import annotations

from collections.abc import Callable

from dvclive import Live


def step_logger(live: Live) -> Callable[[int, dict], None]:
    """A `log_step(step, metrics)` callback that records each metric at that step."""

    def log_step(step: int, metrics: dict) -> None:
        live.step = step
        for name, value in metrics.items():
            live.log_metric(name, value)
        live.next_step()

    return log_step
