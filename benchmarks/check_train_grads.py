"""Does the GPU training path compute the text pathway's gradients right? One training step, checked against float32.

    python benchmarks/check_train_grads.py --json grads.json                 # GPU: `small`, batch 32, ~2-4 min
    python benchmarks/check_train_grads.py --checkpoint runs/learn/checkpoints --json grads.json   # trained weights
    python benchmarks/check_train_grads.py --quick                           # CPU smoke run: `tiny`, seconds

Why: the GPU learning run (``learn_procedural.py``) learns images but barely reads its prompt, while the same
recipe on a CPU in float32 does. What only the GPU run exercises is its kernels (cuDNN SDPA for the masked caption
cross-attention, compiled flex attention for the soft-capped self-attention), ``torch.compile`` of the blocks and
bf16 autocast. This computes one text2image training step's loss and every parameter gradient

* by a REFERENCE path: float32 (TF32 off), eager, self-attention backend "math", the cross-attention forced onto
  SDPA's math kernel;
* and by CANDIDATE paths (``--only`` picks some):
    train            the trainer's own path on this device: ``model.train.wrap_model`` compiles each block, bf16
                     autocast and TF32 (on CUDA; the trainer runs float32 on a CPU), self-attention "auto" (compiled
                     flex on CUDA), SDPA picks the cross-attention's kernel (left out on a CPU unless named);
    eager            the same without compiling the blocks;
    eager+cudnn      eager with the cross-attention's SDPA held to CUDNN_ATTENTION;
    eager+efficient  ... held to EFFICIENT_ATTENTION (a backend with no kernel for the inputs is skipped, said so);
    eager+sdpa-math  ... held to MATH: what bf16 rounding alone costs the cross-attention (a yardstick);
    eager+all-math   and self-attention "math" too: bf16 with no fused attention kernel at all (a yardstick);
    train+checkpointing  the train path with activation checkpointing (only when named);
    control:inverted-mask  the reference recipe with the caption mask inverted: a masking bug the check must see.

For each candidate a table per parameter group (the caption K/V projections ``wk_y``/``wv_y``, ``ky_norm``, the
caption RMSNorm, the cross-attention gates, self-attention ``wq``/``wk``/``wv``/``wo``, FFN, adaLN, embedders, ...):
the cosine similarity and relative L2 error of its gradient against the reference, the norm ratio, and the
least-agreeing single tensor. A group with cosine < 0.99 (what bf16 should always beat) or non-finite gradients is
SUSPECT. Then a standalone check of just the masked cross-attention op (q [B,H,N,d], k/v [B,H,L,d], a boolean mask
[B,1,1,L] built as the model builds it): forward output and dq/dk/dv per SDPA backend against float32 math at
N in {256, 4096} and L in {64, 77, 128, 192}, including how much gradient leaks into masked keys (exactly 0 in the
reference).

The batch is the learn run's text2image batch: 1 view of 16-channel 16x16 latents (128 px / 8), per-view σ, fixed
noise, caption features padded to L = 64 (the trainer's TEXT_LENGTH_MULTIPLE), then 128 and an odd 77, with valid
lengths 8..40 and every tenth row the one-token empty prompt (caption dropout). Between a row's valid length and the
batch's longest caption the features are random, as a text encoder's outputs at its pad tokens are; beyond it zeros,
as ``model.train.pad_text`` pads: so a kernel that ignores or misplaces the mask changes the loss. The batch is the
same at every L but for the padding, so the reference loss must be too.

The weights are random (seeded) unless ``--checkpoint``; every parameter the initialisation leaves at zero (attention
gates, adaLN, the output projection, biases) is set to seeded noise: at the zero init the caption K/V projections
get no gradient at all and the check would be blind. Nothing here trains anything.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.loss import flow_matching_loss, sample_sigmas  # noqa: E402
from model.nextdit import CONFIGS, NextDiT, is_architecture_of  # noqa: E402

SUSPECT_COSINE = 0.99  # bf16 against float32 stays far above this for a correct kernel (cosine ~0.999+)
NEGLIGIBLE = 1e-4  # a tensor's gradient norm, relative to its group's, below which it is rounding noise
LEAK_TOLERANCE = 1e-3  # share of dk/dv norm on masked keys; the reference's is exactly 0
LATENT_SIDE = 16  # 128 px / 8: the learn run's text2image latents
VALID_TOKENS = (8, 40)  # the world prompts' token counts

# (group, pattern on the parameter name), first match wins: wk_y before wk, the caption norm before the block norms
PARAMETER_GROUPS = [
    ("cross wk_y", r"\.attention\.wk_y\."),
    ("cross wv_y", r"\.attention\.wv_y\."),
    ("cross ky_norm", r"\.attention\.ky_norm\."),
    ("caption RMSNorm", r"\.attention_y_norm\."),
    ("cross gate", r"\.attention\.gate$"),
    ("wq (self+cross queries)", r"\.attention\.wq\."),
    ("self wk", r"\.attention\.wk\."),
    ("self wv", r"\.attention\.wv\."),
    ("wo", r"\.attention\.wo\."),
    ("q/k LayerNorms", r"\.attention\.(q_norm|k_norm)\."),
    ("ffn", r"\.feed_forward\."),
    ("block RMSNorms", r"\.(attention_norm1|attention_norm2|ffn_norm1|ffn_norm2)\."),
    ("adaLN (blocks)", r"^layers\.\d+\.adaLN_modulation\."),
    ("x_embedder", r"^x_embedder\."),
    ("t_embedder", r"^t_embedder\."),
    ("y_embedder (pooled caption)", r"^y_embedder\."),
    ("final layer", r"^final_layer\."),
]
# what only the prompt reaches: a SUSPECT here is the bug this script hunts
TEXT_GROUPS = {"cross wk_y", "cross wv_y", "cross ky_norm", "caption RMSNorm", "cross gate",
               "y_embedder (pooled caption)"}
NO_KERNEL = ("No available kernel", "No viable backend")  # SDPA's words when a held backend cannot take the inputs


def parameter_group(name: str) -> str:
    for group, pattern in PARAMETER_GROUPS:
        if re.search(pattern, name):
            return group
    return "other"


# --------------------------------------------------------------------------------------------
# Recipes of the training step
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One way of computing the training step: precision, compilation and attention kernels."""

    name: str
    trainer_precision: bool = True  # bf16 autocast + TF32 on CUDA as model/train.py; float32 on a CPU, as it
    compile_blocks: bool = False  # through model.train.wrap_model, as the trainer compiles
    activation_checkpointing: bool = False
    self_attention: str = "auto"  # NextDiT.attn_backend
    sdpa: str | None = None  # SDPBackend member name the cross-attention is held to; None: SDPA picks
    invert_text_mask: bool = False
    control: bool = False  # must come out SUSPECT, or the check is blind


