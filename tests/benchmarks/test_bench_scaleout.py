"""bench_scaleout: throughput over logged windows of unequal length, and its one-GPU run (twice the same training)."""

import json
import sys

import pytest

from tests.benchmarks.scripts import load_script


def test_throughput_is_samples_over_time_of_the_second_half():
    throughput = load_script("bench_scaleout").throughput
    # windows of 5, 5, 5, 5 and a last one of 1 step; 10 samples a step
    rows = [{"step": s, "samples_per_s": r} for s, r in zip((5, 10, 15, 20, 21), (1.0, 1.0, 50.0, 25.0, 100.0))]
    late_steps, late_seconds = 5 + 5 + 1, 50 / 50 + 50 / 25 + 10 / 100  # windows 3..5: samples / rate
    assert throughput(rows) == pytest.approx(10 * late_steps / late_seconds)
    assert throughput(rows) < (50 + 25 + 100) / 3  # a stalled window is not averaged away


def test_one_gpu_runs_the_same_training_twice_and_reports_what_it_trained(tmp_path, monkeypatch):
    """--gpus 1 (the one-GPU DDP check) on the CPU: two torchrun trainings of the same config, whose loss curves
    match exactly here (the CPU's kernels are deterministic), the masters flag read from their checkpoints."""
    out = tmp_path / "report.json"
    monkeypatch.setattr(sys, "argv", ["bench_scaleout.py", "--gpus", "1", "--parallel", "ddp", "--size", "tiny",
                                      "--steps", "6", "--micro-batch", "4", "--scenes", "4", "--resolution", "32",
                                      "--families", "text2image", "--loader-workers", "0", "--root", str(tmp_path),
                                      "--json", str(out)])
    load_script("bench_scaleout").main()
    report = json.loads(out.read_text())
    assert (report["parallel"], report["gpus"], report["target_ratio"]) == ("ddp", 1, None)
    assert report["master_weights"] == {"reference": False, "multi": False}  # a CPU run trains fp32
    assert set(report["loss_curves"]) == {"one_gpu_first", "1_gpus"}
    assert report["logged_steps"] == 2 and report["loss_max_abs_diff"] == 0.0
    assert all(curve[-1] > 0 for curve in report["loss_curves"].values())
