"""Structured logs: one JSON object per line, appended atomically enough for DVC plots."""

from __future__ import annotations

import json
from pathlib import Path


def append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def shard_logger(path: Path, **fields):
    """An ``on_shard`` callback for the shard writer: one row per newly written shard."""

    def log(entry: dict) -> None:
        append_jsonl(path, {**fields, "shard": entry["shard"], "count": entry["count"], "bytes": entry["bytes"],
                            "failed": entry.get("failed", 0), "seconds": entry["seconds"],
                            "samples_per_s": round(entry["count"] / max(entry["seconds"], 1e-9), 2)})

    return log
