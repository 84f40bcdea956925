"""annotate: the short caption set for the first part, the descriptive set for the second.

The sets come from the synthetic world's references, dataset columns, a user's files,
or (`annotate.source: lm`) a language model that writes both from a description of
each image: its scene in the built-in world, the columns `annotate.describe_columns`
names on real data. With `annotate.augment: N`, N rewrites of each caption by the LM
join its set, and the rows say whose each caption is (`origin`). The built-in LM (a
GPT-2 config JSON) is trained here on fresh scenes of the world; an instruction LM is
used as it is (recaption.lm_annotations).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recaption import annotations, datasets, devices, io, lm_annotations, paths, resume
from recaption.annotations import AnnotationError
from recaption.ingest import DATASET_SCHEMA
from recaption.metrics.captions import attribute_scores, scene_from_meta
from recaption.models import upsampler as up_lib
from recaption.models.captioner import Decoding
from recaption.parallel import Parallel
from recaption.params import Params, load_params
from recaption.synthetic import world_config
from recaption.upsampler_fit import fit_builtin
from recaption.world.describe import describe_scene

log = logging.getLogger(__name__)
STAGE = "annotate"
SETS = ("short", "descriptive")
# Dataset columns a description may name: the text ones (meta fields are named alone).
DESCRIBABLE = [c for c in DATASET_SCHEMA.names if c not in ("key", "image", "sha256", "meta")]


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    ann = params.annotate
    splits = pq.read_table(paths.SPLITS).to_pylist()
    parts = {"short": [r["key"] for r in splits if r["first"]],
             "descriptive": [r["key"] for r in splits if r["second"]]}  # fmt: skip
    lm, lm_report = None, None
    if ann.uses_lm:
        par = Parallel.start(devices.resolve(ann.device, "annotate.device"))
        lm, lm_report = build_lm(params, par)
        if not par.is_main:  # the main process writes
            return lm_report
    sets = lm_sets(params, lm, parts) if ann.source == "lm" else reference_sets(params, parts)
    if lm is not None:
        sets = augmented(params, lm, sets)
    io.write_table(paths.SHORT, sets["short"])
    io.write_table(paths.DESCRIPTIVE, sets["descriptive"])
    report = {"source": ann.source, **({"lm": lm_report} if lm_report else {})}
    for name, table in sets.items():
        report[name] = set_report(params, name, table)
    io.write_json(paths.ANNOTATE_REPORT, report)
    resume.finish(STAGE)
    log.info("annotate: %s", {name: report[name] for name in SETS})
    return report


def build_lm(params: Params, par: Parallel) -> tuple[up_lib.Upsampler, dict]:
    """The LM `annotate.lm` names, trained here when it is built in; and what the report
    says of it."""
    ann = params.annotate
    builtin = Path(ann.lm).suffix == ".json"
    if builtin and params.data.source != "synthetic":
        raise AnnotationError(
            "annotate.lm is a GPT-2 config, trained here on the built-in world's scenes; with "
            f"data.source {params.data.source!r} name an instruction LM (a model id or folder)"
        )
    if builtin and ann.describe_columns:
        raise AnnotationError(
            "annotate.describe_columns: the built-in LM reads scene records; leave it empty or "
            "name an instruction LM"
        )
    lt = ann.lm_train
    pairs = lm_annotations.world_pairs(world_config(params), lt.scenes, lt.scenes_seed,
                                       rewrite=ann.augment > 0) if builtin else []  # fmt: skip
    texts = sorted({t for pair in pairs for t in pair})
    model = up_lib.create(ann.lm, texts, lt.vocab_size, params.seed, lt.max_source_tokens,
                          key="annotate.lm")  # fmt: skip
    lm_annotations.check_instruction_lm(model, ann.lm)
    model.lm.to(par.device)
    report = {"lm": ann.lm, "builtin": builtin, "augment": ann.augment}
    if builtin:
        training, compute = fit_builtin(model, pairs, lt, params.seed, par, STAGE,
                                        "annotate.lm_train", live=False)  # fmt: skip
        report.update(training=training, compute=compute)
    return model, report


def reference_sets(params: Params, parts: dict[str, list[str]]) -> dict[str, pa.Table]:
    """The sets from the world's references, dataset columns or the user's files."""
    return {
        name: annotations.select(captions, parts[name], what)
        for name, (captions, what) in zip(SETS, _sources(params), strict=True)
    }


def lm_sets(
    params: Params, lm: up_lib.Upsampler, parts: dict[str, list[str]]
) -> dict[str, pa.Table]:
    """The sets the LM writes from each image's description (greedy, `annotate.decoding`)."""
    ann = params.annotate
    described = descriptions(params, sorted({k for keys in parts.values() for k in keys}))
    decoding = Decoding(**ann.decoding.model_dump())
    sets = {}
    for name, keys in parts.items():
        keys = sorted(keys)
        task = lm_annotations.SET_TASKS[name]
        written = lm_annotations.write(lm, task, [described[k] for k in keys], decoding,
                                       ann.generate_batch_size, params.seed)  # fmt: skip
        what = f"{name} captions written by annotate.lm {ann.lm} (an empty one: train it longer)"
        sets[name] = annotations.select(dict(zip(keys, written, strict=True)), keys, what)
    return sets


