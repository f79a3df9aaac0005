"""The ``world`` stage's records: procedural scenes rendered with their exact ground truth.

Two kinds of record, numbered in one sequence so a record is a pure function of its index:

* ``scene`` (indices ``0 .. scenes-1``): one scene seen by an orbit rig -- per camera an RGB
  image, metric depth (16-bit PNG, millimetres) and an instance map, plus a caption per view.
* ``identity`` (the next ``id_groups`` indices): one object identity (shape, colour, material,
  size) placed in 2-5 different scenes, one image each -- the procedural world's "same subject
  in different photos" for the ID-customisation task.

Task families (``onegen.families``) turn these records into training samples.
"""

from __future__ import annotations

import numpy as np

from onegen.config import WorldConfig
from onegen.format import Provenance, Sample, View
from onegen.seeding import item_rng, item_seed
from onegen.sources import procedural as world

SOURCE = "world"
DEPTH_SCALE = 0.001  # metres per depth unit: 16-bit millimetres cover 0-65.5 m
RECORD_TASK = "world_record"  # not a model task: records are inputs to the task families


def record_count(cfg: WorldConfig) -> int:
    return cfg.scenes + cfg.id_groups if cfg.enabled else 0


def instance_labels(scene: world.Scene) -> dict[int, str]:
    """Instance id -> class label as the prompt names it, e.g. "red sphere"."""
    return {o.instance_id: f"{o.color} {o.shape}" for o in scene.objects}


def _depth_u16(depth_m: np.ndarray) -> np.ndarray:
    return np.clip(np.round(depth_m / DEPTH_SCALE), 0, 65535).astype(np.uint16)


def _views(r: world.Render) -> list[View]:
    boxes = {str(k): list(map(int, b)) for k, b in sorted(r.boxes.items())}
    return [
        View("image", r.rgb, role="image", camera=r.camera),
        View("depth", _depth_u16(r.depth), role="condition", camera=r.camera,
             meta={"depth_scale": DEPTH_SCALE, "units": "m", "kind": "z-depth", "invalid": 0}),
        View("instance", r.instance.astype(np.uint16), role="condition", camera=r.camera, meta={"boxes": boxes}),
    ]


def make_record(cfg: WorldConfig, seed: int, index: int) -> Sample:
    if index < cfg.scenes:
        return _scene_record(cfg, seed, index)
    return _identity_record(cfg, seed, index - cfg.scenes)


def _scene_record(cfg: WorldConfig, seed: int, index: int) -> Sample:
    s = item_seed(seed, "world/scene", index)
    scene = world.sample_scene(s, cfg.min_objects, cfg.max_objects)
    cams = world.orbit_cameras(cfg.views_per_scene, cfg.resolution, cfg.resolution, fov_deg=cfg.fov_deg,
                               start_azimuth_deg=float(item_rng(seed, "world/azimuth", index).uniform(0, 360)), seed=s)
    views, captions = [], {}
    for k, cam in enumerate(cams):
        r = world.render(scene, cam)
        views += _views(r)
        captions[f"view{k}"] = world.caption(scene, cam, render=r, colours=cfg.caption_colours)
    return Sample(
        key=f"{SOURCE}/scene_{index:07d}", task=RECORD_TASK, caption=captions["view0"], views=views,
        provenance=Provenance(SOURCE, f"scene_{index:07d}", s, [_renderer()]), captions=captions,
        meta={"kind": "scene", "scene": scene.to_json(), "labels": {str(k): v for k, v in instance_labels(scene).items()}},
    )


def _identity_record(cfg: WorldConfig, seed: int, index: int) -> Sample:
    s = item_seed(seed, "world/identity", index)
    rng = np.random.default_rng(s)
    identity = (str(rng.choice(world.SHAPES)), str(rng.choice(list(world.COLORS))),
                str(rng.choice(world.MATERIALS)), str(rng.choice(list(world.SIZES))))
    n = int(rng.integers(cfg.id_views[0], cfg.id_views[1] + 1))
    views, captions, scenes, instances = [], {}, [], []
    for k in range(n):
        scene_seed = int(rng.integers(2**31))
        scene = world.sample_scene(scene_seed, cfg.min_objects, cfg.max_objects, include=(identity,))
        cam = world.random_camera(int(rng.integers(2**31)), cfg.resolution, cfg.resolution)
        r = world.render(scene, cam)
        views += [v for v in _views(r) if v.modality != "depth"]
        captions[f"view{k}"] = world.caption(scene, cam, render=r, colours=cfg.caption_colours)
        scenes.append(scene.to_json())
        instances.append(next(o.instance_id for o in scene.objects if o.identity == identity))
    label = " ".join([identity[3], identity[1], identity[2], identity[0]])
    return Sample(
        key=f"{SOURCE}/identity_{index:07d}", task=RECORD_TASK, caption=f"the {label}", views=views,
        provenance=Provenance(SOURCE, f"identity_{index:07d}", s, [_renderer()]), captions=captions,
        meta={"kind": "identity", "identity": list(identity), "label": label, "scenes": scenes,
              "instances": instances},
    )


def _renderer() -> dict:
    return {"name": "onegen.procedural", "version": world.RENDERER_VERSION, "weights_sha256": None}
