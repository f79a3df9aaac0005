"""The OneDiffusion sampler: flow-matching Euler over a sequence of views (paper §3.2, UniCon §4.3).

Conventions (SPEC, "Flow matching and time convention"):

* ``σ`` is the noise level: ``x_σ = (1 − σ)·x + σ·ε``; σ = 0 is clean, σ = 1 is noise.
* The denoiser predicts the velocity ``v ≈ ε − x``; an Euler step is ``x ← x + (σ_next − σ)·v``.
  The clean estimate it implies is ``x̂ = x_σ − σ·v``.
* The denoiser gets one timestep per view, ``σ·1000`` (1000 = noise), shaped ``[B, F]``; the model
  broadcasts it over each view's tokens (SPEC: per-token timesteps).

Every sampling mode is a *start strength* per view (UniCon's knob), ``start[b, f]``:

* ``1``      generate from pure noise (a target view);
* ``0``      given: a condition view, fed clean and written back clean after every step. Its
             timestep is by default **the schedule's smallest non-zero σ** (σ_{N−1}·1000), not 0:
             that is what the released pipeline feeds (``scheduler.timesteps[-1]``, although the
             paper says t = 0), the smallest σ the released checkpoint ever saw at inference, and
             what a model trained on σ ~ shifted LogNorm alone (never exactly 0) is closest to.
             ``given_label='zero'`` feeds 0 instead, as the paper says and as a model trained with
             ``train.condition_prob > 0`` saw its given views (a tiny model trained only that way
             ignored a given view labelled with the smallest σ: tests/model/test_learned_conditioning.py);
* ``0<s<1``  coarse: start from the view noised to σ = s and denoise it alongside the others.
             Its schedule is the base schedule scaled by s, ``σ_f,k = s·σ_k``, so it starts at s
             and reaches 0 at the same last step as the others (in σ per step it moves s times
             as fast, in progress per step exactly as fast).

Conditional generation = targets 1, conditions 0 (OneDiffusion's ``denoise_mask`` [1, 0] is
``start = [1, 0]``); joint generation = all 1; coarse control = a condition at 0 < s < 1; camera
pose estimation = ray views 1 given images 0 (``estimate_cameras``). ``hold`` marks the other
coarse variant: a given view *held* at σ_c = start (re-noised from its clean value with fresh noise
every step, timestep σ_c·1000, never integrated; it comes back clean). ``partial`` is UniCon's
partial conditioning (known region of one view: latent replacement + reconstruction guidance).

The base schedule is diffusers' ``FlowMatchEulerDiscreteScheduler`` as the released pipeline
drives it (``euler_sigmas``): σ = linspace(1, 1/N, N), shifted, then a final 0. The default shift
is dynamic, from the number of *denoised* tokens (released ``calculate_shift``; see
``DynamicShift``), with a released checkpoint's own scheduler config read by ``scheduler_shift``.

Classifier-free guidance batches ``[uncond, cond]`` in one call: the same latents in both halves
(condition views included, as released), the negative prompt in the first half. ``cfg_on_views``
additionally drops the condition views to pure noise (timestep 1000) in the uncond half, so the
guidance also pushes towards agreement with them.

Determinism: all randomness of sample ``b`` comes from its own generator, seeded from
``(one draw of the caller's generator, b)``, so a fresh generator with a given seed produces the
same sample ``b`` at any batch size (as long as the denoiser treats samples independently). A
caller whose samples have identities (an evaluation's items) passes one generator per sample
instead, so a sample's noise never depends on where in a batch it lands.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor

from onegen.plucker import RAY_CHANNELS, DecodedCamera, cameras_from_rays

T_SCALE = 1000.0  # timestep = σ·T_SCALE (diffusers' num_train_timesteps)
PATCH = 2  # Next-DiT patch [1, 2, 2]: one token per 2x2 latent cells of a view

@dataclass(frozen=True)
class Conditioning:
    """Text conditioning: T5 features and their attention masks for the prompt and the negative prompt.

    ``embeds`` ``[B, L, D]``, ``mask`` ``[B, L]`` (1/True = real token). The negative prompt
    (``[B or 1, L', D]``) is needed only for classifier-free guidance; the denoiser always receives
    a Conditioning without it (``negative_* = None``), batched like its latents.
    """

    embeds: Tensor
    mask: Tensor
    negative_embeds: Tensor | None = None
    negative_mask: Tensor | None = None

    def positive(self) -> Conditioning:
        return Conditioning(self.embeds, self.mask)

    def cfg_batch(self) -> Conditioning:
        """``[negative; positive]`` along the batch, padded to a common length (padding masked out)."""
        if self.negative_embeds is None or self.negative_mask is None:
            raise ValueError("sampler: classifier-free guidance needs negative prompt embeddings and mask "
                             "(encode '' for an empty negative prompt), or cfg_scale=1")
        B = self.embeds.shape[0]
        neg, neg_mask = self.negative_embeds, self.negative_mask
        if neg.shape[0] == 1 and B > 1:
            neg, neg_mask = neg.expand(B, *neg.shape[1:]), neg_mask.expand(B, *neg_mask.shape[1:])
        L = max(neg.shape[1], self.embeds.shape[1])

        def pad(e: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
            n = L - e.shape[1]
            return nnf.pad(e, (0, 0, 0, n)), nnf.pad(m, (0, n))

        (neg, neg_mask), (pos, pos_mask) = pad(neg, neg_mask), pad(self.embeds, self.mask)
        return Conditioning(torch.cat([neg, pos.to(neg.dtype)]), torch.cat([neg_mask, pos_mask.to(neg_mask.dtype)]))


# denoise(x [B, F, C, H, W], timesteps [B, F] = σ·1000, cond) -> velocity v ≈ ε − x, [B, F, C, H, W]
Denoiser = Callable[[Tensor, Tensor, Conditioning], Tensor]


# ---------------------------------------------------------------------------------------------
# The schedule
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DynamicShift:
    """The resolution-dependent shift ``σ → e^mu / (e^mu + 1/σ − 1)``, with mu from the released
    ``calculate_shift``: linear in the number of denoised tokens through (``base_seq_len``,
    ``base_shift``) and (``max_seq_len``, ``max_shift``), unclipped. The defaults are diffusers'
    ``FlowMatchEulerDiscreteScheduler``'s, which the released pipeline feeds from its scheduler config;
    ``scheduler_shift`` reads a checkpoint's own."""

    base_seq_len: float = 256.0
    max_seq_len: float = 4096.0
    base_shift: float = 0.5
    max_shift: float = 1.15

    def mu(self, n_tokens: float) -> float:
        slope = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        return self.base_shift + slope * (n_tokens - self.base_seq_len)


# Scheduler options that change the σ schedule in ways this sampler does not implement: switches that must be
# off (diffusers tests them for truth), and settings that must have the value this sampler assumes
# (``num_train_timesteps``: the timestep is σ·T_SCALE). A checkpoint asking otherwise is refused, not sampled wrongly.
_UNSUPPORTED_SWITCHES = ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                         "invert_sigmas", "stochastic_sampling")
_ASSUMED_SETTINGS = {"time_shift_type": "exponential", "num_train_timesteps": T_SCALE}


def scheduler_shift(config_file: str | Path) -> float | DynamicShift:
    """The shift a diffusers ``FlowMatchEulerDiscreteScheduler`` config (a released checkpoint's
    ``scheduler/scheduler_config.json``) gives the released pipeline's σ: its ``DynamicShift`` when
    ``use_dynamic_shifting`` (the pipeline's mu is then computed from the same config), else its static
    ``shift``, as diffusers' ``set_timesteps`` does. Missing keys take diffusers' defaults."""
    path = Path(config_file)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"sampler: cannot read the scheduler config {path}: {e}") from None
    if config.get("_class_name", "FlowMatchEulerDiscreteScheduler") != "FlowMatchEulerDiscreteScheduler":
        raise ValueError(f"sampler: {path} is a {config['_class_name']} config; the sampler implements "
                         "FlowMatchEulerDiscreteScheduler's schedule only")
    for key in _UNSUPPORTED_SWITCHES:
        if config.get(key):
            raise ValueError(f"sampler: {path} sets {key}={config[key]!r}, which the sampler does not implement")
    for key, assumed in _ASSUMED_SETTINGS.items():
        if config.get(key, assumed) != assumed:
            raise ValueError(f"sampler: {path} sets {key}={config[key]!r}; the sampler implements {assumed!r} only")
    default = DynamicShift()
    numbers = {"shift": 1.0, "base_image_seq_len": default.base_seq_len, "max_image_seq_len": default.max_seq_len,
               "base_shift": default.base_shift, "max_shift": default.max_shift}
    try:
        value = {key: float(config.get(key, fallback)) for key, fallback in numbers.items()}
    except (TypeError, ValueError):
        raise ValueError(f"sampler: {path}: {', '.join(numbers)} must be numbers") from None
    if config.get("use_dynamic_shifting", False):
        return DynamicShift(base_seq_len=value["base_image_seq_len"], max_seq_len=value["max_image_seq_len"],
                            base_shift=value["base_shift"], max_shift=value["max_shift"])
    return value["shift"]


