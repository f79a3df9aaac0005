"""Train OneDiffusion: multi-view flow matching over One-Gen shards (paper §3, SPEC "Model").

    python -m model.train --params params.yaml                          # one process (CPU or one GPU)
    torchrun --nproc_per_node 8 -m model.train --params params.yaml     # DDP / FSDP2 (train.parallel)

Read top to bottom, nanoGPT style:

1. distributed setup from the torchrun variables (nccl on CUDA, gloo on CPU);
2. the schedule: stages, learning rate, and the seeds every random draw comes from;
3. data: per-"slot" streams of task-balanced, shape-bucketed batches;
4. the model: compile, activation checkpointing, DDP or FSDP2, AdamW (or master weights), EMA;
5. atomic checkpoints (``out_dir/step_NNNNNNN`` + ``out_dir/latest``) and resume;
6. metrics: loss by task group and by noise level, throughput, FLOPs and MFU;
7. ``train()``, the loop; 8. ``main()``.

Exact resumption without fast-forwarding
----------------------------------------
Nothing random is carried in state. A global batch is split into ``world × grad_accum``
*slots*; slot ``s = rank·grad_accum + micro`` reads its own data stream, seeded by
(seed, stage, slot, step // checkpoint_every) and re-created at the start of every
``checkpoint_every`` segment (and of every stage), and draws σ, noise and caption dropout from
generators seeded by (seed, slot, step), the noise's on the training device. Checkpoints are
taken at segment and stage boundaries, so a resumed run re-creates exactly the streams the killed
run had and repeats its losses bit for bit (CPU). The same global batch also comes out of 2 ranks × 1 micro-step
and 1 rank × 2 micro-steps, so DDP is checked against a single process, and a run can resume
on another number of GPUs as long as world × grad_accum stays the same (it warns otherwise).
With ``reader.num_workers > 0`` the stream also depends on the number of loader workers.
A run resumes only on the data it was trained on (``data_identity``, the shards' own hashes): DVC
reruns ``train`` when the shards change, and then the old checkpoints move aside and the recipe
starts over.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import resource
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.nn as nn
from tqdm import tqdm

from model.loss import flow_matching_loss, given_views, sample_sigmas
from model.master_adamw import MasterWeightAdamW
from model.nextdit import CONFIGS, NextDiT, is_architecture_of, linear_parameters, load_released
from model.text import TextEncoder
from model.vae import LatentCodec
from model.views import batch_to_latents
from onegen.annotators.depth import CONDITION_VERSION as DEPTH_CONDITION_VERSION
from onegen.config import ConfigError, Params, SideRule, TrainConfig, TrainStage, load_params
from onegen.jsonl import append_jsonl
from onegen.plucker import RAY_FRAME
from onegen.seeding import item_seed
from onegen.shards.reader import TASK_GROUPS, ReadReport, bucket_batches, group_streams, mix_task_groups
from onegen.shards.resize import resized_dir, rule_record
from onegen.shards.writer import atomic_write_bytes, content_identity, write_json

SIGMA_BINS = 5
# Caption lengths are padded up to a multiple of this: a batch's longest prompt sets its length, and
# every new length is another cuDNN attention plan (milliseconds of host time each) and another shape
# for torch.compile; padded keys are masked, so the loss is the same up to rounding (and the FLOPs logged
# for MFU include the padded keys' cross-attention).
TEXT_LENGTH_MULTIPLE = 64
# dense bf16 / fp32 peak FLOP/s per GPU (SXM parts); MFU is reported against these
PEAK_FLOPS = {"bf16": {"H100": 989e12, "H200": 989e12, "A100": 312e12},
              "fp32": {"H100": 67e12, "H200": 67e12, "A100": 19.5e12}}


# --------------------------------------------------------------------------------------------
# 1. Distributed setup
# --------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group, so we destroy it
    launched: bool = False  # by torchrun, which may start a single rank

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Ranks joined by a process group: several, or a single one torchrun launched, which so takes the N-rank
        path (DDP's wrapper and gradient hook, the collectives): a one-GPU check of what N GPUs run."""
        return self.world > 1 or self.launched

    def barrier(self):
        if self.distributed:
            tdist.barrier()


