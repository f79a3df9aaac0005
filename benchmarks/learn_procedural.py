"""Proof that OneDiffusion learns: train ``small`` on the procedural world, score held-out scenes.

    python benchmarks/learn_procedural.py --out runs/learn --train-minutes 8      # one GPU

1. render a training world (its own seed) and build the text2image, depth and multiview shards;
2. fit a small SD3-style ``AutoencoderKL`` (16 latent channels, /8) on the world's images and
   depth maps, because there is no offline pretrained VAE and a random one cannot be learned through,
   its objects' pixels weighted up (``--vae-object-weight``: a plain fit loses their colours);
   then standardise its latent channels on held-out images (``--latent-norm``);
3. encode the shards into latent shards with it (and the prompts' text features), as the
   ``latents`` stage does;
4. train the ``small`` Next-DiT (≈62 M parameters) with the project's trainer for a fixed number
   of steps sized to fit ``--train-minutes`` (measured on a probe run) or given (``--steps``, and
   ``--vae-steps`` for step 2: runs on different devices then train alike), at ``--sigma-shift`` and
   ``--condition-prob`` (defaults 1 and 0.5, not the paper-scale profile's 3 and 0: see their help),
   the three families mixed from the start or, with ``--t2i-first``, text2image alone first as the paper;
5. evaluate on the held-out world editions (``evals.world``: a different seed stream) with the
   model predictor beside each benchmark's baseline: image→depth AbsRel/δ1 against the best
   constant depth, 1-view→novel-view PSNR/SSIM against copying the input view (at ``--cfg`` and,
   as its prompt is a generic one, unguided too), depth→image by Canny edge agreement with the true
   image against a random scene's (``world_conditions``' ``depth_edges``), and text→image by
   GenEval's rules on world prompts (a YOLO trained on world renders judges; the random-scene
   baseline is the floor, the oracle render the ceiling, and the oracle after a round trip through
   the fitted VAE the ceiling of any model generating in its latents);
6. sample a PNG grid (image, depth, text→image, depth→image, image→depth) from held-out scenes.

The text encoder stays the seeded-random tiny T5 (a fixed random feature map of the prompt's
words, frozen): results say ``weights: random`` for that reason. Everything else is learned
here, and ``learn_procedural.json`` records every figure with the command that made it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import train as trainer  # noqa: E402
from onegen.config import Params, load_profile  # noqa: E402
from onegen.format import decode_sample  # noqa: E402
from onegen.shards.reader import (ReadReport, depth_to_condition, iter_tar_samples, sample_to_tensors,  # noqa: E402
                                  shard_urls)
from onegen.shards.writer import atomic_write_bytes  # noqa: E402
from onegen.pixels import pixels_to_tensor, tensor_to_pixels  # noqa: E402
from onegen.sources.procedural import COLORS as WORLD_COLOURS  # noqa: E402
from evals.geneval import world_detector  # noqa: E402
from evals.geneval.benchmark import WorldGenEval  # noqa: E402
from evals.predictors import make_predictor  # noqa: E402
from evals.model_predictor import load_transformer  # noqa: E402
from pipelines import evaluate, latents, sample, shards, world  # noqa: E402
from benchmarks.gpu_profile import StepProfile, print_step_profile  # noqa: E402
from benchmarks.prompt_reliance import prompt_reliance  # noqa: E402
from benchmarks.world_vae import (LATENT_NORMS, fit_autoencoder, normalise_latents,  # noqa: E402
                                  object_colours_kept, round_trips)
from model.vae import LatentCodec  # noqa: E402

FAMILIES = ["text2image", "depth", "multiview"]


def stages(steps: int, t2i_first: float, batch: int, t2i_batch: int | None = None) -> list[dict]:
    """One mixed stage, or the paper's order (its "Training details": text-to-image alone first, then the
    task mix) with ``t2i_first`` of the steps in the first, at ``t2i_batch`` samples a step (default ``batch``)."""
    first = round(steps * t2i_first)
    mixed = {"name": "mixed", "families": FAMILIES, "steps": steps - first, "batch_size": batch, "caption_dropout": 0.1}
    if not first:
        return [mixed]
    if first >= steps:
        raise ValueError(f"--t2i-first {t2i_first} leaves none of the {steps} steps to the task mix")
    return [{**mixed, "name": "t2i", "families": ["text2image"], "steps": first,
             "batch_size": batch if t2i_batch is None else t2i_batch}, mixed]


def steps_for_minutes(minutes: float, seconds_per_step: dict[str, float], t2i_first: float) -> int:
    """Steps of a run of ``minutes`` whose stages (``"t2i"``, ``"mixed"``, as ``stages`` names them) take
    ``t2i_first`` and the rest of its steps at their own ``seconds_per_step``; at least 60."""
    shares = {"t2i": t2i_first, "mixed": 1 - t2i_first}
    per_step = sum(shares[name] * seconds for name, seconds in seconds_per_step.items())
    return max(int(minutes * 60 / per_step), 60)


def make_params(args) -> Params:
    base = load_profile("default").model_dump(mode="json")
    out = Path(args.out)
    base["paths"] = {"data": str(out / "data"), "reports": str(out / "reports")}
    base["world"].update(scenes=args.scenes, views_per_scene=args.views, id_groups=0, resolution=args.resolution,
                         records_per_shard=256, min_objects=args.objects[0], max_objects=args.objects[1])
    if args.caption_colours is not None:
        base["world"]["caption_colours"] = args.caption_colours
    base["shards"]["max_samples_per_shard"] = 1024
    if args.ray_cpus:  # shards in parallel: the same bytes as one process, in a fraction of the time
        base["build"].update(executor="ray", num_cpus=args.ray_cpus, cpu_workers=args.ray_cpus)
    else:  # the world renders in a process per core (the profile's 2 left a 16-core host mostly idle)
        base["build"].update(executor="local", cpu_workers=max(2, len(os.sched_getaffinity(0))))
    base["shards"]["families"] = {f: {"enabled": f in FAMILIES, "sources": ["world"], "max_samples": None}
                                  for f in base["shards"]["families"]}
    base["model"].update(size=args.size, vae=str(out / "vae"))
    base["latents"]["batch_size"] = 64  # 128² views: bigger VAE batches than the default's, fewer launches and syncs
    # shards hold each scene's 8 views side by side: the profile's buffer of 256 would fill a text2image batch of
    # 256 from a few dozen scenes whose views' prompts name the same objects; 4096 (~0.4 GB a worker) from hundreds
    base["reader"].update(batch_size=args.batch, num_workers=args.workers, shuffle_buffer=4096)
    # 16 items a call: 64 world GenEval images, or 16 objects of 8 views and their rays at 128²: SAMPLE_TOKENS
    base["evals"].update(sampling_steps=args.sampling_steps, cfg_scale=args.cfg, batch_size=16)
    base["evals"]["world"].update(items=args.eval_items, resolution=args.resolution, nvs_views=args.views,
                                  conditions=["depth_edges"])  # canny->image is no task of this run
    base["train"].update(
        stages=stages(args.steps, args.t2i_first, args.batch, args.t2i_batch),
        # keep 4: the text2image stage's last checkpoint (scored on its own) may be older than the mid-run one, an odd
        # run's last but one and the final one
        lr=args.lr, warmup_steps=100, checkpoint_every=max(args.steps // 2, 1), log_every=25, keep_checkpoints=4,
        out_dir=str(out / "checkpoints"), compile=args.compile, compile_mode=args.compile_mode, ema_decay=0.999,
        sigma_shift=args.sigma_shift, condition_prob=args.condition_prob, master_weights=args.master_weights)
    return Params.model_validate(base)


def world_views(params: Params, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images and depth-condition maps of the training world, [N, 3, H, W] in [-1, 1]; the instance map of each
    one's view, [N, H, W] (0 the background); and which of them are images, [N]."""
    out, instances, is_image = [], [], []
    for raw in (raw for url in shard_urls(world.world_dir(params)) for raw in iter_tar_samples(url, ReadReport())):
        pending = []  # a view's image and depth come before its instance map
        for v in decode_sample(raw).views:
            if v.modality == "image":
                pending.append(pixels_to_tensor(v.data))
                is_image.append(True)
            elif v.modality == "depth":
                pending.append(depth_to_condition(v.data.astype(np.float32) * v.meta["depth_scale"]))
                is_image.append(False)
            elif v.modality == "instance":
                out += pending
                instances += [torch.from_numpy(v.data.astype(np.uint8))] * len(pending)
                pending = []
        if pending:
            raise ValueError(f"{raw['__key__']}: a view without its instance map")
        if len(out) >= limit:
            break
    n = min(limit, len(out))
    return torch.stack(out[:n]), torch.stack(instances[:n]), torch.tensor(is_image[:n])


