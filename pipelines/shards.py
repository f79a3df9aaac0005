"""``onegen shards <family>``: world records (+ external sources) -> one family's shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from onegen.config import FamilyConfig, Params, SourceConfig
from onegen.families import External, build, enumerate_items
from onegen.fingerprint import fingerprint
from onegen.format import Sample, decode_sample
from onegen.jsonl import shard_logger
from onegen.shards.reader import ReadReport, iter_tar_samples, shard_urls
from onegen.shards.writer import ShardLimits, build_shards
from pipelines.world import world_dir


class StageError(RuntimeError):
    pass


def load_world(directory: Path) -> list[Sample]:
    """All world records, in order; any unreadable record stops the stage (the world is ours)."""
    report = ReadReport()
    records = [decode_sample(raw) for url in shard_urls(directory) for raw in iter_tar_samples(url, report)]
    if report.problems:
        p = report.problems[0]
        raise StageError(f"world shards are damaged ({len(report.problems)} problems), first: {p['url']} "
                         f"{p['key']}: {p['reason']} -- rerun `onegen world`")
    return records


def open_source(cfg: SourceConfig):
    # imported here: `datasets` is only needed when a family actually reads an external source
    if cfg.kind == "image_folder":
        from onegen.sources.image_folder import ImageFolderSource

        return ImageFolderSource(cfg.path)
    from onegen.sources.hf_dataset import HFDatasetSource

    return HFDatasetSource(cfg.path, split=cfg.split, image_column=cfg.image_column)


def center_square(image: Image.Image, size: int) -> np.ndarray:
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC, box=box))


def family_dir(params: Params, family: str) -> Path:
    return params.paths.data / "shards" / family


def run(params: Params, family: str) -> dict:
    fam: FamilyConfig = params.shards.families[family]
    out = family_dir(params, family)
    world = load_world(world_dir(params)) if fam.enabled and "world" in fam.sources else []
    sources = {name: open_source(params.sources[name]) for name in fam.sources if name != "world"} if fam.enabled else {}
    limits = {name: min(len(src), params.sources[name].limit or len(src)) for name, src in sources.items()}
    refs = enumerate_items(family, world, limits) if fam.enabled else []
    if fam.max_samples is not None:
        refs = refs[: fam.max_samples]

    def get_external(name: str, j: int) -> External:
        rec = sources[name][j]
        return External(rec["source_id"], center_square(rec["image"], params.world.resolution), rec["captions"])

    world_fp = json.loads((world_dir(params) / "stats.json").read_text())["fingerprint"] if world else None
    fp = fingerprint("shards", family, fam.model_dump(mode="json"), params.seed, world_fp,
                     {n: params.sources[n].model_dump(mode="json") for n in sources},
                     params.shards.rays_normalize_cameras, params.world.resolution)
    return build_shards(
        out, len(refs),
        lambda i: build(family, refs[i], world, get_external, params.seed, i, params.shards.rays_normalize_cameras),
        ShardLimits(params.shards.max_samples_per_shard, params.shards.max_bytes_per_shard), fp, desc=family,
        on_shard=shard_logger(params.paths.reports / "logs" / f"shards_{family}.jsonl", stage="shards", family=family),
    )
