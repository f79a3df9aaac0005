"""AdamW over fp32 masters of bf16 linear weights: the forward, the gradients and the update are bf16 autocast's
with torch's AdamW (CPU autocast stands in for CUDA's here), and its state survives a save and load in fp32."""

import pytest
import torch
from torch import nn

from model.loss import flow_matching_loss
from model.master_adamw import MasterWeightAdamW, _adamw
from model.nextdit import CONFIGS, NextDiT, linear_parameters

LR, BETAS, EPS = 1e-3, (0.9, 0.95), 1e-8


def tiny_model(seed: int = 0) -> NextDiT:
    torch.manual_seed(seed)
    model = NextDiT(CONFIGS["tiny"])
    with torch.no_grad():  # the released zero-init gates and final layer would leave most gradients at 0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def groups(model: nn.Module) -> list[dict]:
    params = list(model.parameters())
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def batch(step: int) -> tuple:
    g = torch.Generator().manual_seed(step)
    latents = torch.randn(2, 2, 16, 8, 8, generator=g)
    text = torch.randn(2, 7, CONFIGS["tiny"].caption_channels, generator=g)
    mask = torch.ones(2, 7, dtype=torch.bool)
    return latents, text, mask, torch.rand(2, 2, generator=g), torch.randn(latents.shape, generator=g)


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return flow_matching_loss(model, *batch(step))[0]


def test_forward_and_gradients_are_autocasts_and_the_update_adamws():
    ref, ours = tiny_model(), tiny_model()
    ref_opt = torch.optim.AdamW(groups(ref), lr=LR, betas=BETAS, eps=EPS, foreach=False)
    opt = MasterWeightAdamW(groups(ours), lowered=linear_parameters(ours), lr=LR, betas=BETAS, eps=EPS)
    lowered = {id(p) for p in linear_parameters(ours)}
    assert lowered and all(p.dtype == torch.bfloat16 for p in linear_parameters(ours))
    assert any(p.dtype == torch.float32 for p in ours.parameters())  # norms and gates stay fp32
    for step in range(3):
        ref_loss, loss = loss_of(ref, step), loss_of(ours, step)
        ref_loss.backward()
        loss.backward()
        if step == 0:  # same weights: the same forward, and each bf16 gradient is autocast's before its upcast
            assert torch.equal(loss, ref_loss)
            for (name, p), r in zip(ours.named_parameters(), ref.parameters()):
                assert p.grad.dtype == p.dtype and torch.equal(p.grad.float(), r.grad), name
        ref_norm = nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        norm = opt.clip_grad_norm_(0.05)
        torch.testing.assert_close(norm, ref_norm, rtol=1e-6, atol=0)
        assert ref_norm > 0.05  # the clip is live
        for o in (ref_opt, opt):
            for group in o.param_groups:
                group["lr"] = LR * (step + 1)  # a schedule: each step its own lr
            o.step()
            o.zero_grad(set_to_none=True)
        for (name, p), r in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(opt.master(p), r.detach(), rtol=1e-5, atol=1e-6, msg=name)
            if id(p) in lowered:
                assert torch.equal(p.detach(), opt.master(p).to(torch.bfloat16)), name


def test_the_update_alone_matches_torchs_adamw_to_float_rounding():
    """Given the same fp32 gradients, one master and one plain parameter against torch.optim.AdamW."""
    torch.manual_seed(1)
    ref = [nn.Parameter(torch.randn(64, 32)), nn.Parameter(torch.randn(32))]
    ours = [nn.Parameter(p.detach().clone()) for p in ref]
    ref_opt = torch.optim.AdamW([{"params": ref[:1], "weight_decay": 0.1}, {"params": ref[1:], "weight_decay": 0}],
                                lr=LR, betas=BETAS, eps=EPS, foreach=False)
    opt = MasterWeightAdamW([{"params": ours[:1], "weight_decay": 0.1}, {"params": ours[1:], "weight_decay": 0}],
                            lowered=ours[:1], dtype=torch.float32, lr=LR, betas=BETAS, eps=EPS)
    for step in range(20):
        for r, o in zip(ref, ours):
            r.grad = torch.randn_like(r) * (step + 1)
            o.grad = r.grad.clone()
        ref_opt.step()
        opt.step()
    for r, o in zip(ref, ours):
        torch.testing.assert_close(opt.master(o), r.detach(), rtol=2e-6, atol=1e-7)
    assert torch.equal(ours[0].detach(), opt.master(ours[0]))


