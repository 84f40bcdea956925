"""prompts: the evaluation prompt suite in GenEval's categories, from its own seed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from recaption import io, paths
from recaption.params import load_params


def main(params_path: Path = paths.PARAMS) -> pa.Table:
    from recaption.world import prompt_suite

    params = load_params(params_path).prompts
    suite = prompt_suite(params.seed, params.per_category)
    table = pa.table(
        {
            "id": [p.id for p in suite],
            "category": [p.category for p in suite],
            "prompt": [p.prompt for p in suite],
            "descriptive": [p.descriptive for p in suite],
            "demands": [json.dumps(p.demands, sort_keys=True) for p in suite],
        }
    )
    io.write_table(paths.PROMPTS, table)
    io.write_json(
        paths.PROMPTS.with_suffix(".json"),
        {"prompts": len(suite), "per_category": dict(Counter(p.category for p in suite))},
    )
    return table
