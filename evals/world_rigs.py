"""Held-out procedural orbit rigs: one scene seen by jittered orbit cameras, for the
novel-view and camera-pose editions (each benchmark names its own seed stream)."""

from __future__ import annotations

import numpy as np

from onegen.config import WorldEvalConfig
from onegen.seeding import item_seed
from onegen.sources import procedural as world


def world_rig(cfg: WorldEvalConfig, stream: str, index: int, n_views: int) -> dict:
    """``{"id", "images", "world_to_camera", "K", "hash_fields"}`` for rig ``index`` of ``stream``."""
    s = item_seed(cfg.seed, f"eval/{stream}", index)
    scene = world.sample_scene(s, 2, 6)
    cams = world.orbit_cameras(n_views, cfg.resolution, cfg.resolution, seed=s,
                               start_azimuth_deg=float(np.random.default_rng(s).uniform(0, 360)))
    return {"id": f"{stream}_{index:05d}", "images": [world.render(scene, c).rgb for c in cams],
            "world_to_camera": [c.world_to_camera for c in cams], "K": cams[0].K,
            "hash_fields": [s, world.RENDERER_VERSION, cfg.resolution, n_views]}