def euler_sigmas(steps: int, shift: float | DynamicShift = DynamicShift(), n_tokens: float | None = None) -> Tensor:
    """The base schedule, ``[steps + 1]`` float64, from 1 (noise) to 0 (clean).

    σ = linspace(1, 1/steps, steps) as the released pipeline passes them, then shifted:
    a float ``shift`` gives the static SD3 shift ``s·σ / (1 + (s − 1)·σ)``; a ``DynamicShift``
    gives ``e^mu / (e^mu + 1/σ − 1)`` with ``mu = shift.mu(n_tokens)``. A final 0 is appended (the
    last Euler step lands on data).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"sampler: steps must be an integer >= 1, got {steps!r}")
    sigma = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    if isinstance(shift, DynamicShift):
        if n_tokens is None:
            raise ValueError("sampler: the dynamic shift needs n_tokens (the number of denoised tokens)")
        e_mu = math.exp(shift.mu(n_tokens))
        sigma = 1.0 / (1.0 + (1.0 / sigma - 1.0) / e_mu)  # = e^mu / (e^mu + 1/σ − 1), exactly 1 at σ = 1
    elif isinstance(shift, (int, float)) and not isinstance(shift, bool) and shift > 0:
        sigma = shift * sigma / (1.0 + (shift - 1.0) * sigma)
    else:
        raise ValueError(f"sampler: shift must be a positive number or a DynamicShift, got {shift!r}")
    return torch.cat([sigma, sigma.new_zeros(1)])


# ---------------------------------------------------------------------------------------------
# Randomness: one generator per sample
# ---------------------------------------------------------------------------------------------

def _per_sample_generators(generator: torch.Generator | Sequence[torch.Generator] | None,
                           batch: int) -> list[torch.Generator]:
    """CPU generators for samples 0..B-1: the caller's own, one per sample, or seeded from one draw of
    ``generator`` and the sample index."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"sampler: {len(generator)} generators for {batch} samples")
        return list(generator)
    device = generator.device if generator is not None else "cpu"
    base = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
    return [torch.Generator().manual_seed((base + b * 0x9E3779B97F4A7C15) % 2**64) for b in range(batch)]


