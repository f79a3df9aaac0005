"""Predictors: what a benchmark asks for a prediction.

A predictor answers the questions benchmarks ask (``predict_depth``, ``predict_views``,
``predict_cameras``, ``generate_with_reference``, ``generate_from_condition``,
``generate_images``) for a batch of items and describes itself (``describe()``: name, kind, hash) so results never mix models.
``kind`` is ``model`` (a trained network), ``predictions`` (files on disk made by any method) or
``baseline`` (a reference with no learning, e.g. chance level) -- the leaderboard labels each.

The OneDiffusion sampler plugs in here as a ``model`` predictor once the model lands.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from evals.geneval.world_prompts import WorldOracle
from onegen.camera import camera_centres
from onegen.sources import procedural as world


class PredictionError(ValueError):
    """A prediction that is missing or malformed; the message names the item and file."""


class ConstantDepth:
    """Predicts the same depth everywhere: after scale-and-shift alignment, the best constant."""

    def describe(self) -> dict:
        return {"name": "constant-depth", "kind": "baseline", "hash": "constant-depth-v1"}

    def predict_depth(self, items: list[dict]) -> list[np.ndarray]:
        return [np.ones(it["rgb"].shape[:2], np.float32) for it in items]


class NearestConditionView:
    """Novel views by copying the conditioning image whose camera centre is nearest the target's; with unknown
    poses only the first condition view's camera is given, so that view is copied."""

    def describe(self) -> dict:
        return {"name": "copy-nearest-view", "kind": "baseline", "hash": "copy-nearest-view-v1"}

    def predict_views(self, items: list[dict]) -> list[dict[int, np.ndarray]]:
        out = []
        for it in items:
            cond = it["condition_views"] if it.get("poses_known", True) else it["condition_views"][:1]
            centres = {i: camera_centres(it["world_to_camera"][i]) for i in cond}
            views = {}
            for t in it["target_views"]:
                c = camera_centres(it["world_to_camera"][t])
                nearest = min(cond, key=lambda i: float(np.linalg.norm(centres[i] - c)))
                views[t] = it["images"][nearest]
            out.append(views)
        return out


class RandomCameras:
    """Chance level for pose estimation: random rotations, random centres on a sphere (seeded)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def describe(self) -> dict:
        return {"name": "random-cameras", "kind": "baseline", "hash": f"random-cameras-v1-{self.seed}"}

    def predict_cameras(self, items: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for it in items:
            rng = np.random.default_rng([self.seed, int(hashlib.sha256(it["id"].encode()).hexdigest()[:8], 16)])
            n = len(it["images"])
            q = rng.standard_normal((n, 4))
            out.append((_quat_to_matrix(q / np.linalg.norm(q, axis=1, keepdims=True)),
                        rng.standard_normal((n, 3))))
        return out


class CopyReference:
    """Returns the real image: the reference subject (ID benchmarks), or the image a condition was
    annotated from (condition benchmarks) -- the ceiling of what those metrics can give."""

    def describe(self) -> dict:
        return {"name": "copy-reference", "kind": "baseline", "hash": "copy-reference-v1"}

    def generate_with_reference(self, items: list[dict]) -> list[np.ndarray]:
        return [it["reference"][0] for it in items]

    def generate_from_condition(self, items: list[dict]) -> list[np.ndarray]:
        return [it["image"] for it in items]


class RandomScene:
    """Chance level for generation: a render of an unrelated procedural scene (seeded per item)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def describe(self) -> dict:
        return {"name": "random-scene", "kind": "baseline",
                "hash": f"random-scene-v1-{self.seed}-r{world.RENDERER_VERSION}"}

    def _render(self, item: dict) -> np.ndarray:
        h, w = item["size"]
        s = int(np.random.default_rng([self.seed, int(hashlib.sha256(item["id"].encode()).hexdigest()[:8], 16)])
                .integers(2**31))
        return world.render(world.sample_scene(s, 2, 6), world.random_camera(s, h, w)).rgb

    def generate_with_reference(self, items: list[dict]) -> list[np.ndarray]:
        return [self._render(it) for it in items]

    def generate_from_condition(self, items: list[dict]) -> list[np.ndarray]:
        return [self._render(it) for it in items]

    def generate_images(self, items: list[dict]) -> list[list[np.ndarray]]:
        return [[self._render(dict(it, id=f"{it['id']}/{k}")) for k in range(it["n_images"])] for it in items]


