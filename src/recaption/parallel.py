"""Data-parallel training on Hugging Face Accelerate; in one process, nothing changes.

The training stages (clip_pretrain, the three captioner stages, upsample,
train_autoencoder, train_generator, oracle, eval_clip) run as plain `recap <stage>`
in one process. Set a launcher and the same command runs
under it, data-parallel:

    RECAP_LAUNCHER="accelerate launch --multi_gpu --num_processes 8" dvc repro
    RECAP_LAUNCHER="accelerate launch --config_file multi-node.yaml" dvc repro -s train_generator
    ACCELERATE_USE_CPU=1 RECAP_LAUNCHER="accelerate launch --multi_gpu --num_processes 2" ...

(the last: CPU processes talking over gloo, as the tests run it).

Every process builds the same model from the same seeds and draws the same global
batch each step, then trains on its own equal slice of it; DistributedDataParallel
averages the gradients, so every process takes the same optimizer step on the whole
batch's gradient. The main process alone writes checkpoints, models and logs (its
dvclive: `recaption.live.main_live`; this module is library and knows no DVC); the
others wait for it and exit. The launcher is an environment variable, not a param:
like the device, it decides how the arithmetic is spread, not what is computed (a
multi-process run differs from a one-process run only in the order of float sums).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from recaption.errors import UserError

LAUNCHER_ENV = "RECAP_LAUNCHER"
_LAUNCHED_ENV = "RECAP_LAUNCHED"  # set in the launched processes: they never relaunch
T = TypeVar("T")


def launch_command(argv: Sequence[str]) -> list[str] | None:
    """The command that reruns `recap <argv>` under $RECAP_LAUNCHER, or None to run here."""
    launcher = os.environ.get(LAUNCHER_ENV, "").strip()
    if not launcher or os.environ.get(_LAUNCHED_ENV):
        return None
    return [*shlex.split(launcher), "-m", "recaption", *argv]


def relaunch(argv: Sequence[str]) -> None:
    """Replace this process by the launcher running the same stage, if one is set."""
    command = launch_command(argv)
    if command is not None:
        os.environ[_LAUNCHED_ENV] = "1"
        sys.stdout.flush(), sys.stderr.flush()
        os.execvp(command[0], command)


@dataclass
class Parallel:
    """This process's part in data-parallel training (one process: all of it)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    accelerator: Any = None  # accelerate.Accelerator when launched with several processes

    @classmethod
    def start(cls, device: str = "cpu") -> Parallel:
        """One process: the plain loop on `device`. Several (under `accelerate launch`):
        the Accelerator's process group and device."""
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched <= 1:
            return cls(device=torch.device(device))
        from accelerate import Accelerator

        acc = Accelerator()
        if acc.num_processes != launched:  # each would train alone and write the same files
            raise UserError(
                f"{launched} processes were launched but Accelerate sees {acc.num_processes}; "
                "on machines without GPUs set ACCELERATE_USE_CPU=1 for `accelerate launch "
                "--multi_gpu` (CPU processes, gloo)"
            )
        return cls(acc.process_index, acc.num_processes, acc.device, acc)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` whose backward averages gradients over the processes (DDP)."""
        if self.world == 1:
            return module
        return self.accelerator.prepare_model(module)

    def share(self, batch: Sequence[T], key: str = "batch_size") -> list[T]:
        """This process's slice of a global batch (equal, contiguous slices)."""
        if self.world == 1:
            return list(batch)
        if len(batch) % self.world:
            raise UserError(
                f"{key} ({len(batch)}) must be a multiple of the {self.world} training processes"
            )
        size = len(batch) // self.world
        return list(batch[self.rank * size : (self.rank + 1) * size])

    def mean(self, value: float) -> float:
        """The mean of a scalar over the processes (a loss to log)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(tensor, reduction="mean").item())

    def wait(self) -> None:
        """Every process waits here for the others (e.g. for the main one's writes)."""
        if self.world > 1:
            self.accelerator.wait_for_everyone()
