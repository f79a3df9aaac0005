"""Data sources: readers over local datasets, in a deterministic (sorted) order.

A source has ``__len__`` and ``__getitem__`` / ``__iter__``. Two record shapes:

* image sources (``image_folder``, ``hf_dataset``, for text-to-image) yield plain dicts
  ``{"source_id": str, "image": PIL.Image.Image (RGB), "captions": dict[str, str], "meta": dict}``
  -- webdataset-style, ``source_id`` usable as a key part (no dots, no slashes);
* scene and identity sources (``dl3dv``, ``objaverse``, ``co3d``, ``hypersim``, ``id_folder``)
  yield ``onegen.format.Sample`` records in the shape of the world's (``world_records``), so the
  task families treat them alike (see ``onegen.sources.scenes``); their
  ``record_info(j) -> (kind, image views, modalities[, prompted])`` tells what record ``j`` holds without
  decoding an image, for enumerating a family's items (``prompted`` False: the source trains on the task
  token alone, CO3D; ``onegen.families.RecordInfo``).

``open_source`` opens any of them from its ``SourceConfig``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onegen.config import SourceConfig


class SourceError(ValueError):
    """A source item (or the source itself) cannot be read; the message names the item."""


def open_source(cfg: SourceConfig, seed: int = 0):
    """The reader for ``cfg.kind``; ``seed`` drives the readers' seeded choices (views, groups).

    Each reader is imported here, so a build pulls in only the libraries its sources need
    (``datasets`` for hf_dataset, ``h5py`` for hypersim, ...).
    """
    if cfg.kind == "sample_photos":
        from onegen.sources.sample_photos import SamplePhotosSource

        return SamplePhotosSource()
    if cfg.kind == "image_folder":
        from onegen.sources.image_folder import ImageFolderSource

        return ImageFolderSource(cfg.path)
    if cfg.kind == "hf_dataset":
        from onegen.sources.hf_dataset import HFDatasetSource

        return HFDatasetSource(cfg.path, split=cfg.split, image_column=cfg.image_column)
    if cfg.kind == "dl3dv":
        from onegen.sources.dl3dv import DL3DVSource

        return DL3DVSource(cfg.path, views=cfg.views, resolution=cfg.scene_side, captions=cfg.captions,
                           image_subdir=cfg.image_subdir, seed=seed)
    if cfg.kind == "objaverse":
        from onegen.sources.objaverse import ObjaverseSource

        return ObjaverseSource(cfg.path, views=cfg.views, resolution=cfg.scene_side, captions=cfg.captions,
                               fov_deg=cfg.render_fov_deg, seed=seed)
    if cfg.kind == "co3d":
        from onegen.sources.co3d import CO3DSource

        return CO3DSource(cfg.path, views=cfg.views, resolution=cfg.scene_side, categories=cfg.categories, seed=seed)
    if cfg.kind == "hypersim":
        from onegen.sources.hypersim import HypersimSource

        return HypersimSource(cfg.path, views=cfg.views, resolution=cfg.scene_side,
                              camera_parameters=cfg.camera_parameters, seed=seed)
    if cfg.kind == "id_folder":
        from onegen.sources.id_folder import IDFolderSource

        return IDFolderSource(cfg.path, min_images=cfg.min_images, id_views=cfg.id_views, resolution=cfg.scene_side,
                              seed=seed)
    raise ValueError(f"unknown source kind {cfg.kind!r}")
