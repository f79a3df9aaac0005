"""How fast does the recipe learn to follow its prompt? A CPU-sized text→image probe on world renders.

    python benchmarks/probe_text.py --steps 3000

The learning run's text→image samples (``learn_procedural.py``, a random text encoder) came out as
colourless blobs after 4300 steps, and its world GenEval stayed under the random-scene floor. This
asks, in minutes on a CPU, whether the model learns a prompt's colour and shape at all:

* data: ``--scenes`` world scenes of ``--objects`` objects (default one) rendered at 32² from a close
  orbit camera (scenes with a visible object of fewer than 15 pixels skipped), captioned by the world
  (``A photo of a large red metal cube.``; ``--caption-colours``: the chance that a caption names colours, else
  ``A photo of a large metal cube.``), and 128 held-out ones (another seed range); latents are
  pixels unshuffled by 2, as in ``probe_conditioning.py`` (``--chroma-scale``: in an opponent colour basis
  first), or with ``--vae`` those of a tiny AutoencoderKL (16 channels, /2) fitted on the training renders
  for ``--vae-steps`` and normalised per channel or by one scale, as ``learn_procedural.py``'s;
* text: the random tiny T5 the offline runs use (``TextEncoder.load(None)``), ``--text-dim`` wide, frozen,
  features cached;
* model: a NextDiT of ``--width``/``--depth`` trained by ``flow_matching_loss`` on one view, 10%
  caption dropout to the empty prompt (for CFG), AdamW, clip 1;
* judge: a small CNN fitted on the training renders (with ``--vae``, on their round trips through it) to name
  the objects' colours (10) and shapes (4), scored on the held-out ones (the ceiling) and on those of other
  prompts (the floor: a right answer by chance, GenEval's "random scene"). Its accuracy is, per image, the share
  of the k colours (shapes) the prompt names among the judge's k likeliest: top-1 accuracy for one object. It
  also learns from empty floors (the same cameras, no object) whether an image shows any object (``object``: the
  share of images it sees one in; ``empty_floors_seen_as_objects`` its false positives);
* every ``--eval-every`` steps: 20-step Euler samples of the held-out prompts at CFG 1 and
  ``--cfg``; the judge's colour and shape accuracy on them against their prompts and the share with an object; the
  same shape accuracy and share on samples of those prompts with no colour named (``shapes_only``, as GenEval's
  single-object and counting prompts read: a model that only saw colours named drew empty floors for them); and
  ``prompt_reliance`` on 256 training scenes (velocity loss with the own, another's and the empty
  prompt), the figure ``learn_procedural.py`` reports for its GPU run;
* ``--loop trainer``: the same data written as latent shards and trained by ``model/train.py`` (the
  reader, caption dropout on cached features, its AdamW and EMA) instead of the probe's own loop, so a
  difference between the two is the project's training path;
* ``--device cuda`` (default cpu) runs the model, its training, sampling and ``prompt_reliance`` on the GPU, with
  every random draw still made on the host (the same batches, σ and noise as on a CPU), so its figures compare
  with a CPU run's; rendering, the VAE, the text encoder and the judge stay on the host. With ``--bf16`` the
  GPU training path's precision (bf16 autocast, TF32), with ``--compile`` its blocks compiled by
  ``model/train.py``'s ``wrap_model``; on CUDA self-attention is the compiled flex kernel and SDPA picks the
  caption cross-attention's (cuDNN on an H100). ``--loop trainer`` trains on ``--device`` too (the trainer
  alone would take CUDA whenever there is one), in bf16 with ``--bf16`` and compiled with ``--compile``; it
  draws its noise on its device, so its CUDA run sees other noise than its CPU run:

      python benchmarks/probe_text.py --steps 2000 --device cuda --bf16 --compile
      python benchmarks/probe_text.py --steps 2000 --loop trainer --prompt-prefix '[[text2image]]' \
          --device cuda --bf16 --compile

Random text encoder, random weights at start: nothing here is a benchmark of the released model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import AutoencoderKL  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from model import train as trainer  # noqa: E402
from model.loss import flow_matching_loss, sample_sigmas  # noqa: E402
from model.nextdit import CONFIGS, NextDiT  # noqa: E402
from model.sampler import Conditioning, sample  # noqa: E402
from model.text import TextEncoder  # noqa: E402
from benchmarks.prompt_reliance import prompt_reliance  # noqa: E402
from benchmarks.world_vae import (LATENT_NORMS, fit_autoencoder, normalise_latents, object_colours_kept,  # noqa: E402
                                  reconstruction_psnr)
from onegen import tasks  # noqa: E402
from onegen.camera import Camera  # noqa: E402
from onegen.config import Params, load_profile  # noqa: E402
from onegen.fingerprint import fingerprint  # noqa: E402
from onegen.format import Provenance, Sample, View  # noqa: E402
from onegen.pixels import pixels_to_tensor  # noqa: E402
from onegen.shards.writer import ShardLimits, build_shards, write_json  # noqa: E402
from onegen.sources import procedural as world  # noqa: E402
from pipelines.latents import encoder_identity, latents_dir  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_conditioning import RES, add_model_arguments, to_latents, to_pixels, train_probe  # noqa: E402

HELD_OUT_SEED = 10**6
COLORS, SHAPES = list(world.COLORS), list(world.SHAPES)
MIN_PIXELS = 15


def render_scenes(n: int, first_seed: int, radius: tuple[float, float] = (5.0, 6.5), objects: tuple[int, int] = (1, 1),
                  colours: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, list[str], float, torch.Tensor]:
    """-> images [n, 3, RES, RES] in [-1, 1], labels [n, colours + shapes] (1 where a visible object has that
    colour / shape), captions, the mean share of the image the objects cover, and the instance maps [n, RES, RES]
    (0 the background). Scenes of ``objects``
    (lo, hi) objects, the camera ``radius`` metres (uniform in the range) from the target; a scene where a
    visible object, so one its caption names, covers fewer than ``MIN_PIXELS`` is skipped. ``colours``: the chance
    that a caption names colours (the world's ``caption``)."""
    images, labels, captions, instances, seed, covered = [], [], [], [], first_seed, 0
    while len(images) < n:
        scene, camera = world.sample_scene(seed, *objects), _camera(seed, radius)
        r = world.render(scene, camera)
        seed += 1
        pixels = np.bincount(r.instance.ravel(), minlength=len(scene.objects) + 1)
        visible = [o for o in scene.objects if pixels[o.instance_id] > 0]
        if not visible or any(pixels[o.instance_id] < MIN_PIXELS for o in visible):
            continue
        covered += int(pixels[1:].sum())
        label = torch.zeros(len(COLORS) + len(SHAPES))
        for o in visible:
            label[COLORS.index(o.color)] = label[len(COLORS) + SHAPES.index(o.shape)] = 1
        images.append(pixels_to_tensor(r.rgb))
        labels.append(label)
        captions.append(world.caption(scene, camera, r, colours=colours))
        instances.append(torch.from_numpy(r.instance.astype(np.uint8)))
    return torch.stack(images), torch.stack(labels), captions, covered / (n * RES * RES), torch.stack(instances)


def _camera(seed: int, radius: tuple[float, float]) -> Camera:
    rng = np.random.default_rng(seed)
    return world.orbit_cameras(1, RES, RES, radius=rng.uniform(*radius), elevation_deg=rng.uniform(20, 45),
                               start_azimuth_deg=rng.uniform(0, 360))[0]


def empty_floors(n: int, first_seed: int, radius: tuple[float, float]) -> torch.Tensor:
    """The floor and sky of ``render_scenes``' cameras with no object on it, [n, 3, RES, RES]: what the judge
    learns "no object" from."""
    return torch.stack([pixels_to_tensor(world.render(replace(world.sample_scene(seed, 1, 1), objects=()),
                                                      _camera(seed, radius)).rgb)
                        for seed in range(first_seed, first_seed + n)])


class Judge(nn.Module):
    """Names the colours and shapes of the objects in a 32² image, and whether there is one at all."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 32, 3, 2, 1), nn.GELU(),
                                  nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.color, self.shape = nn.Linear(64, len(COLORS)), nn.Linear(64, len(SHAPES))
        self.present = nn.Linear(64, 1)

    def forward(self, x):
        h = self.body(x)
        return self.color(h), self.shape(h), self.present(h)[:, 0]

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the label spread evenly over an image's colours (shapes): with one object,
        plain classification; an image labelled nothing (an empty floor) teaches only "no object"."""
        color, shape, present = self(images)
        has = labels.sum(1) > 0
        c, s = labels[has, :len(COLORS)], labels[has, len(COLORS):]
        return (F.cross_entropy(color[has], c / c.sum(1, keepdim=True))
                + F.cross_entropy(shape[has], s / s.sum(1, keepdim=True))
                + F.binary_cross_entropy_with_logits(present, has.float()))

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """Per image, the share of its k colours (shapes) among the judge's k likeliest, averaged (with one
        object, top-1 accuracy); and the share of the images it sees an object in."""
        color, shape, present = self(images)
        return {"color": _recall_at_k(color, labels[:, :len(COLORS)]),
                "shape": _recall_at_k(shape, labels[:, len(COLORS):]), "object": (present > 0).float().mean().item()}


def _recall_at_k(logits: torch.Tensor, truth: torch.Tensor) -> float:
    k = truth.sum(1).long()
    ranks = logits.argsort(1, descending=True).argsort(1)  # 0 = likeliest
    hits = (truth.bool() & (ranks < k[:, None])).sum(1)
    return (hits / k).mean().item()


def fit_judge(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int) -> Judge:
    torch.manual_seed(seed)
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(images), (128,), generator=g)
        loss = judge.loss(images[i], labels[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return judge.eval()


def opponent_colours(chroma_scale: float) -> torch.Tensor:
    """RGB -> (luma, red-green, yellow-blue), an orthonormal basis, with both chroma axes times ``chroma_scale``.
    At 1 a rotation, which neither the loss nor the isotropic noise can tell from RGB; below 1 the colours sit in
    weaker channels than the luma, as in a VAE latent whose channels share one normalising scale."""
    basis = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]])
    return torch.diag(torch.tensor([1.0, chroma_scale, chroma_scale])) @ (basis / basis.norm(dim=1, keepdim=True))