def _randn(gens: list[torch.Generator], shape: Sequence[int], like: Tensor, draw: Sequence[bool] | None = None) -> Tensor:
    """``[B, *shape]`` standard normal noise, sample b from ``gens[b]`` (zeros where ``draw[b]`` is False)."""
    out = [torch.randn(tuple(shape), generator=g, dtype=like.dtype) if draw is None or draw[b]
           else torch.zeros(tuple(shape), dtype=like.dtype) for b, g in enumerate(gens)]
    return torch.stack(out).to(like.device)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def _start_strengths(start: Tensor | Sequence[float], B: int, F: int, device: torch.device) -> Tensor:
    s = torch.as_tensor(start, dtype=torch.float64, device=device)
    if s.ndim == 1:
        s = s.expand(B, -1)
    if s.shape != (B, F):
        raise ValueError(f"sampler: start must be [F]={F} or [B, F]=[{B}, {F}], got {tuple(s.shape)}")
    if not bool(((s >= 0) & (s <= 1)).all()):  # NaN fails too
        raise ValueError("sampler: start strengths must lie in [0, 1]")
    return s.clone()


@dataclass
class _Partial:
    view: int
    known: Tensor  # [B, 1, H, W] 1 = known
    guidance: float


def _partial_spec(partial: dict | None, views: Tensor, denoised: Tensor) -> _Partial | None:
    if partial is None:
        return None
    B, F, _, H, W = views.shape
    unknown = sorted(set(partial) - {"view", "mask", "guidance"})
    if unknown or not {"view", "mask"} <= set(partial):
        raise ValueError(f"sampler: partial takes 'view', 'mask' and optionally 'guidance', got {sorted(partial)}")
    view = int(partial["view"])
    if not 0 <= view < F:
        raise ValueError(f"sampler: partial view {view} out of range for {F} views")
    if not bool(denoised[:, view].all()):
        raise ValueError("sampler: the partial view must be denoised (start > 0, not held)")
    known = torch.as_tensor(partial["mask"], device=views.device).to(torch.promote_types(views.dtype, torch.float32))
    if known.ndim == 3:
        known = known[:, None]
    if known.shape[1:] != (1, H, W) or known.shape[0] not in (1, B):
        raise ValueError(f"sampler: partial mask must be [B, 1, {H}, {W}], got {tuple(known.shape)}")
    return _Partial(view, known.expand(B, 1, H, W), float(partial.get("guidance", 0.0)))


