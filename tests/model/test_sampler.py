"""The sampler against analytic denoisers: worlds whose exact velocity field is known in closed form.

A denoiser gets ``x [B, F, C, H, W]`` and per-view timesteps ``σ·1000`` and returns the exact
velocity ``E[ε − x | x_σ]`` of its world, so the sampler's output is checkable:

* ``PointMass``: the data is one known point x* (optionally shifted by the prompt embedding, to
  see classifier-free guidance): ``v = (x_σ − x*)/σ``, and Euler lands on x* exactly.
* ``GaussianWorld``: per latent element the F views are jointly Gaussian N(μ, Σ) (Σ over views);
  the posterior of (x, ε) given the noisy views is linear, and the probability-flow ODE maps the
  initial noise to ``μ + chol(Σ)·ε`` (conditionally: the Gaussian conditional). ρ = 1 is the
  "copy" world (view 1 = view 0).
* ``ConstantWorld``: one view, every element equal to one scalar c ~ N(0, 1) (for partial
  conditioning: a known half determines the unknown half).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from model.sampler import (
    Conditioning,
    DynamicShift,
    estimate_cameras,
    euler_sigmas,
    sample,
    scheduler_shift,
)
from onegen.camera import Camera, intrinsics_from_fov, look_at
from onegen.plucker import FIRST_CAMERA_FRAME, RAY_CHANNELS, rays_for_cameras

DT = torch.float64


def text(B: int, value: float = 0.0, neg: float | None = None, L: int = 3, D: int = 4) -> Conditioning:
    pos = torch.full((B, L, D), value, dtype=DT)
    mask = torch.ones(B, L, dtype=torch.bool)
    if neg is None:
        return Conditioning(pos, mask)
    return Conditioning(pos, mask, torch.full((B, L, D), neg, dtype=DT), mask.clone())


def sigmas_of(t: torch.Tensor) -> torch.Tensor:
    return (t / 1000.0)[..., None, None, None]


class Spy:
    """Wraps a denoiser and records every call's inputs."""

    def __init__(self, denoise):
        self.denoise, self.calls = denoise, []

    def __call__(self, x, t, cond):
        self.calls.append((x.detach().clone(), t.detach().clone(), cond))
        return self.denoise(x, t, cond)


class PointMass:
    """Data = the point x* (+ the mean prompt embedding, per sample): v = (x_σ − x*)/σ."""

    def __init__(self, target: torch.Tensor):
        self.target = target

    def __call__(self, x, t, cond):
        target = self.target.repeat(x.shape[0] // self.target.shape[0], 1, 1, 1, 1)
        target = target + cond.embeds.mean(dim=(1, 2))[:, None, None, None, None]
        return (x - target) / sigmas_of(t)


class GaussianWorld:
    """Per element, views ~ N(mu, cov) jointly; exact E[ε − x | x_σ] for per-view noise levels."""

    def __init__(self, mu, cov):
        self.mu = torch.as_tensor(mu, dtype=DT)
        self.cov = torch.as_tensor(cov, dtype=DT)

    def __call__(self, x, t, cond):
        sig = (t / 1000.0)[:, None, None, None, :]  # [B, 1, 1, 1, F]
        a = 1.0 - sig
        y = x.permute(0, 2, 3, 4, 1)  # [B, C, H, W, F]
        M = a[..., :, None] * self.cov * a[..., None, :] + torch.diag_embed(sig.square())
        z = torch.linalg.solve(M.expand(*y.shape, y.shape[-1]), (y - a * self.mu)[..., None])[..., 0]
        x_hat = self.mu + (self.cov @ (a * z)[..., None])[..., 0]
        eps_hat = sig * z
        return (eps_hat - x_hat).permute(0, 4, 1, 2, 3)


class ConstantWorld:
    """One view whose elements all equal c ~ N(0, 1); posterior of c from all noisy elements."""

    def __call__(self, x, t, cond):
        sig = sigmas_of(t)
        a = 1.0 - sig
        precision = 1.0 + (a.square() / sig.square() * torch.ones_like(x)).sum(dim=(1, 2, 3, 4), keepdim=True)
        c_hat = (a * x / sig.square()).sum(dim=(1, 2, 3, 4), keepdim=True) / precision
        return (x - a * c_hat) / sig - c_hat


# ---------------------------------------------------------------------------------------------
# The schedule
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 7, 50, 100])
@pytest.mark.parametrize("n_tokens", [0, 256, 1024, 8192])
def test_dynamic_sigmas_match_diffusers(steps, n_tokens):
    shift = DynamicShift()
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=shift.base_shift,
                                            max_shift=shift.max_shift, base_image_seq_len=shift.base_seq_len,
                                            max_image_seq_len=shift.max_seq_len)
    # the released pipeline: explicit sigmas linspace(1, 1/N, N) and mu from calculate_shift
    slope = (shift.max_shift - shift.base_shift) / (shift.max_seq_len - shift.base_seq_len)
    mu = n_tokens * slope + (shift.base_shift - slope * shift.base_seq_len)
    assert shift.mu(n_tokens) == pytest.approx(mu, abs=1e-12)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    ours = euler_sigmas(steps, shift, n_tokens)
    assert ours.shape == (steps + 1,) and ours[0] == 1.0 and ours[-1] == 0.0
    torch.testing.assert_close(ours.float(), sched.sigmas, atol=2e-6, rtol=0)
    torch.testing.assert_close((ours[:-1] * 1000).float(), sched.timesteps, atol=2e-3, rtol=0)


