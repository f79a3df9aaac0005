"""The trainer itself (``onegen train``) with its blocks compiled as usual and as CUDA graphs, side by side.

    python benchmarks/bench_train_cudagraphs.py                    # `small`, text2image latents, batch 64, 300 steps
    python benchmarks/bench_train_cudagraphs.py --size tiny --steps 20 --batch 4 --device-check off   # CPU smoke

``bench_step_overhead.py`` times one step of the trainer's shape; this runs the real loop on the committed default
profile's text2image shards (``dvc repro`` makes them; carry ``data/shards/text2image`` to a GPU host), encoded once
by ``onegen latents`` with ``--size``'s text width into a folder of its own (the profile's cached features are
`tiny`'s): data loading, caption dropout, the loss, clipping, AdamW, EMA, logging, ``train.compile_mode`` default
and then reduce-overhead, each in a fresh process from the same seed. Prints each run's samples/s after its first logged
window (compiles left out), the ratio, and the largest difference of the logged losses: a CUDA-graphs run that
computes something else shows there. Random-weight encoders: a timing, not a result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("default", "reduce-overhead")


def write_params(args: argparse.Namespace, work: Path, mode: str) -> Path:
    """The committed params with ``work/data`` as the data folder (its shards those of this checkout), ``--size``, and
    one text2image stage compiled in ``mode``."""
    import yaml

    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    d["paths"] = {"data": str(work / "data"), "reports": str(work / mode / "reports")}
    d["model"]["size"] = args.size
    d["reader"].update(num_workers=args.workers, batch_size=args.batch)
    d["train"].update(stages=[{"name": "t2i", "families": ["text2image"], "steps": args.steps,
                               "batch_size": args.batch}], compile=True, compile_mode=mode, latents=True,
                      log_every=args.log_every, checkpoint_every=args.steps, out_dir=str(work / mode / "ckpt"))
    params = work / f"{mode}.yaml"
    params.write_text(yaml.safe_dump(d))
    return params


def run_onegen(*argv: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "onegen", *map(str, argv)], cwd=ROOT, check=True)


def run_one(args: argparse.Namespace, mode: str, work: Path) -> list[dict]:
    """``onegen train`` in a process of its own (fresh Dynamo state) with ``mode``; its logged records."""
    run_onegen("train", "-p", write_params(args, work, mode))
    lines = (work / mode / "reports" / "train" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--device-check", choices=("on", "off"), default="on", help="refuse to run without a GPU")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    if args.device_check == "on" and not torch.cuda.is_available():
        sys.exit("bench_train_cudagraphs: no GPU (CUDA graphs are a GPU matter; --device-check off for a smoke run)")
    shards = ROOT / "data" / "shards" / "text2image"
    if not shards.is_dir():
        sys.exit(f"bench_train_cudagraphs: no {shards.relative_to(ROOT)} (run `dvc repro`, or carry it to this host)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "data" / "shards").mkdir(parents=True)
        (work / "data" / "shards" / "text2image").symlink_to(shards)
        run_onegen("latents", "text2image", "-p", write_params(args, work, MODES[0]))  # once, for both modes
        logs = {mode: run_one(args, mode, work) for mode in MODES}
    out: dict = {"size": args.size, "batch": args.batch, "steps": args.steps}
    for mode, records in logs.items():
        steady = records[1:] or records  # the first window holds the compiles
        out[mode] = {"samples_per_s": round(sum(r["samples_per_s"] for r in steady) / len(steady), 1),
                     "loss": [round(r["loss"], 5) for r in records]}
        print(f"{mode:16s} {out[mode]['samples_per_s']:9.1f} samples/s  losses {out[mode]['loss']}")
    a, b = (logs[m] for m in MODES)
    out["ratio"] = round(out[MODES[1]]["samples_per_s"] / out[MODES[0]]["samples_per_s"], 3)
    out["max_loss_difference"] = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
    print(f"reduce-overhead {out['ratio']:.2f}x the default's samples/s; logged losses differ by at most "
          f"{out['max_loss_difference']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