def setup_distributed() -> Dist:
    """RANK / WORLD_SIZE / LOCAL_RANK from torchrun; one GPU per process when CUDA is there."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    owns, launched = False, "WORLD_SIZE" in os.environ
    if (world > 1 or launched) and not tdist.is_initialized():
        tdist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
        owns = True
    return Dist(rank, world, local_rank, device, owns, launched)


# --------------------------------------------------------------------------------------------
# 2. Schedule and seeds
# --------------------------------------------------------------------------------------------


def stage_bounds(cfg: TrainConfig) -> list[tuple[int, int]]:
    """[start, end) global step range of each stage."""
    out, start = [], 0
    for s in cfg.stages:
        out.append((start, start + s.steps))
        start += s.steps
    return out


def stage_at(cfg: TrainConfig, step: int) -> int:
    for i, (start, end) in enumerate(stage_bounds(cfg)):
        if start <= step < end:
            return i
    raise IndexError(f"step {step} is past the last stage")


def recipe_through(cfg: TrainConfig, step: int) -> list[dict]:
    """What shaped the weights at ``step``: each stage begun before it, with its data, sides, batch and the
    steps it ran. A checkpoint records it; a recipe whose own differs up to that step would not have made it."""
    out = []
    for stage, (start, end) in zip(cfg.stages, stage_bounds(cfg)):
        if start >= step:
            break
        out.append({"name": stage.name, "sides": {f: rule_record(stage.side_of(f)) for f in sorted(stage.families)},
                    "batch_size": stage.batch_size, "caption_dropout": stage.caption_dropout,
                    "steps": min(end, step) - start})
    return out


# what shapes the weights besides the stages: a finished run under other values of these is another model (compile,
# checkpointing, parallelism, the attention kernel or reading latents are how a run computes, not what it learns)
WEIGHT_SHAPING = {"lr", "betas", "eps", "weight_decay", "warmup_steps", "grad_clip", "ema_decay", "grad_accum",
                  "sigma_shift", "condition_prob", "precision", "seed"}


def optimization_of(cfg: TrainConfig, params: Params) -> dict:
    return {**cfg.model_dump(mode="json", include=WEIGHT_SHAPING), "start": str(params.model.checkpoint)}


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant (the paper gives no decay)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def is_checkpoint_step(cfg: TrainConfig, step: int) -> bool:
    """After ``step`` optimizer steps: every ``checkpoint_every``, at each stage end, at the end."""
    return step % cfg.checkpoint_every == 0 or any(step == end for _, end in stage_bounds(cfg))


def data_seed(cfg: TrainConfig, stage: TrainStage, slot: int, step: int) -> int:
    return item_seed(cfg.seed, f"train/data/{stage.name}/{slot}", step // cfg.checkpoint_every)


def step_generators(cfg: TrainConfig, slot: int, step: int, device: torch.device) -> tuple[torch.Generator, ...]:
    """A slot's generators for one step: on the host for caption dropout, σ and given views, and on ``device``
    for the noise, drawn where it is used (drawn on the host, it was ~10% of a host-bound H200 step)."""
    return (torch.Generator().manual_seed(item_seed(cfg.seed, f"train/noise/{slot}", step)),
            torch.Generator(device).manual_seed(item_seed(cfg.seed, f"train/noise/{slot}/latents", step)))


# Where and how often a run writes never changes its curve: a moved or re-logged run is still an exact continuation.
BOOKKEEPING = {"out_dir", "log_every", "keep_checkpoints"}


def config_hash(cfg: TrainConfig, params: Params) -> str:
    blob = json.dumps({"train": cfg.model_dump(mode="json", exclude=BOOKKEEPING),
                       "model": params.model.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# 3. Data
# --------------------------------------------------------------------------------------------


def data_root(params: Params, cfg: TrainConfig) -> Path:
    """Where the trainer reads its families: ``onegen latents``' output with ``train.latents``, else the shards."""
    return params.paths.data / ("latents" if cfg.latents else "shards")


def family_dirs(params: Params, cfg: TrainConfig) -> list[dict[Path, SideRule]]:
    """Each stage's shard directories, each with the side its samples are resized to as they are read (None:
    as stored), checked up front (one clear line per missing family). A stage at another side than the
    shards' reads images resized (``resize.resize_by_rule``), or with ``train.latents`` the latents that
    ``onegen latents`` encoded at that side (or by view count), in ``data/latents/<family>/side<S>``."""
    out = []
    root = data_root(params, cfg)
    kind = root.name  # also the command that makes them: onegen shards / onegen latents
    for i, stage in enumerate(cfg.stages):
        dirs: dict[Path, SideRule] = {}
        for fam in stage.families:
            side = stage.side_of(fam)
            d = root / fam
            if cfg.latents and side is not None:
                d, side = resized_dir(d, side), None
            if stage.steps and not (d / "stats.json").is_file():
                raise FileNotFoundError(f"train.stages[{i}] ({stage.name}): family {fam!r} has no finished {kind} "
                                        f"at {d} (run `onegen {kind} {fam}`)")
            if stage.steps and not json.loads((d / "stats.json").read_text())["samples"]:
                raise ValueError(f"train.stages[{i}] ({stage.name}): family {fam!r} has no samples at {d} (its "
                                 f"shards log says what was left out, e.g. for want of an annotator); build it or "
                                 f"leave it out of the stage")
            if stage.steps and cfg.latents:
                check_latents(d, params, fam)
            dirs[d] = side
        out.append(dirs)
    return out


def data_identity(cfg: TrainConfig, dirs: list[dict[Path, SideRule]], root: Path) -> dict[str, str]:
    """What the recipe trains on: each family folder's ``content_identity`` (its shards' own hashes), for the
    stages that take steps, by its path under ``root`` (``depth``, ``text2image/side512``). A checkpoint made on
    other data of a family is never resumed (``_train``)."""
    return {d.relative_to(root).as_posix(): content_identity(json.loads((d / "stats.json").read_text()))
            for d in sorted({d for stage, ds in zip(cfg.stages, dirs) if stage.steps for d in ds})}


def set_aside(out_dir: Path, tag: str) -> Path:
    """Move ``out_dir``'s checkpoints (``step_*``, ``latest``) into ``<out_dir>-superseded/<tag>[-k]`` beside it:
    kept for the user, and out of the folder that holds the run (DVC's output of the train stage, which the
    evaluations hash), so that it holds the same files on every machine whatever trained there before."""
    root = out_dir.with_name(f"{out_dir.name}-superseded")
    aside = root / tag
    k = 1
    while aside.exists():
        k += 1
        aside = root / f"{tag}-{k}"
    aside.mkdir(parents=True)
    for p in [*out_dir.glob("step_*"), out_dir / "latest"]:
        if p.exists():
            p.rename(aside / p.name)
    return aside


def check_latents(directory: Path, params: Params, family: str | None = None) -> None:
    """Precomputed latents (and text features) must come from the weights this run is configured with; ``family``
    names the folder's family where it is a resized side of it (``<family>/side<S>``)."""
    family = family or directory.name
    made = json.loads((directory / "latents.json").read_text())
    want_vae = LatentCodec.identity_of(params.model.vae, params.seed, params.model.vae_shift)
    if made["vae"] != want_vae:
        raise ValueError(f"{directory}: latents were made by VAE {made['vae'][:16]}, model.vae gives {want_vae[:16]} "
                         f"-- rerun `onegen latents {family}`")
    if made.get("depth_condition", 1) != DEPTH_CONDITION_VERSION:
        raise ValueError(f"{directory}: latents hold depth images drawn by convention {made.get('depth_condition', 1)}, "
                         f"the reader now draws {DEPTH_CONDITION_VERSION} -- rerun `onegen latents {family}`")
    want_text = TextEncoder.identity_of(params.model.text_encoder, params.seed, CONFIGS[params.model.size].caption_channels)
    if made.get("text") is not None and (made["text"] != want_text or made["max_text_tokens"] != params.model.max_text_tokens):
        raise ValueError(f"{directory}: cached text features come from another text encoder or token limit than "
                         f"model.text_encoder / model.max_text_tokens -- rerun `onegen latents {family}`")


