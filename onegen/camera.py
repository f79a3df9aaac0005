"""Pinhole cameras in the OpenCV convention (x right, y down, z forward).

A camera is its intrinsics ``K`` (3x3, pixels) and its world-to-camera transform
``world_to_camera`` (4x4), plus the image size it was made for. World space is z-up with
the ground plane at z = 0 (the procedural world's convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onegen.portable_linalg import matmul, norm


@dataclass(frozen=True)
class Camera:
    K: np.ndarray  # (3, 3) float64, pixels
    world_to_camera: np.ndarray  # (4, 4) float64, OpenCV axes
    height: int
    width: int

    @property
    def rotation(self) -> np.ndarray:
        """World-to-camera rotation R (camera coords = R @ world + t)."""
        return self.world_to_camera[:3, :3]

    @property
    def centre(self) -> np.ndarray:
        """Camera centre in world coordinates, -R^T t."""
        return camera_centres(self.world_to_camera)

    def to_json(self) -> dict:
        return {
            "K": np.asarray(self.K, dtype=np.float64).tolist(),
            "world_to_camera": np.asarray(self.world_to_camera, dtype=np.float64).tolist(),
            "height": int(self.height),
            "width": int(self.width),
        }

    @classmethod
    def from_json(cls, d: dict) -> "Camera":
        K = np.asarray(d["K"], dtype=np.float64)
        w2c = np.asarray(d["world_to_camera"], dtype=np.float64)
        if K.shape != (3, 3) or w2c.shape != (4, 4):
            raise ValueError(f"camera: expected K 3x3 and world_to_camera 4x4, got {K.shape} and {w2c.shape}")
        return cls(K=K, world_to_camera=w2c, height=int(d["height"]), width=int(d["width"]))


def camera_centres(world_to_camera: np.ndarray) -> np.ndarray:
    """Centres -R^T t of world-to-camera matrices shaped (..., 4, 4) (or (..., 3, 4)) -> (..., 3)."""
    w2c = np.asarray(world_to_camera)
    return -matmul(np.swapaxes(w2c[..., :3, :3], -1, -2), w2c[..., :3, 3:])[..., 0]


def intrinsics_from_fov(fov_deg: float, height: int, width: int) -> np.ndarray:
    """K for a horizontal field of view, principal point at the image centre."""
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera 4x4 for a camera at ``eye`` looking at ``target`` (OpenCV axes)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= norm(z)
    x = np.cross(z, up)
    if norm(x) < 1e-9:  # looking straight along `up`: any perpendicular will do
        x = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
    x /= norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -matmul(R, eye)
    return w2c