def recolour(pixels: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` applied to the colour of every pixel, [N, 3, H, W]."""
    return torch.einsum("ij,njhw->nihw", matrix, pixels)


def pixel_codec(chroma_scale: float | None) -> tuple[Callable, Callable]:
    """(encode, decode) between images [N, 3, RES, RES] and latents [N, 1, 16, RES/2, RES/2]: the pixels
    unshuffled by 2, in RGB or (``chroma_scale``) an opponent colour basis."""
    colours = torch.eye(3) if chroma_scale is None else opponent_colours(chroma_scale)
    to_rgb = torch.linalg.inv(colours)
    return (lambda images: to_latents(recolour(images, colours)[:, None]),
            lambda latents: recolour(to_pixels(latents)[:, 0], to_rgb))


def vae_codec(images: torch.Tensor, held: torch.Tensor, latent_norm: str, steps: int, seed: int, downsample: int = 2,
              scale_equivariance: float = 0.0, device: torch.device = torch.device("cpu"),
              objects: torch.Tensor | None = None, object_weight: float = 0.0) -> tuple[Callable, Callable, dict]:
    """(encode, decode) as ``pixel_codec``'s through a tiny AutoencoderKL (16 latent channels, /``downsample``)
    fitted on ``images`` for ``steps`` (their ``objects``' pixels weighted ``object_weight`` times) on ``device``
    (on a GPU under bf16 autocast, as ``learn_procedural.py`` fits its own: minutes become seconds), its latents
    normalised on the first 512 of them (``world_vae.normalise_latents``), and the fit's summary, whose
    reconstruction PSNR is of ``held``. The encoding is the posterior's mode, as the ``latents`` stage's; both run
    on the host."""
    torch.manual_seed(seed)
    blocks = {2: [16, 32], 4: [16, 32, 32]}[downsample]
    vae = AutoencoderKL(latent_channels=16, down_block_types=["DownEncoderBlock2D"] * len(blocks),
                        up_block_types=["UpDecoderBlock2D"] * len(blocks), block_out_channels=blocks,
                        layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False)  # /2: ~0.2 s a step on 2 CPU cores
    summary = fit_autoencoder(vae, images, device, seed, steps=steps, scale_equivariance=scale_equivariance,
                              objects=objects, object_weight=object_weight)
    vae.to("cpu")
    summary.update(normalise_latents(vae, images[:512], latent_norm))
    summary["recon_psnr_db"] = reconstruction_psnr(vae, held)
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor

    @torch.no_grad()
    def encode(x: torch.Tensor) -> torch.Tensor:
        z = torch.cat([vae.encode(x[i:i + 256]).latent_dist.mode() for i in range(0, len(x), 256)])
        return ((z - shift) * scale)[:, None]

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(latents[:, 0] / scale + shift).sample

    return encode, decode, summary


def encode(encoder: TextEncoder, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and masks of every caption, padded to the longest one."""
    feats = [encoder(captions[i:i + 256]) for i in range(0, len(captions), 256)]
    length = max(h.shape[1] for h, _ in feats)
    padded = [trainer.pad_text(h, m, length) for h, m in feats]
    return torch.cat([h for h, _ in padded]), torch.cat([m for _, m in padded])


@torch.no_grad()
def evaluate(model: NextDiT, judge: Judge, text: tuple, null: tuple, labels: torch.Tensor, cfg: float,
             decode_latents: Callable, latent_size: int) -> dict:
    """Samples on the model's device (their noise drawn on the host), decoded and judged on the host."""
    device = next(model.parameters()).device
    embeds, mask = (t.to(device) for t in text)
    null_embeds, null_mask = (t.to(device) for t in null)
    out = {}
    for scale in sorted({1.0, cfg}):
        cond = Conditioning(embeds, mask, null_embeds.expand(len(embeds), -1, -1), null_mask.expand(len(embeds), -1))
        shape = (len(embeds), 1, 16, latent_size, latent_size)
        made = sample(lambda v, t, c: model(v, t, c.embeds, c.mask), torch.zeros(shape, device=device),
                      [1.0], cond, steps=20, cfg_scale=scale, generator=torch.Generator().manual_seed(5))
        images = decode_latents(made.cpu()).clamp(-1, 1)
        out[f"cfg{scale:g}"] = {k: round(v, 3) for k, v in judge.accuracy(images, labels).items()}
    return out


@contextlib.contextmanager
def trainer_on(device: torch.device):
    """``model/train.py`` takes CUDA whenever there is one (``setup_distributed``): held to ``--device`` here, so
    that a CPU run stays one on a GPU machine."""
    chosen, original = trainer.Dist(device=device), trainer.setup_distributed
    trainer.setup_distributed = lambda: chosen
    try:
        yield
    finally:
        trainer.setup_distributed = original


def train_with_trainer(args, latents: torch.Tensor, captions: list[str], text: tuple, evaluate_model, record: dict
                       ) -> None:
    """The same data, model (``tiny``) and evaluations, trained by ``model/train.py`` from latent shards instead
    of ``train_probe``'s loop: what the project's data path and trainer (reader, shuffle, caption dropout on
    cached features, AdamW settings, EMA) do to text learning. The raw weights are evaluated every
    ``--eval-every`` steps as the loop's are, the EMA (what the predictor samples with) at the end.

    The shards' ``latents.json`` names the stand-in VAE, as the trainer checks it, but their ``latent`` views
    are the probe's pixels unshuffled by 2, which only this probe decodes."""
    work = Path(args.work or tempfile.mkdtemp(prefix="probe_text_"))
    base = load_profile("default").model_dump(mode="json")
    base["paths"] = {"data": str(work / "data"), "reports": str(work / "reports")}
    base["seed"] = args.seed
    base["model"].update(size="tiny", vae=None, text_encoder=None)
    base["latents"]["text"] = True
    base["reader"].update(batch_size=args.batch, num_workers=0)
    base["train"].update(
        stages=[{"name": "t2i", "families": ["text2image"], "steps": args.steps, "batch_size": args.batch,
                 "caption_dropout": 0.1}],
        lr=args.lr, warmup_steps=0, sigma_shift=args.sigma_shift, condition_prob=0.0, latents=True,
        checkpoint_every=args.steps, log_every=100, out_dir=str(work / "checkpoints"), seed=args.seed,
        parallel="none", precision="bf16" if args.bf16 else "fp32", compile=args.compile,
        master_weights=False)  # autocast's fp32 weights, as the probe's own loop trains
    params = Params.model_validate(base)

    embeds, mask = text
    out = latents_dir(params, "text2image")

    def make(i: int) -> Sample:
        features = embeds[i][mask[i]].numpy().astype(np.float16)
        return Sample(key=f"probe/{i:06d}", task=tasks.TEXT2IMAGE, caption=captions[i],
                      views=[View("latent", latents[i, 0].numpy().astype(np.float16), role="image", meta={"of": "image"}),
                             View("text", features, role="text")],
                      provenance=Provenance("probe", f"{i:06d}", i))

    build_shards(out, len(latents), make, ShardLimits(1024, 1 << 26),
                 fingerprint("probe_text", args.scenes, args.objects, args.radius, args.seed), desc="probe shards")
    write_json(out / "latents.json", encoder_identity(params))

    t0 = time.time()

    def on_step(step: int, model: NextDiT) -> None:
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            row = {"step": step, "seconds": round(time.time() - t0, 1), **evaluate_model(model)}
            model.train()
            record["evals"].append(row)
            print(json.dumps(row), flush=True)

    with trainer_on(torch.device(args.device)):
        result = trainer.train(params, on_step=on_step)
    ema = NextDiT(CONFIGS["tiny"])
    ema.load_state_dict(load_file(str(Path(result["checkpoint"]) / "ema.safetensors")))
    ema.to(args.device)
    record["ema"] = {"step": result["step"], **evaluate_model(ema.eval())}
    print(json.dumps({"ema": record["ema"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sigma-shift", type=float, default=1.0)
    add_model_arguments(ap)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--judge-steps", type=int, default=800)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--radius", type=float, nargs=2, default=(5.0, 6.5), metavar=("LO", "HI"),
                    help="camera distance range in metres: farther, and the object is a smaller share of the image")
    ap.add_argument("--text-dim", type=int, default=32,
                    help="the stand-in T5's width (the model's caption width): learn_procedural's `small` uses 768")
    ap.add_argument("--objects", type=int, nargs=2, default=(1, 1), metavar=("LO", "HI"),
                    help="objects per scene; above 1 the captions name several colours and shapes, as the world's do")
    ap.add_argument("--caption-colours", type=float, default=1.0,
                    help="the chance that a training caption names colours (the world's world.caption_colours); "
                         "held-out prompts are scored both with colours named and with shapes alone")
    ap.add_argument("--prompt-prefix", default="",
                    help="put before every caption (not the empty CFG prompt, as in training), e.g. '[[text2image]]'")
    ap.add_argument("--bf16", action="store_true",
                    help="the probe's loop trains under bf16 autocast, as the trainer does on a GPU (~10x slower on "
                         "this CPU; on CUDA with TF32 too, as the trainer); sampling stays float32, as the model "
                         "predictor's. With --loop trainer (CUDA only): the trainer's precision bf16")
    ap.add_argument("--device", default="cpu",
                    help="where the model trains, samples and is scored: cpu (default) or cuda; the random draws "
                         "stay on the host either way")
    ap.add_argument("--compile", action="store_true",
                    help="compile the model's blocks as model/train.py does (its wrap_model; minutes on a CPU)")
    ap.add_argument("--loop", choices=["probe", "trainer"], default="probe",
                    help="probe: the script's own training loop; trainer: model/train.py on latent shards of the same "
                         "data (the `tiny` model; needs --prompt-prefix '[[text2image]]', the tag it puts first)")
    ap.add_argument("--work", type=Path, help="with --loop trainer: where its shards and checkpoints go (default: a "
                                              "temporary folder)")
    ap.add_argument("--chroma-scale", type=float, default=None,
                    help="train on (luma, two chroma axes) with the chroma times this (opponent_colours): is a "
                         "prompt's colour learned slower when it sits in weaker latent channels? Default: RGB")
    ap.add_argument("--vae", choices=LATENT_NORMS, default=None,
                    help="train on the latents of a tiny AutoencoderKL fitted on the renders, each channel "
                         "standardised or all by one shift and scale (SD3's), instead of the pixels")
    ap.add_argument("--vae-steps", type=int, default=2000, help="with --vae: its fit's steps (batch 64)")
    ap.add_argument("--vae-downsample", type=int, choices=[2, 4], default=2,
                    help="with --vae: 2 gives 16x16x16 latents (more numbers than the 32x32x3 pixels), 4 gives 8x8x16")
    ap.add_argument("--vae-scale-equivariance", type=float, default=0.0,
                    help="with --vae: weight of its fit's coarse-scale reconstruction (world_vae.fit_autoencoder)")
    ap.add_argument("--vae-object-weight", type=float, default=0.0,
                    help="with --vae: its fit counts the objects' pixels this many times more than the background's "
                         "(world_vae.fit_autoencoder; learn_procedural.py fits at 50)")
    ap.add_argument("--json", type=Path, help="also write the evaluations here")
    args = ap.parse_args()
    if args.vae and args.chroma_scale is not None:
        ap.error("--chroma-scale recolours the pixels that --vae replaces: pass one of them")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if device.type == "cuda" and args.bf16 and args.loop == "probe":
        # as model/train.py turns them on for a bf16 run (for the whole process, its evaluations included)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if args.loop == "trainer":
        tiny = CONFIGS["tiny"]
        if (args.width, args.depth, args.heads, args.kv_heads, args.text_dim) != (
                tiny.hidden_size, tiny.depth, tiny.num_heads, tiny.num_kv_heads, tiny.caption_channels):
            ap.error(f"--loop trainer trains `tiny`: --width {tiny.hidden_size} --depth {tiny.depth} --heads "
                     f"{tiny.num_heads} --kv-heads {tiny.num_kv_heads} --text-dim {tiny.caption_channels}")
        if args.bf16 and torch.device(args.device).type != "cuda":
            ap.error("--bf16 with --loop trainer needs --device cuda: the trainer autocasts on a GPU only")
        if args.prompt_prefix != tasks.TEXT2IMAGE:
            ap.error(f"--loop trainer puts {tasks.TEXT2IMAGE} before every prompt: pass --prompt-prefix "
                     f"'{tasks.TEXT2IMAGE}' so the held-out prompts carry it too")

    t0 = time.time()
    images, labels, captions, covered, instances = render_scenes(args.scenes, 0, tuple(args.radius),
                                                                 tuple(args.objects), args.caption_colours)
    held_images, held_labels, held_captions, _, held_instances = render_scenes(128, HELD_OUT_SEED, tuple(args.radius),
                                                                               tuple(args.objects))
    # the same held-out scenes named by shape alone ("A photo of two cubes."): their samples are scored on shape
    shapes_captions = render_scenes(128, HELD_OUT_SEED, tuple(args.radius), tuple(args.objects), colours=0.0)[2]
    print(f"rendered {args.scenes} + 128 scenes in {time.time() - t0:.1f} s; the object covers "
          f"{covered:.1%} of an image", flush=True)
    raw_captions = captions
    if args.prompt_prefix:
        captions, held_captions, shapes_captions = ([f"{args.prompt_prefix} {c}" for c in cs]
                                                    for cs in (captions, held_captions, shapes_captions))
    record = {"command": " ".join([sys.executable, *sys.argv]), "object_share": round(covered, 4), "evals": [],
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if args.vae:
        encode_images, decode_latents, record["vae"] = vae_codec(images, held_images, args.vae, args.vae_steps,
                                                                args.seed, args.vae_downsample,
                                                                args.vae_scale_equivariance, device,
                                                                (instances > 0)[:, None], args.vae_object_weight)
        # what a perfect model of these latents would make: the renders' round trips, which the judge then learns
        # to read (fitted on the renders, it named only ~64% of the round trips' colours at 27.5 dB)
        judged, held_judged = (decode_latents(encode_images(x)).clamp(-1, 1) for x in (images, held_images))
        record["vae"]["held_out_objects"] = object_colours_kept(held_images, held_judged, held_instances, world.COLORS)
        print(json.dumps({"vae": record["vae"]}), flush=True)
    else:
        encode_images, decode_latents = pixel_codec(args.chroma_scale)
        judged, held_judged = images, held_images
    # a quarter as many empty floors as scenes, through the same codec: the judge tells an empty sample from one
    # with an object in it
    empties, held_empties = (decode_latents(encode_images(x)).clamp(-1, 1) for x in (
        empty_floors(len(images) // 4, 0, tuple(args.radius)), empty_floors(128, HELD_OUT_SEED, tuple(args.radius))))
    judge = fit_judge(torch.cat([judged, empties]), torch.cat([labels, labels.new_zeros(len(empties), labels.shape[1])]),
                      args.judge_steps, args.seed)
    record["judge"] = {"held_out": judge.accuracy(held_judged, held_labels),
                       "other_prompts": judge.accuracy(held_judged.roll(1, 0), held_labels),
                       "empty_floors_seen_as_objects": judge.accuracy(held_empties, held_labels)["object"]}
    print(json.dumps({"judge": record["judge"]}), flush=True)

    encoder = TextEncoder.load(None, dim=args.text_dim, seed=args.seed)
    text, held_text, null = encode(encoder, captions), encode(encoder, held_captions), encoder([""])
    shapes_text = encode(encoder, shapes_captions)
    null_embeds, null_mask = trainer.pad_text(*null, text[0].shape[1])
    latents = encode_images(images)

    def loss_of(model: NextDiT, g: torch.Generator) -> torch.Tensor:
        # every draw on the host, in the CPU run's order: a --device cuda run trains on the same batches and noise
        i = torch.randint(len(latents), (args.batch,), generator=g)
        drop = (torch.rand(args.batch, generator=g) < 0.1)[:, None]
        embeds = torch.where(drop[..., None], null_embeds, text[0][i])
        mask = torch.where(drop, null_mask, text[1][i])
        sigmas = sample_sigmas((args.batch, 1), g, args.sigma_shift)
        noise = torch.randn(latents[i].shape, generator=g)
        x, embeds, mask, sigmas, noise = (t.to(device) for t in (latents[i], embeds, mask, sigmas, noise))
        with torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
            return flow_matching_loss(model, x, embeds, mask, sigmas, noise)[0]

    some = slice(0, min(256, len(latents)))
    fixed_noise = torch.randn(latents[some].shape, generator=torch.Generator().manual_seed(args.seed + 2))

    def encode_on_device(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(t.to(device) for t in encoder(prompts))

    def evaluate_model(model: NextDiT) -> dict:
        reliance = prompt_reliance(model, latents[some].to(device), fixed_noise.to(device), captions[some],
                                   encode_on_device, sigmas=(0.5, 0.75, 0.95))
        named, shapes = (evaluate(model, judge, t, null, held_labels, args.cfg, decode_latents, latents.shape[-1])
                         for t in (held_text, shapes_text))
        return {**named, "shapes_only": {scale: {k: acc[k] for k in ("shape", "object")}
                                         for scale, acc in shapes.items()},
                "reliance": {k: reliance[k] for k in ("own", "other", "empty")}}

    if args.loop == "trainer":
        train_with_trainer(args, latents, raw_captions, text, evaluate_model, record)
    else:
        train_probe(args, loss_of, evaluate_model, record, caption_channels=args.text_dim, device=device,
                    compile_blocks=args.compile)


if __name__ == "__main__":
    main()
