"""ID customisation benchmarks (OneDiffusion Table 3): Unsplash-50 faces, and the procedural world.

The predictor answers ``generate_with_reference(items)``: one HxWx3 uint8 image per item, of
``item["prompt"]`` showing the subject of ``item["reference"]`` (a list of reference images with
their ``reference_captions``).

``unsplash50_id`` -- ID = cosine of ArcFace embeddings of the reference face and the largest
face of the generated image; CLIP-T = 100 x cos(CLIP image, prompt). A generated image with no
detectable face scores ID 0 (a missing face keeps no identity -- skipping it would reward a
model for drawing no face) and is named on stderr; ``scores.json`` marks it ``detected: 0``.
Besides ``id`` the result gives ``id_detected`` (mean over images with a face, the number some
papers print) and ``det_rate`` (% of images with a face, PhotoMaker's "Face Det."). A reference
with no detectable face is a data error.

``world_id`` -- one object identity (shape, colour, material, size) rendered in a reference
scene; the prompt is the caption of a second scene holding it. ID = similarity of the identity's
attribute embedding (:mod:`evals.identity.world_attributes`, measured on its exact mask in the
reference) to the best-matching object found in the generated image; an image with no object
scores 0, as a face miss does. ``copy-reference`` (the reference itself) is the practical
ceiling of this measurement, ``random-scene`` (an unrelated render) chance level. CLIP-T is
added when ``evals.identity.clip_path`` is set.
"""

from __future__ import annotations

import sys

import numpy as np

from evals.benchmark import Benchmark, save_tile_grid
from evals.identity import world_attributes
from evals.identity.datasets import IdentityDataError
from evals.predictors import PredictionError
from evals.registry import register
from onegen.config import Params, WorldEvalConfig
from onegen.seeding import item_seed
from onegen.sources import procedural as world

WORLD_ID_VERSION = "1"
MIN_VISIBLE_FRACTION = 0.0025  # of the image: the identity must be plainly visible in both scenes


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"embedding sizes differ: {a.shape} vs {b.shape}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise ValueError("cosine of a zero vector is undefined")
    return float(a @ b / (na * nb))


def aggregate_identity(scores: list[dict[str, float]]) -> dict[str, float]:
    """``id`` over all images (misses count 0), ``id_detected`` over images where the subject was
    found (absent when none was), ``det_rate`` in percent, ``clip_t`` when scored."""
    detected = [s for s in scores if s["detected"]]
    out = {"id": float(np.mean([s["id"] for s in scores])), "det_rate": 100.0 * len(detected) / len(scores)}
    if detected:
        out["id_detected"] = float(np.mean([s["id"] for s in detected]))
    if all("clip_t" in s for s in scores):
        out["clip_t"] = float(np.mean([s["clip_t"] for s in scores]))
    return out


def _image(pred, item_id: str) -> np.ndarray:
    if not (isinstance(pred, np.ndarray) and pred.dtype == np.uint8 and pred.ndim == 3 and pred.shape[2] == 3):
        got = f"{pred.dtype} {list(pred.shape)}" if isinstance(pred, np.ndarray) else type(pred).__name__
        raise PredictionError(f"{item_id}: generated image must be HxWx3 uint8, got {got}")
    return pred


class _IdentityBenchmark(Benchmark):
    needs = "generate_with_reference"
    clip = None

    def scorers(self):
        return [self.clip.record if self.clip is not None else None]

    def predict(self, predictor, batch):
        return [_image(p, it["id"]) for it, p in zip(batch, predictor.generate_with_reference(batch), strict=True)]

    def _report_miss(self, item_id: str, what: str) -> None:
        print(f"{self.name}: {item_id}: no {what} found in the generated image (ID scored 0)", file=sys.stderr)

    def _clip_t(self, item: dict, image: np.ndarray) -> dict[str, float]:
        return {"clip_t": self.clip.clip_t([image], [item["prompt"]])[0]} if self.clip is not None else {}

    def aggregate(self, scores):
        return aggregate_identity(scores)

    def sample_grid(self, items, predictions, path):
        save_tile_grid([[it["reference"][0], p, *([it["target"]] if "target" in it else [])]
                        for it, p in zip(items, predictions)], path)
        return True


