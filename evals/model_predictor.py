"""OneDiffusion as an evaluation predictor: every benchmark question answered by the sampler.

* depth: ``[[depth2image]]`` with the image given (start 0) and the depth view generated (start 1);
  the decoded depth view is the model's affine-invariant depth (the benchmark aligns it);
* novel views: ``[[multiview]]`` interleaved ``[img, rays, ...]``, condition images and every
  camera's rays given, target images generated;
* cameras: ray views generated given the images, decoded with least squares;
* ID customisation: ``[[faceid]]``, the target image generated before the given references;
* condition -> image: the condition's task token, image generated, condition picture given;
* text -> image (GenEval): ``[[text2image]]``, each prompt's images one batch of independent noise.

Weights come from a trainer checkpoint (``checkpoints/step_N``, EMA preferred) or the released
``transformer`` folder; the VAE and text encoder from ``model.vae`` / ``model.text_encoder``.
When any part is a seeded-random stand-in, ``describe()`` says ``weights: random`` and the
leaderboard labels the row so -- such numbers check the plumbing, never the method.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from model.nextdit import CONFIGS, NextDiT, is_architecture_of, linear_parameters, load_released
from model.sampler import Conditioning, DynamicShift, estimate_cameras, sample, scheduler_shift
from model.text import TextEncoder
from model.vae import DOWNSAMPLE, LATENT_CHANNELS, LatentCodec
from onegen.annotators.base import weights_sha256
from onegen.annotators.depth import CONDITION_VERSION as DEPTH_CONDITION_VERSION
from onegen import tasks
from onegen.config import Params
from onegen.hub_cache import resolve_model_path
from onegen.pixels import pixels_to_tensor, tensor_to_pixels
from onegen.plucker import RAY_FRAME, rays_for_cameras
from onegen.seeding import item_seed
from onegen.camera import Camera


def transformer_weights(path: Path) -> Path:
    """The file or folder whose weights ``model:<path>`` loads: a trainer checkpoint step (its EMA
    weights when saved), a trainer output directory (its newest step), or a released folder."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path / "ema.safetensors" if (path / "ema.safetensors").is_file() else path / "model.safetensors"
    if (path / "latest").is_file():
        return transformer_weights(path / (path / "latest").read_text().strip())
    return path


def _checkpoint_meta(weights: Path) -> dict:
    meta_file = weights.with_name("meta.json")
    return json.loads(meta_file.read_text()) if weights.is_file() and meta_file.is_file() else {}


def schedule_shift(weights: Path) -> float | DynamicShift:
    """The σ shift to sample with: a released ``transformer`` folder's own, from the Hub layout's
    ``scheduler/scheduler_config.json`` beside it; else (a trainer checkpoint, or a folder without that
    config) the default dynamic shift, SPEC's."""
    config = weights.parent / "scheduler" / "scheduler_config.json"
    return scheduler_shift(config) if weights.is_dir() and config.is_file() else DynamicShift()


def given_label_for(meta: dict) -> str:
    """Given views are labelled as the model saw them in training: σ 0 when the trainer gave it clean
    views (``train.condition_prob > 0``), else the released pipeline's smallest σ."""
    return "zero" if meta.get("condition_prob", 0) > 0 else "released"


def load_transformer(weights: Path, size: str, device) -> NextDiT:
    """The transformer of ``weights`` (``transformer_weights``' answer) in float32, as the checkpoint holds it."""
    if weights.is_file():
        meta = _checkpoint_meta(weights)
        if "model_config" in meta and not is_architecture_of(meta["model_config"], size):
            raise ValueError(f"model predictor: {weights.parent} holds a {meta.get('model_size')!r} model but "
                             f"model.size is {size!r}")
        model = NextDiT(CONFIGS[size])
        model.load_state_dict(load_file(weights), strict=True)
        return model.to(device)
    # float32 whatever the release stores: evals.precision then decides what runs (bf16 autocast or float32)
    return load_released(weights, device=device, dtype=torch.float32, key="model predictor")


# Latent tokens one sampler call holds: a GenEval prompt's 4 images at 1024² (the call as it was, one prompt at a
# time), or many items' small images at once (up to 256 at 128²), where one call an item left the GPU idle between
# the host's kernel launches. Each item's noise is its own, so its answer does not depend on its batch's other
# items; on a GPU a call of another size may round its matrix products differently in the last bits.
SAMPLE_TOKENS = 16384


def layout_runs(layouts: list, tokens: list[int], budget: int = SAMPLE_TOKENS) -> Iterator[tuple[Any, list[int]]]:
    """Item indices grouped by layout (what one sampler call needs alike: size, view set, ...), in first-seen order,
    each group cut into ``token_runs``: (layout, indices) per sampler call."""
    groups: dict[Any, list[int]] = {}
    for i, layout in enumerate(layouts):
        groups.setdefault(layout, []).append(i)
    for layout, idx in groups.items():
        for run in token_runs([tokens[i] for i in idx], budget):
            yield layout, [idx[j] for j in run]


