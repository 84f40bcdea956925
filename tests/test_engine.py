"""engine: the per-image stages write the same bytes on a Ray cluster as in-process."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recaption import engine, io, paths
from recaption.errors import UserError
from recaption.params import Params, RayParams
from recaption.stages import embed as embed_stage
from recaption.stages import evaluate as evaluate_stage
from recaption.stages import recaption as recaption_stage
from recaption.stages import upsample_captions as upsample_stage


class Doubler:
    def __init__(self, factor: int):
        self.factor = factor

    def __call__(self, unit: dict):
        import pyarrow as pa

        return pa.table({"key": [unit["key"]], "value": [unit["value"] * self.factor]})


def test_pool_size_follows_the_clusters_gpus_or_cpus():
    assert engine.pool_size(RayParams(), {"CPU": 16.0}) == (16, 1, 0.0)
    assert engine.pool_size(RayParams(cpus_per_replica=4), {"CPU": 16.0}) == (4, 4, 0.0)
    assert engine.pool_size(RayParams(replicas=3), {"CPU": 16.0}) == (3, 1, 0.0)
    assert engine.pool_size(RayParams(replicas_per_gpu=2), {"CPU": 16.0, "GPU": 4.0}) == (
        8, 1, 0.5,
    )  # fmt: skip


def test_the_local_engine_runs_units_in_order():
    units = [{"key": str(i), "value": i} for i in range(5)]
    out = list(engine.map_units(Doubler, {"factor": 3}, units, Params(), "test"))
    assert [i for i, _ in out] == [0, 1, 2, 3, 4]
    assert [t.column("value")[0].as_py() for _, t in out] == [0, 3, 6, 9, 12]


def test_engine_ray_without_ray_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    units = [{"key": "a", "value": 1}]
    with pytest.raises(UserError, match=r"recaption\[ray\]"):
        list(engine.map_units(Doubler, {"factor": 1}, units, Params(engine="ray"), "test"))


def test_params_refuse_an_unknown_engine():
    with pytest.raises(ValueError, match="engine"):
        Params(engine="spark")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def stage_outputs() -> dict[str, bytes]:
    files = [*io.shard_paths(paths.IMAGE_EMBEDDINGS), paths.PROMPT_EMBEDDINGS,
             paths.SYNTHETIC_CAPTIONS, paths.CAPTION_TAGS, paths.UPSAMPLED_CAPTIONS,
             paths.EVAL_SAMPLES]  # fmt: skip
    return {str(f): f.read_bytes() for f in files}


@pytest.mark.slow
def test_ray_engine_writes_the_bytes_of_the_local_engine(
    ray_cluster, tiny_repro, tmp_path, monkeypatch, caplog
):
    from tiny_repo import write_params

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repro.pristine, repo, symlinks=True)
    monkeypatch.chdir(repo)
    # The clean run's outputs are the local engine's; upsample_captions only rewrites
    # with blend.use_upsampled (which none of the four stages' other inputs depend on).
    write_params(repo, blend={"use_upsampled": True})
    upsample_stage.main()
    local = stage_outputs()
    for path in (paths.IMAGE_EMBEDDINGS, *map(Path, local)):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    write_params(repo, blend={"use_upsampled": True}, engine="ray", ray={"replicas": 2})
    with caplog.at_level(logging.INFO, logger="recaption.engine"):
        for stage in (embed_stage, recaption_stage, upsample_stage, evaluate_stage):
            stage.main()
    on_ray = stage_outputs()
    assert on_ray.keys() == local.keys()
    assert {f: on_ray[f] == local[f] for f in local} == {f: True for f in local}
    # Each stage had several units, shared by the two replicas (tiny_repo's chunk sizes).
    jobs = pq.read_metadata(paths.EVAL_SAMPLES).num_rows
    pools = [r.getMessage() for r in caplog.records if "replicas" in r.getMessage()]
    assert pools == [
        f"ray: {units} units over 2 replicas (1 CPU, 0 GPU each)"
        for units in (3, 3, 3, -(-jobs // 16))  # embed: a batch per shard; chunks of 25, 20, 16
    ]
