"""The two caption sets for the subset: short (the main subject) and descriptive.

They come from dataset columns (the synthetic world's references, or columns a
real source carried), from a user's file of key -> caption, or from a language model
(recaption.lm_annotations). Every subset key must get a non-empty caption; otherwise
the error says how many and which.

When a language model wrote or rewrote captions, a set also has an `origin` column
(`human`: the user's, the references; `lm`: the model's) and a key may have several
rows: its caption first, then its rewrites. Without one, the table is as it always was.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recaption.errors import UserError

ANNOTATION_SCHEMA = pa.schema([("key", pa.string()), ("caption", pa.string())])
ORIGIN_SCHEMA = ANNOTATION_SCHEMA.append(pa.field("origin", pa.string()))
HUMAN, LM = "human", "lm"


class AnnotationError(UserError, ValueError):
    """A caption set does not cover the subset."""


def read_caption_file(path: str | Path) -> dict[str, str]:
    """A user's captions: parquet, CSV or JSONL with columns `key` and `caption`."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"captions file {str(path)!r} not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pq.read_table(path)
    elif suffix == ".csv":
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={"key": pa.string(), "caption": pa.string()}
            ),
        )
    elif suffix in (".jsonl", ".json"):
        import pyarrow.json as pajson

        table = pajson.read_json(path)
    else:
        raise AnnotationError(f"{path.name}: expected .parquet, .csv or .jsonl")
    missing = {"key", "caption"} - set(table.column_names)
    if missing:
        raise AnnotationError(
            f"{path.name}: missing column(s) {sorted(missing)}; found {table.column_names}"
        )
    keys = [str(k) for k in table.column("key").to_pylist()]
    return dict(zip(keys, table.column("caption").to_pylist(), strict=True))


def select(captions: dict[str, str | None], keys: list[str], what: str) -> pa.Table:
    """Captions for exactly `keys`, ordered by key; an error if any is missing or empty.

    Args:
        what: names the caption set in the error ("short captions from annotate.short_file").
    """
    missing = [k for k in keys if not (captions.get(k) or "").strip()]
    if missing:
        examples = ", ".join(repr(k) for k in sorted(missing)[:5])
        raise AnnotationError(
            f"{what}: {len(missing)} of {len(keys)} subset keys have no caption (e.g. {examples})"
        )
    ordered = sorted(keys)
    return pa.table(
        {"key": ordered, "caption": [captions[k].strip() for k in ordered]},
        schema=ANNOTATION_SCHEMA,
    )


def mean_words(table: pa.Table) -> float:
    captions = table.column("caption").to_pylist()
    return sum(len(c.split()) for c in captions) / len(captions) if captions else 0.0


def with_origin(table: pa.Table, origin: str, rewrites: list[list[str]], what: str) -> pa.Table:
    """The set with an `origin` column: row i's caption (from `origin`), then its LM
    rewrites `rewrites[i]`; an error if a rewrite is empty.

    Args:
        what: names the rewrites in the error ("rewrites of the short captions").
    """
    empty = sum(not r.strip() for row in rewrites for r in row)
    if empty:
        raise AnnotationError(f"{what}: {empty} of {sum(map(len, rewrites))} are empty")
    keys, captions, origins = [], [], []
    rows = zip(table.column("key").to_pylist(), table.column("caption").to_pylist(), rewrites,
               strict=True)  # fmt: skip
    for key, caption, extra in rows:
        keys += [key] * (1 + len(extra))
        captions += [caption, *(r.strip() for r in extra)]
        origins += [origin] + [LM] * len(extra)
    return pa.table({"key": keys, "caption": captions, "origin": origins}, schema=ORIGIN_SCHEMA)
