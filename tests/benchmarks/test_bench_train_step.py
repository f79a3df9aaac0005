"""bench_train_step's reference row: another version of model/nextdit.py timed beside ours in one process."""

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

    monkeypatch.setattr(sys, "argv", ["bench_train_step.py", "--quick", "--modes", "eager", "--rows", "ours",
                                      "--steps", "1", "--rounds", "2", "--reference", str(reference)])
    bench.main()
    out = capsys.readouterr().out
    ours, before = "ours, Lumina2 shape (1 view)", "ours, reference nextdit_before.py (1 view)"
    rows = re.findall(r"^(ours, .+ \(1 view\)) +compile=None +\d+\.\d+ img/s", out, re.M)
    assert rows == [ours, before, before, ours]  # the reference first in the second round
    found = re.search(r"ratio ours/reference img/s \(compile=None\): (\d+\.\d+) \(rounds: (\d+\.\d+), (\d+\.\d+)\)", out)
    median, first, second = map(float, found.groups())
    assert median == pytest.approx((first + second) / 2, abs=1e-3)
    assert "ratio ours/diffusers" not in out  # no lumina row asked for
