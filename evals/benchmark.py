"""What a benchmark is, and how one is run: batched, resumable, with progress and a result JSON.

A benchmark is a self-contained unit (lm-evaluation-harness style) that knows its data, how to
ask a predictor for an item's prediction, and how to score it with pure metric functions:

* ``items()``       -- the evaluation items, each a dict with a unique ``"id"``;
* ``predict(predictor, batch)`` -- predictions for a batch of items;
* ``score(item, prediction)``   -- per-item metrics (floats);
* ``aggregate(scores)``         -- the benchmark's numbers, in the papers' units.

``run`` caches every item's scores in ``items.jsonl`` as it goes, so a killed evaluation resumes
where it stopped, and writes ``result.json`` (metrics, protocol version, model and data hashes,
the command) for DVC and the leaderboard.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shlex
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from onegen.jsonl import append_jsonl
from onegen.shards.writer import write_json


class Benchmark(ABC):
    name: str = ""  # set by @register
    protocol_version = "1"
    setting = "default"
    data_name = ""

    @abstractmethod
    def items(self) -> list[dict]: ...

    @abstractmethod
    def predict(self, predictor, batch: list[dict]) -> list: ...

    @abstractmethod
    def score(self, item: dict, prediction) -> dict[str, float]: ...

    @abstractmethod
    def aggregate(self, scores: list[dict[str, float]]) -> dict[str, float]: ...

    def data_hash(self, items: list[dict]) -> str:
        """Identity of the evaluation data: ids and whatever items carry as ``hash_fields``."""
        h = hashlib.sha256()
        for it in items:
            h.update(json.dumps([it["id"], it.get("hash_fields")], sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    def sample_grid(self, items: list[dict], predictions: list, path: Path) -> bool:
        """Optionally write a PNG of a few predictions beside their inputs; True if written."""
        return False


def _batches(items: list[dict], size: int) -> Iterator[list[dict]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run(bench: Benchmark, predictor, out_dir: Path, batch_size: int = 8, limit: int | None = None) -> dict:
    """Evaluate ``predictor`` on ``bench``; resumes from ``out_dir/items.jsonl``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    items = bench.items()
    if limit is not None:
        items = items[:limit]
    if len({it["id"] for it in items}) != len(items):
        raise ValueError(f"{bench.name}: item ids are not unique")
    cache_path = out_dir / "items.jsonl"
    model = predictor.describe()
    data_hash = bench.data_hash(items)
    key = {"model": model["hash"], "data": data_hash, "protocol": bench.protocol_version}
    done: dict[str, dict] = {}
    if cache_path.is_file():
        for line in cache_path.read_text().splitlines():
            row = json.loads(line)
            if row.get("key") == key:  # rows from another model, data or protocol are not reused
                done[row["id"]] = row["scores"]
    todo = [it for it in items if it["id"] not in done]
    if done:
        print(f"{bench.name}: resuming, {len(done)} of {len(items)} items already scored", file=sys.stderr)
    grid_items, grid_preds = [], []
    with tqdm(total=len(items), initial=len(items) - len(todo), desc=f"eval {bench.name}", unit="item") as bar:
        for batch in _batches(todo, batch_size):
            preds = bench.predict(predictor, batch)
            for it, pred in zip(batch, preds, strict=True):
                scores = bench.score(it, pred)
                done[it["id"]] = scores
                append_jsonl(cache_path, {"id": it["id"], "key": key, "scores": scores})
                if len(grid_items) < 4:
                    grid_items.append(it)
                    grid_preds.append(pred)
            bar.update(len(batch))
    scores = [done[it["id"]] for it in items]
    samples = out_dir / "samples.png"
    has_grid = bench.sample_grid(grid_items, grid_preds, samples) if grid_items else samples.is_file()
    result = {
        "benchmark": bench.name,
        "setting": bench.setting,
        "protocol_version": bench.protocol_version,
        "model": model,
        "data": {"name": bench.data_name, "hash": data_hash},
        "metrics": bench.aggregate(scores),
        "n_items": len(items),
        "command": shlex.join(["onegen", *sys.argv[1:]]) if Path(sys.argv[0]).name == "onegen" else f"onegen eval {bench.name}",
        "samples": str(samples) if has_grid else None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out_dir / "result.json", result)
    write_json(out_dir / "scores.json", {it["id"]: s for it, s in zip(items, scores)})
    return result