@pytest.mark.parametrize("options", [
    {"use_dynamic_shifting": True, "base_shift": 0.3, "max_shift": 1.6, "base_image_seq_len": 128,
     "max_image_seq_len": 2048},
    {"use_dynamic_shifting": False, "shift": 3.0},
    {"use_dynamic_shifting": False},  # diffusers' static default, shift 1
])
def test_a_saved_scheduler_config_gives_its_own_schedule(tmp_path, options):
    """A checkpoint's scheduler config, as diffusers saves it, read back into the schedule that diffusers
    itself builds from that config (the released pipeline's mu from the same config)."""
    FlowMatchEulerDiscreteScheduler(**options).save_config(tmp_path)
    shift = scheduler_shift(tmp_path / "scheduler_config.json")
    assert isinstance(shift, DynamicShift) == options["use_dynamic_shifting"]
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)
    for n_tokens in (64, 1024, 4096):
        c = sched.config
        slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
        mu = c.base_shift + slope * (n_tokens - c.base_image_seq_len)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 20, 20), mu=mu)
        torch.testing.assert_close(euler_sigmas(20, shift, n_tokens).float(), sched.sigmas, atol=2e-6, rtol=0)


def test_a_scheduler_config_the_sampler_cannot_follow_is_refused(tmp_path):
    FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True).save_config(tmp_path)
    with pytest.raises(ValueError, match="use_karras_sigmas=True"):
        scheduler_shift(tmp_path / "scheduler_config.json")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=500).save_config(tmp_path)  # timesteps σ·500
    with pytest.raises(ValueError, match="num_train_timesteps=500"):
        scheduler_shift(tmp_path / "scheduler_config.json")
    FlowMatchEulerDiscreteScheduler(shift_terminal=0.0).save_config(tmp_path)  # falsy: off, as diffusers reads it
    assert scheduler_shift(tmp_path / "scheduler_config.json") == 1.0
    (tmp_path / "scheduler_config.json").write_text('{"use_dynamic_shifting": true, "base_shift": null}')
    with pytest.raises(ValueError, match="must be numbers"):
        scheduler_shift(tmp_path / "scheduler_config.json")
    (tmp_path / "scheduler_config.json").write_text('{"_class_name": "DDIMScheduler"}')
    with pytest.raises(ValueError, match="DDIMScheduler"):
        scheduler_shift(tmp_path / "scheduler_config.json")
    (tmp_path / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the scheduler config"):
        scheduler_shift(tmp_path / "scheduler_config.json")


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_static_sigmas_match_diffusers(shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 30, 30))
    torch.testing.assert_close(euler_sigmas(30, shift).float(), sched.sigmas, atol=2e-6, rtol=0)


def test_sigmas_reject_bad_arguments():
    with pytest.raises(ValueError, match="n_tokens"):
        euler_sigmas(10, DynamicShift())
    with pytest.raises(ValueError, match="shift"):
        euler_sigmas(10, -1.0)


# ---------------------------------------------------------------------------------------------
# Exactness in analytic worlds
# ---------------------------------------------------------------------------------------------

def test_point_mass_lands_exactly():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 4, 6, 6, generator=g, dtype=DT)
    out = sample(PointMass(target), torch.zeros_like(target), [1.0, 1.0, 1.0], text(2), steps=20, cfg_scale=1.0,
                 generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, target, atol=1e-10, rtol=0)