def test_a_saved_and_loaded_state_continues_the_same_run_in_fp32():
    model = tiny_model()
    opt = MasterWeightAdamW(groups(model), lowered=linear_parameters(model), lr=LR, betas=BETAS, eps=EPS)
    for step in range(2):
        loss_of(model, step).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    saved = opt.state_dict()
    masters = {n: w.clone() for n, w in opt.named_masters(model)}

    resumed = tiny_model(seed=5)  # other weights: the loaded masters must replace them
    with torch.no_grad():
        for (n, p) in resumed.named_parameters():
            p.copy_(masters[n])
    opt2 = MasterWeightAdamW(groups(resumed), lowered=linear_parameters(resumed), lr=LR, betas=BETAS, eps=EPS)
    opt2.load_state_dict(saved)
    for p in resumed.parameters():
        assert all(v.dtype == torch.float32 for k, v in opt2.state[p].items() if k != "step")
    for model_, opt_ in ((model, opt), (resumed, opt2)):
        loss_of(model_, 2).backward()
        opt_.step()
    for (n, a), (_, b) in zip(opt.named_masters(model), opt2.named_masters(resumed)):
        assert torch.equal(a, b), n
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_state_of_another_optimizer_is_refused():
    model = tiny_model()
    plain = torch.optim.AdamW(groups(model), lr=LR)
    loss_of(model, 0).backward()
    plain.step()
    opt = MasterWeightAdamW(groups(model), lowered=linear_parameters(model))
    with pytest.raises(ValueError, match="master weight"):
        opt.load_state_dict(plain.state_dict())


def test_a_state_of_another_shape_is_refused():
    model = tiny_model()
    opt = MasterWeightAdamW(groups(model), lowered=linear_parameters(model))
    saved = opt.state_dict()
    state = next(s for s in saved["state"].values() if s["exp_avg"].ndim == 2)
    state["exp_avg"] = state["exp_avg"][:1]  # broadcastable into the right shape: copy_ alone would take it
    with pytest.raises(ValueError, match="another shape"):
        other = tiny_model()
        MasterWeightAdamW(groups(other), lowered=linear_parameters(other)).load_state_dict(saved)


def test_a_clip_scales_its_own_step_only():
    """Clipped, then a step without a clip; and a clip whose step never came (gradients zeroed): each unclipped
    step is torch's AdamW's on the raw gradients."""
    torch.manual_seed(5)
    ref = [nn.Parameter(torch.randn(6, 3))]
    ours = [nn.Parameter(ref[0].detach().clone())]
    ref_opt = torch.optim.AdamW(ref, lr=0.1, betas=BETAS, weight_decay=0.0, foreach=False)
    opt = MasterWeightAdamW(ours, lowered=ours, dtype=torch.float32, lr=0.1, betas=BETAS)
    for clip in (True, False, "skipped", False):
        grad = torch.randn(6, 3) * 10
        if clip == "skipped":
            ours[0].grad = grad.clone()
            opt.clip_grad_norm_(0.1)
            opt.zero_grad(set_to_none=True)
            continue
        ref[0].grad, ours[0].grad = grad, grad.clone()
        if clip:
            nn.utils.clip_grad_norm_(ref, 0.1)
            opt.clip_grad_norm_(0.1)
        ref_opt.step()
        opt.step()
        torch.testing.assert_close(opt.master(ours[0]), ref[0].detach(), rtol=2e-6, atol=1e-7)


def test_the_first_group_may_be_empty():
    p = nn.Parameter(torch.zeros(3))
    opt = MasterWeightAdamW([{"params": []}, {"params": [p]}], lowered=[])
    p.grad = torch.ones(3)
    opt.step()
    assert p.detach().lt(0).all()


