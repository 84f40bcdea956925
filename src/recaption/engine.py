"""Where the per-image stages do their work: in this process, or on a Ray cluster.

embed, recaption, upsample_captions and evaluate's sampling split their work into
*units* (a batch of images, a chunk of keys) whose results depend on nothing but
the unit: not on where it runs, nor on what ran before it. A *worker* class loads
the stage's models once, in its constructor, and turns one unit into rows:

    class Worker:
        def __init__(self, **kwargs): ...          # load the models, read the inputs
        def __call__(self, unit: dict) -> pa.Table: ...

`map_units` runs a worker over a list of units on the engine params.yaml names:

- `engine: local`: one worker in this process, the units in order.
- `engine: ray`: Ray Data spreads the units over a pool of actors (`map_batches`
  with the worker as an actor class, so each replica loads the models once), on
  the cluster at `ray.address` or, when that is empty, on a local one started
  for the stage and stopped after it.

Results come back tagged with their unit's index, in whatever order they finish;
every stage writes its output in key order, so its bytes do not depend on the
engine (tests compare them). That is also why no stage lists `engine` or `ray`
among its DVC params: switching engines reruns nothing.

Actors work in the repository's folder, as the stage does: on a multi-node
cluster the repository (its data/ and models/) must be at the same path on every
node, e.g. on a shared filesystem.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from recaption.errors import UserError
from recaption.params import Params, RayParams

log = logging.getLogger(__name__)


class Worker(Protocol):
    def __call__(self, unit: dict) -> pa.Table: ...


def map_units(
    worker: type[Worker],
    kwargs: dict[str, Any],
    units: Sequence[dict],
    params: Params,
    desc: str,
    unit_name: str = "unit",
) -> Iterator[tuple[int, pa.Table]]:
    """(index into `units`, the worker's table for it) for every unit, as each finishes.

    Args:
        worker: the stage's worker class; built once per replica as `worker(**kwargs)`.
        kwargs: its constructor's arguments (picklable: they travel to Ray actors).
        units: JSON-able dicts, one per piece of work.
        params: the run's params (`engine` and `ray`).
        desc: the progress bar's label.
    """
    bar = tqdm(total=len(units), desc=desc, unit=unit_name)
    with bar:
        if not units:
            return
        if params.engine == "local":
            instance = worker(**kwargs)
            for index, unit in enumerate(units):
                yield index, instance(unit)
                bar.update()
        else:
            for index, table in _ray_map(worker, kwargs, units, params.ray):
                yield index, table
                bar.update()


# --- Ray --------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError(
            "engine: ray needs Ray; install it with pip install 'recaption[ray]', "
            "or set engine: local"
        ) from None
    return ray


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class _Replica:
    """The actor Ray Data builds per replica: the stage's worker, in the repository's
    folder, fed one unit per call; rows travel back as Arrow IPC bytes, so every
    stage's schema passes through Ray unchanged."""

    def __init__(self, worker: type[Worker], kwargs: dict, workdir: str, threads: int):
        os.chdir(workdir)
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.worker = worker(**kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [_to_ipc(self.worker(json.loads(u))) for u in batch["unit"]]
        return {"index": np.asarray(batch["index"]), "rows": np.array(rows, dtype=object)}


def pool_size(rp: RayParams, cluster: dict[str, float]) -> tuple[int, float, float]:
    """(replicas, CPUs per replica, GPUs per replica) for a cluster's resources.

    With GPUs, `replicas_per_gpu` replicas share each one; without, `replicas` (auto:
    as many as the cluster's CPUs hold at `cpus_per_replica` each).
    """
    gpus = int(cluster.get("GPU", 0))
    if gpus:
        return gpus * rp.replicas_per_gpu, rp.cpus_per_replica, 1 / rp.replicas_per_gpu
    if rp.replicas != "auto":
        return rp.replicas, rp.cpus_per_replica, 0.0
    cpus = int(cluster.get("CPU", 1))
    return max(1, cpus // rp.cpus_per_replica), rp.cpus_per_replica, 0.0


def _ray_map(
    worker: type[Worker], kwargs: dict, units: Sequence[dict], rp: RayParams
) -> Iterator[tuple[int, pa.Table]]:
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        # address None starts a local cluster (unless RAY_ADDRESS names one).
        ray.init(address=rp.address or None, include_dashboard=False, log_to_driver=True)
    try:
        replicas, cpus, gpus = pool_size(rp, ray.cluster_resources())
        replicas = min(replicas, len(units))
        log.info("ray: %d units over %d replicas (%g CPU, %g GPU each)",
                 len(units), replicas, cpus, gpus)  # fmt: skip
        ray.data.DataContext.get_current().enable_progress_bars = False
        items = [{"index": i, "unit": json.dumps(u, sort_keys=True)} for i, u in enumerate(units)]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        results = dataset.map_batches(
            _Replica,
            fn_constructor_kwargs={"worker": worker, "kwargs": kwargs,
                                   "workdir": str(Path.cwd()), "threads": math.ceil(cpus)},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=replicas),
            num_cpus=cpus,
            num_gpus=gpus,
        )  # fmt: skip
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for index, rows in zip(batch["index"], batch["rows"], strict=True):
                yield int(index), _from_ipc(rows)
    finally:
        if started:
            ray.shutdown()
