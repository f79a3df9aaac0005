"""bench_train_step's reference row (another version of model/nextdit.py timed beside ours in one process), its
master-weights row and its trainer row (master weights with the trainer's clipping and EMA)."""

import re
import shutil
import sys

import pytest
import torch

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


def test_the_trainer_row_clips_before_the_update_and_averages_the_masters_after_it(monkeypatch, capsys):
    bench = load_script("bench_train_step")
    calls, averaged = [], []

    class RecordedEMA(bench.EMA):
        def __init__(self, named, decay):
            super().__init__(named, decay)
            averaged.extend(self.params)

        def update(self, step):
            calls.append("ema")
            super().update(step)

    class RecordedAdamW(bench.MasterWeightAdamW):
        def step(self, closure=None):
            calls.append("step")
            return super().step(closure)

    clip_gradients = bench.clip_gradients

    def recorded_clip(*args):
        calls.append("clip")
        return clip_gradients(*args)

    monkeypatch.setattr(bench, "EMA", RecordedEMA)
    monkeypatch.setattr(bench, "MasterWeightAdamW", RecordedAdamW)
    monkeypatch.setattr(bench, "clip_gradients", recorded_clip)
    monkeypatch.setattr(sys, "argv", ["bench_train_step.py", "--quick", "--modes", "eager", "--rows", "master,trainer",
                                      "--steps", "2"])
    bench.main()
    out = capsys.readouterr().out
    rows = re.findall(r"^(ours, .+ \(1 view\)) +compile=None +\d+\.\d+ img/s", out, re.M)
    assert rows == ["ours, master weights (1 view)", "ours, master weights + clip + EMA (1 view)"]
    assert re.search(r"ratio ours with master weights, clip and EMA/ours with master weights img/s "
                     r"\(compile=None\): \d+\.\d+$", out, re.M)
    # the master row's warm-up and timed steps (1 + 2) alone, then the trainer row's, each clipped and averaged
    assert calls == ["step"] * 3 + ["clip", "step", "ema"] * 3
    # the masters of the lowered (linear) weights are the optimizer's tensors, not the model's parameters
    assert any(not isinstance(w, torch.nn.Parameter) for w in averaged)
    assert all(w.dtype == torch.float32 for w in averaged)
