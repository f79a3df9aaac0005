"""Ahead: items made in worker processes, handed out in order; the world stage built with it
writes the bytes a one-process build writes, and resumes after a lost shard."""

import hashlib
import os
import sys
from functools import partial

import pytest
import yaml

from onegen.config import parse_params, profile_path
from onegen.shards.ahead import Ahead
from pipelines import world


# The workers import what they run: builtins here, as a test module is not importable from them.
square = partial(pow, exp=2)


def test_in_order_across_workers_and_restarts_after_a_jump():
    with Ahead(square, 40, workers=2, window_per_worker=3) as make:
        assert make.pool is not None
        first = [make(i) for i in range(10)]
        after_jump = [make(i) for i in (25, 26, 27)]
        back = make(3)
    assert first == [i**2 for i in range(10)] and after_jump == [625, 676, 729] and back == 9


def test_one_worker_or_few_items_stay_in_this_process():
    for workers, n in ((1, 100), (4, 10)):
        with Ahead(square, n, workers) as make:
            assert make(3) == 9 and make.pool is None


def test_a_script_read_from_stdin_makes_items_here(monkeypatch):
    monkeypatch.setattr(sys.modules["__main__"], "__file__", "<stdin>", raising=False)
    with Ahead(square, 100, workers=4) as make:
        assert make(7) == 49 and make.pool is None


def test_dead_workers_are_one_line_naming_the_setting():
    with Ahead(os._exit, 40, workers=2) as make:  # a worker that ends mid-item, as an out-of-memory kill does
        with pytest.raises(RuntimeError, match=r"worker processes making items died .*build.cpu_workers: 1"):
            make(0)


def test_errors_of_an_item_reach_the_caller():
    with Ahead(partial(divmod, 10), 40, workers=2) as make:
        assert make(5) == (2, 0)
        with pytest.raises(ZeroDivisionError):
            make(0)  # a jump back to 0: the window restarts there and its first item fails


def _world_params(root, workers):
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["world"].update(scenes=14, id_groups=4, resolution=24, views_per_scene=2, records_per_shard=5)
    d["build"]["cpu_workers"] = workers
    return parse_params(d)


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*.tar"))}


def test_world_rendered_in_workers_equals_one_process_and_resumes(tmp_path):
    one, two = _world_params(tmp_path / "one", 1), _world_params(tmp_path / "two", 2)
    world.run(one)
    world.run(two)
    expected = _digests(world.world_dir(one))
    assert len(expected) == 4 and _digests(world.world_dir(two)) == expected
    (world.world_dir(two) / "shard-000002.tar").unlink()  # a lost shard in the middle: a resume jumps to it
    world.run(two)
    assert _digests(world.world_dir(two)) == expected
