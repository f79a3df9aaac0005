"""check_train_grads: on a CPU its candidate agrees with the float32 reference, and a wrong gradient, a NaN or an
inverted caption mask comes out SUSPECT (a check that cannot fail would say nothing on the GPU)."""

import json
import subprocess
import sys

import torch

from tests.benchmarks.scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "check_train_grads.py"


def test_the_quick_cpu_run_agrees_with_the_reference_and_flags_the_inverted_mask(tmp_path):
    out = tmp_path / "grads.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [run["text_length"] for run in record["model"]] == [64, 77]
    losses = {run["reference_loss"] for run in record["model"]}
    assert max(losses) - min(losses) < 1e-5  # the same batch but for masked padding
    for run in record["model"]:
        rows = {row["name"]: row for row in run["candidates"]}
        eager = rows["eager"]
        assert eager["loss_rel_diff"] < 1e-5 and eager["suspect_groups"] == []
        assert all(g["cosine"] > 0.999 for g in eager["groups"].values()), eager["groups"]
        assert {"cross wk_y", "cross wv_y", "cross ky_norm", "cross gate", "wq (self+cross queries)", "self wk",
                "wo", "ffn", "adaLN (blocks)", "x_embedder", "y_embedder (pooled caption)"} <= set(eager["groups"])
        assert "no CUDNN_ATTENTION kernel" in rows["eager+cudnn"]["skipped"]  # said so, not silently dropped
        control = rows["control:inverted-mask"]
        assert control["text_path_suspect"] and {"cross wk_y", "cross wv_y"} <= set(control["suspect_groups"])
    assert any("control flagged" in line for line in record["verdict"])
    ops = [row for row in record["cross_attention_op"] if row["backend"] in ("default", "MATH")]
    assert len(ops) == 4 and not any(row["suspect"] for row in ops)
    assert all(row[w]["cosine"] > 0.999 and row[w]["masked_key_leak"] == 0 for row in ops for w in ("dk", "dv"))
    assert record["verdict"][-1] == "cross-attention op: ok"


def test_a_corrupted_group_a_nan_and_a_missing_gradient_are_suspect():
    check = load_script("check_train_grads")
    torch.manual_seed(0)
    model, _ = check.build_model("tiny", 0, None)
    batch = check.make_batch("tiny", 4, 64, 2, torch.device("cpu"))
    _, grads = check.training_step(model, batch, check.REFERENCE, torch.device("cpu"))
    assert all(g.norm() > 0 for n, g in grads.items() if check.parameter_group(n) in ("cross wk_y", "cross wv_y"))

    same = check.compare_gradients(grads, {n: g.clone() for n, g in grads.items()})
    assert not any(row["suspect"] for row in same.values())

    corrupted = {n: g.clone() for n, g in grads.items()}
    for name in corrupted:
        if check.parameter_group(name) == "cross wv_y":  # as much noise as gradient: cosine ~0.7
            corrupted[name] += torch.randn_like(corrupted[name]) * corrupted[name].norm() / corrupted[name].numel()**0.5
    groups = check.compare_gradients(grads, corrupted)
    assert [g for g, row in groups.items() if row["suspect"] and g != "all parameters"] == ["cross wv_y"]
    assert groups["cross wv_y"]["cosine"] < 0.9 and groups["cross wk_y"]["cosine"] == 1.0

    broken = {n: g.clone() for n, g in grads.items()}
    broken["layers.1.attention.wk_y.weight"][0, 0] = float("nan")
    broken["layers.0.attention.gate"].zero_()  # no gradient reaching the gates, as at a zero init
    groups = check.compare_gradients(grads, broken)
    assert groups["cross wk_y"]["suspect"] and groups["cross wk_y"]["nonfinite"] == 1
    assert groups["cross gate"]["suspect"] and groups["cross gate"]["worst_tensor"] == "layers.0.attention.gate"


def test_random_weights_open_every_gradient_path_the_zero_init_closes():
    check = load_script("check_train_grads")
    cpu = torch.device("cpu")
    batch = check.make_batch("tiny", 4, 64, 2, cpu)
    torch.manual_seed(0)
    plain = check.NextDiT(check.CONFIGS["tiny"])
    _, grads = check.training_step(plain, batch, check.REFERENCE, cpu)
    assert grads["layers.0.attention.wk_y.weight"].norm() == 0  # blind: the zero gates pass nothing to the caption
    model, origin = check.build_model("tiny", 0, None)
    assert origin["zero_init_randomised"] > 0 and all(p.count_nonzero() > 0 for p in model.parameters())
    assert batch["text_mask"].sum(1).tolist() == batch["lengths"] and batch["lengths"][0] == 1
    assert (batch["text"][:, max(batch["lengths"]):] == 0).all()  # pad_text's zeros after the encoder's own padding