def assert_first_order(error_at, steps: int = 100, bound: float = 0.1) -> None:
    """Euler is first order: the error to the exact ODE solution is small and halves with 2x the steps."""
    coarse, fine = error_at(steps), error_at(2 * steps)
    assert coarse < bound
    assert 0.45 < fine / coarse < 0.55, (coarse, fine)


def test_gaussian_flow_maps_noise_to_mu_plus_s_noise():
    mu, s = 0.5, 2.0

    def error_at(steps: int) -> float:
        out, traj = sample(GaussianWorld([mu], [[s * s]]), torch.zeros(3, 1, 2, 8, 8, dtype=DT), [1.0], text(3),
                           steps=steps, cfg_scale=1.0, generator=torch.Generator().manual_seed(2),
                           return_trajectory=True)
        assert traj[0].std().item() == pytest.approx(1.0, abs=0.15)
        # the exact probability-flow ODE maps the initial noise ε to μ + s·ε
        return (out - (mu + s * traj[0])).abs().max().item()

    assert_first_order(error_at)


def test_conditional_gaussian_gives_the_conditional():
    rho = 0.8
    g = torch.Generator().manual_seed(3)
    views = torch.zeros(2, 2, 2, 8, 8, dtype=DT)
    views[:, 0] = torch.randn(2, 2, 8, 8, generator=g, dtype=DT)

    def error_at(steps: int) -> float:
        out, traj = sample(GaussianWorld([0.0, 0.0], [[1.0, rho], [rho, 1.0]]), views, [0.0, 1.0], text(2),
                           steps=steps, cfg_scale=1.0, generator=torch.Generator().manual_seed(4),
                           return_trajectory=True)
        assert torch.equal(out[:, 0], views[:, 0])
        # x1 | x0 ~ N(ρ·x0, 1 − ρ²): the conditional flow maps view 1's noise ε1 to ρ·x0 + sqrt(1 − ρ²)·ε1.
        # The error is Euler's plus the condition's timestep label σ_min (not 0): both O(1/steps).
        expected = rho * views[:, 0] + math.sqrt(1 - rho**2) * traj[0][:, 1]
        return (out[:, 1] - expected).abs().max().item()

    assert_first_order(error_at)


def test_copy_world_reproduces_the_condition():
    g = torch.Generator().manual_seed(5)
    views = torch.zeros(2, 2, 3, 4, 4, dtype=DT)
    views[:, 1] = torch.randn(2, 3, 4, 4, generator=g, dtype=DT)  # the condition is the *second* view

    def error_at(steps: int) -> float:
        out = sample(GaussianWorld([0.0, 0.0], [[1.0, 1.0], [1.0, 1.0]]), views, [1.0, 0.0], text(2), steps=steps,
                     cfg_scale=1.0, generator=torch.Generator().manual_seed(6))
        assert torch.equal(out[:, 1], views[:, 1])
        return (out[:, 0] - views[:, 1]).abs().max().item()

    assert_first_order(error_at)


def test_joint_copy_world_generates_identical_views():
    out = sample(GaussianWorld([0.0, 0.0], [[1.0, 1.0], [1.0, 1.0]]), torch.zeros(2, 2, 2, 4, 4, dtype=DT),
                 [1.0, 1.0], text(2), steps=100, cfg_scale=1.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=1e-2, rtol=0)
    assert out.std() > 0.3  # a real sample, not a collapse to the mean


# ---------------------------------------------------------------------------------------------
# Condition views, timesteps, coarse and held views
# ---------------------------------------------------------------------------------------------

