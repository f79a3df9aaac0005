"""What a benchmark is, and how one is run: batched, resumable, with progress and a result JSON.

A benchmark is a self-contained unit (lm-evaluation-harness style) that knows its data, how to
ask a predictor for an item's prediction, and how to score it with pure metric functions:

* ``items()``       -- the evaluation items (may stream), each a dict with a unique ``"id"``;
* ``predict(predictor, batch)`` -- predictions for a batch of items;
* ``score(item, prediction)``   -- per-item metrics (floats; a JSON string where ``aggregate`` pools
                                   more than a number, e.g. detections for an AP);
* ``aggregate(scores)``         -- the benchmark's numbers, in the papers' units.

``run`` caches every item's scores in ``items.jsonl`` as it goes, so a killed evaluation resumes
where it stopped, and writes ``result.json`` (metrics, protocol version, model and data hashes,
the command) for DVC and the leaderboard. A result of another setting found there (GSO's 1-view
before a 2-view run, another DIODE subset) first moves to ``settings/<its setting>-<hash>/``, so every
setting evaluated stays on the leaderboard while the newest stays where DVC reads it. A partial run
(``limit``) writes ``result.partial.json`` beside them, never over a full result: the leaderboard
reads full ones only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from onegen.jsonl import append_jsonl
from onegen.shards.writer import atomic_write_bytes, write_json


class Benchmark(ABC):
    name: str = ""  # set by @register
    protocol_version = "1"
    setting = "default"
    data_name = ""
    fixed_predictor: str | None = None  # a make_predictor spec this benchmark always uses
    needs: str = ""  # the predictor method ``predict`` calls: a predictor without it cannot answer

    @abstractmethod
    def items(self) -> Iterable[dict]:
        """The items, in a fixed order; may be a generator so large datasets stream."""

    @abstractmethod
    def predict(self, predictor, batch: list[dict]) -> list: ...

    @abstractmethod
    def score(self, item: dict, prediction) -> dict[str, float | str]: ...

    @abstractmethod
    def aggregate(self, scores: list[dict[str, float]]) -> dict[str, float]: ...

    def sample_grid(self, items: list[dict], predictions: list, path: Path) -> bool:
        """Optionally write a PNG of a few predictions beside their inputs; True if written."""
        return False

    def scorers(self) -> list:
        """What scores every item besides this code (records of weights and their options: a detector, LPIPS,
        ArcFace): part of each cached item's fingerprint, so that a rerun under another scorer scores every item
        again instead of mixing two scorers' numbers in one mean."""
        return []


def save_tile_grid(rows: list[list[np.ndarray]], path: Path, side: int = 128) -> None:
    """Save rows of images, each resized to ``side`` x ``side``, as one PNG (``sample_grid`` helper)."""
    Image.fromarray(np.concatenate([np.concatenate([np.asarray(Image.fromarray(t).resize((side, side))) for t in row], 1)
                                    for row in rows], 0)).save(path)