def padded_length(length: int) -> int:
    return -(-length // TEXT_LENGTH_MULTIPLE) * TEXT_LENGTH_MULTIPLE


def pad_text(text: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt features [B, L, C] and mask [B, L] padded with masked tokens to ``length``."""
    pad = length - text.shape[1]
    return torch.nn.functional.pad(text, (0, 0, 0, pad)), torch.nn.functional.pad(mask, (0, pad))


def with_caption_dropout(text: torch.Tensor, mask: torch.Tensor, drop: list[bool], empty: tuple) -> tuple:
    """Cached prompt features with the dropped rows replaced by the empty prompt's features, their
    length padded up to a multiple of ``TEXT_LENGTH_MULTIPLE``."""
    if not any(drop):
        return pad_text(text, mask, padded_length(text.shape[1]))
    e, em = empty
    length = padded_length(max(text.shape[1], e.shape[1]))
    text, mask = pad_text(text, mask, length)
    e, em = pad_text(e[:1].to(text.dtype), em[:1], length)
    # torch.where, not boolean indexing: the latter waits for the GPU to count the rows
    rows = torch.tensor(drop).to(text.device, non_blocking=True)
    return torch.where(rows[:, None, None], e, text), torch.where(rows[:, None], em, mask)


def slot_batches(dirs: dict[Path, SideRule], micro_batch: int, seed: int, shuffle: int,
                 report: ReadReport) -> Iterator[dict]:
    """Endless task-group-balanced batches of one shape signature (``reader.training_batches``),
    with shard resampling seeded by ``seed`` alone: a slot's data must not depend on which rank
    reads it. ``dirs``: shard directory -> the side (or sides by view count) to resize its samples to, or None."""
    streams = group_streams(list(dirs), report, resampled=True, shuffle=shuffle, seed=seed, seed_names_reader=True,
                            sides={d: side for d, side in dirs.items() if side is not None})
    return bucket_batches(mix_task_groups(streams, seed), micro_batch)


class _SlotDataset(torch.utils.data.IterableDataset):
    """``slot_batches`` inside DataLoader workers, each worker with its own derived seed; a batch carries the
    samples its worker skipped since the previous one (``read_problems``), for the trainer's report."""

    def __init__(self, dirs, micro_batch, seed, shuffle):
        self.dirs, self.micro_batch, self.seed, self.shuffle = dirs, micro_batch, seed, shuffle

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        seed = item_seed(self.seed, "train/worker", info.id if info else 0)
        report, seen = ReadReport(), 0
        for batch in slot_batches(self.dirs, self.micro_batch, seed, self.shuffle, report):
            batch["read_problems"], seen = report.problems[seen:], len(report.problems)
            yield batch


def open_stream(dirs, micro_batch: int, seed: int, params: Params, report: ReadReport, pin: bool) -> Iterator[dict]:
    workers = params.reader.num_workers
    if workers == 0:
        return slot_batches(dirs, micro_batch, seed, params.reader.shuffle_buffer, report)
    loader = torch.utils.data.DataLoader(_SlotDataset(dirs, micro_batch, seed, params.reader.shuffle_buffer),
                                         batch_size=None, num_workers=workers, pin_memory=pin, prefetch_factor=4)

    def reported() -> Iterator[dict]:
        for batch in loader:
            report.problems.extend(batch.pop("read_problems"))
            yield batch
    return reported()


# --------------------------------------------------------------------------------------------
# 4. Model, optimizer, EMA
# --------------------------------------------------------------------------------------------


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local shard of an FSDP2 DTensor (the tensor itself otherwise)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def wrap_model(raw: NextDiT, cfg: TrainConfig, dist: Dist) -> nn.Module:
    """Compile each block's forward, switch activation checkpointing, then DDP or FSDP2.

    Blocks are compiled through their ``forward`` so parameter names (and checkpoint keys) stay
    those of the plain model and FSDP2's hooks stay outside the compiled code.
    """
    raw.gradient_checkpointing = cfg.activation_checkpointing
    if dist.device.type == "cuda":  # a kernel choice among CUDA ones; elsewhere "auto" is the exact math path
        raw.attn_backend = cfg.attention
    if cfg.compile:
        from torch._dynamo import config as dynamo_config

        # every view count, resolution and caption length is a shape (dims turn dynamic after their
        # first change), and checkpointing adds a no-grad variant: allow more than 8 variants
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        if cfg.compile_mode == "reduce-overhead" and dist.distributed:
            raise ValueError("train.compile_mode reduce-overhead runs in one process started without torchrun only "
                             "(CUDA graphs under DDP / FSDP2 hooks are untested here)")
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode
        for block in raw.layers:
            block.forward = torch.compile(block.forward, mode=mode)
    bf16 = cfg.precision == "bf16" and dist.device.type == "cuda"
    if cfg.parallel == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(dist.device.type, (dist.world,))
        # the model casts its own inputs; casting here would round σ·1000 and RoPE to bf16
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                  reduce_dtype=torch.float32 if bf16 else None, cast_forward_inputs=False)
        for block in raw.layers:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        return fully_shard(raw, mesh=mesh, mp_policy=mp)
    if cfg.parallel == "ddp" and dist.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if resolved_master_weights(cfg) and bf16 and any(p.dtype == torch.float32 for p in linear_parameters(raw)):
            # DDP lays its gradient buckets out by the parameters' dtype when it wraps them
            raise RuntimeError("master weights: make the optimizer (which lowers the linear layers) before DDP")
        ddp = DDP(raw, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                  gradient_as_bucket_view=True)
        if resolved_master_weights(cfg):
            ddp.register_comm_hook(None, allreduce_in_fp32)
        return ddp
    if dist.world > 1:
        raise ValueError(f"train.parallel='none' cannot run on {dist.world} ranks; choose ddp or fsdp2")
    return raw


def allreduce_in_fp32(group, bucket):  # unannotated: DDP checks a hook's annotations, which are strings here
    """DDP's comm hook (``group`` its state; a ``GradBucket`` in, a future of its tensor out): the mean all-reduce
    of a gradient bucket, summed in fp32 and rounded once into the bucket's dtype. Master weights leave bf16
    gradients, which DDP's own hook would sum in bf16 (rounding at every hop of the ring) where autocast's fp32
    gradients are summed in fp32: so the mean is autocast's, rounded once to bf16."""
    buffer = bucket.buffer()
    world = group.size() if group is not None else tdist.get_world_size()
    mean = buffer.float().div_(world)  # fp32 buckets (norms, gates): the buffer itself, as DDP's own hook
    work = tdist.all_reduce(mean, group=group, async_op=True)
    return work.get_future().then(lambda _: buffer.copy_(mean))


def uses_master_weights(cfg: TrainConfig, bf16: bool, meta: dict) -> bool:
    """Whether a run trains with master weights: ``train.master_weights`` as given, or for "auto" where it runs
    (one process or DDP, grad_accum 1) with bf16 on CUDA (``bf16``), but a resumed checkpoint (``meta``, empty for
    none) as it was trained, so that a run begun without them continues so rather than being refused."""
    if cfg.master_weights != "auto":
        return cfg.master_weights
    allowed = cfg.parallel != "fsdp2" and cfg.grad_accum == 1
    return allowed and (meta.get("master_weights", False) if meta else bf16)


def resolved_master_weights(cfg: TrainConfig) -> bool:
    """``cfg.master_weights`` once ``uses_master_weights`` has decided "auto" (a string, which would read as true)."""
    if cfg.master_weights == "auto":
        raise ValueError("train.master_weights 'auto' reached the optimizer or DDP unresolved (uses_master_weights)")
    return cfg.master_weights


def make_optimizer(model: nn.Module, cfg: TrainConfig, cuda: bool,
                   dtype: torch.dtype = torch.float32) -> torch.optim.Optimizer:
    """AdamW; weight decay (if any) on matrices only, never on norms, biases or gates. With ``cfg.master_weights``
    (resolved: ``uses_master_weights``) the linear layers' parameters turn into ``dtype`` (the compute dtype) and
    the optimizer keeps their masters."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    if resolved_master_weights(cfg):
        return MasterWeightAdamW(groups, lowered=linear_parameters(model), dtype=dtype, lr=cfg.lr, betas=cfg.betas,
                                 eps=cfg.eps, compiled=cuda)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=cuda or None)


def clip_gradients(model: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """The global gradient norm, the gradients clipped to ``max_norm`` (by the next step, for master weights)."""
    if isinstance(optimizer, MasterWeightAdamW):
        return optimizer.clip_grad_norm_(max_norm)
    return nn.utils.clip_grad_norm_(model.parameters(), max_norm)


class EMA:
    """fp32 exponential moving average of the weights, kept on every rank (sharded like the
    parameters under FSDP2). Decay warms up as min(decay, (1+n)/(10+n)) after n updates."""

    def __init__(self, named: Iterable[tuple[str, torch.Tensor]], decay: float):
        """``named``: the weights by name (``model.named_parameters()``, or the optimizer's masters)."""
        self.decay = decay
        self.names, self.params = zip(*named)
        self.shadow = [_local(p).detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [_local(p).float() for p in self.params], 1.0 - d)

    def full_state_dict(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """Full CPU tensors by parameter name (a collective under FSDP2: call on every rank). ``keep`` False (every
        rank but the one that writes): take part in the gathers, keep nothing, so that N ranks do not each hold a
        full fp32 copy in host memory at every checkpoint."""
        from torch.distributed.tensor import DTensor

        out = {}
        for name, p, s in zip(self.names, self.params, self.shadow):
            if isinstance(p, DTensor):
                s = DTensor.from_local(s, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()).full_tensor()
            if keep:
                out[name] = s.detach().cpu()
        return out

    @torch.no_grad()
    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.tensor import DTensor, distribute_tensor

        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"EMA checkpoint lacks {len(missing)} parameters, e.g. {missing[0]}")
        for i, (name, p) in enumerate(zip(self.names, self.params)):
            full = state[name].float()
            if isinstance(p, DTensor):
                full = distribute_tensor(full.to(p.device), p.device_mesh, p.placements).to_local()
            self.shadow[i].copy_(full)


# --------------------------------------------------------------------------------------------
# 5. Checkpoints
# --------------------------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove the temporary directories of saves that a kill interrupted (never visible as step_*)."""
    stale = [p for p in out_dir.glob(".tmp_step_*")] if out_dir.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def find_checkpoint(out_dir: Path) -> Path | None:
    """``out_dir/latest`` if it names a complete checkpoint, else the newest complete ``step_*``."""
    latest = out_dir / "latest"
    if latest.is_file():
        cand = out_dir / latest.read_text().strip()
        if (cand / "meta.json").is_file():
            return cand
    done = sorted(p for p in out_dir.glob("step_*") if (p / "meta.json").is_file())
    return done[-1] if done else None


def save_checkpoint(out_dir: Path, step: int, model: nn.Module, optimizer, ema: EMA, meta: dict, dist: Dist,
                    keep: int) -> Path:
    """Gather full state dicts (collective), write them into a temp dir on rank 0, rename it to
    ``step_N`` and point ``latest`` at it; older checkpoints beyond ``keep`` are removed."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    if isinstance(optimizer, MasterWeightAdamW) and dist.main:  # the masters, not their rounded copies
        unwrapped = model.module if hasattr(model, "module") else model  # the names without DDP's "module."
        model_sd.update({name: w.detach().cpu() for name, w in optimizer.named_masters(unwrapped)})
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
    ema_sd = ema.full_state_dict(keep=dist.main)
    final = out_dir / step_dir_name(step)
    if dist.main:
        tmp = out_dir / f".tmp_{final.name}_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model_sd.items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in ema_sd.items()}, str(tmp / "ema.safetensors"))
        torch.save(optim_sd, tmp / "optimizer.pt")
        write_json(tmp / "meta.json", meta)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a re-save of the same step: move the old one out of the way first
            old = out_dir / f".tmp_old_{final.name}_{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(out_dir)
        atomic_write_bytes(out_dir / "latest", (final.name + "\n").encode())
        for old in sorted(p for p in out_dir.glob("step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_optimizer(path: Path, model: nn.Module, optimizer, dist: Dist) -> None:
    """Rank 0 reads the full optimizer state (``weights_only``) and broadcasts/shards it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if dist.distributed:
        sd = torch.load(path, map_location="cpu", weights_only=True) if dist.main else {}
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        opts = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=sd, options=opts)


# --------------------------------------------------------------------------------------------
# 6. Metrics
# --------------------------------------------------------------------------------------------


class FlopMeter:
    """Training FLOPs (forward + backward) of one micro-batch, counted by ``FlopCounterMode`` on a
    meta-device replica of the model (no compute, no interference with compile or FSDP),
    once per latent shape and prompt length. Attention is counted through its matmuls (math backend)."""

    def __init__(self, model_cfg):
        with torch.device("meta"):
            self.model = NextDiT(model_cfg)
        self.model.attn_backend = "math"
        self.cache: dict[tuple, float] = {}

    def __call__(self, latents_shape: tuple, text_len: int, text_dim: int) -> float:
        key = (tuple(latents_shape), text_len)  # few: prompt lengths come padded to TEXT_LENGTH_MULTIPLE
        if key not in self.cache:
            from torch.utils.flop_counter import FlopCounterMode

            b, f = latents_shape[:2]
            with torch.device("meta"):
                lat = torch.empty(latents_shape)
                args = (lat, torch.empty(b, f), torch.empty(b, text_len, text_dim),
                        torch.ones(b, text_len, dtype=torch.bool))
            with FlopCounterMode(display=False) as counter:
                self.model(*args).float().square().mean().backward()
            self.model.zero_grad(set_to_none=True)
            self.cache[key] = float(counter.get_total_flops())
        return self.cache[key]


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = PEAK_FLOPS["bf16" if precision == "bf16" else "fp32"]
    return next((v for k, v in table.items() if k in name), None)


def sigma_bin_names() -> list[str]:
    edges = [round(100 * i / SIGMA_BINS) for i in range(SIGMA_BINS + 1)]
    return [f"loss_sigma_{a:02d}_{b:02d}" for a, b in zip(edges, edges[1:])]


class Window:
    """Sums over the steps since the last log line, on the device (no sync per step), reduced
    over ranks when a line is written."""

    G = len(TASK_GROUPS)
    LOSS, N, GROUP, GCOUNT = 0, 1, 2, 2 + G  # slots of the accumulator vector
    SIG, SCOUNT = 2 + 2 * G, 2 + 2 * G + SIGMA_BINS
    SAMPLES = 2 + 2 * G + 2 * SIGMA_BINS
    TOKENS, FLOPS, GNORM, STEPS = SAMPLES + 1, SAMPLES + 2, SAMPLES + 3, SAMPLES + 4
    SIZE = SAMPLES + 5

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        self.acc = torch.zeros(self.SIZE, dtype=torch.float64, device=self.device)
        self.t0 = time.perf_counter()

    @torch.no_grad()
    def add_micro(self, loss, per_view, sigmas, given, groups: list[str], tokens: int, flops: float):
        """Target views only: a given (condition) view has no loss of its own."""
        target = (~given).to(self.device, torch.float64)
        per_sample = (per_view.double() * target).sum(dim=1) / target.sum(dim=1).clamp_min(1)
        gidx = torch.tensor([TASK_GROUPS.index(g) for g in groups]).to(self.device, non_blocking=True)
        sidx = (sigmas.detach() * SIGMA_BINS).long().clamp_(0, SIGMA_BINS - 1).flatten()
        a = self.acc
        a[self.LOSS] += loss.detach().double()
        a[self.N] += 1
        a[self.GROUP:self.GROUP + self.G].index_add_(0, gidx, per_sample)
        a[self.GCOUNT:self.GCOUNT + self.G].index_add_(0, gidx, torch.ones_like(per_sample))
        a[self.SIG:self.SIG + SIGMA_BINS].index_add_(0, sidx, (per_view.double() * target).flatten())
        a[self.SCOUNT:self.SCOUNT + SIGMA_BINS].index_add_(0, sidx, target.flatten())
        a[self.SAMPLES] += len(groups)
        a[self.TOKENS] += tokens
        a[self.FLOPS] += flops

    @torch.no_grad()
    def add_step(self, grad_norm):
        self.acc[self.GNORM] += grad_norm.detach().double()
        self.acc[self.STEPS] += 1

    def record(self, dist: Dist, peak: float | None) -> dict:
        acc = self.acc.clone()
        if dist.distributed:
            tdist.all_reduce(acc)
        a = acc.tolist()
        seconds = max(time.perf_counter() - self.t0, 1e-9)

        def mean(s, c):
            return s / c if c else None

        out = {"loss": a[self.LOSS] / a[self.N]}
        for i, g in enumerate(TASK_GROUPS):
            out[f"loss_{g}"] = mean(a[self.GROUP + i], a[self.GCOUNT + i])
        for i, name in enumerate(sigma_bin_names()):
            out[name] = mean(a[self.SIG + i], a[self.SCOUNT + i])
        tflops = a[self.FLOPS] / seconds / 1e12
        out |= {"grad_norm": a[self.GNORM] / (a[self.STEPS] or 1), "samples_per_s": a[self.SAMPLES] / seconds,
                "tokens_per_s": a[self.TOKENS] / seconds, "tflops": tflops,
                "mfu": tflops * 1e12 / (peak * dist.world) if peak else None}
        return out


def memory_stats(device: torch.device) -> dict:
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    if device.type == "cuda":
        return {"peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30, "peak_rss_gb": rss_gb}
    return {"peak_mem_gb": None, "peak_rss_gb": rss_gb}


def plot_columns() -> list[str]:
    """Columns of ``metrics.tsv`` (DVC plots read TSV/CSV/JSON, not JSONL)."""
    return (["step", "stage", "loss"] + [f"loss_{g}" for g in TASK_GROUPS] + sigma_bin_names()
            + ["lr", "grad_norm", "samples_per_s", "tokens_per_s", "tflops", "mfu", "peak_mem_gb"])


def _tsv_line(record: dict) -> str:
    return "\t".join("" if record.get(c) is None else str(record[c]) for c in plot_columns()) + "\n"


def log_record(jsonl: Path, tsv: Path, record: dict) -> None:
    append_jsonl(jsonl, record)
    new = not tsv.is_file()
    with open(tsv, "a") as f:
        f.write(("\t".join(plot_columns()) + "\n" if new else "") + _tsv_line(record))


def truncate_metrics(jsonl: Path, tsv: Path, keep_through: int) -> None:
    """Drop log lines past the step we resume from (a killed run may have logged beyond it);
    the TSV is rebuilt from the JSONL."""
    rows = []
    if jsonl.is_file() and keep_through > 0:
        rows = [ln for ln in jsonl.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= keep_through]
    for path in (jsonl, tsv):
        path.unlink(missing_ok=True)
    if rows:
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(jsonl, "".join(r + "\n" for r in rows).encode())
        atomic_write_bytes(tsv, ("\t".join(plot_columns()) + "\n" + "".join(_tsv_line(json.loads(r)) for r in rows)).encode())


# --------------------------------------------------------------------------------------------
# 7. The loop
# --------------------------------------------------------------------------------------------


def train(params: Params, cfg: TrainConfig | None = None, *,
          on_step: Callable[[int, nn.Module], None] | None = None) -> dict:
    """Run (or resume) the whole recipe; returns a summary. ``on_step(step, model)`` is called
    after every optimizer step with the unwrapped model (grads still in place); tests use it
    to read gradients or to stop a run as a kill would."""
    cfg = cfg if cfg is not None else params.train
    dist = setup_distributed()
    try:
        return _train(params, cfg, dist, on_step)
    finally:
        if dist.owns_group:
            tdist.destroy_process_group()


def _train(params: Params, cfg: TrainConfig, dist: Dist, on_step) -> dict:
    device, cuda = dist.device, dist.device.type == "cuda"
    bf16 = cfg.precision == "bf16" and cuda
    if bf16:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    slots = dist.world * cfg.grad_accum
    for i, stage in enumerate(cfg.stages):
        if stage.batch_size % slots:
            raise ValueError(f"train.stages[{i}] ({stage.name}): batch_size {stage.batch_size} is not divisible by "
                             f"world_size {dist.world} x grad_accum {cfg.grad_accum} = {slots}")
    dirs = family_dirs(params, cfg)
    total = cfg.total_steps
    out_dir = Path(cfg.out_dir)
    log_dir = params.paths.reports / "train"
    metrics_path, plot_path = log_dir / "metrics.jsonl", log_dir / "metrics.tsv"
    chash = config_hash(cfg, params)

    # -- resume point (rank 0 cleans stale temp dirs first; everybody reads the same pointer) --
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(out_dir)
    dist.barrier()
    data_id = data_identity(cfg, dirs, data_root(params, cfg))
    ckpt = find_checkpoint(out_dir)
    meta = json.loads((ckpt / "meta.json").read_text()) if ckpt else {}
    changed = sorted(f"{f} shards" for f, h in meta.get("data_identity", {}).items() if data_id.get(f, h) != h)
    if ckpt and meta.get("vae_shift", True) != params.model.vae_shift:  # before the key, every run shifted
        changed.append("latents (model.vae_shift)")
    if ckpt and meta.get("depth_condition", 1) != DEPTH_CONDITION_VERSION:  # the same shards, drawn otherwise
        changed.append(f"depth images (version {meta.get('depth_condition', 1)})")
    finished = ckpt is not None and int(meta.get("step", 0)) == total
    past = ckpt is not None and int(meta.get("step", 0)) > total  # a shortened recipe: one clear error below
    if ckpt and not past and "recipe" in meta and meta["recipe"] != recipe_through(cfg, int(meta["step"])):
        changed.append(f"stages (train.stages up to step {meta['step']}: families, sides, batch or steps)")
    elif finished and "optimization" in meta and meta["optimization"] != optimization_of(cfg, params):
        # a finished run is the model of its own hyperparameters only (an unfinished one continues, with a warning)
        changed.append("hyperparameters (a finished run's: " + ", ".join(
            k for k, v in optimization_of(cfg, params).items() if meta["optimization"].get(k) != v) + ")")
    elif finished and "optimization" not in meta and meta.get("config_hash") != chash:
        changed.append("train or model params (a finished run's, from before checkpoints kept their recipe)")
    if changed:
        # DVC reruns this stage when its shards change and keeps the checkpoints (persisted, so that a killed run
        # resumes): resumed, a finished run would train no step on the new data and report the old model as new.
        # A family added to or dropped from the recipe (a lengthened recipe) is no change of data, and stages
        # added or lengthened after the checkpoint's step no change of what trained it.
        if dist.main:
            aside = set_aside(out_dir, ckpt.name)
            tqdm.write(f"train: {ckpt} was trained with other {', '.join(changed)}; its checkpoints moved to "
                       f"{aside}, training from step 0")
        dist.barrier()
        ckpt, meta = None, {}
    start = int(meta.get("step", 0))
    # resolved once for all that follows; the config hash above stays that of the params as written, the same on
    # every device
    asked = cfg.master_weights
    cfg = cfg.model_copy(update={"master_weights": uses_master_weights(cfg, bf16, meta)})
    # the optimizer's state is laid out otherwise with master weights (and a finished run trains no step with it)
    optimizer_switched = ckpt is not None and meta.get("master_weights", False) != cfg.master_weights
    if optimizer_switched and not finished:
        if asked == "auto":  # auto follows the checkpoint wherever master weights run: not under these settings
            raise ValueError(f"train: {ckpt} was trained with master weights, which do not run under parallel "
                             f"{cfg.parallel} with grad_accum {cfg.grad_accum}: resume it with ddp or none and "
                             f"grad_accum 1, or give train.out_dir a fresh folder")
        raise ValueError(f"train: {ckpt} was trained with train.master_weights {meta.get('master_weights', False)}; "
                         f"resume it so, or give train.out_dir a fresh folder")
    if ckpt and "model_config" in meta and not is_architecture_of(meta["model_config"], params.model.size):
        raise ValueError(f"train: {ckpt} holds a {meta.get('model_size')!r} model, not the architecture of "
                         f"model.size {params.model.size!r}: set it back, or give train.out_dir a fresh folder")
    if start > total:
        raise ValueError(f"train: {ckpt} is at step {start}, past the recipe's {total} steps (train.stages): "
                         f"lengthen the recipe, or give train.out_dir a fresh folder")
    if ckpt and dist.main:
        if meta.get("config_hash") != chash and not finished:  # a finished run trains no step: nothing continues
            tqdm.write(f"train: resuming {ckpt} written under another config (hash {meta.get('config_hash')} "
                       f"!= {chash}); the run is no longer an exact continuation")
        if meta.get("slots", slots) != slots:
            tqdm.write(f"train: world_size x grad_accum changed ({meta.get('slots')} -> {slots}); the data and "
                       "noise streams differ from the original run")
    if dist.main:
        truncate_metrics(metrics_path, plot_path, start)

    # -- frozen parts: VAE and text encoder (seeded random stand-ins when their paths are unset) --
    model_cfg = CONFIGS[params.model.size]
    part_dtype = torch.bfloat16 if bf16 else torch.float32
    codec = LatentCodec.load(params.model.vae, device=device, dtype=part_dtype, seed=params.seed,
                             shift=params.model.vae_shift)
    text_enc = TextEncoder.load(params.model.text_encoder, max_tokens=params.model.max_text_tokens, device=device,
                                seed=params.seed, dtype=part_dtype, dim=model_cfg.caption_channels)
    if text_enc.dim != model_cfg.caption_channels:
        raise ValueError(f"model.text_encoder gives {text_enc.dim}-wide features but model.size "
                         f"{params.model.size!r} expects {model_cfg.caption_channels}")
    empty_prompt = text_enc([""])  # what caption dropout substitutes when prompts come pre-encoded

    # -- the transformer: same init on every rank; a checkpoint or the released weights on top --
    torch.manual_seed(cfg.seed)
    if ckpt is None and params.model.checkpoint is not None:
        raw = load_released(params.model.checkpoint, config=model_cfg, dtype=torch.float32).train()
    else:
        raw = NextDiT(model_cfg)
    if ckpt is not None:
        from safetensors.torch import load_file

        raw.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
    raw.to(device).train()
    dtype = torch.bfloat16 if bf16 else torch.float32
    if cfg.parallel == "fsdp2":  # the optimizer takes the sharded parameters
        model = wrap_model(raw, cfg, dist)
        optimizer = make_optimizer(model, cfg, cuda, dtype)
    else:  # master weights lower the linear layers before DDP lays its gradient buckets out by dtype
        optimizer = make_optimizer(raw, cfg, cuda, dtype)
        model = wrap_model(raw, cfg, dist)
    if cfg.master_weights and not bf16 and dist.main:
        why = "as its checkpoint was trained (auto)" if asked == "auto" else "as asked"
        tqdm.write(f"train: master weights {why}, without bf16 on CUDA: fp32 copies of fp32 weights, no casts to save")
    # by raw's names: DDP's inner module (no "module." prefix), and under FSDP2 the sharded module itself
    ema = EMA(optimizer.named_masters(raw) if isinstance(optimizer, MasterWeightAdamW)
              else raw.named_parameters(), cfg.ema_decay)
    if ckpt is not None:
        from safetensors.torch import load_file

        if not optimizer_switched:
            load_optimizer(ckpt / "optimizer.pt", model, optimizer, dist)
        ema.load_full_state_dict(load_file(str(ckpt / "ema.safetensors")))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and cfg.parallel != "fsdp2" \
        else contextlib.nullcontext()

    flops_of = FlopMeter(model_cfg)
    peak = peak_flops(device, cfg.precision)
    patch_area = model_cfg.patch_size[1] * model_cfg.patch_size[2]
    report = ReadReport()
    window = Window(device)
    my_slots = [dist.rank * cfg.grad_accum + m for m in range(cfg.grad_accum)]
    streams, stream_key = None, None
    record: dict = {"loss": meta.get("loss")}  # what a finished run reports when started again
    last_ckpt = ckpt
    bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, disable=not dist.main)

    step = start
    while step < total:
        si = stage_at(cfg, step)
        stage = cfg.stages[si]
        micro_batch = stage.batch_size // slots
        # a fresh data stream per slot at every segment / stage start: resuming needs no fast-forward
        if stream_key != (si, step // cfg.checkpoint_every):
            stream_key = (si, step // cfg.checkpoint_every)
            streams = [open_stream(dirs[si], micro_batch, data_seed(cfg, stage, s, step), params, report, cuda)
                       for s in my_slots]
        optimizer.zero_grad(set_to_none=True)
        for m, slot in enumerate(my_slots):
            last = m == cfg.grad_accum - 1
            if cfg.parallel == "ddp" and dist.distributed:
                model.require_backward_grad_sync = last
            elif cfg.parallel == "fsdp2":
                model.set_requires_gradient_sync(last)
            batch = next(streams[m])
            if cfg.compile_mode == "reduce-overhead":  # a new iteration: the graphs may reuse the last one's buffers
                torch.compiler.cudagraph_mark_step_begin()
            g, g_noise = step_generators(cfg, slot, step, device)
            drop = (torch.rand(len(batch["prompt"]), generator=g) < stage.caption_dropout).tolist()
            prompts = ["" if d else p for p, d in zip(batch["prompt"], drop)]
            # Host-to-device copies never wait for the GPU (non_blocking; with loader workers the batches are in
            # pinned memory): a blocking copy drains the GPU's queue, and the next step's host work (reading,
            # launches) then runs while the GPU idles.
            with torch.no_grad():
                latents = batch_to_latents(batch, codec)
                if "text" in batch:
                    text, text_mask = with_caption_dropout(batch["text"].to(device, non_blocking=True),
                                                           batch["text_mask"].to(device, non_blocking=True),
                                                           drop, empty_prompt)
                else:
                    text, text_mask = text_enc(prompts)
                    text, text_mask = pad_text(text, text_mask, padded_length(text.shape[1]))
            sigmas = sample_sigmas(latents.shape[:2], g, cfg.sigma_shift).to(device, non_blocking=True)
            noise = torch.randn(latents.shape, generator=g_noise, device=device)
            given = given_views(latents.shape[:2], cfg.condition_prob, g)
            any_given = bool(given.any())  # none: the plain mean over views, bitwise the curve of a run without them
            given = given.to(device, non_blocking=True)
            with autocast:
                loss, per_view = flow_matching_loss(model, latents, text, text_mask, sigmas, noise,
                                                    given if any_given else None)
            (loss / cfg.grad_accum).backward()
            b, f, _, h, w = latents.shape
            window.add_micro(loss, per_view, sigmas, given, batch["group"],
                             tokens=b * f * h * w // patch_area,
                             flops=flops_of(tuple(latents.shape), text.shape[1], text.shape[2]))
        grad_norm = clip_gradients(model, optimizer, cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        ema.update(step)
        window.add_step(grad_norm)
        step += 1

        if step % cfg.log_every == 0 or step == total or is_checkpoint_step(cfg, step):
            record = {"step": step, "stage": stage.name, **window.record(dist, peak), "lr": lr,
                      **memory_stats(device), "read_problems": len(report.problems)}
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"train: loss is {record['loss']} at step {step} (stage {stage.name})")
            if dist.main:
                log_record(metrics_path, plot_path, record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", stage=stage.name)
            window.reset()
        if is_checkpoint_step(cfg, step):
            meta = {"step": step, "stage": stage.name, "stage_index": si, "config_hash": chash,
                    "data_identity": data_id, "recipe": recipe_through(cfg, step),
                    "optimization": optimization_of(cfg, params), "slots": slots,
                    "world_size": dist.world, "grad_accum": cfg.grad_accum, "model_size": params.model.size,
                    "master_weights": cfg.master_weights,  # how its optimizer state is laid out
                    "condition_prob": cfg.condition_prob,  # how its given views must be labelled when sampled
                    "vae_shift": params.model.vae_shift,  # and which latents it learned
                    "depth_condition": DEPTH_CONDITION_VERSION,  # and how its depth images are drawn
                    "ray_frame": RAY_FRAME,  # and in which world its ray maps live
                    "model_config": model_cfg.to_dict(), "loss": record.get("loss"),
                    "random_weights": {"vae": codec.random_weights, "text_encoder": text_enc.random_weights},
                    "parts_seed": params.seed, "torch": torch.__version__}
            last_ckpt = save_checkpoint(out_dir, step, model, optimizer, ema, meta, dist, cfg.keep_checkpoints)
        bar.update(1)
        if on_step is not None:
            on_step(step, raw)
    bar.close()

    summary = {"step": step, "total_steps": total, "checkpoint": str(last_ckpt) if last_ckpt else None,
               "loss": record.get("loss"), "resumed_from": start, "world_size": dist.world,
               "read_problems": len(report.problems), "config_hash": chash, "data_identity": data_id,
               "random_weights": {"vae": codec.random_weights, "text_encoder": text_enc.random_weights}}
    if dist.main:
        log_dir.mkdir(parents=True, exist_ok=True)  # a finished run resumed into fresh reports logged nothing
        # the file describes the model, not how this process got to it: a fresh `dvc repro` and a rerun that finds
        # the run finished write the same file
        write_json(log_dir / "summary.json", {k: v for k, v in summary.items() if k != "resumed_from"})
    return summary


# --------------------------------------------------------------------------------------------
# 8. Entry point
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.splitlines()[0])
    ap.add_argument("--params", "-p", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
    except ConfigError as e:  # every rank would print the same traceback
        raise SystemExit(f"error: {e}") from None
    summary = train(params)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