def fit_vae(params: Params, seconds: float, device: torch.device, seed: int, latent_norm: str = "channel",
            object_weight: float = 0.0, steps: int | None = None) -> dict:
    """A small SD3-style AutoencoderKL (16 latent channels, /8) fitted on the world's images and depth maps for
    ``seconds`` or ``steps``, whichever ends first (its objects' pixels weighted ``object_weight`` times more:
    ``world_vae.fit_autoencoder``), its latents normalised on 512 held-out ones (``world_vae.normalise_latents``),
    saved to ``model.vae``; the summary says how many of the held-out images' objects keep their colour through it
    (``object_colours_kept``)."""
    data, instances, is_image = world_views(params, 40000)
    if len(data) < 1024:
        raise ValueError(f"the world has {len(data)} images and depth maps: 512 are held out to normalise the "
                         "latents and at least as many are needed to fit on; raise --scenes or --views")
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        block_out_channels=[64, 128, 128, 256], layers_per_block=1, norm_num_groups=32)
    summary = fit_autoencoder(vae, data[:-512], device, seed, seconds=seconds, steps=steps,
                              objects=(instances[:-512] > 0)[:, None], object_weight=object_weight)
    summary.update(normalise_latents(vae, data[-512:], latent_norm))
    held = is_image[-512:]
    images = data[-512:][held]
    summary["held_out_objects"] = object_colours_kept(images, round_trips(vae, images).cpu(), instances[-512:][held],
                                                      WORLD_COLOURS)
    vae.save_pretrained(params.model.vae)
    return summary


