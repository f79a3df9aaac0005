"""AdamW over fp32 master weights for a model whose linear layers are kept in bf16.

Under bf16 autocast with fp32 parameters, every step casts each linear weight to bf16 for the forward (read 4
bytes a parameter, write 2) and each bf16 weight gradient back to fp32 (read 2, write 4), which AdamW then reads
again: on an H100 the Lumina2-shape train step spends ~2.3 of its ~38 GPU ms an image in those casts (session 27's
profile, `benchmarks/bench_train_step.py --profile`). Kept as bf16 parameters, the forward uses the weights as
they are and backward leaves bf16 gradients; this optimizer reads those, updates the fp32 masters it holds and
writes the bf16 copies in the same pass (compiled into one kernel a tensor on a GPU).

The arithmetic is autocast's: each bf16 parameter is its master rounded as autocast's cast rounds it, and each
bf16 gradient is exactly what autocast's cast would have upcast; the update is AdamW's (decoupled weight decay,
bias-corrected moments) in fp32. Parameters outside ``lowered`` (norms, gates, anything autocast keeps in fp32)
are their own masters. The checkpointed weights are the masters (``named_masters``), never the rounded copies.
Under DDP the ranks' mean gradient is rounded to bf16 once more (model/train.py's ``allreduce_in_fp32``), where
autocast's fp32 mean reaches AdamW as it is: about 2^-9 relative, unbiased.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def _adamw(params: list[torch.Tensor], masters: list[torch.Tensor], grads: list[torch.Tensor],
           exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], hyper: torch.Tensor,
           beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """One AdamW update of ``masters`` from ``grads`` (any float dtype), then ``params`` set to the rounded masters
    where they are other tensors. ``hyper`` holds lr, lr / (1 - beta1^t), sqrt(1 - beta2^t) and the gradient scale
    as tensors, so that a compiled copy serves every step without recompiling."""
    lr, step_size, bias_correction2_sqrt, grad_scale = hyper.unbind()
    for p, w, g, m, v in zip(params, masters, grads, exp_avgs, exp_avg_sqs):
        g = g.to(w.dtype) * grad_scale
        if weight_decay:
            w.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        w.sub_(step_size * m / (v.sqrt() / bias_correction2_sqrt + eps))
        if p is not w:
            p.copy_(w)


class MasterWeightAdamW(torch.optim.Optimizer):
    """AdamW whose ``lowered`` parameters are turned into ``dtype`` in place, their fp32 masters kept here.

    ``params`` as ``torch.optim.AdamW`` takes them (tensors or groups with their own ``weight_decay``).
    ``clip_grad_norm_`` scales the next step's gradients inside the update instead of rewriting them.
    ``compiled``: run the update as compiled code (one fused kernel a tensor; for CUDA, where the eager
    form's dozen passes over memory would cost more than the casts saved).
    """

    def __init__(self, params, lowered: Iterable[nn.Parameter], dtype: torch.dtype = torch.bfloat16,
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, compiled: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        lowered = {id(p) for p in lowered}
        for p in (p for group in self.param_groups for p in group["params"]):  # before any is converted
            if p.dtype != torch.float32:
                raise TypeError(f"MasterWeightAdamW takes fp32 parameters, got {p.dtype} of shape {tuple(p.shape)}")
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    state = self.state[p]
                    state["step"] = torch.tensor(0.0)
                    master = p
                    if id(p) in lowered:
                        master = state["master"] = p.detach().clone()
                        p.data = p.data.to(dtype)
                    # after the fp32 original is freed: a GPU's caching allocator hands its block to the first
                    # moment, where made before they would leave it a hole for smaller tensors to fragment
                    state["exp_avg"] = torch.zeros_like(master)
                    state["exp_avg_sq"] = torch.zeros_like(master)
        # lr, lr / (1 - beta1^t), sqrt(1 - beta2^t), the gradient scale of a clip (1 without)
        device = next(p.device for group in self.param_groups for p in group["params"])
        self._hyper = torch.tensor([0.0, 0.0, 0.0, 1.0], device=device)
        self._update = torch.compile(_adamw, fullgraph=True) if compiled else _adamw

    def master(self, p: torch.Tensor) -> torch.Tensor:
        """The fp32 value of parameter ``p`` (``p`` itself where it is not lowered, or not in this optimizer)."""
        state = self.state.get(p, {})  # no self.state[p]: the defaultdict would add an empty state
        return state.get("master", p)

    def named_masters(self, model: nn.Module) -> list[tuple[str, torch.Tensor]]:
        """``model.named_parameters()`` with each lowered parameter's fp32 master in its place."""
        return [(name, self.master(p)) for name, p in model.named_parameters()]

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """The gradients' global L2 norm, accumulated in fp32; the next ``step`` scales them by
        min(1, max_norm / (norm + 1e-6)) as ``nn.utils.clip_grad_norm_`` would."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)))
        self._hyper[3].copy_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self._hyper[3].fill_(1.0)  # a clip whose step never came does not carry over

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MasterWeightAdamW takes no closure")
        for group in self.param_groups:
            live = [p for p in group["params"] if p.grad is not None]
            if not live:
                continue
            beta1, beta2, lr = *group["betas"], float(group["lr"])
            torch._foreach_add_([self.state[p]["step"] for p in live], 1)
            by_step: dict[float, list[torch.Tensor]] = {}  # one bucket unless some parameter missed a step
            for p in live:
                by_step.setdefault(float(self.state[p]["step"]), []).append(p)
            for t, bucket in by_step.items():
                states = [self.state[p] for p in bucket]
                # filled in place: a host-to-device copy of new values would wait for the GPU
                for i, value in enumerate((lr, lr / (1 - beta1 ** t), (1 - beta2 ** t) ** 0.5)):
                    self._hyper[i].fill_(value)
                self._update(bucket, [self.master(p) for p in bucket], [p.grad for p in bucket],
                             [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], self._hyper,
                             beta1, beta2, group["eps"], group["weight_decay"])
        self._hyper[3].fill_(1.0)

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``Optimizer.load_state_dict``, but every state tensor stays fp32: the base class casts them all to
        their parameter's dtype, which for a lowered parameter would round its master and moments to bf16."""
        groups, saved_groups = self.param_groups, state_dict["param_groups"]
        if len(groups) != len(saved_groups) or any(len(g["params"]) != len(s["params"])
                                                   for g, s in zip(groups, saved_groups)):
            raise ValueError("optimizer state: its parameter groups do not match this optimizer's")
        for group, saved in zip(groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
            for p, pid in zip(group["params"], saved["params"]):
                if pid not in state_dict["state"]:
                    continue
                loaded = state_dict["state"][pid]
                missing = {"step", "exp_avg", "exp_avg_sq"} - loaded.keys()
                if missing or ("master" in self.state[p]) != ("master" in loaded):
                    raise ValueError(f"optimizer state of a {tuple(p.shape)} parameter: "
                                     f"{sorted(missing) or 'master weight'} missing or unexpected "
                                     f"(a checkpoint of another optimizer?)")
                wrong = [k for k, v in loaded.items() if k != "step" and v.shape != p.shape]
                if wrong:
                    raise ValueError(f"optimizer state of a {tuple(p.shape)} parameter: {wrong} of another shape")
                # into the tensors held since construction: others (the EMA) may hold the masters
                with torch.no_grad():
                    for key, value in loaded.items():
                        self.state[p][key].copy_(value)
                    if "master" in loaded:
                        p.copy_(self.state[p]["master"])