def test_only_fp32_parameters_are_taken():
    with pytest.raises(TypeError, match="fp32"):
        MasterWeightAdamW([nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))], lowered=[])


def test_the_compiled_update_is_the_eager_one():
    """What a GPU runs (one compiled kernel a tensor) against the eager form, on the CPU's Inductor."""
    torch.manual_seed(2)
    shapes = [(48, 16), (16,)]
    state = [[torch.randn(s) for s in shapes] for _ in range(4)]  # masters, grads, exp_avg, exp_avg_sq
    state[3] = [v.abs() for v in state[3]]
    hyper = torch.tensor([LR, LR / 0.1, 0.3, 0.5])
    runs = []
    for update in (_adamw, torch.compile(_adamw, fullgraph=True)):
        masters, grads, m, v = ([t.clone() for t in ts] for ts in state)
        params = [masters[0].to(torch.bfloat16), masters[1]]
        update(params, masters, [grads[0].to(torch.bfloat16), grads[1]], m, v, hyper, *BETAS, EPS, 0.1)
        runs.append((params, masters, m, v))
    for eager, compiled in zip(*runs):
        for a, b in zip(eager, compiled):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert not torch.equal(runs[0][1][0], state[0][0])  # it did update


def test_a_parameter_that_missed_a_step_keeps_its_own_bias_correction():
    torch.manual_seed(3)
    ref = [nn.Parameter(torch.randn(8, 4)) for _ in range(2)]
    ours = [nn.Parameter(p.detach().clone()) for p in ref]
    ref_opt = torch.optim.AdamW(ref, lr=0.1, betas=BETAS, weight_decay=0.0, foreach=False)
    opt = MasterWeightAdamW(ours, lowered=ours[:1], dtype=torch.float32, lr=0.1, betas=BETAS)
    for step in range(3):
        for i, (r, o) in enumerate(zip(ref, ours)):
            grad = torch.randn_like(r) if step or i else None  # the first has no gradient in step 0
            r.grad, o.grad = grad, None if grad is None else grad.clone()
        ref_opt.step()
        opt.step()
    assert [float(opt.state[p]["step"]) for p in ours] == [2.0, 3.0]
    for r, o in zip(ref, ours):
        torch.testing.assert_close(opt.master(o), r.detach(), rtol=2e-6, atol=1e-7)


def test_asking_for_the_masters_of_a_model_with_frozen_parameters_leaves_the_state_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = MasterWeightAdamW([p for p in model.parameters() if p.requires_grad], lowered=linear_parameters(model))
    assert [w.dtype for _, w in opt.named_masters(model)] == [torch.float32] * 4
    assert len(opt.state) == 2 and len(opt.state_dict()["state"]) == 2


def test_the_compiled_optimizer_compiles_once_a_group_whatever_the_lr_and_follows_the_eager_one():
    """A recompile every step (a new lr, a new bias correction) would soon hit dynamo's limit and fall back to the
    eager update, a dozen passes over memory on a GPU: the changing values travel as tensors."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    torch.manual_seed(4)
    models = [nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [MasterWeightAdamW(groups(m), lowered=linear_parameters(m), lr=LR, betas=BETAS, compiled=c)
            for m, c in zip(models, (False, True))]
    before = counters["stats"]["unique_graphs"]
    for step in range(4):
        grads = [torch.randn(p.shape) for p in models[0].parameters()]
        for model, opt in zip(models, opts):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.to(p.dtype)
            for group in opt.param_groups:
                group["lr"] = LR * (step + 1)
            opt.clip_grad_norm_(0.5)
            opt.step()
    assert counters["stats"]["unique_graphs"] - before == 2  # the decayed matrices, and the rest
    for (name, a), (_, b) in zip(opts[0].named_masters(models[0]), opts[1].named_masters(models[1])):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    for name, p in models[1].named_parameters():  # the compiled code wrote the rounded copies back
        assert torch.equal(p.detach(), opts[1].master(p).to(p.dtype)), name