def use_world_detector(params: Params, folder: Path) -> None:
    """Copy a world_geneval detector trained elsewhere to where the benchmark looks, if it was trained for this
    run's world and is current (raises ValueError or FileNotFoundError saying what is wrong)."""
    given = json.loads((folder / "metrics.json").read_text())
    if mismatch := world_detector.settings_mismatch(given, params.evals.geneval.world, params.world.resolution):
        raise ValueError(f"trained otherwise than this run's world: {mismatch}")
    world_detector.detector_dir(params).mkdir(parents=True, exist_ok=True)
    for name in ("weights.pt", "metrics.json"):
        shutil.copyfile(folder / name, world_detector.detector_dir(params) / name)
    WorldGenEval(params)  # what its metrics must hold (a detector from before the counting threshold does not)


def scene_of(key: str) -> str:
    """``world/scene_0000012_v3`` -> ``world/scene_0000012``: the scene a text2image view was rendered in."""
    return key.rsplit("_v", 1)[0]


def model_prompt_reliance(params: Params, checkpoint: Path, n: int = 256, sigmas=(0.25, 0.5, 0.75, 0.95)) -> dict:
    """``prompt_reliance`` of the trained checkpoint on ``n`` text2image training latents, one view from each of
    the first ``n`` scenes (shards hold a scene's views side by side, and its views' prompts name the same
    objects), their prompts encoded as the sampler encodes them."""
    pred = make_predictor(f"model:{checkpoint}", params)
    # the checkpoint's float32 weights, as every run so far measured it: sampling in bf16, the predictor holds its
    # linear layers in bf16 for autocast, which this loss runs without
    model = load_transformer(pred.weights, params.model.size, pred.device).eval()
    raws = (raw for url in shard_urls(latents.latents_dir(params, "text2image"))
            for raw in iter_tar_samples(url, ReadReport()))
    firsts: dict[str, dict] = {}
    for raw in raws:
        firsts.setdefault(scene_of(raw["__key__"]), raw)
        if len(firsts) == n:
            break
    found = [sample_to_tensors(decode_sample(raw)) for raw in firsts.values()]
    x = torch.stack([f["views"][0] for f in found])[:, None].to(pred.device)  # [n, 1, C, h, w]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(params.seed)).to(pred.device)
    return prompt_reliance(model, x, noise, [f["prompt"] for f in found], pred.text, sigmas, scenes=list(firsts))