REFERENCE = Recipe("reference", trainer_precision=False, self_attention="math", sdpa="MATH")
CANDIDATES = {p.name: p for p in [
    Recipe("train", compile_blocks=True),
    Recipe("eager"),
    Recipe("eager+cudnn", sdpa="CUDNN_ATTENTION"),
    Recipe("eager+efficient", sdpa="EFFICIENT_ATTENTION"),
    Recipe("eager+sdpa-math", sdpa="MATH"),
    Recipe("eager+all-math", self_attention="math", sdpa="MATH"),
    Recipe("train+checkpointing", compile_blocks=True, activation_checkpointing=True),
    Recipe("control:inverted-mask", trainer_precision=False, self_attention="math", sdpa="MATH",
          invert_text_mask=True, control=True),
]}
NAMED_ONLY = {"train+checkpointing"}  # left out unless --only names them
COMPILING = {"train", "train+checkpointing"}  # left out on a CPU unless named: Inductor's C++ build takes minutes


def default_candidates(device: torch.device) -> list[str]:
    names = [n for n in CANDIDATES if n not in NAMED_ONLY]
    return names if device.type == "cuda" else [n for n in names if n not in COMPILING]


@contextlib.contextmanager
def tf32(enabled: bool):
    """The trainer turns TF32 on for bf16 runs; the reference must have it off (TF32 matmuls are ~1e-3 relative)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def held_sdpa(backend: str | None):
    return sdpa_kernel([SDPBackend.__members__[backend]]) if backend else contextlib.nullcontext()


def prepare_model(base: NextDiT, recipe: Recipe, device: torch.device) -> NextDiT:
    model = copy.deepcopy(base).to(device).train()
    if recipe.compile_blocks:
        # the trainer's own function, so that this follows whatever it does to the blocks
        from model import train as trainer
        from onegen.config import TrainConfig

        cfg = TrainConfig(parallel="none", precision="bf16", compile=True,
                          activation_checkpointing=recipe.activation_checkpointing)
        model = trainer.wrap_model(model, cfg, trainer.Dist(device=device))
    else:
        model.gradient_checkpointing = recipe.activation_checkpointing
    model.attn_backend = recipe.self_attention
    return model


def training_step(model: NextDiT, batch: dict, recipe: Recipe, device: torch.device
                  ) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and float32 gradients of one step of ``flow_matching_loss``, as the trainer takes it."""
    model.zero_grad(set_to_none=True)
    bf16 = recipe.trainer_precision and device.type == "cuda"
    mask = ~batch["text_mask"] if recipe.invert_text_mask else batch["text_mask"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with tf32(bf16), held_sdpa(recipe.sdpa):
        with autocast:
            loss, _ = flow_matching_loss(model, batch["latents"], batch["text"], mask, batch["sigmas"], batch["noise"])
        loss.backward()
    grads = {n: (p.grad.detach().float().clone() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32))
             for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


# --------------------------------------------------------------------------------------------
# Model and batch
# --------------------------------------------------------------------------------------------


def randomise_zero_init(model: NextDiT, seed: int) -> list[str]:
    """Seeded noise into every parameter the init leaves at zero: gates ~ N(0, 0.5²), other vectors ~ N(0, 0.5²),
    matrices ~ N(0, 0.25 / fan_in). At zero, adaLN's gates and the output projection pass no gradient to any
    attention weight, and the cross-attention gate none to the caption K/V projections."""
    g = torch.Generator().manual_seed(seed)
    changed = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.count_nonzero() == 0:
                noise = torch.randn(p.shape, generator=g) * 0.5
                p.copy_(noise / math.sqrt(p.shape[1]) if p.ndim == 2 else noise)
                changed.append(name)
    return changed


def load_checkpoint(path: Path) -> tuple[str | None, dict[str, torch.Tensor], dict | None]:
    """A trainer checkpoint (``step_N``, or its ``out_dir`` whose ``latest`` names one) -> (model size, raw weights,
    recorded architecture). The raw weights, not the EMA: they are what the training step differentiates."""
    from safetensors.torch import load_file

    if (path / "latest").is_file():
        path = path / (path / "latest").read_text().strip()
    meta = json.loads((path / "meta.json").read_text())
    return meta.get("model_size"), load_file(str(path / "model.safetensors")), meta.get("model_config")


def build_model(size: str | None, seed: int, checkpoint: Path | None) -> tuple[NextDiT, dict]:
    """-> the model on the host and how its weights came about; ``size`` None: the checkpoint's own."""
    torch.manual_seed(seed)
    if checkpoint is not None:
        ckpt_size, state, model_config = load_checkpoint(checkpoint)
        size = size or ckpt_size
        if size is None or (model_config is not None and not is_architecture_of(model_config, size)):
            raise SystemExit(f"--checkpoint {checkpoint} holds a {ckpt_size!r} model: pass its --size")
        model = NextDiT(CONFIGS[size])
        model.load_state_dict(state, strict=True)
        return model, {"checkpoint": str(checkpoint), "size": size}
    model = NextDiT(CONFIGS[size])
    return model, {"random_weights_seed": seed, "zero_init_randomised": len(randomise_zero_init(model, seed + 1))}


def make_batch(size: str, batch: int, text_length: int, seed: int, device: torch.device) -> dict:
    """The learn run's text2image batch (see the module docstring), drawn on the host: the same numbers on any
    device and at any ``text_length`` but for the padding."""
    cfg = CONFIGS[size]
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 1, cfg.in_channels, LATENT_SIDE, LATENT_SIDE, generator=g)
    noise = torch.randn(latents.shape, generator=g)
    sigmas = sample_sigmas((batch, 1), g, shift=1.0)  # the learn run's --sigma-shift
    lo, hi = VALID_TOKENS
    lengths = torch.randint(lo, hi + 1, (batch,), generator=g)
    lengths[::10] = 1  # caption dropout's empty prompt: T5 gives it one token, its end of sequence
    features = torch.randn(batch, hi, cfg.caption_channels, generator=g)
    encoded = int(lengths.max())  # the encoder pads to its batch's longest prompt, with features of its own
    lengths, encoded = lengths.clamp(max=text_length), min(encoded, text_length)
    text = torch.zeros(batch, text_length, cfg.caption_channels)
    text[:, :encoded] = features[:, :encoded]
    mask = torch.arange(text_length)[None] < lengths[:, None]
    return {"latents": latents.to(device), "noise": noise.to(device), "sigmas": sigmas.to(device),
            "text": text.to(device), "text_mask": mask.to(device), "lengths": lengths.tolist()}