# ---------------------------------------------------------------------------------------------
# One model evaluation (with classifier-free guidance)
# ---------------------------------------------------------------------------------------------

def _velocity(denoise: Denoiser, x: Tensor, t: Tensor, cond: Conditioning, cfg_scale: float,
              drop: Tensor | None, noise: Tensor) -> Tensor:
    """Guided velocity ``v_u + w·(v_c − v_u)``, both halves in one call as ``[uncond, cond]``.

    ``drop`` ([B, F] bool, or None): views replaced by ``noise`` at timestep 1000 in the uncond half.
    """
    if cfg_scale == 1.0:
        return denoise(x, t, cond.positive()).to(x.dtype)
    x_u, t_u = x, t
    if drop is not None:
        x_u = torch.where(drop[..., None, None, None], noise, x)
        t_u = torch.where(drop, torch.full_like(t, T_SCALE), t)
    v_u, v_c = denoise(torch.cat([x_u, x]), torch.cat([t_u, t]), cond.cfg_batch()).to(x.dtype).chunk(2)
    return v_u + cfg_scale * (v_c - v_u)


# ---------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------

def sample(
    denoise: Denoiser,
    views: Tensor,
    start: Tensor | Sequence[float],
    cond: Conditioning,
    steps: int = 100,
    cfg_scale: float = 5.0,
    cfg_on_views: bool = False,
    shift: float | DynamicShift = DynamicShift(),
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    hold: Tensor | None = None,
    partial: dict | None = None,
    return_trajectory: bool = False,
    given_label: Literal["released", "zero"] = "released",
) -> Tensor | tuple[Tensor, Tensor]:
    """Sample a sequence of views; see the module docstring for the modes.

    Args:
        denoise: ``denoise(x [B,F,C,H,W], timesteps [B,F] = σ·1000, cond) -> v [B,F,C,H,W]``.
        views: clean latents of the given views (start < 1); entries of generated views are ignored.
        start: per-view start strength, ``[F]`` or ``[B, F]``: 1 generate, 0 given, 0<s<1 coarse.
        cond: prompt (and, for CFG, negative prompt) embeddings.
        steps, cfg_scale: Euler steps; guidance scale (1 = one unguided call per step).
        cfg_on_views: the uncond half also loses the condition views (start 0 or held) to noise.
        shift: a ``DynamicShift`` (from the number of denoised tokens of each sample; the default is
            diffusers', ``scheduler_shift`` reads a released checkpoint's) or a static shift.
        generator: seeds all noise (one draw, then one generator per sample), or a list of B
            generators, sample b's noise from the b-th.
        hold: ``[F]`` or ``[B, F]`` bool; held views stay at σ_c = start (re-noised each step, never integrated).
        partial: ``{"view": i, "mask": [B,1,H,W] (1 = known), "guidance": w}`` -- UniCon partial
            conditioning of view i from the known region of ``views[:, i]``: each step the known
            region is replaced by its forward sample ``(1 − σ)·y + σ·ε`` (ε = the view's initial
            noise), and with ``w > 0`` the latents outside it are moved by reconstruction guidance
            (UniCon eq. 7, after Ho et al. 2022): ``x ← x − w·∇_x ‖m ⊙ (y − x̂(x))‖²`` with
            ``x̂ = x − σ·v``, applied to every denoised view except the known region, before the
            Euler step (which uses the same evaluation's v). The loss is a *sum* over the known
            elements, so w scales inversely with their number (UniCon picks it with an
            optimizer; here it is fixed). This backpropagates through the denoiser: it must be
            differentiable (no ``torch.no_grad`` inside) and costs a backward pass per step.
        return_trajectory: also return the states ``[steps + 1, B, F, C, H, W]`` (CPU), state 0 first.
        given_label: the timestep of given (start 0) views: ``'released'``, the schedule's smallest
            non-zero σ, or ``'zero'`` (see the module docstring).

    Returns:
        ``[B, F, C, H, W]``: given and held views exactly as given, the others denoised to σ = 0.
    """
    if views.ndim != 5:
        raise ValueError(f"sampler: views must be [B, F, C, H, W], got {tuple(views.shape)}")
    B, F, C, H, W = views.shape
    dtype = torch.promote_types(views.dtype, torch.float32)
    clean = views.to(dtype)
    s = _start_strengths(start, B, F, views.device)
    if not math.isfinite(cfg_scale):
        raise ValueError(f"sampler: cfg_scale must be finite, got {cfg_scale}")
    if given_label not in ("released", "zero"):
        raise ValueError(f"sampler: given_label must be 'released' or 'zero', got {given_label!r}")
    held = torch.zeros(B, F, dtype=torch.bool, device=views.device) if hold is None else hold.to(views.device, torch.bool)
    if held.ndim == 1 and held.shape[0] == F:
        held = held.expand(B, F)
    if held.shape != (B, F):
        raise ValueError(f"sampler: hold must be [F]={F} or [B, F]=[{B}, {F}], got {tuple(held.shape)}")
    if bool((held & (s <= 0)).any()):
        raise ValueError("sampler: a held view needs its noise level σ_c = start > 0")
    given = held | (s == 0)  # never integrated, returned as given
    denoised = ~given
    part = _partial_spec(partial, views, denoised)

    # Schedules: per sample (dynamic shift counts that sample's denoised tokens), then per view.
    tokens = denoised.sum(dim=1) * (H // PATCH) * (W // PATCH)
    by_count = {n: euler_sigmas(steps, shift, n) for n in tokens.tolist()}
    base = torch.stack([by_count[n] for n in tokens.tolist()]).to(views.device)  # [B, N+1]
    sigma = s[:, :, None] * base[:, None, :]  # [B, F, N+1]: view f's own σ_k, s·σ_k
    sigma[given] = 0.0
    label = sigma[..., :-1]  # the σ each view's timestep says, [B, F, N]
    smallest = base[:, steps - 1, None, None].expand(B, F, steps)  # the schedule's last non-zero σ
    if given_label == "released":
        label = torch.where((s == 0)[..., None], smallest, label)  # given views: as released (else σ 0)
    label = torch.where(held[..., None], s[..., None].expand(B, F, steps), label)  # held views: σ_c

    gens = _per_sample_generators(generator, B)
    eps = _randn(gens, (F, C, H, W), clean)  # every view gets its noise, generated or not
    s0 = s[..., None, None, None].to(dtype)
    x = torch.where(denoised[..., None, None, None], torch.where(s0 == 1, eps, (1 - s0) * clean + s0 * eps), clean)
    drop = given if cfg_on_views else None
    has_hold = held.any(dim=1).tolist()

    def write_back(x: Tensor, k: int) -> Tensor:
        """Given and held views back to their clean values; the partial known region to σ_k."""
        x = torch.where(given[..., None, None, None], clean, x)
        if part is not None:
            i, m = part.view, part.known
            sig = sigma[:, i, k].to(dtype)[:, None, None, None]
            x = x.clone()
            x[:, i] = m * ((1 - sig) * clean[:, i] + sig * eps[:, i]) + (1 - m) * x[:, i]
        return x

    x = write_back(x, 0)
    trajectory = [x.detach().cpu()] if return_trajectory else None
    for k in range(steps):
        x_in = x
        if any(has_hold):  # held views: a fresh forward sample at σ_c every step
            sc = s[..., None, None, None].to(dtype)
            renoised = (1 - sc) * clean + sc * _randn(gens, (F, C, H, W), clean, draw=has_hold)
            x_in = torch.where(held[..., None, None, None], renoised, x)
        t = (label[..., k] * T_SCALE).to(dtype)

        if part is not None and part.guidance > 0:
            with torch.enable_grad():
                x_req = x_in.detach().requires_grad_(True)
                v = _velocity(denoise, x_req, t, cond, cfg_scale, drop, eps)
                if not v.requires_grad:  # else only the known region, which the step masks out, would move
                    raise ValueError("sampler: reconstruction guidance differentiates through the denoiser, whose "
                                     "output has no gradient (is it run under torch.no_grad or inference_mode?)")
                i, m = part.view, part.known
                x_hat = x_req[:, i] - sigma[:, i, k].to(dtype)[:, None, None, None] * v[:, i]
                loss = (m * (clean[:, i] - x_hat)).square().sum()
                (grad,) = torch.autograd.grad(loss, x_req)
            step_mask = denoised[..., None, None, None].to(dtype).expand(B, F, C, H, W).clone()
            step_mask[:, i] = step_mask[:, i] * (1 - m)
            x = x - part.guidance * step_mask * grad
            v = v.detach()
        else:
            with torch.no_grad():
                v = _velocity(denoise, x_in, t, cond, cfg_scale, drop, eps)

        d_sigma = (sigma[..., k + 1] - sigma[..., k]).to(dtype)[..., None, None, None]
        x = write_back(x + d_sigma * v, k + 1)
        if trajectory is not None:
            trajectory.append(x.detach().cpu())

    x = x.detach()
    return (x, torch.stack(trajectory)) if trajectory is not None else x


# ---------------------------------------------------------------------------------------------
# Camera-pose estimation
# ---------------------------------------------------------------------------------------------

def estimate_cameras(
    denoise: Denoiser,
    image_latents: Tensor,
    K: np.ndarray | Sequence[np.ndarray] | None,
    height: int,
    width: int,
    cond: Conditioning,
    **kw,
) -> list[list[DecodedCamera]]:
    """Cameras of ``V`` images: generate their Plücker ray views given the images, then decode them.

    ``image_latents`` ``[B, V, 16, h, w]``; the sequence is interleaved ``[img0, rays0, img1, rays1, ...]``
    with start ``[0, 1, 0, 1, ...]``. ``K``: one full-resolution 3x3 for all views, one per view,
    or None to estimate intrinsics too. ``height``/``width``: the images' pixel size. ``kw`` go
    to ``sample`` (steps, cfg_scale, generator, ...). Returns, per sample, one ``DecodedCamera``
    per image, in the rays' world (the model only knows relative poses): camera 0's PyTorch3D-convention
    frame (``plucker.relative_to_first``), at the training rays' scale.
    """
    if "return_trajectory" in kw:
        raise TypeError("estimate_cameras: return_trajectory is not supported")
    B, V, C, h, w = image_latents.shape
    if C != RAY_CHANNELS:
        raise ValueError(f"estimate_cameras: image latents need {RAY_CHANNELS} channels (one ray view each), got {C}")
    if height % h or width % w or height // h != width // w:
        raise ValueError(f"estimate_cameras: {height}x{width} images do not match {h}x{w} latents")
    Ks = [K] * V if K is None or np.asarray(K).ndim == 2 else list(K)
    if len(Ks) != V:
        raise ValueError(f"estimate_cameras: {len(Ks)} intrinsics for {V} views")

    sequence = image_latents.new_zeros(B, 2 * V, C, h, w)
    sequence[:, 0::2] = image_latents
    out = sample(denoise, sequence, [0.0, 1.0] * V, cond, **kw)
    rays = out[:, 1::2].float().cpu().numpy()
    return [[cameras_from_rays(rays[b, v], Ks[v], height, width, downsample=height // h) for v in range(V)]
            for b in range(B)]
