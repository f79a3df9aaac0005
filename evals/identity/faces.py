"""Face identity embeddings: MTCNN detection, five-point alignment, ArcFace from an ONNX file.

The pipeline of insightface-style evaluation (InstantID, PuLID, PhotoMaker all score ID this way):

1. detect faces with facenet-pytorch's MTCNN (its P/R/O-Net weights ship inside the wheel) and
   keep the largest one -- the subject of a portrait;
2. map its five landmarks (eyes, nose, mouth corners) onto ArcFace's 112x112 template with the
   least-squares similarity transform (Umeyama) and warp;
3. embed the crop with an ArcFace ONNX model through onnxruntime: RGB, ``(x - mean) / std``
   (127.5 and 127.5, or 0 and 1 for an mxnet export that normalises in its graph, as insightface
   tells them apart), NCHW float32; L2-normalise.

A face that is not found is ``None``: the benchmark decides how a miss scores and reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onegen.annotators.base import AnnotatorError, annotator_record, require_path, weights_sha256

VERSION = "1"
CROP_SIZE = 112
# Where ArcFace models expect the five landmarks in a 112x112 crop (insightface's template):
# left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]])


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in pixels
    probability: float
    landmarks: np.ndarray  # (5, 2) x, y in pixels, ARCFACE_TEMPLATE's order

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the rotation + uniform scale + translation that best maps ``src`` points
    onto ``dst`` in least squares (Umeyama 1991, reflections excluded)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    flip = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ flip @ vt
    scale = float(np.trace(np.diag(sig) @ flip) / (s**2).sum(1).mean())
    return np.hstack([scale * rotation, (mu_d - scale * rotation @ mu_s)[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112x112x3 uint8 ArcFace crop of the face whose five landmarks are given."""
    import cv2

    m = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    return cv2.warpAffine(np.ascontiguousarray(image), m, (CROP_SIZE, CROP_SIZE), borderValue=0.0)


def _check_image(image, who: str) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{who}: expected an HxWx3 uint8 RGB image, got {got}")
    return image


class FaceDetector:
    """facenet-pytorch MTCNN with its default thresholds; ``largest(image)`` -> Face | None."""

    def __init__(self, device: str = "cpu"):
        import facenet_pytorch
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(keep_all=True, device=device)
        self.weights = Path(facenet_pytorch.__file__).parent / "data"
        self.version = getattr(facenet_pytorch, "__version__", "unknown")

    def detect(self, image: np.ndarray) -> list[Face]:
        boxes, probs, points = self.mtcnn.detect(_check_image(image, "face detector"), landmarks=True)
        if boxes is None:
            return []
        return [Face(np.asarray(b, np.float64), float(p), np.asarray(lm, np.float64))
                for b, p, lm in zip(boxes, probs, points)]

    def largest(self, image: np.ndarray) -> Face | None:
        return max(self.detect(image), key=lambda f: f.area, default=None)


def normalises_in_graph(path: Path) -> bool:
    """Whether the ONNX model subtracts and scales its input itself, by insightface's rule (``ArcFaceONNX``):
    among its first 8 nodes, one named as mxnet names a subtraction (``Sub...``/``_minus...``) and one as it
    names a multiplication (``Mul...``/``_mul...``). mxnet-exported ArcFace models take raw 0-255 pixels so;
    the rule reads names, not op types, so that a model gets the input insightface would give it."""
    import onnx

    try:
        nodes = onnx.load(str(path), load_external_data=False).graph.node[:8]
    except Exception as e:  # onnx raises DecodeError and others for a damaged file
        raise AnnotatorError(f"evals.identity.arcface_path: cannot read ONNX graph {path} ({' '.join(str(e).split())[:200]})") from None
    subtracts = any(n.name.startswith(("Sub", "_minus")) for n in nodes)
    multiplies = any(n.name.startswith(("Mul", "_mul")) for n in nodes)
    return subtracts and multiplies


class ArcFace:
    """An ArcFace-style recognition model in ONNX: 112x112 RGB crops -> L2-normalised embeddings.

    ``mean``/``std`` None: (x - 127.5) / 127.5, or the raw pixels for a model that normalises in its graph
    (:func:`normalises_in_graph`), as insightface decides; given, they are used as they are.
    """

    def __init__(self, path: Path, mean: float | None = None, std: float | None = None, device: str = "cpu"):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise AnnotatorError(f"evals.identity.arcface_path: cannot load ONNX model {path} ({' '.join(str(e).split())})") from None
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4 or inp.shape[1] not in (3, "3") or any(
                isinstance(d, int) and d != CROP_SIZE for d in inp.shape[2:]):
            raise AnnotatorError(f"evals.identity.arcface_path: {path} takes input {inp.shape}, "
                                 f"expected N x 3 x {CROP_SIZE} x {CROP_SIZE}")
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        if (mean is None) != (std is None):
            raise ValueError("ArcFace: give mean and std together, or neither")
        if mean is None:
            mean, std = (0.0, 1.0) if normalises_in_graph(path) else (127.5, 127.5)
        self.mean, self.std = float(mean), float(std)

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, 0), np.float32)
        x = (np.stack(crops).astype(np.float32) - self.mean) / self.std
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if self.fixed_batch == 1:  # exported with a fixed batch of one: run crop by crop
            out = np.concatenate([self.session.run(None, {self.input_name: x[i : i + 1]})[0] for i in range(len(x))])
        else:
            out = self.session.run(None, {self.input_name: x})[0]
        out = np.asarray(out, np.float64).reshape(len(crops), -1)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class FaceIdentity:
    """Images -> the largest face's ArcFace embedding (or None when no face is found)."""

    def __init__(self, detector: FaceDetector, arcface: ArcFace, arcface_path: Path):
        self.detector, self.arcface = detector, arcface
        # the input normalisation belongs to the scorer as much as the weights do: another gives other embeddings
        self.record = annotator_record("mtcnn+arcface", f"{VERSION}/facenet-pytorch-{detector.version}/"
                                       f"norm {arcface.mean:g},{arcface.std:g}", weights_sha256(arcface_path))

    @classmethod
    def load(cls, cfg, device: str = "auto") -> "FaceIdentity":
        """From ``evals.identity``: ``arcface_path`` (.onnx), ``arcface_mean`` / ``arcface_std``."""
        from onegen.annotators.base import resolve_device

        path = require_path("evals.identity.arcface_path", cfg.arcface_path, "ArcFace ONNX model")
        dev = str(resolve_device(device))
        return cls(FaceDetector(dev), ArcFace(path, cfg.arcface_mean, cfg.arcface_std, dev), path)

    def faces(self, images: list[np.ndarray]) -> list[Face | None]:
        return [self.detector.largest(im) for im in images]

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        faces = self.faces(images)
        found = [i for i, f in enumerate(faces) if f is not None]
        embeddings = self.arcface([align_face(images[i], faces[i].landmarks) for i in found])
        out: list[np.ndarray | None] = [None] * len(images)
        for k, i in enumerate(found):
            out[i] = embeddings[k]
        return out
