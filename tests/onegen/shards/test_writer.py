import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from onegen import tasks
from onegen.format import encode_sample
from onegen.shards.writer import ShardLimits, build_shards, sha256_file

CONFTEST = Path(__file__).resolve().parents[2] / "conftest.py"


def _helpers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("onegen_test_helpers", CONFTEST)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


synthetic_sample = _helpers().synthetic_sample

LIMITS = ShardLimits(max_samples=4, max_bytes=1 << 30)


class Counting:
    """make_sample that records which items it built."""

    def __init__(self, task=tasks.DEPTH2IMAGE):
        self.calls: list[int] = []
        self.task = task

    def __call__(self, i):
        self.calls.append(i)
        return synthetic_sample(i, self.task)


def _tars(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard-*.tar"))}


def test_shards_cut_at_max_samples_and_have_manifests(tmp_path):
    stats = build_shards(tmp_path, 10, Counting(), LIMITS, "fp")
    assert [p.name for p in sorted(tmp_path.glob("shard-*.tar"))] == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    entries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("shard-*.json"))]
    assert [(e["start"], e["end"], e["count"]) for e in entries] == [(0, 4, 4), (4, 8, 4), (8, 10, 2)]
    for e in entries:
        tar = tmp_path / e["shard"]
        assert e["bytes"] == tar.stat().st_size and e["sha256"] == sha256_file(tar)
        assert e["tasks"] == {tasks.DEPTH2IMAGE: e["count"]}
        with tarfile.open(tar) as tf:
            names = tf.getnames()
            assert all(m.mtime == 0 and m.uname == "" for m in tf.getmembers())
        assert len(names) == 3 * e["count"] and names[0].endswith(".json")
    assert stats["samples"] == 10 and stats["shards"] == 3 and stats["resolutions"] == {"16x16": 10}
    assert json.loads((tmp_path / "stats.json").read_text()) == stats


def test_shards_cut_at_max_bytes(tmp_path):
    one = sum(len(v) for k, v in encode_sample(synthetic_sample(0)).items() if k != "__key__")
    build_shards(tmp_path, 9, Counting(), ShardLimits(100, 3 * one), "fp")
    counts = [json.loads(p.read_text())["count"] for p in sorted(tmp_path.glob("shard-*.json"))]
    assert sum(counts) == 9 and max(counts) <= 3 and len(counts) >= 3


def test_rebuild_is_byte_identical_and_rerun_skips(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_shards(a, 10, Counting(), LIMITS, "fp")
    build_shards(b, 10, Counting(), LIMITS, "fp")
    assert _tars(a) == _tars(b)
    again = Counting()
    build_shards(a, 10, again, LIMITS, "fp")
    assert again.calls == []


def test_deleted_shard_is_rebuilt_alone_and_identical(tmp_path):
    build_shards(tmp_path, 10, Counting(), LIMITS, "fp")
    before = _tars(tmp_path)
    (tmp_path / "shard-000001.tar").unlink()
    again = Counting()
    build_shards(tmp_path, 10, again, LIMITS, "fp")
    assert again.calls == [4, 5, 6, 7]
    assert _tars(tmp_path) == before


def test_changed_inputs_rebuild_and_stale_shards_go(tmp_path):
    build_shards(tmp_path, 10, Counting(), LIMITS, "fp1")
    again = Counting(tasks.TEXT2IMAGE)
    stats = build_shards(tmp_path, 5, again, LIMITS, "fp2")
    assert again.calls == list(range(5))
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [
        "shard-000000.json", "shard-000000.tar", "shard-000001.json", "shard-000001.tar"]
    assert stats["tasks"] == {tasks.TEXT2IMAGE: 5}


def test_none_items_are_counted_as_skipped(tmp_path):
    stats = build_shards(tmp_path, 6, lambda i: None if i % 3 == 0 else synthetic_sample(i), LIMITS, "fp")
    assert stats["samples"] == 4 and stats["skipped"] == 2


_KILL_SCRIPT = """
import importlib.util, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("helpers", sys.argv[3])
helpers = importlib.util.module_from_spec(spec); spec.loader.exec_module(helpers)
synthetic_sample = helpers.synthetic_sample
from onegen.shards.writer import ShardLimits, build_shards
def make(i):
    if i == int(sys.argv[2]):
        print("stalling", flush=True)
        time.sleep(60)
    return synthetic_sample(i)
build_shards(Path(sys.argv[1]), 12, make, ShardLimits(4, 1 << 30), "fp")
"""


def test_killed_writer_leaves_no_partial_shard_and_resumes(tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(out), "6", str(CONFTEST)], stdout=subprocess.PIPE,
                            cwd=tmp_path)
    assert proc.stdout.readline().strip() == b"stalling"  # mid-shard 1: items 4, 5 written, 6 pending
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    visible = sorted(p.name for p in out.glob("shard-*"))
    assert visible == ["shard-000000.json", "shard-000000.tar"]
    assert list(out.glob(".shard-000001.tar.tmp"))  # the partial shard exists only under its hidden name
    resumed = Counting()
    build_shards(out, 12, resumed, LIMITS, "fp")
    assert resumed.calls == list(range(4, 12))
    assert not list(out.glob(".*.tmp"))
    clean = tmp_path / "clean"
    build_shards(clean, 12, Counting(), LIMITS, "fp")
    assert _tars(out) == _tars(clean)


@pytest.mark.parametrize("corruption", ["truncate", "flip"])
def test_damaged_finished_shard_is_detected_and_rebuilt(tmp_path, corruption):
    build_shards(tmp_path, 8, Counting(), LIMITS, "fp")
    before = _tars(tmp_path)
    p = tmp_path / "shard-000000.tar"
    data = bytearray(p.read_bytes())
    if corruption == "truncate":
        data = data[: len(data) // 2]
    else:
        data[1000] ^= 0xFF
    p.write_bytes(bytes(data))
    again = Counting()
    build_shards(tmp_path, 8, again, LIMITS, "fp")
    assert again.calls == [0, 1, 2, 3] and _tars(tmp_path) == before
