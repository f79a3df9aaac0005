"""Atomic, resumable, byte-reproducible shard writer.

Items are numbered 0..n-1 and ``make_sample(i)`` must be a pure function of ``i`` (all
randomness seeded from it). Shards cover consecutive item ranges. Each finished shard has a
sidecar ``shard-NNNNNN.json`` (its manifest entry: item range, count, bytes, sha256, task
histogram, fingerprint). Two ways to cut the ranges:

* ``build_shards`` (one process, e.g. the world stage) cuts at ``max_samples`` written samples
  or ``max_bytes``, so a shard's end depends on the samples before it;
* ``plan_ranges`` fixes every shard's item range up front from the item count alone, and
  ``write_shard`` writes one planned shard; shards are then independent, so any number of
  workers can write them in any order and the result is the same bytes (the family stages).
  A planned shard records items that failed (``ItemFailure``) in ``shard-NNNNNN.errors.jsonl``.

* A shard is written to a hidden temporary name and renamed when complete, so a kill leaves
  no partial shard visible; its sidecar is written (atomically) after the rename, and a shard
  counts as finished only when both exist and agree.
* A rerun skips finished shards whose fingerprint (the inputs' hash: a derived folder's includes its
  input folder's ``content_identity``) matches; a missing shard is rebuilt from its recorded item
  range, so it comes back byte-identical.
* Tar headers carry no time, user or host, and members are written in a fixed order.
* Planned shards go through a per-process temporary name, so two writers of one shard (a
  worker of an aborted run still finishing) never interleave; both rename identical bytes.
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent writers never share one
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


@dataclass(frozen=True)
class ItemFailure:
    """An item that could not become a sample: which one, at which stage, and why."""

    index: int
    source: str
    source_id: str | None
    stage: str  # read, annotate:<name>, caption, build, encode
    reason: str

    def to_json(self) -> dict:
        return {"index": self.index, "source": self.source, "source_id": self.source_id, "stage": self.stage,
                "reason": self.reason}


def errors_name(index: int) -> str:
    return f"shard-{index:06d}.errors.jsonl"


class _ShardFile:
    """One shard being written under a temporary name: samples in, manifest entry out."""

    def __init__(self, final: Path, tmp: Path, start: int):
        self.final, self.tmp, self.start = final, tmp, start
        self.raw = open(tmp, "wb")
        self.tar = tarfile.open(fileobj=self.raw, mode="w", format=tarfile.USTAR_FORMAT)
        self.tasks: Counter[str] = Counter()
        self.resolutions: Counter[str] = Counter()
        self.views: Counter[str] = Counter()
        self.count = self.size = self.skipped = 0
        self.failures: list[ItemFailure] = []

    def add(self, members: list[tuple[str, bytes]], sample: Sample) -> None:
        for name, data in members:
            _tar_member(self.tar, name, data)
            self.size += len(data) + 512
        self.count += 1
        self.tasks[sample.task] += 1
        self.resolutions[_resolution(sample)] += 1
        self.views[str(len(sample.views))] += 1

    def close(self, end: int, fingerprint: str) -> dict:
        self.tar.close()
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        sha = sha256_file(self.tmp)
        size = self.tmp.stat().st_size
        errors = self.final.with_name(errors_name(int(self.final.stem.split("-")[1])))
        if self.failures:  # before the rename: a visible shard never lacks its errors file
            atomic_write_bytes(errors, "".join(json.dumps(f.to_json(), sort_keys=True) + "\n"
                                               for f in self.failures).encode())
        else:
            errors.unlink(missing_ok=True)
        os.replace(self.tmp, self.final)
        entry = {
            "shard": self.final.name,
            "start": self.start,
            "end": end,
            "count": self.count,
            "skipped": self.skipped,
            "failed": len(self.failures),
            "bytes": size,
            "sha256": sha,
            "tasks": dict(sorted(self.tasks.items())),
            "resolutions": dict(sorted(self.resolutions.items())),
            "views": dict(sorted(self.views.items())),
            "fingerprint": fingerprint,
        }
        write_json(self.final.with_suffix(".json"), entry)
        return entry


def _write_one(out_dir: Path, index: int, start: int, n_items: int, make_sample, limits: ShardLimits,
               stop_at: int | None, fingerprint: str, bar: tqdm) -> dict:
    """Write shard ``index`` from item ``start``; stop at ``stop_at`` (a recorded end) or the limits."""
    final = out_dir / shard_name(index)
    shard = _ShardFile(final, out_dir / f".{final.name}.tmp", start)
    i = start
    while i < n_items and (stop_at is None or i < stop_at):
        if stop_at is None and (shard.count >= limits.max_samples or (shard.count and shard.size >= limits.max_bytes)):
            break
        sample = make_sample(i)
        i += 1
        bar.update(1)
        if sample is None:  # the builder dropped this item on purpose; counted, never hidden
            shard.skipped += 1
            continue
        shard.add(sample_members(sample), sample)
    return shard.close(i, fingerprint)


def plan_ranges(n_items: int, per_shard: int) -> list[tuple[int, int]]:
    """Item ranges of the planned shards: a function of the item count alone."""
    return [(s, min(s + per_shard, n_items)) for s in range(0, n_items, per_shard)]


def finished_shard(out_dir: Path, index: int, start: int, end: int, fingerprint: str,
                   verify: bool = True) -> dict | None:
    """The manifest entry of planned shard ``index`` if it is on disk, intact, for exactly these items."""
    entry = _finished(out_dir, index, fingerprint, verify)
    if entry is None or entry.get("_missing") or (entry["start"], entry["end"]) != (start, end):
        return None
    return entry


def write_shard(out_dir: Path, index: int, start: int, outcomes: list[Sample | ItemFailure | None],
                fingerprint: str) -> dict:
    """Write planned shard ``index`` holding items ``start, start+1, ...`` (one outcome each).

    ``None`` is an item dropped on purpose (counted as skipped); an ``ItemFailure`` goes to the
    shard's errors file; a sample that cannot be encoded becomes an ``encode`` failure.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / shard_name(index)
    shard = _ShardFile(final, out_dir / f".{final.name}.{os.getpid()}.tmp", start)
    for i, outcome in enumerate(outcomes, start):
        if outcome is None:
            shard.skipped += 1
        elif isinstance(outcome, ItemFailure):
            shard.failures.append(outcome)
        else:
            try:
                members = sample_members(outcome)
            except Exception as e:  # noqa: BLE001 -- one bad sample must not sink its shard
                shard.failures.append(ItemFailure(i, outcome.provenance.source, outcome.provenance.source_id,
                                                  "encode", f"{type(e).__name__}: {e}"))
                continue
            shard.add(members, outcome)
    return shard.close(start + len(outcomes), fingerprint)


