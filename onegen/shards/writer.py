"""Atomic, resumable, byte-reproducible shard writer.

Items are numbered 0..n-1 and ``make_sample(i)`` must be a pure function of ``i`` (all
randomness seeded from it). Shards cover consecutive item ranges and are cut at
``max_samples`` or ``max_bytes``. Each finished shard has a sidecar ``shard-NNNNNN.json``
(its manifest entry: item range, count, bytes, sha256, task histogram, fingerprint).

* A shard is written to a hidden temporary name and renamed when complete, so a kill leaves
  no partial shard visible; its sidecar is written (atomically) after the rename, and a shard
  counts as finished only when both exist and agree.
* A rerun skips finished shards whose fingerprint (the inputs' hash) matches; a missing shard
  is rebuilt from its recorded item range, so it comes back byte-identical.
* Tar headers carry no time, user or host, and members are written in a fixed order.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from onegen.format import Sample, encode_sample

SHARD_GLOB = "shard-*.tar"


@dataclass(frozen=True)
class ShardLimits:
    max_samples: int
    max_bytes: int


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _tar_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = ""
    tf.addfile(info, io.BytesIO(data))


def sample_members(sample: Sample) -> list[tuple[str, bytes]]:
    """(tar member name, bytes) for one sample, json first then views in order."""
    enc = encode_sample(sample)
    key = enc.pop("__key__")
    names = ["json"] + sorted((n for n in enc if n != "json"), key=lambda n: int(n.split(".", 1)[0]))
    return [(f"{key}.{n}", enc[n]) for n in names]  # type: ignore[misc]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resolution(sample: Sample) -> str:
    v = sample.views[0].data
    return f"{v.shape[0]}x{v.shape[1]}"


def _finished(out_dir: Path, index: int, fingerprint: str, verify: bool) -> dict | None:
    tar, side = out_dir / shard_name(index), out_dir / shard_name(index).replace(".tar", ".json")
    if not side.is_file():
        return None
    try:
        entry = json.loads(side.read_text())
    except ValueError:
        return None
    if entry.get("fingerprint") != fingerprint:
        return None
    if not tar.is_file() or tar.stat().st_size != entry["bytes"]:
        return entry | {"_missing": True}  # the range is known: rebuild exactly this shard
    if verify and sha256_file(tar) != entry["sha256"]:
        return entry | {"_missing": True}
    return entry


def _write_one(out_dir: Path, index: int, start: int, n_items: int, make_sample, limits: ShardLimits,
               stop_at: int | None, fingerprint: str, bar: tqdm) -> dict:
    """Write shard ``index`` from item ``start``; stop at ``stop_at`` (a recorded end) or the limits."""
    final = out_dir / shard_name(index)
    tmp = out_dir / f".{final.name}.tmp"
    tasks: Counter[str] = Counter()
    resolutions: Counter[str] = Counter()
    views: Counter[str] = Counter()
    count = size = skipped = 0
    i = start
    with open(tmp, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            while i < n_items and (stop_at is None or i < stop_at):
                if stop_at is None and (count >= limits.max_samples or (count and size >= limits.max_bytes)):
                    break
                sample = make_sample(i)
                i += 1
                bar.update(1)
                if sample is None:  # the builder dropped this item on purpose; counted, never hidden
                    skipped += 1
                    continue
                for name, data in sample_members(sample):
                    _tar_member(tf, name, data)
                    size += len(data) + 512
                count += 1
                tasks[sample.task] += 1
                resolutions[_resolution(sample)] += 1
                views[str(len(sample.views))] += 1
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, final)
    entry = {
        "shard": final.name,
        "start": start,
        "end": i,
        "count": count,
        "skipped": skipped,
        "bytes": final.stat().st_size,
        "sha256": sha256_file(final),
        "tasks": dict(sorted(tasks.items())),
        "resolutions": dict(sorted(resolutions.items())),
        "views": dict(sorted(views.items())),
        "fingerprint": fingerprint,
    }
    write_json(final.with_suffix(".json"), entry)
    return entry


def build_shards(
    out_dir: Path,
    n_items: int,
    make_sample: Callable[[int], Sample | None],
    limits: ShardLimits,
    fingerprint: str,
    desc: str = "shards",
    verify: bool = True,
    on_shard: Callable[[dict], None] | None = None,
) -> dict:
    """Write (or finish) the shards for items 0..n_items-1 and return the dataset stats.

    ``on_shard`` receives each newly written shard's manifest entry plus its build seconds.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp"):  # left by a killed run; never visible as a shard
        stale.unlink()
    entries: list[dict] = []
    start, index = 0, 0
    with tqdm(total=n_items, desc=desc, unit="item", dynamic_ncols=True) as bar:
        while start < n_items:
            entry = _finished(out_dir, index, fingerprint, verify)
            if entry is not None and entry["start"] == start and not entry.get("_missing"):
                bar.update(entry["end"] - start)
            else:
                stop_at = entry["end"] if entry is not None and entry["start"] == start else None
                t0 = time.perf_counter()
                entry = _write_one(out_dir, index, start, n_items, make_sample, limits, stop_at, fingerprint, bar)
                if on_shard is not None:
                    on_shard(entry | {"seconds": round(time.perf_counter() - t0, 4)})
            entries.append(entry)
            start, index = entry["end"], index + 1
    _remove_beyond(out_dir, index)
    stats = dataset_stats(entries, fingerprint)
    write_json(out_dir / "stats.json", stats)
    return stats


def _remove_beyond(out_dir: Path, n_shards: int) -> None:
    """Shards past the last one belong to an earlier, larger build with other inputs."""
    for path in list(out_dir.glob(SHARD_GLOB)) + list(out_dir.glob("shard-*.json")):
        if int(path.stem.split("-")[1]) >= n_shards:
            path.unlink()


def dataset_stats(entries: list[dict], fingerprint: str) -> dict:
    def total(field: str) -> dict:
        c: Counter[str] = Counter()
        for e in entries:
            c.update(e[field])
        return dict(sorted(c.items()))

    return {
        "fingerprint": fingerprint,
        "shards": len(entries),
        "samples": sum(e["count"] for e in entries),
        "skipped": sum(e["skipped"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "tasks": total("tasks"),
        "resolutions": total("resolutions"),
        "views": total("views"),
        "manifest": [{k: e[k] for k in ("shard", "start", "end", "count", "bytes", "sha256", "tasks")} for e in entries],
    }
