"""``onegen world``: render the procedural world's scene and identity records into shards."""

from __future__ import annotations

from functools import partial

from onegen.config import Params
from onegen.fingerprint import fingerprint
from onegen.format import FORMAT_VERSION
from onegen.jsonl import shard_logger
from onegen.shards.ahead import Ahead
from onegen.shards.writer import ShardLimits, build_shards
from onegen.sources import procedural, world_records


def world_dir(params: Params):
    return params.paths.data / "world"


def run(params: Params) -> dict:
    """Renders in ``build.cpu_workers`` processes (rendering a record costs about what writing it does)."""
    cfg = params.world
    fp = fingerprint("world", cfg.model_dump(mode="json"), params.seed, procedural.RENDERER_VERSION, FORMAT_VERSION)
    n = world_records.record_count(cfg)
    with Ahead(partial(world_records.make_record, cfg, params.seed), n, params.build.cpu_workers) as make:
        return build_shards(
            world_dir(params), n, make, ShardLimits(cfg.records_per_shard, params.shards.max_bytes_per_shard), fp,
            desc="world", on_shard=shard_logger(params.paths.reports / "logs" / "world.jsonl", stage="world"),
        )