def default_sdpa_choice(q, k, v, mask) -> str:
    """The kernel SDPA picks for these inputs by itself (for the record: which one the model's call gets)."""
    try:
        return SDPBackend(torch._fused_sdp_choice(q, k, v, mask)).name
    except Exception as e:  # a private function: its absence must not stop the check
        return f"unknown ({type(e).__name__})"


def model_cross_attention_choice(size: str, batch: int, text_length: int, device: torch.device) -> str:
    """SDPA's pick for the model's cross-attention at this batch: bf16 under the trainer's autocast on CUDA, the
    queries a transposed view as the model passes them."""
    cfg = CONFIGS[size]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = (LATENT_SIDE // cfg.patch_size[1]) * (LATENT_SIDE // cfg.patch_size[2])
    q = torch.zeros(batch, n, cfg.num_heads, cfg.head_dim, device=device, dtype=dtype).transpose(1, 2)
    kv = torch.zeros(batch, cfg.num_heads, text_length, cfg.head_dim, device=device, dtype=dtype)
    mask = torch.ones(batch, text_length, dtype=torch.bool, device=device)[:, None, None, :]
    return default_sdpa_choice(q, kv, kv, mask)


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> dict:
    """Cosine, relative L2 error and norm ratio of ``candidate`` against ``reference``."""
    return _from_sums(*_sums(reference, candidate))


def _sums(reference: torch.Tensor, candidate: torch.Tensor) -> list[float]:
    """r·c, |r|², |c|², |c-r|² (float64, so that a group's tensors add up exactly) and c's non-finite count."""
    r, c = reference.double().flatten(), candidate.double().flatten()
    return torch.stack([(r * c).sum(), r.square().sum(), c.square().sum(), (c - r).square().sum(),
                        (~torch.isfinite(c)).sum().double()]).tolist()


def _from_sums(dot: float, ref_sq: float, cand_sq: float, diff_sq: float, nonfinite: float) -> dict:
    if ref_sq > 0 and cand_sq > 0:
        cosine = dot / math.sqrt(ref_sq * cand_sq)
    else:  # a zero gradient agrees only with a zero one
        cosine = 1.0 if ref_sq == cand_sq == 0 else 0.0
    rel = math.sqrt(diff_sq / ref_sq) if ref_sq > 0 else (0.0 if diff_sq == 0 else math.inf)
    ratio = math.sqrt(cand_sq / ref_sq) if ref_sq > 0 else (1.0 if cand_sq == 0 else math.inf)
    out = {"cosine": cosine, "rel_l2": rel, "norm_ratio": ratio, "nonfinite": int(nonfinite)}
    out["suspect"] = bool(out["nonfinite"] or not cosine >= SUSPECT_COSINE)  # `not >=`: NaN is suspect too
    return out


def compare_gradients(reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per parameter group: agreement of the group's gradients taken as one vector, and its least-agreeing tensor.

    A tensor whose reference gradient is below ``NEGLIGIBLE`` of its group's is never named least-agreeing: its
    gradient is rounding noise on both sides. (``ky_norm.bias`` is one: it adds the same q·b to every caption
    logit of a query, which the uncapped softmax cancels, so its exact gradient is 0.)"""
    per_tensor = {name: _sums(ref, candidate[name]) for name, ref in reference.items()}
    sums: dict[str, list[float]] = {}
    for name, parts in per_tensor.items():
        acc = sums.setdefault(parameter_group(name), [0.0] * 5)
        for i, v in enumerate(parts):
            acc[i] += v
    worst: dict[str, tuple[float, str]] = {}
    for name, parts in per_tensor.items():
        group = parameter_group(name)
        if parts[1] < NEGLIGIBLE**2 * sums[group][1]:
            continue
        cosine = _from_sums(*parts)["cosine"]
        if group not in worst or not cosine >= worst[group][0]:
            worst[group] = (cosine, name)
    order = [g for g, _ in PARAMETER_GROUPS] + ["other"]
    out = {}
    for group in sorted(sums, key=order.index):
        cosine, name = worst.get(group, (math.nan, ""))
        out[group] = {**_from_sums(*sums[group]), "worst_tensor": name, "worst_tensor_cosine": cosine}
    out["all parameters"] = _from_sums(*[sum(s[i] for s in sums.values()) for i in range(5)])
    return out


def print_table(title: str, groups: dict[str, dict]) -> None:
    print(title)
    print(f"  {'group':30s} {'cosine':>9s} {'rel L2':>9s} {'|g|/|ref|':>9s}  {'least-agreeing tensor (cosine)'}")
    for group, row in groups.items():
        worst = f"{row['worst_tensor']} ({row['worst_tensor_cosine']:.5f})" if row.get("worst_tensor") else ""
        flag = "  SUSPECT" if row["suspect"] else ""
        nonfinite = f" {row['nonfinite']} non-finite" if row["nonfinite"] else ""
        print(f"  {group:30s} {row['cosine']:9.5f} {row['rel_l2']:9.2e} {row['norm_ratio']:9.4f}  {worst}"
              f"{nonfinite}{flag}")


# --------------------------------------------------------------------------------------------
# The model check
# --------------------------------------------------------------------------------------------


def check_model(args, device: torch.device) -> list[dict]:
    base, origin = build_model(args.size, args.seed, args.checkpoint)
    print(f"model `{args.size}` ({sum(p.numel() for p in base.parameters()) / 1e6:.1f} M parameters), {origin}")
    base = base.to(device)
    reference_model = prepare_model(base, REFERENCE, device)
    models: dict[str, NextDiT | None] = {}  # built once: a compiled one recompiles per new L as the trainer's does
    runs = []
    for length in args.text_lengths:
        batch = make_batch(args.size, args.batch, length, args.seed + 2, device)
        t0 = time.time()
        ref_loss, ref_grads = training_step(reference_model, batch, REFERENCE, device)
        run = {"text_length": length, "valid_lengths": batch["lengths"], "reference_loss": ref_loss,
               "sdpa_default_for_cross_attention": model_cross_attention_choice(args.size, args.batch, length, device),
               "candidates": []}
        print(f"\n=== L = {length}: reference loss {ref_loss:.6f} ({time.time() - t0:.1f} s); SDPA's own pick for the "
              f"cross-attention here: {run['sdpa_default_for_cross_attention']}", flush=True)
        for name in args.candidates:
            recipe = CANDIDATES[name]
            row: dict = {"name": name, "recipe": asdict(recipe)}
            t0 = time.time()
            try:
                if name not in models:
                    models[name] = prepare_model(base, recipe, device)
                loss, grads = training_step(models[name], batch, recipe, device)
            except Exception as e:  # one candidate failing (a compile, a missing package) must not stop the others
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                if isinstance(e, RuntimeError) and any(words in str(e) for words in NO_KERNEL):
                    row["skipped"] = f"no {recipe.sdpa} kernel for these inputs: {first}"
                    print(f"\n[{name}] skipped: {row['skipped']}", flush=True)
                else:
                    row["error"] = f"{type(e).__name__}: {first}"
                    print(f"\n[{name}] FAILED: {row['error']}", flush=True)
                run["candidates"].append(row)
                continue
            row["seconds"] = round(time.time() - t0, 1)
            row["loss"] = loss
            row["loss_rel_diff"] = abs(loss - ref_loss) / abs(ref_loss)
            row["groups"] = compare_gradients(ref_grads, grads)
            row["suspect_groups"] = [g for g, r in row["groups"].items() if r["suspect"] and g != "all parameters"]
            row["text_path_suspect"] = bool(TEXT_GROUPS & set(row["suspect_groups"]))
            del grads
            expect = "  (a control: must be SUSPECT)" if recipe.control else ""
            print_table(f"\n[{name}] loss {loss:.6f}, rel diff {row['loss_rel_diff']:.2e} ({row['seconds']} s){expect}",
                        row["groups"])
            run["candidates"].append(row)
        runs.append(run)
        del ref_grads
    return runs


def verdict(runs: list[dict]) -> list[str]:
    lines = []
    losses = [r["reference_loss"] for r in runs]
    spread = (max(losses) - min(losses)) / abs(losses[0]) if losses else 0.0
    said = "as it must: padding is masked" if spread < 1e-4 else "PADDING CHANGES THE float32 LOSS: SUSPECT"
    lines.append(f"reference loss over L {[r['text_length'] for r in runs]}: spread {spread:.1e} ({said})")
    for run in runs:
        for row in run["candidates"]:
            tag = f"L={run['text_length']:<4d} {row['name']:22s}"
            if "groups" not in row:
                lines.append(f"{tag} {row.get('skipped') or row.get('error')}")
                continue
            worst = min(row["groups"].items(),
                        key=lambda kv: kv[1]["cosine"] if math.isfinite(kv[1]["cosine"]) else -math.inf)
            state = "SUSPECT " + ", ".join(row["suspect_groups"]) if row["suspect_groups"] else "ok"
            if row["recipe"]["control"]:
                state = ("ok (control flagged: " + ", ".join(sorted(TEXT_GROUPS & set(row["suspect_groups"]))) + ")"
                         if row["text_path_suspect"] else "CHECK IS BLIND: the inverted-mask control passed")
            lines.append(f"{tag} loss rel diff {row['loss_rel_diff']:.1e}, lowest cosine {worst[1]['cosine']:.5f} "
                         f"({worst[0]}): {state}")
    return lines


# --------------------------------------------------------------------------------------------
# The cross-attention op alone
# --------------------------------------------------------------------------------------------


def masked_sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@functools.lru_cache(maxsize=1)
def compiled_masked_sdpa():
    # one compiled function with the mask an argument: a closure over each shape's mask would be a new guard
    # failure per shape, and past dynamo's recompile limit it would run eager while still called "compiled"
    return torch.compile(masked_sdpa)


def check_cross_attention_op(size: str, batch: int, queries: int, keys: int, device: torch.device,
                             dtype: torch.dtype, seed: int, compiled: bool) -> list[dict]:
    """q [B,H,N,d], k/v [B,H,L,d] in ``dtype`` and the model's boolean mask [B,1,1,L]: forward and dq/dk/dv per SDPA
    backend against float32 math on the same (rounded) inputs."""
    cfg = CONFIGS[size]
    heads, d = cfg.num_heads, cfg.head_dim
    g = torch.Generator().manual_seed(seed)
    # keys twice the queries' scale: logits ~N(0, 2²), peaked softmaxes as a trained model's
    q = torch.randn(batch, heads, queries, d, generator=g).to(device, dtype)
    k = (2 * torch.randn(batch, heads, keys, d, generator=g)).to(device, dtype)
    v = torch.randn(batch, heads, keys, d, generator=g).to(device, dtype)
    grad_out = torch.randn(batch, heads, queries, d, generator=g).to(device, dtype)
    lengths = torch.randint(VALID_TOKENS[0], VALID_TOKENS[1] + 1, (batch,), generator=g).clamp(max=keys)
    lengths[0] = 1  # the empty prompt: one key, whose softmax has no gradient
    text_mask = (torch.arange(keys)[None] < lengths[:, None]).to(device)
    has_text = text_mask.any(dim=-1)
    mask = (text_mask | ~has_text[:, None])[:, None, None, :]  # exactly as Attention.forward builds it
    masked_keys = ~mask[:, :, 0, :, None]  # [B,1,L,1]

    def run(fn, inputs):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        out.backward(grad_out.to(out.dtype))
        return [out.detach()] + [t.grad for t in leaves]

    def exact(q_, k_, v_):
        logits = (q_ @ k_.transpose(-1, -2)) * d**-0.5
        return logits.masked_fill(~mask, float("-inf")).softmax(-1) @ v_

    with tf32(False):
        reference = run(exact, [t.float() for t in (q, k, v)])

    def sdpa(q_, k_, v_):
        return masked_sdpa(q_, k_, v_, mask)

    def compiled_sdpa(q_, k_, v_):
        return compiled_masked_sdpa()(q_, k_, v_, mask)

    variants = {"default": (None, sdpa)}
    variants |= {b: (b, sdpa) for b in ("MATH", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "FLASH_ATTENTION")}
    if compiled:
        variants["compiled default"] = (None, compiled_sdpa)
    picked = default_sdpa_choice(q, k, v, mask)
    rows = []
    for name, (backend, fn) in variants.items():
        row = {"queries": queries, "keys": keys, "batch": batch, "valid_lengths": lengths.tolist(),
               "dtype": str(dtype).removeprefix("torch."), "backend": name,
               "picks": picked if backend is None else backend}
        try:
            with held_sdpa(backend):
                got = run(fn, [q, k, v])
        except Exception as e:
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            no_kernel = isinstance(e, RuntimeError) and any(w in str(e) for w in NO_KERNEL)
            row["skipped" if no_kernel else "error"] = first
            rows.append(row)
            continue
        for what, ref, cand in zip(("out", "dq", "dk", "dv"), reference, got):
            a = agreement(ref, cand.float())
            a["max_abs"] = (cand.float() - ref).abs().max().item()
            row[what] = a
        for what, grad in (("dk", got[2]), ("dv", got[3])):
            total = grad.float().norm().item()
            row[what]["masked_key_leak"] = (grad.float() * masked_keys).norm().item() / total if total else 0.0
        row["suspect"] = any(row[w]["suspect"] for w in ("out", "dq", "dk", "dv")) or any(
            row[w]["masked_key_leak"] > LEAK_TOLERANCE for w in ("dk", "dv"))
        rows.append(row)
    return rows


def print_op_rows(rows: list[dict]) -> None:
    first = rows[0]
    print(f"\ncross-attention op: B {first['batch']}, N {first['queries']} queries, L {first['keys']} keys, "
          f"{first['dtype']}, valid {first['valid_lengths']}")
    print(f"  {'backend':22s} {'picks':18s} " + " ".join(f"{w + ' cos':>10s} {w + ' relL2':>9s}" for w in
                                                        ("out", "dq", "dk", "dv")) + "  masked-key leak dk/dv")
    for row in rows:
        if "out" not in row:
            what = f"skipped: {row['skipped']}" if "skipped" in row else f"FAILED: {row['error']}"
            print(f"  {row['backend']:22s} {what}")
            continue
        cells = " ".join(f"{row[w]['cosine']:10.6f} {row[w]['rel_l2']:9.2e}" for w in ("out", "dq", "dk", "dv"))
        nonfinite = sum(row[w]["nonfinite"] for w in ("out", "dq", "dk", "dv"))
        print(f"  {row['backend']:22s} {row['picks']:18s} {cells}  {row['dk']['masked_key_leak']:.1e}/"
              f"{row['dv']['masked_key_leak']:.1e}" + (f" {nonfinite} non-finite" if nonfinite else "")
              + ("  SUSPECT" if row["suspect"] else ""))


# --------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    env = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        env |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version()}
    return env


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(CONFIGS), default=None, help="model config (default small; --quick: tiny)")
    ap.add_argument("--checkpoint", type=Path, help="a trainer checkpoint (step_N or its out_dir) instead of random "
                                                    "weights; its raw (not EMA) weights")
    ap.add_argument("--batch", type=int, default=None, help="samples in the step (default 32; --quick: 8)")
    ap.add_argument("--text-lengths", type=int, nargs="+", default=None,
                    help="padded caption lengths L (default 64 128 77; --quick: 64 77)")
    ap.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=None, help="candidate paths to run")
    ap.add_argument("--op-queries", type=int, nargs="+", default=None, help="op check N (default 256 4096)")
    ap.add_argument("--op-keys", type=int, nargs="+", default=None, help="op check L (default 64 77 128 192)")
    ap.add_argument("--op-batch", type=int, default=8)
    ap.add_argument("--no-op-check", action="store_true", help="skip the standalone cross-attention op check")
    ap.add_argument("--no-model-check", action="store_true", help="run only the op check")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a CPU smoke run: `tiny`, batch 8, small op shapes")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    quick = args.quick
    if args.checkpoint is not None and args.size is None:
        args.size = load_checkpoint(args.checkpoint)[0]
    args.size = args.size or ("tiny" if quick else "small")
    args.batch = args.batch or (8 if quick else 32)
    args.text_lengths = args.text_lengths or ([64, 77] if quick else [64, 128, 77])
    args.op_queries = args.op_queries or ([64] if quick else [256, 4096])
    args.op_keys = args.op_keys or ([64, 77] if quick else [64, 77, 128, 192])
    args.candidates = args.only or default_candidates(device)
    if device.type != "cuda" and not args.only:
        print("on a CPU the trainer runs float32, so eager candidates are float32; the compiled train path is left "
              "out (name it with --only train to run it)")

    env = environment(device)
    print(json.dumps(env))
    record: dict = {"command": " ".join([sys.executable, *sys.argv]), "environment": env,
                    "suspect_cosine": SUSPECT_COSINE, "size": args.size, "batch": args.batch}
    if not args.no_model_check:
        record["model"] = check_model(args, device)
        record["verdict"] = verdict(record["model"])
    if not args.no_op_check:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        record["cross_attention_op"] = []
        for n in args.op_queries:
            for length in args.op_keys:
                rows = check_cross_attention_op(args.size, args.op_batch, n, length, device, dtype, args.seed + 3,
                                                compiled=device.type == "cuda")
                print_op_rows(rows)
                record["cross_attention_op"] += rows
        rows = record["cross_attention_op"]
        bad = [f"N={r['queries']} L={r['keys']} {r['backend']}" for r in rows if r.get("suspect")]
        failed = [f"N={r['queries']} L={r['keys']} {r['backend']}" for r in rows if "error" in r]
        record.setdefault("verdict", []).append("cross-attention op: " + ("SUSPECT " + "; ".join(bad) if bad else "ok")
                                                + (f" (FAILED to run: {'; '.join(failed)})" if failed else ""))
    print("\nverdict:")
    for line in record.get("verdict", []):
        print("  " + line)
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