def reports_in(params: Params, folder: Path) -> Params:
    """``params`` writing its evaluations' reports under ``folder``: in the shared folder a second scoring's
    result.json would replace the first's."""
    return params.model_copy(update={"paths": params.paths.model_copy(update={"reports": folder})})


def score_text2image_stage(params: Params, out: Path, geneval: bool) -> dict:
    """Prompt reliance and (``geneval``: its detector is there) world GenEval of the checkpoint that ends the
    text2image stage (its EMA weights, as the final checkpoint's are scored), its reports in a folder of their own."""
    end = params.train.stages[0].steps
    ckpt = params.train.out_dir / trainer.step_dir_name(end)
    scores = {"step": end, "prompt_reliance": model_prompt_reliance(params, ckpt)}
    if geneval:
        scores["world_geneval"] = evaluate.run(reports_in(params, out / "reports_t2i"), "world_geneval",
                                               f"model:{ckpt}")["metrics"]
    return scores


def write_oracle_round_trips(codec: LatentCodec, items: list[dict], folder: Path) -> Path:
    """World GenEval's oracle renders for ``items`` after an encode and decode through ``codec``, written in GenEval's
    folder layout (``folder:`` predictions). Scored, they are the ceiling of a model that generates in that VAE's
    latents: what the round trip keeps of small objects' colours and shapes for the judge to find."""
    shutil.rmtree(folder, ignore_errors=True)  # a stale item would be scored as this VAE's
    oracle = make_predictor("baseline:oracle")
    for it in tqdm(items, desc="oracle through the vae", unit="prompt"):
        renders = np.stack(oracle.generate_images([it])[0])
        x = pixels_to_tensor(renders)
        (folder / it["id"] / "samples").mkdir(parents=True)
        (folder / it["id"] / "metadata.jsonl").write_text(json.dumps({"prompt": it["prompt"]}) + "\n")
        for k, image in enumerate(codec.decode(codec.encode(x))):
            Image.fromarray(tensor_to_pixels(image)).save(folder / it["id"] / "samples" / f"{k}.png")
    return folder


