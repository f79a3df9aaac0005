"""Does a text→image model read its prompt? Its velocity loss given each sample's own prompt, another
sample's, and the empty one, at fixed σ and fixed noise.

Own no better than another's: the model ignores what the prompt says, no sampler setting can make a
sample follow its text, and the fault is in training. Clearly better: look at the sampling path.
``learn_procedural.py`` and ``probe_text.py`` both report it, so a GPU run and a CPU probe compare.
"""

from __future__ import annotations

from typing import Callable

import torch

from model.loss import flow_matching_loss


@torch.no_grad()
def prompt_reliance(model, x: torch.Tensor, noise: torch.Tensor, prompts: list[str],
                    encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
                    sigmas=(0.25, 0.5, 0.75, 0.95), chunk: int = 64) -> dict:
    """``x`` [n, 1, C, h, w] clean latents with their ``prompts``; ``encode`` as the sampler encodes prompts.
    -> {"samples": n, "own" | "other" | "empty": {"sigma_<σ>": mean loss}}; "other" pairs sample i with
    prompt i+1."""
    n = len(prompts)
    if x.shape[0] != n or noise.shape != x.shape:
        raise ValueError(f"prompt_reliance: {n} prompts for latents {tuple(x.shape)} and noise {tuple(noise.shape)}")
    chunks = range(0, n, chunk)
    out: dict = {"samples": n}
    for name, texts in (("own", prompts), ("other", prompts[1:] + prompts[:1]), ("empty", [""] * n)):
        encoded = [encode(texts[i:i + chunk]) for i in chunks]
        per_sigma = {}
        for sigma in sigmas:
            total = 0.0
            for i, (text, mask) in zip(chunks, encoded):
                s = torch.full((len(text), 1), float(sigma), device=x.device)
                loss, _ = flow_matching_loss(model, x[i:i + chunk], text, mask, s, noise[i:i + chunk])
                total += float(loss) * len(text)
            per_sigma[f"sigma_{sigma:g}"] = round(total / n, 5)
        out[name] = per_sigma
    return out
