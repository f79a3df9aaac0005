"""``onegen sample``: a grid of the trained model's samples on held-out procedural scenes.

Per scene: the input image, its exact depth, then text->image, depth->image and image->depth
from the latest checkpoint (EMA) through the sampler. With random VAE/T5 stand-ins the grid
checks the plumbing only; ``reports/samples/samples.json`` and the card say so.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from evals.model_predictor import ModelPredictor
from onegen import tasks
from onegen.config import Params
from onegen.pixels import tensor_to_pixels
from onegen.seeding import item_seed
from onegen.shards.reader import depth_to_condition
from onegen.shards.writer import write_json
from onegen.sources import procedural as world

N_SCENES = 4
TILE = 96


def run(params: Params) -> dict:
    out_dir = params.paths.reports / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    pred = ModelPredictor(params, params.train.out_dir, steps=params.evals.sampling_steps,
                          cfg_scale=params.evals.cfg_scale, seed=params.seed)
    res = params.world.resolution
    rows = []
    for i in range(N_SCENES):
        s = item_seed(params.evals.world.seed, "sample/world", i)
        scene = world.sample_scene(s, 2, 5)
        cam = world.random_camera(s, res, res)
        r = world.render(scene, cam)
        caption = world.caption(scene, cam, render=r)
        depth_img = depth_to_condition(r.depth)[None]
        z_depth = pred.codec.encode(depth_img.to(pred.device))
        blank = torch.zeros_like(z_depth)
        t2i = pred._sample(blank[:, None], [1.0], [tasks.task_prompt(tasks.TEXT2IMAGE, caption)], [f"sample/{i}/t2i"])
        d2i = pred._sample(torch.stack([blank, z_depth], 1), [1.0, 0.0], [tasks.task_prompt(tasks.DEPTH2IMAGE, caption)],
                           [f"sample/{i}/d2i"])
        i2d = pred.predict_depth([{"rgb": r.rgb, "id": f"sample/{i}"}])[0]
        tiles = [r.rgb, tensor_to_pixels(depth_img[0]), tensor_to_pixels(pred.codec.decode(t2i[:, 0])[0]),
                 tensor_to_pixels(pred.codec.decode(d2i[:, 0])[0]),
                 tensor_to_pixels(torch.from_numpy(i2d - 1)[None].expand(3, -1, -1))]  # back to [-1, 1]
        rows.append(np.concatenate([np.asarray(Image.fromarray(t).resize((TILE, TILE))) for t in tiles], 1))
    grid = Image.fromarray(np.concatenate(rows, 0))
    info = pred.describe()
    label = f"random {' and '.join(info['random_parts'])}: not a result" if info["random_parts"] else info["name"]
    canvas = Image.new("RGB", (grid.width, grid.height + 16), "white")
    canvas.paste(grid, (0, 16))
    ImageDraw.Draw(canvas).text((4, 2), f"image / depth / text->img / depth->img / img->depth [{label}]",
                                fill="black")
    canvas.save(out_dir / "samples.png")
    summary = {"model": info, "scenes": N_SCENES, "steps": params.evals.sampling_steps,
               "cfg_scale": params.evals.cfg_scale, "columns": ["image", "depth", "text2image", "depth2image",
                                                                "image2depth"]}
    write_json(out_dir / "samples.json", summary)
    return summary