def thread_share() -> int:
    """Torch threads for each of the per-family processes. Each process's torch would start a thread per
    core: three of them oversubscribed the H200 host's 32 cores (beside another job's processes the
    latents stage ran 10x slower than one process alone had), so each gets a share."""
    return max(1, len(os.sched_getaffinity(0)) // len(FAMILIES))


def steady_step_seconds(durations, outlier: float = 3.0) -> tuple[float, int]:
    """Mean step time over the steps no slower than ``outlier`` x the 75th percentile, and how many:
    a step that compiles (torch.compile, each new shape: seconds to a minute) is no cost of the steps
    to come. Session 8's probe timed its steps as one block, compiles included, at 1.7 s a step; its
    training then ran at 0.2 s a step and stopped after 210 steps where ~1800 fitted. The 75th
    percentile, not the median: a batch is of one family, and a third of them (8-view multiview:
    16x a text2image batch's tokens) may cost many times the median step, yet are training."""
    d = np.asarray(durations, dtype=np.float64)
    kept = d[steady(d, outlier)]
    return float(kept.mean()), len(kept)


def steady(durations: np.ndarray, outlier: float = 3.0) -> np.ndarray:
    """Which steps ``steady_step_seconds`` keeps: those no slower than ``outlier`` x the 75th percentile."""
    return durations <= outlier * np.percentile(durations, 75)


def stage_timing(metrics: Path, batches: dict[str, int]) -> dict:
    """Per stage, from the trainer's metrics log: its logged steps, the seconds their windows took, the steady ms
    a step, and the seconds of the windows ``steady`` leaves out (compiles and CUDA-graph captures at a stage's
    new shapes): where a run's train seconds went (session 25's 7915 steps took 651 s where session 24's took 415)."""
    windows: dict[str, list[tuple[int, float]]] = {}  # stage -> (steps, seconds a step) of each logged window
    last = 0
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if row.get("samples_per_s"):
            seconds_a_step = batches[row["stage"]] / row["samples_per_s"]
            windows.setdefault(row["stage"], []).append((row["step"] - last, seconds_a_step))
        last = row["step"]
    timing = {}
    for name, rows in windows.items():
        steps, per_step = np.array([n for n, _ in rows]), np.array([t for _, t in rows])
        kept = steady(per_step)
        timing[name] = {"steps": int(steps.sum()), "seconds": round(float(steps @ per_step), 1),
                        "steady_ms_a_step": round(1000 * float(steps[kept] @ per_step[kept] / steps[kept].sum()), 2),
                        "left_out_seconds": round(float(steps[~kept] @ per_step[~kept]), 1)}
    return timing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/learn")
    ap.add_argument("--size", default="small")
    ap.add_argument("--scenes", type=int, default=3000)
    ap.add_argument("--views", type=int, default=8, help="orbit views per training scene and per NVS item")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--objects", type=int, nargs=2, default=(2, 5), metavar=("LO", "HI"),
                    help="objects per training scene (the profile's 2-5); world GenEval's prompts name 1-4, and its "
                         "single-object prompts describe a scene the 2-5 world never shows. The held-out evaluation "
                         "worlds keep their own 2-6")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=4, help="training data-loader workers")
    ap.add_argument("--ray-cpus", type=int, default=0,
                    help="build the shards with an in-process Ray of this many CPUs (0: one process, no Ray)")
    ap.add_argument("--lr", type=float, default=3e-4)
    # Session 5 trained at the paper's 1024² shift 3 and the profile's condition_prob 0: depth came out
    # right, but the generated images were blobs placed without regard to their depth condition.
    ap.add_argument("--sigma-shift", type=float, default=1.0,
                    help="train σ shift; 1 = the paper's plain LogNorm(0, 1) (shift 3, the 1024² figure, leaves "
                         "~3%% of target views below σ 0.3, and the sampler's dynamic shift at 64 tokens a view is 1.6)")
    ap.add_argument("--condition-prob", type=float, default=0.5,
                    help="share of samples of 2+ views trained as conditional sampling runs them (train.condition_prob)")
    ap.add_argument("--t2i-first", type=float, default=0.0,
                    help="share of the steps trained on text2image alone before the task mix, as the paper's first "
                         "stage (half its steps); 0: the mix from the start, as sessions 8-10 ran")
    ap.add_argument("--t2i-batch", type=int, default=None,
                    help="samples a step of the --t2i-first stage (default --batch): a text2image sample is one view "
                         "of 64 tokens at 128², a multiview sample of the mix 16 views, so a bigger batch costs "
                         "that stage about what a mix step costs")
    ap.add_argument("--steps", type=int, default=0, help="0: size the run to --train-minutes with a probe")
    ap.add_argument("--train-minutes", type=float, default=8.0)
    ap.add_argument("--vae-seconds", type=float, default=120.0)
    ap.add_argument("--vae-steps", type=int, default=0,
                    help="fit the VAE for this many steps instead of --vae-seconds: with --steps, a run that trains "
                         "alike on any device (a run sized by time trains more on a faster one)")
    ap.add_argument("--caption-colours", type=float, default=None,
                    help="the chance that a training caption names colours (world.caption_colours; default the "
                         "profile's)")
    ap.add_argument("--vae-object-weight", type=float, default=50.0,
                    help="the VAE fit counts the objects' pixels this many times more than the background's "
                         "(world_vae.fit_autoencoder); 0: a plain fit, as until session 22, which turned most "
                         "objects brown. probe_text.py's /4 VAE at 32² kept 20%% of the objects' colours plain, 86%% "
                         "at 20 and 89%% at 50, where a model learned colour on its latents as fast as on pixels")
    ap.add_argument("--latent-norm", choices=LATENT_NORMS, default="channel",
                    help="the fitted VAE's latents standardised per channel, or by one shift and scale for all "
                         "channels as SD3's (sessions 5-10 ran global)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", choices=["default", "reduce-overhead"], default="default",
                    help="with --compile: reduce-overhead replays the blocks as CUDA graphs (train.compile_mode; the "
                         "text2image step 2.44x on an H200, bench_step_overhead.py)")
    ap.add_argument("--master-weights", action="store_true",
                    help="bf16 linear weights with their fp32 masters in the optimizer (train.master_weights true); "
                         "without it false, not the trainer's auto, so that a run compares with the runs before it")
    ap.add_argument("--sampling-steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--eval-items", type=int, default=24)
    ap.add_argument("--stage", choices=["all", "data", "vae", "latents", "train", "eval"], default="all")
    ap.add_argument("--world-detector", type=Path,
                    help="a world_geneval detector trained elsewhere for the same world settings (`dvc repro`'s "
                         "data/world_detector), so this machine spends no time training one")
    args = ap.parse_args(argv)
    if args.t2i_batch is not None and not args.t2i_first:
        ap.error("--t2i-batch is the batch of the --t2i-first stage: pass --t2i-first too")
    if args.compile_mode != "default" and not args.compile:
        ap.error("--compile-mode is how --compile compiles: pass --compile too")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "learn_procedural.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["command"] = shlex.join([sys.executable, *sys.argv])
    summary["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"

    def save():  # whole or not at all: detached_suite.sh may copy it while the run goes on
        atomic_write_bytes(summary_path, (json.dumps(summary, indent=1) + "\n").encode())

    def time_stage(params_: Params, stage, profile: StepProfile) -> tuple[float, int, int]:
        # 100 steps, each one timed from step 10 to 90; start-up (data workers, first-batch allocation) and
        # the final checkpoint write stay outside, and so do compiles (see steady_step_seconds); 80 steps
        # average over a mixed stage's families (a multiview step costs more than a text2image one).
        shutil.rmtree(out / "probe", ignore_errors=True)  # a finished probe would resume and time nothing
        probe = params_.model_copy(update={"train": params_.train.model_copy(update={
            "stages": [stage.model_copy(update={"steps": 100})], "out_dir": out / "probe", "checkpoint_every": 1000})})
        # A CUDA event after each step, read at the end: timing without synchronising, which would stop the
        # host from running ahead of the GPU as the trainer does (on a CPU, the host clock is the step's time)
        stamps: list = []

        def stamp(step: int, _model) -> None:
            if 10 <= step <= 90:
                if device.type == "cuda":
                    stamps.append(torch.cuda.Event(enable_timing=True))
                    stamps[-1].record()
                else:
                    stamps.append(time.perf_counter())
            profile.at(step)

        trainer.train(probe, on_step=stamp)
        if device.type == "cuda":
            torch.cuda.synchronize()
            durations = [a.elapsed_time(b) / 1e3 for a, b in zip(stamps, stamps[1:])]
        else:
            durations = np.diff(stamps)
        seconds, kept = steady_step_seconds(durations)
        return seconds, kept, len(stamps) - 1 - kept

    def probe_steps() -> int:
        """Steps that fill --train-minutes: each stage's step timed on its own (a --t2i-batch step costs other
        than a mix step), weighted by its share of the steps."""
        # the run's stages, built at any step count that gives each some (time_stage runs 100 of each)
        each = {"steps": 2, "t2i_first": 0.5 if args.t2i_first else 0.0}
        timed = make_params(argparse.Namespace(**{**vars(args), **each}))
        summary["probe"] = {}
        for stage in timed.train.stages:
            # steps 91-99 profiled, after the timed ones: where a step's time goes (GPU kernels or host)
            profile = StepProfile(device, 90, 99)
            seconds, kept, left_out = time_stage(timed, stage, profile)
            summary["probe"][stage.name] = {"seconds_per_step": round(seconds, 4), "steps_timed": kept,
                                            "steps_left_out": left_out, "batch": stage.batch_size,
                                            "profile": profile.result}
            save()
            print_step_profile(f"probe {stage.name} (batch {stage.batch_size}, {seconds:.4f} s a step)", profile.result)
        seconds = {name: p["seconds_per_step"] for name, p in summary["probe"].items()}
        return steps_for_minutes(args.train_minutes, seconds, args.t2i_first)

    params = make_params(args)
    if args.world_detector:  # checked before any minute is spent
        try:
            use_world_detector(params, args.world_detector)
        except (ValueError, FileNotFoundError) as e:
            sys.exit(f"--world-detector {args.world_detector}: {e}")
    if args.stage in ("all", "data"):
        t0 = time.time()
        world.run(params)
        if args.ray_cpus:
            for fam in FAMILIES:
                shards.run(params, fam)
        else:  # without Ray, a process per family (each writes its own folder): the families overlap
            with ProcessPoolExecutor(len(FAMILIES), mp_context=multiprocessing.get_context("spawn"),
                                     initializer=torch.set_num_threads, initargs=(thread_share(),)) as pool:
                list(pool.map(partial(shards.run, params), FAMILIES))
        summary["data_seconds"] = round(time.time() - t0, 1)
        save()
        if args.ray_cpus:
            import ray

            ray.shutdown()  # its workers and object store are not needed again, and forking beside them is unsafe
    if args.stage in ("all", "vae"):
        summary["vae"] = fit_vae(params, float("inf") if args.vae_steps else args.vae_seconds, device, params.seed,
                                 args.latent_norm, args.vae_object_weight, steps=args.vae_steps or None)
        print("vae", summary["vae"])
        save()
    if args.stage in ("all", "latents"):  # the trainer reads latents made by the fitted VAE
        t0 = time.time()
        # One process per family: with a GPU the stage is bound by each process's own CPU work (shard
        # decoding, tensors, npy writing: ~4 ms a sample), so the families overlap; each writes its own folder.
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the VAE fit's cache: the three processes each hold a VAE and a text encoder
        with ProcessPoolExecutor(len(FAMILIES), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(thread_share(),)) as pool:
            list(pool.map(partial(latents.run, params), FAMILIES))
        summary["latents_seconds"] = round(time.time() - t0, 1)
        save()
    if args.stage in ("all", "train"):
        if not args.steps:
            args.steps = probe_steps()
            params = make_params(args)
        if summary.get("train", {}).get("steps") not in (None, args.steps):
            shutil.rmtree(params.train.out_dir, ignore_errors=True)  # another step count is another run, not a resume
        t0 = time.time()
        result = trainer.train(params)
        summary["train"] = {"steps": args.steps, "seconds": round(time.time() - t0, 1),
                            "stages": [{"name": s.name, "steps": s.steps, "batch": s.batch_size}
                                       for s in params.train.stages], "result": result,
                            "timing": stage_timing(params.paths.reports / "train" / "metrics.jsonl",
                                                   {s.name: s.batch_size for s in params.train.stages})}
        save()
    if args.stage in ("all", "eval"):
        ckpt = params.train.out_dir
        evals = summary["evals"] = {}  # figures of an earlier checkpoint never mix with these
        summary.pop("world_geneval_error", None)

        def score(name: str, baselines: list[str]) -> None:
            for spec in (*baselines, f"model:{ckpt}"):  # each predictor's result in its own folder (entries)
                r = evaluate.run(params, name, spec)
                evals[f"{name}/{'model' if spec.startswith('model:') else r['model']['name']}"] = r["metrics"]
                print(name, spec, r["metrics"])
                save()  # each figure lands as soon as it exists: a later failure loses none of them

        # The order puts the claims still in doubt first (text->image, then depth->image), so a device
        # lease that ends early still has them; each figure is saved as it lands.
        summary["samples"] = sample.run(params)
        summary["prompt_reliance"] = model_prompt_reliance(params, ckpt)
        print("prompt_reliance", summary["prompt_reliance"])
        save()
        # text->image is judged by the world detector, which trains with ultralytics: a failure there
        # is recorded beside the other figures rather than ending the run without them.
        try:
            try:
                WorldGenEval(params)  # is a current detector there?
                # which judge scored matters: detectors trained on different machines differ (false positives)
                summary["world_detector"] = {"trained": str(args.world_detector or "earlier, by this script"),
                                             **json.loads((world_detector.detector_dir(params) / "metrics.json")
                                                          .read_text())}
            except FileNotFoundError:
                summary["world_detector"] = {"trained": "here", **world_detector.run(params)}
            save()
            # its own baseline is the oracle (the evaluation's ceiling); random-scene is its floor
            score("world_geneval", ["baseline", "baseline:random-scene"])
            # a sample can be no better than the VAE's round trip of a perfect one: is colour lost there?
            trips = write_oracle_round_trips(LatentCodec.load(params.model.vae, device), WorldGenEval(params).items(),
                                             out / "oracle-through-vae")
            evals["world_geneval/oracle-through-vae"] = evaluate.run(params, "world_geneval",
                                                                     f"folder:{trips}")["metrics"]
            print("world_geneval oracle through the vae", evals["world_geneval/oracle-through-vae"])
            save()
        except Exception as e:  # noqa: BLE001 -- any failure of this one benchmark, named in the summary
            summary["world_geneval_error"] = f"{type(e).__name__}: {e}"
            save()
            print(f"world_geneval failed: {summary['world_geneval_error']}", file=sys.stderr)
        score("world_conditions", ["baseline"])
        score("world_depth", ["baseline"])
        score("world_nvs", ["baseline"])
        if args.cfg != 1.0:  # NVS prompts are generic ("a photo"): report unguided sampling beside guided
            p = reports_in(params.model_copy(update={"evals": params.evals.model_copy(update={"cfg_scale": 1.0})}),
                           out / "reports_cfg1")
            evals["world_nvs/model@cfg1"] = evaluate.run(p, "world_nvs", f"model:{ckpt}")["metrics"]
            print("world_nvs model cfg 1", evals["world_nvs/model@cfg1"])
            save()
        if len(params.train.stages) > 1:  # did the task mix keep what text2image alone had learned?
            summary["after_t2i"] = score_text2image_stage(params, out, "world_geneval_error" not in summary)
            print("after the text2image stage", summary["after_t2i"])
            save()
    print(json.dumps(summary, indent=1))
    if "world_geneval_error" in summary:
        sys.exit(1)


if __name__ == "__main__":
    main()
