"""Scale-out of the trainer: N GPUs against one GPU of the same machine, same process tree.

    python benchmarks/bench_scaleout.py --gpus 2 --steps 120 --micro-batch 32 --resolution 256

Builds a small procedural world, its shards and their latents (the trainer reads latents), then
trains the model (``--size``, default ``small``) three times with ``torchrun`` (``--parallel``, FSDP2 by
default, or DDP; bf16):
  (a) 1 GPU, global batch N*b via N gradient-accumulation micro-steps  -> the loss reference;
  (b) N GPUs, global batch N*b, one micro-step each                    -> same samples, same seeds;
  (c) 1 GPU, global batch b                                            -> the per-GPU throughput reference.
Prints the largest loss difference between (a) and (b) (the trainer seeds data and noise per
rank x micro-step slot, so they see identical samples) and the throughput ratio (b)/(c).

With ``--gpus 1``, (a), (b) and (c) are the same training: it runs twice ((c) is (a)), and their loss
difference is the run-to-run noise an N-GPU difference should be read against. ``--gpus 1 --parallel
ddp`` is also the one-GPU check of DDP as the trainer runs it by default in bf16 (torchrun's single rank
still joins a process group and wraps DDP), with master weights (train.master_weights auto). With N > 1,
DDP trains without them in all three runs: the reference's gradient accumulation cannot hold them, and
the loss curves should differ by the parallelism alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from model.train import find_checkpoint
from onegen.config import FAMILIES, load_params, profile_path


def run(root: Path, name: str, nproc: int, batch: int, accum: int, steps: int, base: dict,
        families: list[str], parallel: str, master_weights: bool | str) -> tuple[list[dict], dict]:
    """One torchrun training from scratch; its metrics.jsonl rows and its last checkpoint's meta.json."""
    shutil.rmtree(root / name, ignore_errors=True)  # the trainer would resume an earlier run's checkpoint
    d = json.loads(json.dumps(base))
    d["paths"]["reports"] = str(root / name / "reports")
    d["train"].update(stages=[{"name": "mixed", "families": families, "steps": steps, "batch_size": batch}],
                      grad_accum=accum, out_dir=str(root / name / "ck"), checkpoint_every=steps, log_every=5,
                      parallel=parallel, precision="bf16", warmup_steps=5, master_weights=master_weights)
    p = root / name / "params.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(d))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "model.train", "--params", str(p)]
    print("$ torchrun", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    rows = [json.loads(line) for line in (root / name / "reports/train/metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((find_checkpoint(root / name / "ck") / "meta.json").read_text())


def throughput(rows: list[dict]) -> float:
    """Samples/s over the second half of the logged windows: their samples over their time. A window
    of d steps holds d global batches, so each rate weighs by d (the last window can be shorter); a
    window stalled on input weighs what it cost, which an arithmetic mean of rates would hide."""
    steps = [0] + [r["step"] for r in rows]
    windows = [(b - a, r["samples_per_s"]) for a, b, r in zip(steps, steps[1:], rows)]
    late = windows[len(windows) // 2:]
    return sum(d for d, _ in late) / sum(d / rate for d, rate in late)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=256, help="world image size (latents are 1/8 of it)")
    ap.add_argument("--parallel", choices=("fsdp2", "ddp"), default="fsdp2", help="how the ranks share the model")
    ap.add_argument("--scenes", type=int, default=64, help="procedural world scenes")
    ap.add_argument("--size", default="small", help="model size from model.nextdit.CONFIGS")
    ap.add_argument("--loader-workers", type=int, default=8, help="data loader workers per rank")
    # three families, single-view, depth and multiview: each family's shards and latents take a minute or two to
    # build on a GPU host, and the trainer's scaling does not depend on how many families feed it
    ap.add_argument("--families", default="text2image,depth,multiview", help=f"comma list of {','.join(FAMILIES)}")
    ap.add_argument("--root", type=Path, default=Path("/tmp/onegen_scaleout"))
    ap.add_argument("--json", type=Path, default=Path("runs/bench_scaleout.json"))
    args = ap.parse_args()
    families = args.families.split(",")
    if unknown := set(families) - set(FAMILIES):
        ap.error(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    root = args.root
    base = yaml.safe_load(profile_path("default").read_text())
    base["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    # the default's 16 identities for 64 scenes: each identity recurs in a few scenes, whatever --scenes is
    base["world"].update(scenes=args.scenes, id_groups=min(16, args.scenes // 4), resolution=args.resolution)
    if importlib.util.find_spec("ray") is None:  # GPU images without Ray: the world renders in a process per core
        base["build"].update(executor="local", cpu_workers=max(2, len(os.sched_getaffinity(0))))
    base["model"]["size"] = args.size
    base["reader"]["num_workers"] = args.loader_workers
    (root).mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(base))
    params = load_params(root / "params.yaml")
    from pipelines import latents, shards, world

    world.run(params)
    for fam in families:
        shards.run(params, fam)
        latents.run(params, fam)
    b, n = args.micro_batch, args.gpus
    ref_name = "one_gpu_accum" if n > 1 else "one_gpu_first"
    master_weights = "auto" if n == 1 or args.parallel == "fsdp2" else False
    runs = {"base": base, "families": families, "parallel": args.parallel, "master_weights": master_weights}
    ref, ref_meta = run(root, ref_name, 1, n * b, n, args.steps, **runs)
    multi, multi_meta = run(root, f"{n}_gpus", n, n * b, 1, args.steps, **runs)
    single = run(root, "one_gpu", 1, b, 1, args.steps, **runs)[0] if n > 1 else ref
    diffs = [abs(a["loss"] - m["loss"]) for a, m in zip(ref, multi) if a["step"] == m["step"]]
    t1, tn = throughput(single), throughput(multi)
    report = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
              "parallel": args.parallel, "master_weights": {"reference": ref_meta["master_weights"],
                                                             "multi": multi_meta["master_weights"]},
              "size": args.size, "resolution": args.resolution, "families": families, "gpus": n, "micro_batch": b, "steps": args.steps,
              "loss_max_abs_diff": max(diffs), "logged_steps": len(diffs),
              "final_loss_accum": ref[-1]["loss"], "final_loss_multi": multi[-1]["loss"],
              "samples_per_s_one": t1, "samples_per_s_multi": tn, "ratio": tn / t1, "target_ratio": 1.8 if n > 1 else None,
              "loss_curves": {ref_name: [r["loss"] for r in ref], f"{n}_gpus": [r["loss"] for r in multi]}}
    masters = report["master_weights"]
    print(f"{report['device']}, torch {report['torch']}, model {args.size}, {args.resolution}px world, "
          f"{args.parallel.upper()} bf16, master weights: reference {masters['reference']}, {n} GPU(s) {masters['multi']}")
    compared = f"1 GPU x {n} accumulation vs {n} GPUs" if n > 1 else "1 GPU, the same run twice"
    print(f"loss curve, {compared} (same global batch {n * b}, seed): max |diff| {max(diffs):.2e} over "
          f"{len(diffs)} logged steps; final {ref[-1]['loss']:.4f} vs {multi[-1]['loss']:.4f}")
    if n > 1:
        print(f"throughput: 1 GPU {t1:.1f} samples/s, {n} GPUs {tn:.1f} samples/s, ratio {tn / t1:.2f} (target 1.8)")
    else:
        print(f"throughput: first run {t1:.1f} samples/s, second {tn:.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")

if __name__ == "__main__":
    sys.exit(main())