def descriptions(params: Params, keys: list[str]) -> dict[str, str]:
    """key -> what the LM reads about the image: the named columns, else its scene."""
    names = list(params.annotate.describe_columns)
    if not names and params.data.source != "synthetic":
        raise AnnotationError(
            "annotate.source 'lm' on real data needs annotate.describe_columns: the dataset "
            f"columns or meta fields that describe each image (columns: {DESCRIBABLE})"
        )
    columns = [n for n in names if n in DESCRIBABLE]
    rows = datasets.load_rows(paths.DATASET, ["meta", *columns], set(keys))
    if not names:
        return {r["key"]: describe_scene(scene_from_meta(r["meta"])) for r in rows}
    _check_describable(names, columns, rows)
    return {r["key"]: lm_annotations.describe_row(r, names) for r in rows}


def _check_describable(names: list[str], columns: list[str], rows: list[dict]) -> None:
    """Refuse a describe column that is neither a dataset column nor a meta field of any
    subset image (a typo)."""
    meta_fields = {f for r in rows for f in json.loads(r["meta"] or "{}")}
    unknown = [n for n in names if n not in columns and n not in meta_fields]
    if unknown:
        raise AnnotationError(
            f"annotate.describe_columns: no dataset column or meta field {unknown[0]!r}; "
            f"columns are {DESCRIBABLE}, meta fields {sorted(meta_fields)}"
        )


def augmented(params: Params, lm: up_lib.Upsampler, sets: dict[str, pa.Table]) -> dict:
    """Each set with `annotate.augment` LM rewrites of every caption (sampled, seeded by
    `seed`) and the origin of each row."""
    ann = params.annotate
    origin = annotations.LM if ann.source == "lm" else annotations.HUMAN
    decoding = Decoding(**ann.rewrite_decoding.model_dump())
    out = {}
    for name, table in sets.items():
        captions = table.column("caption").to_pylist()
        extra = lm_annotations.rewrites(lm, captions, ann.augment, decoding,
                                        ann.generate_batch_size, params.seed)  # fmt: skip
        out[name] = annotations.with_origin(table, origin, extra, f"rewrites of the {name} set")
    return out


def set_report(params: Params, name: str, table: pa.Table) -> dict:
    """Rows and mean words of a set, rows by origin, and in the built-in world the fact
    scores of its LM-written rows (`fact_scores`)."""
    out = {"captions": table.num_rows, "mean_words": round(annotations.mean_words(table), 3)}
    if "origin" not in table.column_names:
        return out
    origins = table.column("origin").to_pylist()
    out["origin"] = {o: origins.count(o) for o in sorted(set(origins))}
    if params.data.source == "synthetic" and annotations.LM in origins:
        written = [
            r for r, o in zip(table.to_pylist(), origins, strict=True) if o == annotations.LM
        ]
        out["facts"] = fact_scores(name, written)
    return out


def fact_scores(name: str, written: list[dict]) -> dict:
    """Fact precision, recall and object hallucination against the scenes of the
    LM-written rows (key, caption) of set `name`, and of the world's reference captions
    of that set for the same rows: what an LM-written set gains or loses."""
    rows = datasets.load_rows(paths.DATASET, ["meta", name], {r["key"] for r in written})
    by_key = {r["key"]: r for r in rows}
    scenes = [scene_from_meta(by_key[r["key"]]["meta"]) for r in written]
    captions = {
        "lm": [r["caption"] for r in written],
        "reference": [by_key[r["key"]][name] for r in written],
    }
    return {
        who: {k: _round(v) for k, v in attribute_scores(texts, scenes).items()
              if k in ("precision", "recall", "hallucination")}
        for who, texts in captions.items()
    }  # fmt: skip


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


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
