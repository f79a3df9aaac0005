"""bench_train_step's reference row: another version of model/nextdit.py timed beside ours in one process."""

import re
import shutil
import sys

from tests.benchmarks.scripts import BENCHMARKS, load_script


def test_reference_row_times_another_model_file_and_prints_the_ratio(tmp_path, monkeypatch, capsys):
    reference = tmp_path / "nextdit_before.py"
    shutil.copy(BENCHMARKS.parent / "model" / "nextdit.py", reference)
    bench = load_script("bench_train_step")
    reference_class = bench.reference_model_class(str(reference))
    assert reference_class is not bench.NextDiT and reference_class.__module__ == "reference_nextdit"

    monkeypatch.setattr(sys, "argv", ["bench_train_step.py", "--quick", "--modes", "eager", "--rows", "ours",
                                      "--steps", "1", "--reference", str(reference)])
    bench.main()
    out = capsys.readouterr().out
    assert re.search(r"^ours, reference nextdit_before\.py \(1 view\) +compile=None +\d+\.\d+ img/s", out, re.M)
    ratio = float(re.search(r"ratio ours/reference img/s \(compile=None\): (\d+\.\d+)", out).group(1))
    assert ratio > 0
    assert "ratio ours/diffusers" not in out  # no lumina row asked for