class FolderPredictions:
    """Predictions read from disk, made by any method: ``<root>/<item id>.npy`` (depth, HxW metres
    or relative; disparity when ``<root>/depth_space.txt`` says ``disparity``, so the depth benchmarks
    align it in that space), ``<root>/<item id>/<view>.png`` (novel views), ``<root>/<item id>.npz`` with
    ``rotations`` (N,3,3 world-to-camera) and ``centres`` (N,3) (poses), ``<root>/<item id>.png``
    (generated images: ID and condition benchmarks)."""

    SPACES = ("depth", "disparity")

    def __init__(self, root: Path, name: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise PredictionError(f"{self.root}: predictions folder not found")
        self.name = name or self.root.name
        declared = self.root / "depth_space.txt"
        self.depth_space = declared.read_text().strip() if declared.is_file() else "depth"
        if self.depth_space not in self.SPACES:
            raise PredictionError(f"{declared}: says {self.depth_space[:40]!r}, expected one of "
                                  f"{', '.join(self.SPACES)}")

    def describe(self) -> dict:
        h = hashlib.sha256()
        for p in sorted(self.root.rglob("*")):
            if p.is_file():  # name, size and modification time: rewritten predictions are scored afresh
                st = p.stat()
                h.update(f"{p.relative_to(self.root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        return {"name": self.name, "kind": "predictions", "hash": h.hexdigest()[:16], "depth_space": self.depth_space}

    def _file(self, item_id: str, suffix: str) -> Path:
        p = self.root / f"{item_id}{suffix}"
        if not p.is_file():
            raise PredictionError(f"{item_id}: prediction {p} not found")
        return p

    def predict_depth(self, items: list[dict]) -> list[np.ndarray]:
        out = []
        for it in items:
            p = self._file(it["id"], ".npy")
            try:
                d = np.load(p, allow_pickle=False).astype(np.float32).squeeze()
            except (ValueError, OSError) as e:
                raise PredictionError(f"{it['id']}: {p}: unreadable ({e})") from None
            if d.shape != it["rgb"].shape[:2]:
                raise PredictionError(f"{it['id']}: {p}: shape {d.shape}, expected {it['rgb'].shape[:2]}")
            out.append(d)
        return out

    def predict_views(self, items: list[dict]) -> list[dict[int, np.ndarray]]:
        out = []
        for it in items:
            views = {}
            for t in it["target_views"]:
                p = self._file(f"{it['id']}/{t:03d}", ".png")
                try:
                    views[t] = np.asarray(Image.open(p).convert("RGB"))
                except OSError as e:
                    raise PredictionError(f"{it['id']}: {p}: unreadable ({e})") from None
            out.append(views)
        return out

    def _generated(self, items: list[dict]) -> list[np.ndarray]:
        out = []
        for it in items:
            p = self._file(it["id"], ".png")
            try:
                with Image.open(p) as im:
                    out.append(np.asarray(im.convert("RGB")))
            except OSError as e:
                raise PredictionError(f"{it['id']}: {p}: unreadable ({e})") from None
        return out

    def generate_with_reference(self, items: list[dict]) -> list[np.ndarray]:
        return self._generated(items)

    def generate_from_condition(self, items: list[dict]) -> list[np.ndarray]:
        return self._generated(items)

    def generate_images(self, items: list[dict]) -> list[list[np.ndarray]]:
        """GenEval's layout: ``<root>/<item id>/samples/<k>.png``, exactly ``n_images`` of them (a
        ``metadata.jsonl`` beside ``samples/``, as GenEval writes it, must hold the item's prompt)."""
        out = []
        for it in items:
            folder = self.root / it["id"]
            meta = folder / "metadata.jsonl"
            if meta.is_file() and json.loads(meta.read_text()).get("prompt") != it["prompt"]:
                raise PredictionError(f"{it['id']}: {meta} is for another prompt than {it['prompt']!r}")
            files = sorted(p for p in (folder / "samples").glob("*.png") if p.stem.isdigit())
            if len(files) != it["n_images"]:
                raise PredictionError(f"{it['id']}: {len(files)} images in {folder / 'samples'}, "
                                      f"the protocol needs {it['n_images']}")
            images = []
            for p in files:
                try:
                    with Image.open(p) as im:
                        images.append(np.asarray(im.convert("RGB")))
                except OSError as e:
                    raise PredictionError(f"{it['id']}: {p}: unreadable ({e})") from None
            out.append(images)
        return out

    def predict_cameras(self, items: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for it in items:
            p = self._file(it["id"], ".npz")
            with np.load(p, allow_pickle=False) as z:
                out.append((z["rotations"], z["centres"]))
        return out


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


BASELINES = {"constant-depth": ConstantDepth, "copy-nearest-view": NearestConditionView,
             "random-cameras": RandomCameras, "copy-reference": CopyReference, "random-scene": RandomScene,
             "oracle": WorldOracle}


def make_predictor(spec: str, params=None):
    """``baseline:<name>``, ``folder:<path>``, ``model:<checkpoint>`` (OneDiffusion through the sampler) or
    ``annotators`` (params' annotators, for the annotator-quality benchmark)."""
    kind, _, arg = spec.partition(":")
    if kind == "baseline" and arg in BASELINES:
        return BASELINES[arg]()
    if kind == "folder" and arg:
        return FolderPredictions(Path(arg))
    if kind == "annotators" and params is not None:
        from evals.annotators.benchmark import AnnotatorSuite

        return AnnotatorSuite.from_params(params)
    if kind == "model" and arg and params is not None:
        from evals.model_predictor import ModelPredictor

        e = params.evals
        return ModelPredictor(params, Path(arg), steps=e.sampling_steps, cfg_scale=e.cfg_scale, seed=params.seed)
    raise ValueError(f"unknown predictor {spec!r}: use baseline:<{'|'.join(BASELINES)}>, folder:<path> "
                     f"or model:<checkpoint>")
