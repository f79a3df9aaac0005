"""How fast does the recipe learn to follow a given view? A CPU-sized probe on world renders.

    python benchmarks/probe_conditioning.py --steps 1500 --lr 1e-3 --condition-prob 0.5

The learning proof (``learn_procedural.py``) needs a GPU, a fitted VAE and minutes per try; this
asks the same question of image<->depth pairs in seconds per hundred steps on a CPU:

* data: ``--pairs`` world scenes rendered at 32², each an (image, depth condition) pair, and 64
  held-out ones (another seed range). No VAE: a view's "latent" is its pixels unshuffled by 2
  (12 channels, 4 zero channels to make the model's 16), a 16x16 grid, 64 tokens a view;
* model and loss: a NextDiT of ``--width``/``--depth`` trained by ``flow_matching_loss`` with
  per-view σ (``--sigma-shift``) and ``given_views`` (``--condition-prob``), AdamW, clip 1;
* every ``--eval-every`` steps, both directions on the held-out pairs (20 Euler steps, no CFG,
  given views labelled as the model predictor would): pixel MSE of the generated view to its own
  scene's and to another scene's (a rolled batch), the MSE of the mean view, and the correlation
  of the generated view's edges (Sobel of grey) with its condition's, own scene against another's,
  beside the true view's (the ceiling: floor and horizon edges are shared by every scene, so even
  the truth scores only ~0.17 against another scene's ~0.11). A model that follows its condition
  has MSE own < other and edges own > other.

Random text, random weights at start, nothing here is a benchmark of the released model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evals.model_predictor import given_label_for  # noqa: E402
from model.loss import flow_matching_loss, given_views, sample_sigmas  # noqa: E402
from model.nextdit import NextDiT, NextDiTConfig  # noqa: E402
from model.sampler import Conditioning, sample  # noqa: E402
from onegen.pixels import pixels_to_tensor  # noqa: E402
from onegen.shards.reader import depth_to_condition  # noqa: E402
from onegen.sources import procedural as world  # noqa: E402

RES = 32
HELD_OUT_SEED = 10**6
SOBEL = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None]


def render_pairs(n: int, first_seed: int) -> torch.Tensor:
    """[n, 2, 3, RES, RES] in [-1, 1]: the image, then its depth drawn as the depth family draws it."""
    out = []
    for s in range(first_seed, first_seed + n):
        r = world.render(world.sample_scene(s, 2, 5), world.random_camera(s, RES, RES))
        image = pixels_to_tensor(r.rgb)
        out.append(torch.stack([image, depth_to_condition(r.depth)]))
    return torch.stack(out)


def to_latents(pixels: torch.Tensor) -> torch.Tensor:
    b, f = pixels.shape[:2]
    z = F.pixel_unshuffle(pixels.flatten(0, 1), 2)
    z = torch.cat([z, z.new_zeros(z.shape[0], 16 - z.shape[1], *z.shape[2:])], dim=1)
    return z.view(b, f, 16, RES // 2, RES // 2)


def to_pixels(latents: torch.Tensor) -> torch.Tensor:
    b, f = latents.shape[:2]
    return F.pixel_shuffle(latents.flatten(0, 1)[:, :12], 2).view(b, f, 3, RES, RES)


def edge_map(pixels: torch.Tensor) -> torch.Tensor:
    """Standardised Sobel magnitude of the grey image, [N, RES*RES]."""
    grey = pixels.mean(dim=1, keepdim=True)
    gx, gy = F.conv2d(grey, SOBEL, padding=1), F.conv2d(grey, SOBEL.transpose(-1, -2), padding=1)
    e = (gx.square() + gy.square()).sqrt().flatten(1)
    return (e - e.mean(dim=1, keepdim=True)) / (e.std(dim=1, keepdim=True) + 1e-6)


@torch.no_grad()
def evaluate(model: NextDiT, held: torch.Tensor, given_label: str) -> dict:
    cond = Conditioning(torch.zeros(len(held), 4, 32), torch.ones(len(held), 4, dtype=torch.bool))
    out = {}
    for name, target, start in (("depth2image", 0, [1.0, 0.0]), ("image2depth", 1, [0.0, 1.0])):
        made = sample(lambda v, t, c: model(v, t, c.embeds, c.mask), to_latents(held), start, cond, steps=20,
                      cfg_scale=1.0, generator=torch.Generator().manual_seed(5), given_label=given_label)
        view = to_pixels(made)[:, target].clamp(-1, 1)
        truth, other = held[:, target], held[:, target].roll(1, 0)
        made_edges, cond_edges = edge_map(view), edge_map(held[:, 1 - target])
        out[name] = {"mse_own": (view - truth).square().mean().item(), "mse_other": (view - other).square().mean().item(),
                     "mse_mean_view": (truth.mean(0, keepdim=True) - truth).square().mean().item(),
                     "edges_own": (made_edges * cond_edges).mean().item(),
                     "edges_other": (made_edges * cond_edges.roll(1, 0)).mean().item(),
                     "edges_truth": (edge_map(truth) * cond_edges).mean().item()}
    return {k: {m: round(v, 4) for m, v in d.items()} for k, d in out.items()}


def compile_like_trainer(model: NextDiT, device: torch.device) -> NextDiT:
    """Each block's forward compiled by ``model/train.py``'s own ``wrap_model`` (no DDP, no checkpointing)."""
    from model import train as trainer
    from onegen.config import TrainConfig

    return trainer.wrap_model(model, TrainConfig(parallel="none", compile=True), trainer.Dist(device=device))


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """The probe model's shape; its defaults are a CPU-sized model, ``--width 576 --depth 12 --heads 8
    --kv-heads 4`` is ``small``'s (the learning run's)."""
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)


def train_probe(args, loss_of: Callable[[NextDiT, torch.Generator], torch.Tensor],
                evaluate_model: Callable[[NextDiT], dict], record: dict, caption_channels: int = 32,
                device: torch.device | str = "cpu", compile_blocks: bool = False) -> None:
    """The probes' model and loop: a NextDiT of ``args.width``/``args.depth`` (seeded by ``args.seed``, on the host,
    then moved to ``device``; ``compile_blocks``: compiled as the trainer compiles them), AdamW, clip 1,
    ``loss_of(model, generator)`` a step; every ``args.eval_every`` steps and at the end a row of
    ``evaluate_model(model)`` printed and added to ``record``, which ``--json`` gets at the end."""
    torch.manual_seed(args.seed)
    model = NextDiT(NextDiTConfig(hidden_size=args.width, depth=args.depth, num_heads=args.heads,
                                  num_kv_heads=args.kv_heads,
                                  caption_channels=caption_channels, multiple_of=32)).to(device)
    if compile_blocks:
        model = compile_like_trainer(model, torch.device(device))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.time()
    for step in tqdm(range(1, args.steps + 1), desc="probe", unit="step", mininterval=10):
        loss = loss_of(model, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            row = {"step": step, "seconds": round(time.time() - t0, 1), "loss": round(loss.item(), 4),
                   **evaluate_model(model)}
            model.train()
            record["evals"].append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sigma-shift", type=float, default=1.0)
    ap.add_argument("--condition-prob", type=float, default=0.5)
    add_model_arguments(ap)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the evaluations here")
    args = ap.parse_args()

    t0 = time.time()
    train, held = to_latents(render_pairs(args.pairs, 0)), render_pairs(64, HELD_OUT_SEED)
    print(f"rendered {args.pairs} + 64 pairs in {time.time() - t0:.1f} s", flush=True)
    text, mask = torch.zeros(args.batch, 4, 32), torch.ones(args.batch, 4, dtype=torch.bool)
    label = given_label_for({"condition_prob": args.condition_prob})  # as the model predictor labels a checkpoint

    def loss_of(model: NextDiT, g: torch.Generator) -> torch.Tensor:
        x = train[torch.randint(len(train), (args.batch,), generator=g)]
        given = given_views((args.batch, 2), args.condition_prob, g)
        return flow_matching_loss(model, x, text, mask, sample_sigmas((args.batch, 2), g, args.sigma_shift),
                                  torch.randn(x.shape, generator=g), given if given.any() else None)[0]

    train_probe(args, loss_of, lambda model: evaluate(model, held, label),
                {"command": " ".join([sys.executable, *sys.argv]), "evals": []})


if __name__ == "__main__":
    main()
