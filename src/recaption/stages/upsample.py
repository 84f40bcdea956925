"""upsample: a language model that rewrites short text as descriptive captions.

With `upsample.lm` a GPT-2 config JSON, a small LM is trained here on the subset's
text pairs (short -> descriptive for images in both parts, ground truth ->
descriptive for the second part and, in the synthetic world, a prompt in the
suite's phrasing that the image's scene satisfies -> descriptive, the way the
study's instruction shows the LM examples of the task); otherwise the named
instruction-tuned LM is used as it is. The stage then rewrites the evaluation
prompt suite and a sample of the held-out split's short reference captions, and
measures on both how faithful the rewrites are (facts kept, facts contradicted,
lengths).

Outputs: models/upsampler/, data/upsampled/{prompts,heldout}.parquet,
reports/upsample.json, dvclive/upsample/ (training curve).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recaption import datasets, devices, io, lineage, paths, resume, sampling
from recaption.live import write_skipped
from recaption.metrics.upsampling import faithfulness
from recaption.models import upsampler as up_lib
from recaption.models.captioner import Decoding
from recaption.parallel import Parallel
from recaption.params import Params, load_params
from recaption.upsampler_fit import fit_builtin
from recaption.world import Scene, scene_prompt

log = logging.getLogger(__name__)
STAGE = "upsample"


def training_pairs(params: Params) -> list[tuple[str, str]]:
    """(source, descriptive) pairs of the subset: short -> descriptive, ground truth ->
    descriptive, and in the synthetic world `upsample.prompts_per_scene` suite-style
    prompts its scene satisfies -> descriptive; each kind in key order."""
    short = datasets.read_captions(paths.SHORT)
    descriptive = datasets.read_captions(paths.DESCRIPTIVE)
    rows = datasets.load_rows(paths.DATASET, ["caption", "meta"], set(descriptive))
    keys = [r["key"] for r in rows]  # key order
    pairs = [(short[k], descriptive[k]) for k in keys if k in short]
    pairs += [(r["caption"], descriptive[r["key"]]) for r in rows]
    per_scene = params.upsample.prompts_per_scene if params.data.source == "synthetic" else 0
    for r in rows if per_scene else []:
        prompts = prompts_for(r["meta"], r["key"], params.seed, per_scene)
        pairs += [(prompt, descriptive[r["key"]]) for prompt in prompts]
    return pairs


def prompts_for(meta: str, key: str, seed: int, n: int) -> list[str]:
    """`n` suite-style prompts true of the row's scene (distinct where the scene allows),
    drawn by a seeded hash of its key."""
    rng = np.random.default_rng([seed, int(io.sha256_bytes(key.encode())[:12], 16)])
    scene = Scene.from_dict(json.loads(meta)["scene"])
    drawn = [scene_prompt(scene, rng)[1] for _ in range(4 * n)]
    distinct = list(dict.fromkeys(drawn))
    return (distinct + drawn)[:n]


def heldout_shorts(params: Params) -> list[tuple[str, str]]:
    """(key, short reference caption) of up to `upsample.heldout_prompts` held-out images,
    chosen by a seeded hash of the key; empty when the dataset has no short captions."""
    heldout = datasets.read_splits(paths.SPLITS)["heldout"]
    rows = [r for r in datasets.load_rows(paths.DATASET, ["short"], heldout) if r["short"]]
    rows.sort(key=lambda r: sampling.rank(r["key"], params.seed, "upsample"))
    rows = sorted(rows[: params.upsample.heldout_prompts], key=lambda r: r["key"])
    return [(r["key"], r["short"]) for r in rows]


def build(params: Params, par: Parallel) -> tuple[up_lib.Upsampler, dict, dict | None]:
    """The upsampler, trained here when it is built in; what training reported; and the
    resolved precision and hardware it trained with (None: not trained here)."""
    us = params.upsample
    pairs = training_pairs(params)
    texts = sorted({t for pair in pairs for t in pair})
    decoding = Decoding(**us.decoding.model_dump())
    model = up_lib.create(us.lm, texts, us.vocab_size, params.seed, us.max_source_tokens, decoding)
    model.lm.to(par.device)
    if not model.builtin:
        log.info("upsample: %s is used as it is, through its instruction", us.lm)
        return model, {}, None
    trained, record = fit_builtin(model, pairs, us, params.seed, par, STAGE, "upsample")
    return model, trained, record


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    us = params.upsample
    par = Parallel.start(devices.resolve(us.device, "upsample.device"))
    model, trained, record = build(params, par)
    if not par.is_main:  # the main process rewrites and writes
        return trained

    def rewrite(texts: list[str], what: str) -> list[str]:
        return model.rewrite(texts, None, us.generate_batch_size, params.seed, desc=what)

    suite = pq.read_table(paths.PROMPTS, columns=["id", "prompt"]).to_pylist()
    rewritten = rewrite([p["prompt"] for p in suite], "upsample prompts")
    held = heldout_shorts(params)
    held_rewritten = rewrite([s for _, s in held], "upsample held-out")
    report = {
        "lm": us.lm,
        "builtin": model.builtin,
        "training": trained,
        "compute": record,
        "heldout": faithfulness([s for _, s in held], held_rewritten) if held else None,
        # The evaluation prompts state counts, pairs and positions, which held-out short
        # captions (the main subject only) never do.
        "suite": faithfulness([p["prompt"] for p in suite], rewritten),
        "examples": [
            {"short": s, "upsampled": u}
            for (_, s), u in list(zip(held, held_rewritten, strict=True))[:8]
        ],
    }
    io.write_table(paths.UPSAMPLED_PROMPTS, pa.table({
        "id": [p["id"] for p in suite], "prompt": [p["prompt"] for p in suite],
        "upsampled": rewritten,
    }))  # fmt: skip
    io.write_table(paths.UPSAMPLED_HELDOUT, pa.table({
        "key": [k for k, _ in held], "short": [s for _, s in held], "upsampled": held_rewritten,
    }, schema=pa.schema([("key", pa.string()), ("short", pa.string()),
                         ("upsampled", pa.string())])))  # fmt: skip
    with io.atomic_path(paths.UPSAMPLER) as tmp:
        model.save(tmp)
        lineage.write_lineage(
            tmp,
            "upsample",
            {"dataset": paths.DATASET, "short": paths.SHORT, "descriptive": paths.DESCRIPTIVE},
            {"seed": params.seed, "upsample": us.model_dump(exclude={"chunk_size", "device"})},
            metrics={"training": trained, "heldout": report["heldout"]},
            compute=record,
        )
    if not model.builtin:
        write_skipped(STAGE, {"skipped": f"upsample.lm {us.lm!r} is used as it is, untrained"})
    io.write_json(paths.UPSAMPLE_REPORT, report)
    resume.finish(STAGE)
    log.info("upsample: %s", {k: report[k] for k in ("heldout", "suite")})
    return report
