"""check_master_weights: on a CPU master weights follow autocast exactly, and an update that never writes the
rounded weights back fails the check (a check that cannot fail would say nothing on the GPU)."""

import json
import subprocess
import sys

import torch

import model.master_adamw as master_adamw
from tests.benchmarks.scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "check_master_weights.py"


def test_the_quick_cpu_run_passes_with_master_weights_on_autocast_s_curve(tmp_path):
    out = tmp_path / "master.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "master weights PASS" in r.stdout
    record = json.loads(out.read_text())
    assert record["passed"] and len(record["losses"]["master"]) == 12 and len(record["curves"]["master"]) == 3
    # CPU autocast: the same products and the same rounding, so the same curve bit for bit
    assert record["losses"]["master"] == record["losses"]["autocast"]
    assert record["autocast_vs_fp32"]["weight_gap_over_travel"] > 0  # bf16 rounds: the yardstick is not zero
    assert record["first_grads_vs_fp32"]["master"]["cosine"] > 0.999


def test_an_update_that_never_writes_the_weights_back_fails(monkeypatch):
    check = load_script("check_master_weights")
    update = master_adamw._adamw

    def stale_weights(params, masters, grads, *rest):  # the masters move, the bf16 weights never do
        update(masters, masters, grads, *rest)

    monkeypatch.setattr(master_adamw, "_adamw", stale_weights)
    result = check.check(check.parse_args(["--quick"]), torch.device("cpu"))
    assert not result["passed"]
    gap = result["master_vs_autocast"]
    assert gap["loss_rel_gap_max"] > 10 * result["autocast_vs_fp32"]["loss_rel_gap_max"]