@register("unsplash50_id")
class Unsplash50(_IdentityBenchmark):
    """Unsplash-50 reference portraits x prompts (layout: :mod:`evals.identity.datasets`)."""

    baseline = "copy-reference"
    data_name = "unsplash-50"

    def __init__(self, params: Params):
        from evals.identity.clip_score import ClipScorer
        from evals.identity.datasets import Unsplash50 as Source
        from evals.identity.faces import FaceIdentity

        cfg = params.evals.identity
        if cfg.path is None:
            raise FileNotFoundError("evals.identity.path is not set: point it at the Unsplash-50 folder "
                                    "(<subject>/ref.jpg + prompts.txt, see evals/identity/datasets.py)")
        self.source = Source(cfg.path, cfg.resolution)
        self.faces = FaceIdentity.load(cfg, params.annotators.device)
        self.clip = ClipScorer.load(cfg.clip_path, cfg.clip_model, params.annotators.device)
        self._references: dict[str, np.ndarray] = {}

    def scorers(self):
        return [self.faces.record, *super().scorers()]

    def items(self):
        return iter(self.source)

    def _reference(self, item: dict) -> np.ndarray:
        if item["subject"] not in self._references:
            emb = self.faces(item["reference"][:1])[0]
            if emb is None:
                raise IdentityDataError(f"{self.source.root / item['subject']}: no face found in the reference image")
            self._references[item["subject"]] = emb
        return self._references[item["subject"]]

    def score(self, item, prediction):
        emb = self.faces([prediction])[0]
        if emb is None:
            self._report_miss(item["id"], "face")
        return {"id": 0.0 if emb is None else cosine(self._reference(item), emb), "detected": float(emb is not None),
                **self._clip_t(item, prediction)}


def world_identity_item(cfg: WorldEvalConfig, index: int) -> dict:
    """One identity seen in a reference scene, and the caption of a second scene that holds it."""
    s = item_seed(cfg.seed, "eval/world_id", index)
    rng = np.random.default_rng(s)
    identity = (str(rng.choice(world.SHAPES)), str(rng.choice(list(world.COLORS))),
                str(rng.choice(world.MATERIALS)), str(rng.choice(list(world.SIZES))))
    res = cfg.resolution
    shots = []
    for role in ("reference", "target"):
        scene = world.sample_scene(int(rng.integers(2**31)), 2, 5, include=(identity,))
        inst = next(o.instance_id for o in scene.objects if o.identity == identity)
        for _ in range(100):  # cameras until the identity is plainly in view
            cam = world.random_camera(int(rng.integers(2**31)), res, res)
            r = world.render(scene, cam)
            if (r.instance == inst).mean() >= MIN_VISIBLE_FRACTION:
                break
        else:
            raise RuntimeError(f"world_id item {index}: identity {identity} never in view of the {role} scene")
        shots.append((scene, cam, r, inst))
    (ref_scene, ref_cam, ref, ref_inst), (tgt_scene, tgt_cam, tgt, _) = shots
    return {"id": f"world_id_{index:05d}", "identity": list(identity), "reference": [ref.rgb],
            "reference_mask": ref.instance == ref_inst,
            "reference_captions": [world.caption(ref_scene, ref_cam, render=ref)],
            "prompt": world.caption(tgt_scene, tgt_cam, render=tgt), "target": tgt.rgb, "size": (res, res),
            "hash_fields": [s, world.RENDERER_VERSION, res, WORLD_ID_VERSION]}


@register("world_id")
class WorldID(_IdentityBenchmark):
    """Held-out procedural identities, each re-contextualised in a new scene."""

    baseline = "random-scene"
    data_name = "procedural-world-id"

    def __init__(self, params: Params):
        self.cfg = params.evals.world
        cfg = params.evals.identity
        if cfg.clip_path is not None:
            from evals.identity.clip_score import ClipScorer

            self.clip = ClipScorer.load(cfg.clip_path, cfg.clip_model, params.annotators.device)

    def items(self):
        return (world_identity_item(self.cfg, i) for i in range(self.cfg.items))

    def score(self, item, prediction):
        reference = world_attributes.embed(item["reference"][0], item["reference_mask"])
        sim, mask = world_attributes.best_match(reference, prediction)
        if mask is None:
            self._report_miss(item["id"], "object")
        return {"id": sim, "detected": float(mask is not None), **self._clip_t(item, prediction)}