def _item_fingerprint(item: dict, scorers: list) -> str:
    """What identifies an item's score: its id, what it lists as ``hash_fields``, and the benchmark's scorers."""
    blob = json.dumps([item["id"], item.get("hash_fields"), scorers], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _load_cache(path: Path, key: dict) -> dict[tuple[str, str], dict]:
    """(item id, item fingerprint) -> scores, for rows of this model and protocol only."""
    done: dict[tuple[str, str], dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("key") == key:
                done[(row["id"], row["item"])] = row["scores"]
    return done


def _prune_cache(path: Path, current: set[tuple[str, str]]) -> None:
    """Drop the rows of items the benchmark no longer has (an id gone, or its data changed since): no run reads
    them again, and a report folder should not depend on what was evaluated in it before."""
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    kept = [line for line, row in zip(lines, map(json.loads, lines)) if (row["id"], row["item"]) in current]
    if len(kept) != len(lines):
        atomic_write_bytes(path, "".join(kept).encode())


def _partial(limit: int | None) -> str:
    """The suffix of a run's files: a partial run's result is not the benchmark's."""
    return "" if limit is None else ".partial"


def result_name(limit: int | None) -> str:
    return f"result{_partial(limit)}.json"


def _setting_folder(out_dir: Path, setting: str) -> Path:
    """Where a result of ``setting`` goes once a result of another setting takes ``out_dir``'s top: its name made
    safe for a path (no dots: "." or ".." would name a folder above), with a hash of the exact string so that
    settings alike as names ("1 view", "1_view") stay apart."""
    slug = re.sub(r"[^A-Za-z0-9+-]+", "_", setting).strip("_")[:60]
    return out_dir / "settings" / f"{slug}-{hashlib.sha256(setting.encode()).hexdigest()[:8]}"


def _set_aside_other_setting(out_dir: Path, setting: str) -> None:
    """Copy a result of another setting on top (its result.json, scores.json, samples.png) to its settings folder,
    then remove the top result.json. The folder is filled under a temporary name and renamed into place, so a crash
    at any point leaves the old result whole on top or in its folder (a rerun repeats the copy)."""
    top = out_dir / "result.json"
    old = json.loads(top.read_text()) if top.is_file() else None
    if old is None or old.get("setting", "default") == setting:
        return
    aside = _setting_folder(out_dir, old.get("setting", "default"))
    staging = aside.with_name(aside.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("scores.json", "samples.png"):
        if (out_dir / name).is_file():
            shutil.copy2(out_dir / name, staging / name)
    if old.get("samples"):
        old["samples"] = str(aside / "samples.png")
    write_json(staging / "result.json", old)
    shutil.rmtree(aside, ignore_errors=True)  # an earlier result of that setting, which the top one superseded
    os.replace(staging, aside)
    top.unlink()
    (out_dir / "samples.png").unlink(missing_ok=True)  # not this run's: it draws its own, or has none


def run(bench: Benchmark, predictor, out_dir: Path, batch_size: int = 8, limit: int | None = None) -> dict:
    """Evaluate ``predictor`` on ``bench``, streaming items in batches; resumes from ``items.jsonl``.

    Only one batch of items is in memory at a time, so NYUv2 and DIODE stream from disk.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_path = out_dir / "items.jsonl"
    model = predictor.describe()
    key = {"model": model["hash"], "protocol": bench.protocol_version}
    done = _load_cache(cache_path, key)
    if done:
        print(f"{bench.name}: resuming, {len(done)} items already scored", file=sys.stderr)
    scorers = bench.scorers()
    data_hash = hashlib.sha256()
    seen: set[str] = set()
    current: set[tuple[str, str]] = set()
    scores: dict[str, dict] = {}
    grid_items, grid_preds = [], []
    items = islice(bench.items(), limit) if limit is not None else bench.items()
    with tqdm(desc=f"eval {bench.name}", unit="item") as bar:
        for batch in _batched(items, batch_size):
            todo = []
            for it in batch:
                if it["id"] in seen:
                    raise ValueError(f"{bench.name}: item id {it['id']!r} is not unique")
                seen.add(it["id"])
                fp = _item_fingerprint(it, scorers)
                data_hash.update(fp.encode())
                current.add((it["id"], fp))
                if (it["id"], fp) in done:  # same model, protocol and item data: reuse
                    scores[it["id"]] = done[(it["id"], fp)]
                else:
                    todo.append((it, fp))
            if todo:
                preds = bench.predict(predictor, [it for it, _ in todo])
                for (it, fp), pred in zip(todo, preds, strict=True):
                    scores[it["id"]] = bench.score(it, pred)
                    append_jsonl(cache_path, {"id": it["id"], "key": key, "item": fp, "scores": scores[it["id"]]})
                    if len(grid_items) < 4:
                        grid_items.append(it)
                        grid_preds.append(pred)
            bar.update(len(batch))
    if not scores:
        raise ValueError(f"{bench.name}: no items to evaluate")
    if limit is None:  # every item was seen
        _prune_cache(cache_path, current)
        _set_aside_other_setting(out_dir, bench.setting)
    per_item = scores
    samples = out_dir / f"samples{_partial(limit)}.png"
    has_grid = bench.sample_grid(grid_items, grid_preds, samples) if grid_items else samples.is_file()
    result = {
        "benchmark": bench.name,
        "setting": bench.setting,
        "protocol_version": bench.protocol_version,
        "model": model,
        "data": {"name": bench.data_name, "hash": data_hash.hexdigest()[:16]},
        "metrics": bench.aggregate(list(per_item.values())),
        "n_items": len(per_item),
        "command": shlex.join(["onegen", *sys.argv[1:]]) if Path(sys.argv[0]).name == "onegen" else f"onegen eval {bench.name}",
        "samples": str(samples) if has_grid else None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out_dir / result_name(limit), result)
    write_json(out_dir / f"scores{_partial(limit)}.json", per_item)
    if limit is None:  # on top now: an earlier result of this setting set aside by another's run is superseded
        shutil.rmtree(_setting_folder(out_dir, bench.setting), ignore_errors=True)
    return result


def _batched(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch
