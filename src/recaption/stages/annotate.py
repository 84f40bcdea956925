"""annotate: the short caption set for the first part, the descriptive set for the second."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from recaption import annotations, io, paths
from recaption.annotations import AnnotationError
from recaption.ingest import DATASET_SCHEMA
from recaption.params import Params, load_params


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    splits = pq.read_table(paths.SPLITS).to_pylist()
    first = [row["key"] for row in splits if row["first"]]
    second = [row["key"] for row in splits if row["second"]]
    short_source, descriptive_source = _sources(params)
    short = annotations.select(short_source[0], first, short_source[1])
    descriptive = annotations.select(descriptive_source[0], second, descriptive_source[1])
    io.write_table(paths.SHORT, short)
    io.write_table(paths.DESCRIPTIVE, descriptive)
    report = {
        "source": params.annotate.source,
        "short": {
            "captions": short.num_rows,
            "mean_words": round(annotations.mean_words(short), 3),
        },
        "descriptive": {
            "captions": descriptive.num_rows,
            "mean_words": round(annotations.mean_words(descriptive), 3),
        },
    }
    io.write_json(paths.ANNOTATE_REPORT, report)
    return report


def _sources(params: Params) -> tuple[tuple[dict, str], tuple[dict, str]]:
    """(captions by key, description for errors) for the short and the descriptive set."""
    ann = params.annotate
    if ann.source == "file":
        return (
            (
                annotations.read_caption_file(ann.short_file),
                f"annotate.short_file {ann.short_file}",
            ),
            (
                annotations.read_caption_file(ann.descriptive_file),
                f"annotate.descriptive_file {ann.descriptive_file}",
            ),
        )
    if ann.source == "synthetic":
        if params.data.source != "synthetic":
            raise AnnotationError(
                "annotate.source 'synthetic' takes the synthetic world's reference captions, but "
                f"data.source is {params.data.source!r}; use 'column' or 'file'"
            )
        columns = ("short", "descriptive")
    else:
        columns = (ann.short_column, ann.descriptive_column)
        unknown = [c for c in columns if c not in DATASET_SCHEMA.names]
        if unknown:
            raise AnnotationError(
                f"annotate: no dataset column {unknown[0]!r}; columns are {DATASET_SCHEMA.names}"
            )
    table = io.read_columns(paths.DATASET, ["key", *dict.fromkeys(columns)])
    keys = table.column("key").to_pylist()
    return tuple(
        (
            dict(zip(keys, table.column(c).to_pylist(), strict=True)),
            f"dataset column {c!r} (annotate.source {ann.source})",
        )
        for c in columns
    )
