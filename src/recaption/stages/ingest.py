"""ingest: build data/dataset/ from the synthetic world or a real source."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from recaption import ingest, io, paths
from recaption.errors import UserError
from recaption.params import load_params
from recaption.sources import read_source
from recaption.synthetic import world_config

log = logging.getLogger(__name__)


class IngestError(UserError, RuntimeError):
    """Too many records were rejected, or none was accepted."""


def main(params_path: Path = paths.PARAMS) -> ingest.IngestResult:
    params = load_params(params_path)
    data = params.data
    if data.source == "synthetic":
        items = range(data.synthetic.num_images)
        worker = partial(ingest.synthetic_row, seed=params.seed, config=world_config(params))
        total = data.synthetic.num_images
    else:
        items = read_source(data.source, data.path, data.columns, data.captions_file)
        size = data.image_size if data.resize == "center_crop" else None
        worker = ingest.worker_for_records(
            size, data.max_image_pixels, data.max_caption_chars, data.store == "original"
        )
        total = None
    with io.atomic_path(paths.DATASET) as tmp:
        result = ingest.run(items, worker, tmp, data.shard_size, data.num_workers, total)
        # Rejects and the report are written even when the stage fails, so the user can look.
        io.write_table(paths.REJECTS, ingest.reject_table(result.rejects))
        io.write_json(paths.INGEST_REPORT, {"source": data.source, **result.report()})
        _check(result, data.max_reject_fraction)
    log.info(
        "ingest: %d images in %d shards, %d rejected",
        result.accepted,
        result.shards,
        len(result.rejects),
    )
    return result


def _check(result: ingest.IngestResult, max_fraction: float) -> None:
    if result.accepted == 0:
        raise IngestError(
            f"ingest: no usable image among {result.seen} records; see {paths.REJECTS}"
        )
    if result.reject_fraction > max_fraction:
        reasons = result.report()["rejects_by_reason"]
        why = ", ".join(f"{reason} {n}" for reason, n in reasons.items() if n)
        raise IngestError(
            f"ingest: {len(result.rejects)} of {result.seen} records rejected "
            f"({result.reject_fraction:.1%}), above data.max_reject_fraction={max_fraction}: "
            f"{why}; see {paths.REJECTS}"
        )