def test_condition_views_are_written_back_exactly_and_get_the_smallest_timestep():
    B, F, C, H, W = 2, 3, 2, 6, 4
    g = torch.Generator().manual_seed(8)
    views = torch.randn(B, F, C, H, W, generator=g, dtype=DT)
    spy = Spy(GaussianWorld([0.0] * F, torch.eye(F) * 0.5 + 0.5))
    steps = 12
    out, traj = sample(spy, views, [0.0, 1.0, 0.0], text(B), steps=steps, cfg_scale=1.0,
                       generator=torch.Generator().manual_seed(9), return_trajectory=True)
    n_tokens = 1 * (H // 2) * (W // 2)  # only the one generated view counts
    sig = euler_sigmas(steps, DynamicShift(), n_tokens)
    assert len(spy.calls) == steps and traj.shape == (steps + 1, B, F, C, H, W)
    for k, (x, t, _) in enumerate(spy.calls):
        assert torch.equal(x[:, [0, 2]], views[:, [0, 2]])  # fed clean every step
        torch.testing.assert_close(t[:, 1], torch.full((B,), 1000 * sig[k].item(), dtype=DT))
        torch.testing.assert_close(t[:, [0, 2]], torch.full((B, 2), 1000 * sig[-2].item(), dtype=DT))
    for state in traj:
        assert torch.equal(state[:, [0, 2]], views[:, [0, 2]])
    assert torch.equal(out[:, [0, 2]], views[:, [0, 2]])


def test_given_label_zero_feeds_given_views_timestep_zero_and_nothing_else_changes():
    B, F, C, H, W = 2, 3, 2, 6, 4
    views = torch.randn(B, F, C, H, W, generator=torch.Generator().manual_seed(8), dtype=DT)
    world = GaussianWorld([0.0] * F, torch.eye(F) * 0.5 + 0.5)
    spy_released, spy_zero = Spy(world), Spy(world)
    kw = dict(steps=6, cfg_scale=1.0)
    sample(spy_released, views, [0.0, 1.0, 0.0], text(B), generator=torch.Generator().manual_seed(9), **kw)
    sample(spy_zero, views, [0.0, 1.0, 0.0], text(B), generator=torch.Generator().manual_seed(9), given_label="zero", **kw)
    (x_r, t_r, _), (x_z, t_z, _) = spy_released.calls[0], spy_zero.calls[0]
    assert torch.equal(x_r, x_z) and torch.equal(t_r[:, 1], t_z[:, 1])
    assert (t_z[:, [0, 2]] == 0).all() and (t_r[:, [0, 2]] > 0).all()
    with pytest.raises(ValueError, match="given_label"):
        sample(world, views, [0.0, 1.0, 0.0], text(B), given_label="paper", **kw)


def test_coarse_view_starts_at_its_strength_and_finishes_with_the_others():
    B, F, C, H, W = 2, 2, 2, 4, 4
    g = torch.Generator().manual_seed(10)
    target, given = torch.randn(2, B, F, C, H, W, generator=g, dtype=DT)
    steps = 25
    spy = Spy(PointMass(target))
    out, traj = sample(spy, given, [1.0, 0.7], text(B), steps=steps, cfg_scale=1.0,
                       generator=torch.Generator().manual_seed(11), return_trajectory=True)
    _, traj_joint = sample(PointMass(target), given, [1.0, 1.0], text(B), steps=steps, cfg_scale=1.0,
                           generator=torch.Generator().manual_seed(11), return_trajectory=True)
    eps = traj_joint[0][:, 1]  # the same seed gives view 1 the same noise in both runs
    torch.testing.assert_close(traj[0][:, 1], 0.3 * given[:, 1] + 0.7 * eps)
    sig = euler_sigmas(steps, DynamicShift(), F * (H // 2) * (W // 2))  # the coarse view is denoised too
    for k, (_, t, _) in enumerate(spy.calls):
        torch.testing.assert_close(t[:, 0], torch.full((B,), 1000 * sig[k].item(), dtype=DT))
        torch.testing.assert_close(t[:, 1], 0.7 * t[:, 0])
        # the point mass's straight path: x_k − x* = (σ_k/σ_0)·(x_0 − x*), view by view
        torch.testing.assert_close(traj[k] - target, sig[k].item() * (traj[0] - target))
    torch.testing.assert_close(out, target, atol=1e-10, rtol=0)  # both views at σ = 0 at the end


def test_held_view_is_renoised_at_fixed_sigma_and_returned_clean():
    B, F, C, H, W = 2, 2, 2, 4, 4
    g = torch.Generator().manual_seed(12)
    views = torch.randn(B, F, C, H, W, generator=g, dtype=DT)
    spy = Spy(GaussianWorld([0.0, 0.0], [[1.0, 0.9], [0.9, 1.0]]))
    steps = 10
    hold = torch.tensor([[False, True]] * B)
    out = sample(spy, views, [1.0, 0.4], text(B), steps=steps, cfg_scale=1.0, hold=hold,
                 generator=torch.Generator().manual_seed(13))
    sig = euler_sigmas(steps, DynamicShift(), (H // 2) * (W // 2))  # the held view is not denoised
    noises = []
    for k, (x, t, _) in enumerate(spy.calls):
        torch.testing.assert_close(t[:, 1], torch.full((B,), 400.0, dtype=DT))
        torch.testing.assert_close(t[:, 0], torch.full((B,), 1000 * sig[k].item(), dtype=DT))
        noises.append((x[:, 1] - 0.6 * views[:, 1]) / 0.4)
    noises = torch.stack(noises)
    assert noises.std().item() == pytest.approx(1.0, abs=0.2)
    assert not torch.allclose(noises[0], noises[1])  # fresh noise every step
    assert torch.equal(out[:, 1], views[:, 1])


def test_start_and_hold_validation():
    views = torch.zeros(1, 2, 2, 4, 4, dtype=DT)
    with pytest.raises(ValueError, match="start"):
        sample(PointMass(views), views, [1.0, 1.5], text(1), steps=2, cfg_scale=1.0)
    with pytest.raises(ValueError, match="start"):
        sample(PointMass(views), views, [1.0], text(1), steps=2, cfg_scale=1.0)
    with pytest.raises(ValueError, match="held"):
        sample(PointMass(views), views, [1.0, 0.0], text(1), steps=2, cfg_scale=1.0,
               hold=torch.tensor([[False, True]]))


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------

def test_cfg_moves_the_target_by_the_guidance_scale():
    g = torch.Generator().manual_seed(14)
    target = torch.randn(2, 1, 2, 4, 4, generator=g, dtype=DT)
    spy = Spy(PointMass(target))
    out = sample(spy, torch.zeros_like(target), [1.0], text(2, value=1.0, neg=-0.5), steps=10, cfg_scale=4.0,
                 generator=torch.Generator().manual_seed(15))
    # v is linear in x*: guidance lands on x*_u + w·(x*_c − x*_u) = x* − 0.5 + 4·1.5
    torch.testing.assert_close(out, target + 5.5, atol=1e-10, rtol=0)
    x, _, cond = spy.calls[0]
    assert x.shape[0] == 4 and torch.equal(x[:2], x[2:])  # one call, [uncond, cond], same latents
    assert (cond.embeds[:2] == -0.5).all() and (cond.embeds[2:] == 1.0).all()
    assert cond.negative_embeds is None


def test_cfg_with_identical_prompts_equals_no_cfg():
    g = torch.Generator().manual_seed(16)
    views = torch.randn(2, 2, 2, 4, 4, generator=g, dtype=DT)
    world = GaussianWorld([0.0, 0.0], [[1.0, 0.5], [0.5, 1.0]])
    kw = dict(steps=20, shift=3.0)
    plain = sample(world, views, [0.0, 1.0], text(2, 0.3), cfg_scale=1.0, generator=torch.Generator().manual_seed(17), **kw)
    guided = sample(world, views, [0.0, 1.0], text(2, 0.3, neg=0.3), cfg_scale=7.0,
                    generator=torch.Generator().manual_seed(17), **kw)
    torch.testing.assert_close(guided, plain, atol=1e-12, rtol=0)


def test_cfg_on_views_drops_the_conditions_to_noise_in_the_uncond_half():
    g = torch.Generator().manual_seed(18)
    views = torch.randn(1, 2, 2, 4, 4, generator=g, dtype=DT)
    spy = Spy(GaussianWorld([0.0, 0.0], [[1.0, 0.5], [0.5, 1.0]]))
    sample(spy, views, [1.0, 0.0], text(1, 1.0, neg=0.0), steps=3, cfg_scale=2.0, cfg_on_views=True,
           generator=torch.Generator().manual_seed(19))
    sig_min = euler_sigmas(3, DynamicShift(), 4)[-2].item()
    for x, t, _ in spy.calls:
        assert torch.equal(x[1, 1], views[0, 1])  # cond half: the condition, clean
        assert not torch.allclose(x[0, 1], views[0, 1])  # uncond half: noise
        assert t[0, 1].item() == 1000.0 and t[1, 1].item() == pytest.approx(1000 * sig_min)
        assert torch.equal(x[0, 0], x[1, 0])  # the generated view is the same in both halves
    assert torch.equal(spy.calls[0][0][0, 1], spy.calls[-1][0][0, 1])  # the same (initial) noise each step


def test_cfg_needs_a_negative_prompt():
    views = torch.zeros(1, 1, 2, 4, 4, dtype=DT)
    with pytest.raises(ValueError, match="negative"):
        sample(PointMass(views), views, [1.0], text(1), steps=2, cfg_scale=5.0)


def test_cfg_batch_pads_prompts_of_different_lengths():
    cond = Conditioning(torch.ones(2, 5, 3), torch.ones(2, 5, dtype=torch.bool),
                        torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool))
    both = cond.cfg_batch()
    assert both.embeds.shape == (4, 5, 3) and both.mask.shape == (4, 5)
    assert both.mask[:2, :2].all() and not both.mask[:2, 2:].any() and both.mask[2:].all()


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------

def test_batch_size_does_not_change_a_sample():
    B, F, C, H, W = 4, 3, 2, 4, 4
    g = torch.Generator().manual_seed(20)
    views = torch.randn(B, F, C, H, W, generator=g, dtype=DT)
    world = GaussianWorld([0.0] * F, torch.eye(F) * 0.3 + 0.7)
    hold = torch.tensor([[False, False, True]] * B)

    def run(n: int) -> torch.Tensor:
        cond = Conditioning(torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(21), dtype=DT)[:n],
                            torch.ones(n, 3, dtype=torch.bool), torch.zeros(n, 1, 2, dtype=DT),
                            torch.ones(n, 1, dtype=torch.bool))
        return sample(world, views[:n], [1.0, 0.0, 0.5], cond, steps=15, cfg_scale=3.0, hold=hold[:n],
                      generator=torch.Generator().manual_seed(1234))

    full = run(4)
    assert not torch.allclose(full[0, 0], full[1, 0])  # different samples get different noise
    torch.testing.assert_close(run(1), full[:1], atol=1e-12, rtol=0)
    torch.testing.assert_close(run(2), full[:2], atol=1e-12, rtol=0)
    torch.testing.assert_close(run(4), full, atol=0, rtol=0)  # and the same seed repeats


def test_per_sample_generators_make_a_sample_independent_of_its_place():
    views = torch.zeros(3, 1, 2, 4, 4, dtype=DT)
    world = GaussianWorld([0.0], torch.eye(1))

    def run(seeds: list[int]) -> torch.Tensor:
        return sample(world, views[: len(seeds)], [1.0], text(len(seeds)), steps=4, cfg_scale=1.0,
                      generator=[torch.Generator().manual_seed(s) for s in seeds])

    abc = run([7, 8, 9])
    torch.testing.assert_close(run([9, 7])[0], abc[2], atol=1e-12, rtol=0)  # moved to the front: unchanged
    torch.testing.assert_close(run([8])[0], abc[1], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="2 generators for 3 samples"):
        sample(world, views, [1.0], text(3), steps=2, cfg_scale=1.0,
               generator=[torch.Generator(), torch.Generator()])


# ---------------------------------------------------------------------------------------------
# Partial conditioning (UniCon: latent replacement + reconstruction guidance)
# ---------------------------------------------------------------------------------------------

def test_partial_conditioning_keeps_the_known_region_and_guidance_helps():
    B, H, W = 4, 8, 8
    c = torch.tensor([1.5, -1.0, 0.5, 2.0], dtype=DT)
    views = c[:, None, None, None, None] * torch.ones(B, 1, 1, H, W, dtype=DT)
    known = torch.zeros(B, 1, H, W, dtype=DT)
    known[..., : W // 4] = 1.0

    def run(guidance: float) -> torch.Tensor:
        return sample(ConstantWorld(), views, [1.0], text(B), steps=30, cfg_scale=1.0,
                      generator=torch.Generator().manual_seed(22),
                      partial={"view": 0, "mask": known, "guidance": guidance})

    plain, guided = run(0.0), run(0.05)
    for out in plain, guided:
        assert torch.equal(out[..., : W // 4], views[..., : W // 4])  # the known region, exactly
    err_plain = (plain - views)[..., W // 4:].abs().mean().item()
    err_guided = (guided - views)[..., W // 4:].abs().mean().item()
    assert err_guided < 0.25 * err_plain


def test_partial_guidance_differentiates_through_the_denoiser():
    seen = []

    def denoise(x, t, cond):
        seen.append(x.requires_grad)
        return ConstantWorld()(x, t, cond)

    views = torch.ones(1, 1, 1, 4, 4, dtype=DT)
    sample(denoise, views, [1.0], text(1), steps=3, cfg_scale=1.0,
           partial={"view": 0, "mask": torch.ones(1, 1, 4, 4), "guidance": 0.1})
    assert seen == [True] * 3


def test_partial_guidance_refuses_a_denoiser_without_gradients():
    def no_grad_denoiser(x, t, cond):
        with torch.no_grad():
            return ConstantWorld()(x, t, cond)

    views = torch.ones(1, 1, 1, 4, 4, dtype=DT)
    with pytest.raises(ValueError, match="no gradient"):
        sample(no_grad_denoiser, views, [1.0], text(1), steps=2, cfg_scale=1.0,
               partial={"view": 0, "mask": torch.ones(1, 1, 4, 4), "guidance": 0.1})


@pytest.mark.parametrize("bad, says", [
    (dict(start=[1.0, float("nan")]), "start strengths"),
    (dict(cfg_scale=float("nan")), "cfg_scale must be finite"),
    (dict(steps=2.5), "steps must be an integer"),
    (dict(hold=torch.tensor([[False, True, False]])), r"hold must be \[F\]=2"),
    (dict(partial={"view": 0, "guidance": 1.0}), "partial takes 'view', 'mask'"),
    (dict(partial={"view": 0, "mask": torch.ones(1, 1, 4, 4), "weight": 5.0}), "partial takes"),
])
def test_bad_sampler_inputs_are_one_clear_error(bad, says):
    views = torch.ones(1, 2, 1, 4, 4, dtype=DT)
    kw = dict(start=[1.0, 1.0], steps=2, cfg_scale=1.0) | bad
    with pytest.raises(ValueError, match=says):
        sample(ConstantWorld(), views, kw.pop("start"), text(1), **kw)


def test_hold_may_be_given_per_view():
    views = torch.ones(2, 2, 1, 4, 4, dtype=DT)
    per_view = sample(ConstantWorld(), views, [1.0, 0.5], text(2), steps=3, cfg_scale=1.0,
                      generator=torch.Generator().manual_seed(3), hold=torch.tensor([False, True]))
    per_sample = sample(ConstantWorld(), views, [1.0, 0.5], text(2), steps=3, cfg_scale=1.0,
                        generator=torch.Generator().manual_seed(3), hold=torch.tensor([[False, True]] * 2))
    assert torch.equal(per_view, per_sample)


# ---------------------------------------------------------------------------------------------
# Camera-pose estimation
# ---------------------------------------------------------------------------------------------

def rotation_angle_deg(R1: np.ndarray, R2: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R1.T @ R2) - 1) / 2, -1.0, 1.0))))


def test_camera_pose_estimation_round_trip():
    size, V = 64, 3
    K = intrinsics_from_fov(50, size, size)
    eyes = [[3.0, 0.5, 1.0], [1.0, 2.8, 1.2], [-2.0, 2.0, 0.8]]
    cams = [Camera(K, look_at(e, [0.0, 0.0, 0.3]), size, size) for e in eyes]
    true_rays = torch.from_numpy(rays_for_cameras(cams)).to(DT)  # (V, 16, 8, 8), camera 0's frame
    g = torch.Generator().manual_seed(23)
    images = torch.randn(2, V, RAY_CHANNELS, size // 8, size // 8, generator=g, dtype=DT)

    target = torch.zeros(2, 2 * V, RAY_CHANNELS, size // 8, size // 8, dtype=DT)
    target[:, 0::2] = images
    target[:, 1::2] = true_rays
    spy = Spy(PointMass(target))  # the oracle: flows every ray view straight to the true rays
    found = estimate_cameras(spy, images, K, size, size, text(2, 0.0, neg=0.0), steps=20,
                             generator=torch.Generator().manual_seed(24))

    x, t, _ = spy.calls[0]
    assert torch.equal(x[:, 0::2], torch.cat([images, images]))  # interleaved [img0, rays0, img1, ...]
    assert (t[:, 1::2] == 1000).all() and (t[:, 0::2] < 1000).all()
    assert len(found) == 2 and all(len(per) == V for per in found)
    R0 = FIRST_CAMERA_FRAME[:3, :3] @ cams[0].rotation  # the rays' world: camera 0's PyTorch3D frame
    for per_sample in found:
        for cam, est in zip(cams, per_sample):
            assert rotation_angle_deg(cam.rotation @ R0.T, est.rotation) < 1.0