def token_runs(tokens: list[int], budget: int = SAMPLE_TOKENS) -> list[list[int]]:
    """Consecutive runs of item indices whose tokens add up to ``budget`` at most; an item over it runs alone."""
    runs: list[list[int]] = []
    total = 0
    for i, n in enumerate(tokens):
        if runs and total + n <= budget:
            runs[-1].append(i)
            total += n
        else:
            runs.append([i])
            total = n
    return runs


# Condition kinds of the condition benchmarks -> the prompt guide's task tokens.
CONDITION_TOKENS = {"canny": tasks.CANNY2IMAGE, "softedge": tasks.HED2IMAGE, "depth": tasks.DEPTH2IMAGE,
                    "pose": tasks.POSE2IMAGE}


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop to the target aspect, then resize (bicubic): a reference at the generated size."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    s = min(h / height, w / width)
    ch, cw = round(height * s), round(width * s)
    y, x = (h - ch) // 2, (w - cw) // 2
    return np.asarray(Image.fromarray(image[y : y + ch, x : x + cw]).resize((width, height), Image.BICUBIC))


def sampling_precision(precision: str, device: torch.device) -> str:
    """The transformer's precision as the predictor runs it: bf16 autocast only on a GPU."""
    return precision if device.type == "cuda" else "fp32"


