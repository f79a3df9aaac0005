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


def other_scene_prompts(prompts: list[str], scenes: list[str]) -> list[str]:
    """Each sample's "another's prompt": that of the next sample (cyclically) from another scene. Two views of
    one scene mostly name the same colours and shapes, so pairing neighbours of a scene-ordered stream would
    compare a prompt with itself in other words."""
    n = len(prompts)
    out = []
    for i in range(n):
        j = next((k % n for k in range(i + 1, i + n) if scenes[k % n] != scenes[i]), None)
        if j is None:
            raise ValueError("prompt_reliance: every sample is of one scene; another's prompt needs two scenes")
        out.append(prompts[j])
    return out


@torch.no_grad()
def prompt_reliance(model, x: torch.Tensor, noise: torch.Tensor, prompts: list[str],
                    encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
                    sigmas=(0.25, 0.5, 0.75, 0.95), chunk: int = 64, scenes: list[str] | None = None) -> dict:
    """``x`` [n, 1, C, h, w] clean latents with their ``prompts``; ``encode`` as the sampler encodes prompts.
    -> {"samples": n, "own" | "other" | "empty": {"sigma_<σ>": mean loss}}; "other" pairs sample i with the
    prompt of the next sample from another of ``scenes`` (default: every sample a scene of its own)."""
    n = len(prompts)
    if x.shape[0] != n or noise.shape != x.shape:
        raise ValueError(f"prompt_reliance: {n} prompts for latents {tuple(x.shape)} and noise {tuple(noise.shape)}")
    scenes = scenes if scenes is not None else [str(i) for i in range(n)]
    if len(scenes) != n:
        raise ValueError(f"prompt_reliance: {len(scenes)} scene names for {n} prompts")
    chunks = range(0, n, chunk)
    out: dict = {"samples": n, "scenes": len(set(scenes))}
    other = other_scene_prompts(prompts, scenes)
    for name, texts in (("own", prompts), ("other", other), ("empty", [""] * n)):
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
