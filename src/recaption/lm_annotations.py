"""Caption sets written by a language model (US 2025/0259423 A1, claim 8, [0063]).

The short and descriptive sets that tune the captioner may be written by a language
model that receives an input describing each image, or made by one from human
captions. One LM (an `Upsampler`) does three tasks:

- short: a description of an image -> its short caption (the main subject);
- descriptive: a description -> its descriptive caption;
- rewrite: a caption -> the same caption in other words (the augmentation).

The LM reads `"<task>: <text>"`. An instruction LM is also told the task by its
instruction, through its chat template. The built-in LM (a small GPT-2) learns the
three from fresh scenes of the built-in world (`world_pairs`): each scene's record
rendered as text (`describe_scene`) -> its reference captions, and a reference caption
-> another phrasing of it; it never sees the images it captions. On real data the
description is the columns the user names (`describe_row`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recaption.annotations import AnnotationError
from recaption.models.captioner import Decoding
from recaption.models.upsampler import Upsampler
from recaption.world import (
    WorldConfig,
    descriptive_caption,
    example_rng,
    sample_scene,
    short_caption,
)
from recaption.world.describe import describe_scene

# Rewrite round r decodes with seed + (r + 1) * ROUND_SEED, so no two rounds (nor the
# sets themselves, decoded with seed) share a draw.
ROUND_SEED = 1_000_003


@dataclass(frozen=True)
class Task:
    """What the LM is asked: `tag` starts its input, `instruction` tells an instruction LM."""

    tag: str
    instruction: str

    def input(self, text: str) -> str:
        return f"{self.tag}: {text}"


_FROM_DESCRIPTION = (
    "You write captions of images from a description of the image: its objects with "
    "their colour, shape, count, size and position on a 3x3 grid, its background and any "
    "written text, or other information about it. "
)
SHORT = Task(
    "short",
    _FROM_DESCRIPTION + "Reply with one short caption that names only the main subject "
    "(the main or largest object, with its count when there are several), and nothing else.",
)
DESCRIPTIVE = Task(
    "descriptive",
    _FROM_DESCRIPTION + "Reply with one descriptive caption, in one paragraph and nothing "
    "else: the main subject, every other object with its colour, count and position, any "
    "written text, and the background. State nothing the description does not.",
)
REWRITE = Task(
    "rewrite",
    "You rewrite image captions. Reply with the caption in other words, in one paragraph "
    "and nothing else, keeping every fact it states and adding none.",
)
SET_TASKS = {"short": SHORT, "descriptive": DESCRIPTIVE}


def world_pairs(cfg: WorldConfig, scenes: int, seed: int, rewrite: bool) -> list[tuple[str, str]]:
    """The built-in LM's training pairs from `scenes` fresh scenes of the world `cfg` drawn
    with `seed` (which must not be the dataset's): per scene, its description -> a short and
    -> a descriptive reference caption and, with `rewrite`, each of those -> another
    phrasing of it (two draws of the world's caption phrasings)."""
    pairs = []
    for index in range(scenes):
        rng = example_rng(seed, index)
        scene = sample_scene(rng, cfg)
        text = describe_scene(scene)
        short, descriptive = short_caption(scene, rng), descriptive_caption(scene, rng)
        pairs += [(SHORT.input(text), short), (DESCRIPTIVE.input(text), descriptive)]
        if rewrite:
            pairs += [
                (REWRITE.input(short), short_caption(scene, rng)),
                (REWRITE.input(descriptive), descriptive_caption(scene, rng)),
            ]
    return pairs


def describe_row(row: dict[str, Any], names: Sequence[str]) -> str:
    """A real image's description: `name: value` of each named dataset column or meta field
    the row has, in the order named, joined by "; " (empty values left out)."""
    meta = json.loads(row.get("meta") or "{}")
    values = [(name, row[name] if name in row else meta.get(name)) for name in names]
    return "; ".join(f"{name}: {_text(v)}" for name, v in values if _text(v))


def _text(value: Any) -> str:
    if value is None:
        return ""
    return (
        " ".join(str(value).split()) if not isinstance(value, (list, dict)) else json.dumps(value)
    )


def check_instruction_lm(up: Upsampler, spec: str) -> None:
    """Refuse an instruction LM without a chat template: the tasks are told through it."""
    if not up.builtin and not up.tokenizer.chat_template:
        raise AnnotationError(
            f"annotate.lm {spec!r}: its tokenizer has no chat template, through which the "
            "annotate tasks are told; use an instruction-tuned LM"
        )


def write(
    up: Upsampler, task: Task, texts: Sequence[str], decoding: Decoding, batch_size: int, seed: int
) -> list[str]:
    """The LM's answer to `task` for each text, in order."""
    inputs = [task.input(t) for t in texts]
    return up.instructed(task.instruction).rewrite(
        inputs, decoding, batch_size, seed, desc=f"annotate {task.tag}"
    )


def rewrites(
    up: Upsampler,
    captions: Sequence[str],
    n: int,
    decoding: Decoding,
    batch_size: int,
    seed: int,
) -> list[list[str]]:
    """`n` rewrites of each caption (the `REWRITE` task, round r seeded apart, see
    `ROUND_SEED`): row i holds caption i's, in round order."""
    rounds = [
        write(up, REWRITE, captions, decoding, batch_size, seed + (r + 1) * ROUND_SEED)
        for r in range(n)
    ]
    return [list(row) for row in zip(*rounds, strict=True)] if rounds else [[] for _ in captions]
