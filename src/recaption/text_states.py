"""A frozen text encoder's states of every distinct caption, content-addressed, computed
once per caption and reused across steps, epochs and runs.

A pretrained text encoder that stays frozen (a Stable Diffusion folder's, with
`train_text_encoder: false`) gives a caption the same states at every step, so
encoding it again each time it is drawn is wasted work. Here each caption is encoded
the first time a step draws it (the empty caption of caption dropout too), kept, and
read back at every later draw; new states are written, in the latents' format
(`latents.array_columns`), as one more shard under the encoder's own folder, named by
its fingerprint (the encoder's and tokenizer's files, the padded length and this
procedure), so a later run with the same encoder encodes only captions it has not seen.

Only prompts padded to a fixed length are cached: padded to a batch's longest, a
caption's states would depend on the rest of its batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recaption import io
from recaption.latents import array_columns, stacked

log = logging.getLogger(__name__)
# Part of every cache key: bump it whenever how a caption is encoded changes.
PROCEDURE_VERSION = 1


def fingerprint(text_encoder_dir: str | Path, tokenizer_dir: str | Path, length: int) -> str:
    """The key cached states are valid under: the text encoder's weights and config, the
    tokenizer's files, the length prompts are padded to, and this procedure."""
    encoder, tokenizer = io.tree_hash(text_encoder_dir), io.tree_hash(tokenizer_dir)
    return io.sha256_bytes(f"{encoder}:{tokenizer}:{length}:{PROCEDURE_VERSION}".encode())


def caption_hash(text: str) -> str:
    return io.sha256_bytes(text.encode())


class TextStates:
    """States by caption: `__call__(captions)` -> (B, T, d) float32 on the CPU.

    Args:
        encode: captions -> their (B, T, d) states (the pipeline's `encode_prompts`).
        fingerprint: see `fingerprint`.
        folder: where caches live (one subfolder per fingerprint); None: in memory only.
    """

    def __init__(
        self, encode: Callable[[list[str]], torch.Tensor], fingerprint: str,
        folder: str | Path | None = None,
    ):  # fmt: skip
        self.encode = encode
        self.fingerprint = fingerprint
        self.folder = Path(folder) / fingerprint[:32] if folder is not None else None
        self.states: dict[str, torch.Tensor] = {}  # by caption hash, (T, d) each
        self.fresh: list[str] = []  # captions encoded in this run, not yet written
        self.encoded = 0
        self.loaded = self._load()

    def _load(self) -> int:
        if self.folder is None or not self.folder.is_dir():
            return 0
        for path in sorted(self.folder.glob(io.SHARD_GLOB)):
            table = pq.read_table(path)
            if set(table.column("encoder").to_pylist()) != {self.fingerprint}:
                continue  # a 32-character prefix collision, or a foreign file
            arrays = torch.from_numpy(stacked(table, "state").copy())  # writable
            self.states.update(zip(table.column("sha256").to_pylist(), arrays, strict=True))
        return len(self.states)

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, T, d) float32 states of `captions`, encoding those never seen before (in
        fp32, outside any autocast: a caption's states do not depend on when it came)."""
        hashes = [caption_hash(c) for c in captions]
        # Each caption never seen before, once, by its hash (in the order first drawn).
        missing = {h: c for h, c in zip(hashes, captions, strict=True) if h not in self.states}
        if missing:
            with torch.no_grad(), _full_precision():
                states = self.encode(list(missing.values())).float().cpu()
            self.states.update(zip(missing, states, strict=True))
            self.fresh.extend(missing.values())
            self.encoded += len(missing)
        return torch.stack([self.states[h] for h in hashes])

    def save(self) -> int:
        """Write the states encoded since the last save as one more shard; how many."""
        if self.folder is None or not self.fresh:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        io.remove_abandoned(self.folder)
        hashes = [caption_hash(c) for c in self.fresh]
        arrays = np.stack([self.states[h].numpy() for h in hashes])
        table = pa.table({
            "sha256": pa.array(hashes, pa.string()),
            "text": pa.array(self.fresh, pa.string()),
            "encoder": pa.array([self.fingerprint] * len(hashes), pa.string()),
            **array_columns("state", arrays),  # shape: (T, d) of `state`
        })  # fmt: skip
        index = len(list(self.folder.glob(io.SHARD_GLOB)))
        io.write_table(self.folder / io.shard_name(index), table)
        written, self.fresh = len(self.fresh), []
        log.info("text states: %d captions encoded, %d written to %s", self.encoded, written,
                 self.folder)  # fmt: skip
        return written


def _full_precision() -> contextlib.ExitStack:
    """No autocast on the devices the encoder may run on."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", enabled=False))
    if torch.cuda.is_available():
        stack.enter_context(torch.autocast("cuda", enabled=False))
    return stack