class ModelPredictor:
    def __init__(self, params: Params, checkpoint: Path, steps: int = 100, cfg_scale: float = 5.0, seed: int = 0):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # the VAE and the text encoder stay float32: only the transformer, run 2 x steps times an image, is worth it
        self.precision = sampling_precision(params.evals.precision, self.device)
        checkpoint = Path(resolve_model_path(checkpoint, "model predictor"))
        if not checkpoint.exists():
            raise FileNotFoundError(f"model predictor: checkpoint {checkpoint} not found")
        self.checkpoint = checkpoint
        self.weights = weights = transformer_weights(self.checkpoint)
        self.model = load_transformer(weights, params.model.size, self.device).eval()
        if self.precision == "bf16":
            # what autocast would cast them to at every forward, cast once: the same products, in half the memory
            for p in linear_parameters(self.model):
                p.data = p.data.to(torch.bfloat16)
        meta = _checkpoint_meta(weights)
        self.given_label = given_label_for(meta)
        self.shift = schedule_shift(weights)
        # A released folder learned the release pipeline's latents (no shift_factor) and depth images (near bright,
        # disparity); a trainer checkpoint what its meta says, by default what checkpoints from before those keys
        # learned (shifted latents; version 1 depth, near dark in metric depth). The depth benchmarks align in that space.
        released = weights.is_dir()
        vae_shift = False if released else meta.get("vae_shift", True)
        self.depth_version = DEPTH_CONDITION_VERSION if released else meta.get("depth_condition", 1)
        self.depth_space = "depth" if self.depth_version == 1 else "disparity"
        # the key came after the frame changed and before depth_condition did: a checkpoint with the latter but not
        # the former learned the current frame
        self.ray_frame = RAY_FRAME if released else meta.get("ray_frame", 2 if "depth_condition" in meta else 1)
        self.codec = LatentCodec.load(params.model.vae, device=self.device, seed=params.seed, shift=vae_shift)
        self.text = TextEncoder.load(params.model.text_encoder, max_tokens=params.model.max_text_tokens,
                                     device=self.device, seed=params.seed, dim=self.model.config.caption_channels)
        self.steps, self.cfg_scale, self.seed = steps, cfg_scale, seed
        self.normalize_rays = params.shards.rays_normalize_cameras  # as the training shards' ray views
        # Cached item scores are keyed by this: the bytes of every network that shapes an output, so a
        # retrained checkpoint under the same path, or another VAE or text encoder, is scored afresh.
        self.identity = hashlib.sha256(json.dumps([
            weights_sha256(weights), LatentCodec.identity_of(params.model.vae, params.seed, vae_shift),
            TextEncoder.identity_of(params.model.text_encoder, params.seed, self.model.config.caption_channels),
            self.normalize_rays, self.given_label, repr(self.shift), self.depth_version,
            self.ray_frame, self.precision]).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        random = [n for n, r in (("VAE", self.codec.random_weights), ("text encoder", self.text.random_weights)) if r]
        return {"name": str(self.checkpoint), "kind": "model", "weights": "random" if random else "trained",
                "random_parts": random, "shift": repr(self.shift), "precision": self.precision,
                "depth_space": self.depth_space,  # where the depth benchmarks align its depth: results say it
                "hash": f"{self.identity}-s{self.steps}-g{self.cfg_scale}-seed{self.seed}"}

    def _denoise(self, x, timesteps, cond: Conditioning):
        # the sampler integrates in float32 whatever the velocity's precision
        with torch.no_grad(), torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            return self.model(x, timesteps, cond.embeds, cond.mask).float()

    def _cond(self, prompts: list[str]) -> Conditioning:
        e, m = self.text(prompts)
        ne, nm = self.text([""])
        return Conditioning(e, m, ne, nm)

    def _generators(self, ids: list[str]) -> list[torch.Generator]:
        """One generator per item, seeded by (seed, item id): an item's noise never depends on its batch's other
        items or its place among them, so a resumed run scores as a whole one (up to a GPU's rounding, see
        SAMPLE_TOKENS)."""
        return [torch.Generator().manual_seed(item_seed(self.seed, f"model-predictor/{i}", 0)) for i in ids]

    def _sample(self, views: torch.Tensor, start: list[float], prompts: list[str], ids: list[str]) -> torch.Tensor:
        return sample(self._denoise, views.to(self.device), start, self._cond(prompts), steps=self.steps,
                      cfg_scale=self.cfg_scale, shift=self.shift, generator=self._generators(ids),
                      given_label=self.given_label)

    def predict_depth(self, items: list[dict]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(items)
        sizes = [it["rgb"].shape[:2] for it in items]
        for (h, w), run in layout_runs(sizes, [2 * self._tokens(*s) for s in sizes]):
            z = self.codec.encode(pixels_to_tensor(np.stack([items[i]["rgb"] for i in run])).to(self.device))
            views = torch.stack([z, torch.zeros_like(z)], dim=1)
            made = self._sample(views, [0.0, 1.0], [f"{tasks.DEPTH2IMAGE} a photo"] * len(run),
                                [items[i]["id"] for i in run])
            # the model's depth image in [-1, 1]: +1 is an affine-invariant disparity (or depth, version 1) in [0, 2]
            for i, d in zip(run, self.codec.decode(made[:, 1]).mean(dim=1)):
                out[i] = d.cpu().numpy() + 1.0
        return out

    def predict_views(self, items: list[dict]) -> list[dict[int, np.ndarray]]:
        if self.ray_frame != RAY_FRAME:
            raise ValueError(f"model predictor: {self.checkpoint} learned ray maps in camera 0's OpenCV frame "
                             f"(ray_frame {self.ray_frame}); they are now drawn in its PyTorch3D frame, as the release "
                             "draws them: retrain it for novel views")
        results: list[dict[int, np.ndarray] | None] = [None] * len(items)
        # objects with the same view set, pose knowledge and image size share a call
        layouts = [(tuple(it["condition_views"]), tuple(it["target_views"]), it.get("poses_known", True),
                    it["images"][0].shape[:2]) for it in items]
        tokens = [2 * (len(c) + len(t)) * self._tokens(*hw) for c, t, _, hw in layouts]
        for (cond, targets, poses_known, _), run in layout_runs(layouts, tokens):
            order = [*cond, *targets]
            # Unknown poses (paper Table 2): only the first condition view's camera is given; the others' rays are
            # generated with the target images, and the given cameras alone set the rays' frame and scale.
            posed = [i for i in order if poses_known or i not in cond[1:]]
            start = [v for i in order for v in ((0.0 if i in cond else 1.0), (0.0 if i in posed else 1.0))]
            seqs = [self._view_sequence(items[n], order, cond, posed) for n in run]
            out = self._sample(torch.stack(seqs), start, [f"{tasks.MULTIVIEW} a photo"] * len(run),
                               [items[n]["id"] for n in run])
            for n, views in zip(run, out[:, 0::2]):
                pix = self._pixels(views)
                results[n] = {i: pix[k] for k, i in enumerate(order) if i in targets}
        return results

    def _view_sequence(self, it: dict, order: list[int], cond: tuple, posed: list[int]) -> torch.Tensor:
        """One object's [img, rays] interleaved sequence: condition images encoded, the rest zero; rays of the
        posed views, zero for those whose cameras are generated."""
        h, w = it["images"][0].shape[:2]
        given = dict(zip(posed, torch.from_numpy(rays_for_cameras(
            [Camera(it["K"], it["world_to_camera"][i], h, w) for i in posed], normalize=self.normalize_rays))))
        rays = torch.stack([given[i] if i in given else torch.zeros_like(given[order[0]]) for i in order]).float()
        images = [it["images"][i] if i in cond else np.zeros_like(it["images"][0]) for i in order]
        z = self.codec.encode(pixels_to_tensor(np.stack(images)).to(self.device)).cpu()
        return torch.stack([x for pair in zip(z, rays) for x in pair])

    def _pixels(self, latents: torch.Tensor) -> list[np.ndarray]:
        decoded = self.codec.decode(latents)
        return list(tensor_to_pixels(decoded))

    def generate_with_reference(self, items: list[dict]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(items)
        layouts = [(len(it["reference"]), tuple(it["size"])) for it in items]  # as many references, one size
        for (refs, (h, w)), run in layout_runs(layouts, [(1 + r) * self._tokens(*hw) for r, hw in layouts]):
            chosen = [items[n] for n in run]
            refs_px = [_fit(r, h, w) for it in chosen for r in it["reference"]]
            z = self.codec.encode(pixels_to_tensor(np.stack(refs_px)).to(self.device)).unflatten(0, (len(run), refs))
            views = torch.cat([torch.zeros_like(z[:, :1]), z], dim=1)
            prompts = [tasks.faceid_prompt([it["prompt"], *it["reference_captions"]]) for it in chosen]
            made = self._sample(views, [1.0] + [0.0] * refs, prompts, [it["id"] for it in chosen])
            for n, pix in zip(run, self._pixels(made[:, 0])):
                out[n] = pix
        return out

    def generate_from_condition(self, items: list[dict]) -> list[np.ndarray]:
        if self.depth_version == 1 and any(it["condition_kind"] == "depth" for it in items):
            raise ValueError(f"model predictor: {self.checkpoint} learned depth drawn near-dark (depth_condition 1); "
                             "depth conditions are now drawn as disparity, near bright: retrain it for depth->image")
        out: list[np.ndarray | None] = [None] * len(items)
        layouts = [(it["condition_kind"], it["condition"].shape) for it in items]  # one task token, one size
        for (kind, _), run in layout_runs(layouts, [2 * self._tokens(*shape[:2]) for _, shape in layouts]):
            z = self.codec.encode(pixels_to_tensor(np.stack([items[i]["condition"] for i in run])).to(self.device))
            views = torch.stack([torch.zeros_like(z), z], dim=1)
            prompts = [f"{CONDITION_TOKENS[kind]} {items[i]['prompt']}" for i in run]
            ids = [items[i]["id"] for i in run]
            for i, pix in zip(run, self._pixels(self._sample(views, [1.0, 0.0], prompts, ids)[:, 0])):
                out[i] = pix
        return out

    def _tokens(self, h: int, w: int) -> int:
        """Latent tokens of one h x w view."""
        _, ph, pw = self.model.config.patch_size
        return (h // DOWNSAMPLE // ph) * (w // DOWNSAMPLE // pw)

    def generate_images(self, items: list[dict]) -> list[list[np.ndarray]]:
        out: list[list[np.ndarray]] = [[] for _ in items]
        sizes = [tuple(it["size"]) for it in items]  # prompts of one size share a call
        for (h, w), run in layout_runs(sizes, [it["n_images"] * self._tokens(*s) for it, s in zip(items, sizes)]):
            owner = [i for i in run for _ in range(items[i]["n_images"])]
            prompts = [tasks.task_prompt(tasks.TEXT2IMAGE, items[i]["prompt"]) for i in owner]
            ids = [f"{items[i]['id']}/{k}" for i in run for k in range(items[i]["n_images"])]
            views = torch.zeros(len(owner), 1, LATENT_CHANNELS, h // DOWNSAMPLE, w // DOWNSAMPLE)
            for i, pix in zip(owner, self._pixels(self._sample(views, [1.0], prompts, ids)[:, 0])):
                out[i].append(pix)
        return out

    def predict_cameras(self, items: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(items)
        # rigs of as many views, at one size, with the same intrinsics (None: estimated too) share a call
        layouts = [(len(it["images"]), it["images"][0].shape[:2],
                    None if it["K"] is None else np.asarray(it["K"], dtype=np.float64).tobytes()) for it in items]
        for (views, (h, w), _), run in layout_runs(layouts, [2 * v * self._tokens(*hw) for v, hw, _ in layouts]):
            z = torch.stack([self.codec.encode(pixels_to_tensor(np.stack(items[n]["images"])).to(self.device))
                             for n in run])
            cond = self._cond([f"{tasks.MULTIVIEW} a photo"] * len(run))
            cams = estimate_cameras(self._denoise, z, items[run[0]]["K"], h, w, cond, steps=self.steps,
                                    cfg_scale=self.cfg_scale, shift=self.shift, given_label=self.given_label,
                                    generator=self._generators([items[n]["id"] for n in run]))
            for n, rig in zip(run, cams):
                out[n] = (np.stack([c.rotation for c in rig]), np.stack([c.centre for c in rig]))
        return out
