"""sample: the captioner-tuning subset (two parts) and the held-out evaluation split."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from recaption import io, paths
from recaption.ingest import DATASET_SCHEMA
from recaption.params import load_params
from recaption.sampling import SampleError, Split, draw_split

SPLIT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("first", pa.bool_()),
        ("second", pa.bool_()),
        ("heldout", pa.bool_()),
    ]
)


def main(params_path: Path = paths.PARAMS) -> Split:
    params = load_params(params_path)
    sample = params.sample
    columns = ["key", "meta"]
    if sample.stratify in DATASET_SCHEMA.names and sample.stratify not in columns:
        columns.append(sample.stratify)
    table = io.read_columns(paths.DATASET, columns)
    keys = table.column("key").to_pylist()
    strata = _strata(table, sample.stratify) if sample.stratify else None
    split = draw_split(keys, params.seed, sample.size, sample.overlap, sample.heldout_size, strata)
    io.write_table(
        paths.SPLITS,
        pa.table(
            {
                "key": split.keys,
                "first": split.first,
                "second": split.second,
                "heldout": split.heldout,
            },
            schema=SPLIT_SCHEMA,
        ),
    )
    io.write_json(paths.SAMPLE_REPORT, {**split.summary(), "stratify": sample.stratify})
    return split


def _strata(table: pa.Table, name: str) -> dict[str, str]:
    """Stratum of every key: a dataset column, or a (dotted) field of the row's meta JSON."""
    keys = table.column("key").to_pylist()
    if name in table.column_names:
        return dict(zip(keys, map(str, table.column(name).to_pylist()), strict=True))
    strata = {}
    for key, meta in zip(keys, table.column("meta").to_pylist(), strict=True):
        value = json.loads(meta)
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                raise SampleError(
                    f"sample.stratify = {name!r}: key {key!r} has no such column or meta field"
                )
            value = value[part]
        strata[key] = json.dumps(value, sort_keys=True)
    return strata
