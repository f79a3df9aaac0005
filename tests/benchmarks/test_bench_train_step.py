"""bench_train_step's reference row (another version of model/nextdit.py timed beside ours in one process) and its
master-weights row."""

import re
import shutil
import sys

import pytest

from tests.benchmarks.scripts import BENCHMARKS, load_script


def test_reference_rows_alternate_with_ours_and_the_ratio_is_the_rounds_median(tmp_path, monkeypatch, capsys):
    reference = tmp_path / "nextdit_before.py"
    shutil.copy(BENCHMARKS.parent / "model" / "nextdit.py", reference)
    bench = load_script("bench_train_step")
    reference_class = bench.reference_model_class(str(reference))
    assert reference_class is not bench.NextDiT and reference_class.__module__ == "reference_nextdit"

    monkeypatch.setattr(sys, "argv", ["bench_train_step.py", "--quick", "--modes", "eager", "--rows", "ours,master",
                                      "--steps", "1", "--rounds", "2", "--reference", str(reference)])
    measure = bench.measure

    def measure_after_the_file_went(*args, **kwargs):  # a device call that syncs the tree mid-job drops it
        reference.unlink(missing_ok=True)
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench, "measure", measure_after_the_file_went)
    bench.main()
    out = capsys.readouterr().out
    ours, before = "ours, Lumina2 shape (1 view)", "ours, reference nextdit_before.py (1 view)"
    master = "ours, master weights (1 view)"
    rows = re.findall(r"^(ours, .+ \(1 view\)) +compile=None +\d+\.\d+ img/s", out, re.M)
    assert rows == [ours, master, before, before, master, ours]  # the reference first in the second round
    assert re.search(r"ratio ours with master weights/ours img/s \(compile=None\): \d+\.\d+ \(rounds: ", out)
    found = re.search(r"ratio ours/reference img/s \(compile=None\): (\d+\.\d+) \(rounds: (\d+\.\d+), (\d+\.\d+)\)", out)
    median, first, second = map(float, found.groups())
    assert median == pytest.approx((first + second) / 2, abs=1e-3)
    assert "ratio ours/diffusers" not in out  # no lumina row asked for


def test_the_trainer_row_clips_and_updates_the_ema_of_the_masters(monkeypatch, capsys):
    bench = load_script("bench_train_step")
    updates = []

    class CountedEMA(bench.EMA):
        def update(self, step):
            updates.append(len(self.params))
            super().update(step)

    monkeypatch.setattr(bench, "EMA", CountedEMA)
    clip_gradients, clips = bench.clip_gradients, []
    monkeypatch.setattr(bench, "clip_gradients", lambda *a: clips.append(clip_gradients(*a)) or clips[-1])
    monkeypatch.setattr(sys, "argv", ["bench_train_step.py", "--quick", "--modes", "eager", "--rows", "master,trainer",
                                      "--steps", "2"])
    bench.main()
    out = capsys.readouterr().out
    rows = re.findall(r"^(ours, .+ \(1 view\)) +compile=None +\d+\.\d+ img/s", out, re.M)
    assert rows == ["ours, master weights (1 view)", "ours, master weights + clip + EMA (1 view)"]
    assert re.search(r"ratio ours with clip and EMA/ours with master weights img/s \(compile=None\): \d+\.\d+$", out, re.M)
    # the trainer row only, every step of its warm-up and timing (the EMA over every parameter's master)
    assert len(updates) == 1 + 2 and len(set(updates)) == 1 and updates[0] > 0
    assert len(clips) == 1 + 2 and all(norm > 0 for norm in clips)