def finish_shards(out_dir: Path, entries: list[dict], fingerprint: str) -> dict:
    """After every planned shard is written: drop shards of an earlier, larger build; write stats.json."""
    _remove_beyond(out_dir, len(entries))
    stats = dataset_stats(entries, fingerprint)
    write_json(out_dir / "stats.json", stats)
    return stats


def remove_stale_temporaries(out_dir: Path) -> None:
    for stale in out_dir.glob(".*.tmp"):  # left by a killed run; never visible as a shard
        stale.unlink(missing_ok=True)


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
    remove_stale_temporaries(out_dir)
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
    for path in out_dir.glob("shard-*"):
        if int(path.name[len("shard-"):].split(".")[0]) >= n_shards:
            path.unlink()


def content_identity(stats: dict) -> str:
    """A finished folder's content, from its ``stats.json``: the hash of its shards' own sha256, in order. A
    derived folder puts it in its fingerprint, so that new input bytes under an unchanged config (code changed
    without a version bump, another machine's floats) never pass for the input its finished shards were made of."""
    h = hashlib.sha256()
    for entry in stats["manifest"]:
        h.update(entry["sha256"].encode())
    return h.hexdigest()[:16]


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
        "failed": sum(e.get("failed", 0) for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "tasks": total("tasks"),
        "resolutions": total("resolutions"),
        "views": total("views"),
        "manifest": [{k: e[k] for k in ("shard", "start", "end", "count", "bytes", "sha256", "tasks")} for e in entries],
    }
