"""The Ray executor of ``onegen shards``: one family's unfinished shards as a Ray Data pipeline.

    shard jobs -> read (tasks) -> [model annotator (actor pool)] ... -> build + write (tasks)

A row is one planned shard (its items travel pickled in one ``bytes`` column), so every step
sees a whole shard: model annotators batch it exactly as the one-process executor does, and the
task that builds a shard also writes it (temporary name + rename), with no regrouping of items
across workers. Rows stream: a shard is on disk as soon as its last step ends, and a crash
loses only the shards in flight. Both executors run the same three functions of
``pipelines.shards`` on the same shard-sized batches, so their shards are the same bytes
whatever the number of workers -- a model annotator's outputs up to its kernels' float noise
(a Ray actor computes with its own thread count, or on another device).

``build.ray_address: null`` starts Ray in this process (CPU, no dashboard, small object
store) and keeps it for the process's later stages; an address attaches to a running cluster,
whose nodes must have ``onegen`` installed and see ``paths.data``.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable

from onegen.config import ActorPoolConfig, BuildConfig
from pipelines.shards import (BuildContext, ShardJob, StageError, annotate_items, load_annotator, read_shard,
                              write_items)


def ensure_ray(cfg: BuildConfig) -> None:
    """Start (or attach to) Ray unless this process already has it."""
    import ray

    if ray.is_initialized():
        return
    common = dict(log_to_driver=False, include_dashboard=False, configure_logging=False)
    if cfg.ray_address:
        try:
            ray.init(address=cfg.ray_address, **common)
        except Exception as e:  # noqa: BLE001 -- whatever ray.init raises, the user needs the key and the reason
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = ' (ray:// addresses need the Ray Client: pip install "ray[client]==2.60.0")' \
                if cfg.ray_address.startswith("ray://") and "ray[client]" not in first else ""
            raise StageError(f"build.ray_address={cfg.ray_address!r}: cannot attach: {first}{hint}") from None
    else:
        ray.init(address="local", num_cpus=cfg.num_cpus, object_store_memory=cfg.object_store_mb * 2**20, **common)


def _read(batch: dict, ctx: BuildContext) -> dict:
    out = []
    for raw in batch["job"]:
        job: ShardJob = pickle.loads(raw)
        t0 = time.time()
        out.append(pickle.dumps((job, read_shard(ctx, job), t0), protocol=pickle.HIGHEST_PROTOCOL))
    return {"shard": out}


class _Annotate:
    """An actor holding one model annotator; it annotates whole shards."""

    def __init__(self, ctx: BuildContext, name: str):
        self.ctx, self.name = ctx, name
        self.annotator = load_annotator(ctx.params, name)

    def __call__(self, batch: dict) -> dict:
        out = []
        for raw in batch["shard"]:
            job, items, t0 = pickle.loads(raw)
            annotate_items(self.ctx, self.name, self.annotator, items)
            out.append(pickle.dumps((job, items, t0), protocol=pickle.HIGHEST_PROTOCOL))
        return {"shard": out}


def _write(batch: dict, ctx: BuildContext) -> dict:
    entries = []
    for raw in batch["shard"]:
        job, items, t0 = pickle.loads(raw)
        entries.append(pickle.dumps(write_items(ctx, job, items) | {"seconds": round(time.time() - t0, 4)}))
    return {"entry": entries}


def build_with_ray(ctx: BuildContext, jobs: list[ShardJob], on_entry: Callable[[dict], None]) -> None:
    """Build ``jobs`` (unfinished shards) on Ray; ``on_entry`` gets each manifest entry as it lands."""
    import ray.data
    from ray.data import ActorPoolStrategy, TaskPoolStrategy
    from tqdm import tqdm

    cfg = ctx.params.build
    ensure_ray(cfg)
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.enable_progress_bars = False  # one bar below, per shard
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per dataset run
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    tasks = TaskPoolStrategy(size=min(cfg.cpu_workers, len(jobs)))
    ds = ray.data.from_items([{"job": pickle.dumps(job)} for job in jobs], override_num_blocks=len(jobs))
    ds = ds.map_batches(_read, fn_kwargs={"ctx": ctx}, batch_size=1, compute=tasks)
    for name in ctx.annotators:
        pool = cfg.annotator_pools.get(name, ActorPoolConfig())
        ds = ds.map_batches(_Annotate, fn_constructor_kwargs={"ctx": ctx, "name": name}, batch_size=1,
                            compute=ActorPoolStrategy(size=pool.concurrency), num_gpus=pool.num_gpus,
                            num_cpus=pool.num_cpus)
    ds = ds.map_batches(_write, fn_kwargs={"ctx": ctx}, batch_size=1, compute=tasks)
    with tqdm(total=len(jobs), desc=f"{ctx.family} (ray)", unit="shard", dynamic_ncols=True) as bar:
        for row in ds.iter_rows():
            on_entry(pickle.loads(row["entry"]))
            bar.update(1)
