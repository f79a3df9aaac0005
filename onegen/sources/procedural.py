"""The procedural world: seeded CLEVR-like scenes of coloured primitives on a ground plane.

Scenes are pure functions of a seed; ``render`` ray-casts one from any camera at any
resolution with our own vectorised numpy code (no renderer library), returning the image
with exact ground truth -- metric z-depth, instance and semantic maps, boxes -- and
``caption`` describes what a camera sees from the scene graph. This is the offline source
behind every One-Gen task family.

Conventions: world z-up, ground plane z = 0, metres; cameras as in ``onegen.camera``
(OpenCV axes). Every object rests on the ground and is 2r tall, r its size's radius.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from onegen.camera import Camera, intrinsics_from_fov, look_at
from onegen.portable_linalg import inv3, matmul, norm

# bump whenever a scene's pixels or captions change. 3: scalar trigonometry through ``math`` (libm), not numpy,
# whose kernels differ in the last bit between CPUs (AVX-512 machines take SVML's): the same seed gave another
# world, captions included, on another machine. 4: camera and projection matrices through ``portable_linalg``,
# not OpenBLAS, whose kernels are picked per CPU: AVX-512 (SkylakeX) and AVX2 (Haswell) kernels made two worlds.
# 5: a caption names colours only at the chance ``caption(colours=)`` gives, and then draws one more number
RENDERER_VERSION = "5"

SHAPES = ("sphere", "cube", "cylinder", "cone")
COLORS = {  # the ten GenEval colours
    "red": (200, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (240, 215, 40),
    "green": (40, 150, 50),
    "blue": (40, 80, 215),
    "purple": (130, 50, 190),
    "pink": (245, 130, 185),
    "brown": (120, 75, 35),
    "black": (25, 25, 25),
    "white": (235, 235, 235),
}
MATERIALS = ("rubber", "metal")
SIZES = {"small": 0.35, "large": 0.7}  # radius / half-extent, metres
CATEGORIES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)  # semantic class k+1, 0 = background

PLACEMENT_RADIUS = 3.0  # footprint centres lie within this distance of the origin
CLEARANCE = 0.1  # minimum gap between two footprints
PLACEMENT_TRIES = 200
# The ground is a disc, not an infinite plane, so depth stays finite and within 16-bit millimetres.
GROUND_RADIUS = 30.0
TARGET = (0.0, 0.0, 0.5)  # where cameras look: the scene's middle, a little above the ground

SKY_HORIZON = np.array([0.80, 0.85, 0.90], dtype=np.float32)
SKY_ZENITH = np.array([0.45, 0.60, 0.82], dtype=np.float32)

Identity = tuple[str, str, str, str]  # (shape, color, material, size)


# --------------------------------------------------------------------------- scene graph


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    material: str
    size: str
    position: tuple[float, float]  # footprint centre on the ground
    yaw: float  # radians about +z
    instance_id: int  # >= 1, unique within its scene

    @property
    def identity(self) -> Identity:
        """What makes two objects in different scenes "the same object"."""
        return (self.shape, self.color, self.material, self.size)

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def centre(self) -> np.ndarray:
        return np.array([self.position[0], self.position[1], self.radius])

    @property
    def footprint_radius(self) -> float:
        return self.radius * (np.sqrt(2.0) if self.shape == "cube" else 1.0)

    def bounds(self) -> np.ndarray:
        """The 8 corners of a world box holding the object (yaw-independent)."""
        e, (x, y) = self.footprint_radius, self.position
        return np.array([[x + sx * e, y + sy * e, z] for sx in (-1, 1) for sy in (-1, 1)
                         for z in (0.0, 2 * self.radius)])

    def to_json(self) -> dict:
        return {"shape": self.shape, "color": self.color, "material": self.material, "size": self.size,
                "position": list(self.position), "yaw": self.yaw, "instance_id": self.instance_id}

    @classmethod
    def from_json(cls, d: dict) -> "SceneObject":
        x, y = d["position"]
        return cls(d["shape"], d["color"], d["material"], d["size"], (float(x), float(y)), float(d["yaw"]),
                   int(d["instance_id"]))


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    seed: int
    light_dir: tuple[float, float, float] = (0.4, 0.3, 0.866)  # unit vector towards the sun
    ground_color: tuple[int, int, int] = (150, 148, 142)

    def to_json(self) -> dict:
        return {"seed": self.seed, "light_dir": list(self.light_dir), "ground_color": list(self.ground_color),
                "objects": [o.to_json() for o in self.objects]}

    @classmethod
    def from_json(cls, d: dict) -> "Scene":
        return cls(tuple(SceneObject.from_json(o) for o in d["objects"]), int(d["seed"]),
                   tuple(float(v) for v in d["light_dir"]), tuple(int(v) for v in d["ground_color"]))


def _check_identity(identity) -> Identity:
    identity = tuple(identity)
    choices = (SHAPES, tuple(COLORS), MATERIALS, tuple(SIZES))
    if len(identity) != 4 or any(v not in c for v, c in zip(identity, choices)):
        raise ValueError(f"identity must be (shape, color, material, size), got {identity!r}")
    return identity


def _random_identity(rng: np.random.Generator, drawn: list[Identity], forbidden: tuple[Identity, ...]) -> Identity:
    while True:
        # A quarter of the time repeat an earlier shape and colour, so captions get counts above one.
        if drawn and rng.random() < 0.25:
            shape, color = drawn[int(rng.integers(len(drawn)))][:2]
        else:
            shape, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS)))
        identity = (shape, color, str(rng.choice(MATERIALS)), str(rng.choice(list(SIZES))))
        # A forced identity must stay unique in its scene, or "the same object" is ambiguous.
        if identity not in forbidden:
            return identity


def _gap(a: SceneObject, b: SceneObject) -> float:
    """Clearance between two footprints (as circles)."""
    dist = np.hypot(a.position[0] - b.position[0], a.position[1] - b.position[1])
    return float(dist - a.footprint_radius - b.footprint_radius)


def sample_scene(seed: int, min_objects: int = 2, max_objects: int = 6, include: tuple[Identity, ...] = ()) -> Scene:
    """A scene of ``min_objects..max_objects`` non-overlapping objects, a pure function of its arguments.

    ``include`` forces identities (shape, color, material, size) into the scene, each exactly
    once. A random object that finds no free spot is left out (rare: only with crowds of large ones).
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    include = tuple(_check_identity(i) for i in include)
    if len(set(include)) != len(include):
        raise ValueError(f"include lists an identity twice: {include}")
    rng = np.random.default_rng(seed)
    n = max(int(rng.integers(min_objects, max_objects + 1)), len(include))
    identities = list(include)
    while len(identities) < n:
        identities.append(_random_identity(rng, identities, include))

    placed: list[SceneObject] = []  # instance ids come last
    for identity in identities:
        for _ in range(PLACEMENT_TRIES):
            rho, phi = PLACEMENT_RADIUS * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            new = SceneObject(*identity, position=(float(rho * math.cos(phi)), float(rho * math.sin(phi))),
                              yaw=float(rng.uniform(0, 2 * np.pi)), instance_id=0)
            if all(_gap(new, other) >= CLEARANCE for other in placed):
                placed.append(new)
                break
        else:
            if identity in include:
                raise RuntimeError(f"scene {seed}: no room for included identity {identity}")

    # Ids in random order, so a forced identity is not always instance 1.
    ids = rng.permutation(len(placed)) + 1
    objects = sorted((replace(o, instance_id=int(k)) for o, k in zip(placed, ids)), key=lambda o: o.instance_id)
    az, el = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(35, 65))
    light = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
    grey = int(rng.integers(120, 181))
    ground = tuple(int(np.clip(grey + rng.integers(-10, 11), 0, 255)) for _ in range(3))
    return Scene(tuple(objects), int(seed), light, ground)


# --------------------------------------------------------------------------- cameras


def _orbit_camera(azimuth_deg: float, elevation_deg: float, radius: float, K: np.ndarray,
                  height: int, width: int) -> Camera:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = np.asarray(TARGET) + radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return Camera(K, look_at(eye, TARGET), height, width)


def orbit_cameras(n_views: int, height: int, width: int, radius: float = 10.0, elevation_deg: float = 30.0,
                  fov_deg: float = 50.0, start_azimuth_deg: float = 0.0, seed: int | None = None) -> list[Camera]:
    """``n_views`` cameras evenly spaced in azimuth around ``TARGET``; ``seed`` jitters each one."""
    K = intrinsics_from_fov(fov_deg, height, width)
    rng = None if seed is None else np.random.default_rng(seed)
    step = 360.0 / n_views
    cams = []
    for k in range(n_views):
        az, el, r = start_azimuth_deg + k * step, elevation_deg, radius
        if rng is not None:  # small enough that neighbouring views never swap order
            az += rng.uniform(-1, 1) * min(10.0, step / 4)
            el = float(np.clip(el + rng.uniform(-7, 7), 5, 85))
            r *= rng.uniform(0.9, 1.1)
        cams.append(_orbit_camera(az, el, r, K, height, width))
    return cams


def random_camera(seed: int, height: int, width: int, fov_deg: float = 50.0) -> Camera:
    """One camera anywhere on a band of orbits around ``TARGET``."""
    rng = np.random.default_rng(seed)
    az, el, r = rng.uniform(0, 360), rng.uniform(20, 50), rng.uniform(8.5, 11.5)
    return _orbit_camera(az, el, r, intrinsics_from_fov(fov_deg, height, width), height, width)


def project(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points (N, 3) -> pixel coordinates u, v (pixel centres at +0.5) and camera z."""
    pc = matmul(np.asarray(points, dtype=np.float64), camera.rotation.T) + camera.world_to_camera[:3, 3]
    uvw = matmul(pc, np.asarray(camera.K, dtype=np.float64).T)
    with np.errstate(divide="ignore", invalid="ignore"):
        return uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2], pc[:, 2]


# --------------------------------------------------------------------------- ray casting
#
# Rays are o + t d with d scaled so that its camera-frame z is 1: t is then z-depth directly.
# Each intersector works in the object's local frame (origin at the footprint centre, rotated
# by -yaw) and broadcasts: primary rays have one origin and many directions, shadow rays many
# origins and one direction. Misses are inf; the nan of a missing square root fails every
# comparison, so it turns into a miss too. Objects rest on the ground and every camera is above
# it, so bottom faces are never seen nor hit by a sun ray and are not tested.


def _hit_sphere(r, ox, oy, oz, dx, dy, dz):
    oz = oz - r
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    cx, cy, cz = oy * dz - oz * dy, oz * dx - ox * dz, ox * dy - oy * dx
    # b^2 - a(|o|^2 - r^2) rewritten (Lagrange) as a r^2 - |o x d|^2: in float32 the first form
    # loses the discriminant to cancellation between two terms of size |o|^2.
    t = (-b - np.sqrt(a * r * r - (cx * cx + cy * cy + cz * cz))) / a
    return np.where(t > 0, t, np.inf)


def _hit_cube(r, ox, oy, oz, dx, dy, dz):
    near, far = -np.inf, np.inf
    for o, d in ((ox, dx), (oy, dy), (oz - r, dz)):
        inv = 1 / d
        t1, t2 = (-r - o) * inv, (r - o) * inv
        near, far = np.maximum(near, np.minimum(t1, t2)), np.minimum(far, np.maximum(t1, t2))
    return np.where((near <= far) & (near > 0), near, np.inf)


def _hit_cylinder(r, ox, oy, oz, dx, dy, dz):
    h = 2 * r
    a = dx * dx + dy * dy
    cross = ox * dy - oy * dx
    t_side = (-(ox * dx + oy * dy) - np.sqrt(a * r * r - cross * cross)) / a
    z = oz + t_side * dz
    t_side = np.where((t_side > 0) & (z >= 0) & (z <= h), t_side, np.inf)
    t_top = (h - oz) / dz
    x, y = ox + t_top * dx, oy + t_top * dy
    t_top = np.where((t_top > 0) & (x * x + y * y <= r * r), t_top, np.inf)
    return np.minimum(t_side, t_top)


_CONE_K2 = 0.25  # (base radius / height)^2


def _hit_cone(r, ox, oy, oz, dx, dy, dz):
    h = 2 * r
    w = h - oz  # height below the apex
    a = dx * dx + dy * dy - _CONE_K2 * dz * dz
    b = ox * dx + oy * dy + _CONE_K2 * w * dz
    c = ox * ox + oy * oy - _CONE_K2 * w * w
    # The stable pair of roots: also right when a ~ 0 (rays parallel to the cone's side).
    q = -(b + np.copysign(np.sqrt(b * b - a * c), b))
    t1, t2 = q / a, c / q
    lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)

    def on_cone(t):  # the quadric is a double cone: keep the apex-up nappe above the ground
        z = oz + t * dz
        return (t > 0) & (z >= 0) & (z <= h)

    return np.where(on_cone(lo), lo, np.where(on_cone(hi), hi, np.inf))


_HIT = {"sphere": _hit_sphere, "cube": _hit_cube, "cylinder": _hit_cylinder, "cone": _hit_cone}


def _local_normal(shape: str, r: float, x, y, z):
    """Unit outward normal at local surface points."""
    if shape == "sphere":
        n = (x, y, z - r)
    elif shape == "cube":
        ax, ay, az = np.abs(x), np.abs(y), np.abs(z - r)
        on_x = (ax >= ay) & (ax >= az)
        on_y = ~on_x & (ay >= az)
        n = (np.where(on_x, np.sign(x), 0), np.where(on_y, np.sign(y), 0), np.where(on_x | on_y, 0, np.sign(z - r)))
    elif shape == "cylinder":
        top = z > 2 * r - 1e-3
        n = (np.where(top, 0, x), np.where(top, 0, y), top.astype(np.float32))
    else:
        n = (x, y, _CONE_K2 * (2 * r - z))
    inv = 1 / np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
    return n[0] * inv, n[1] * inv, n[2] * inv


class _Frame:
    """An object's local frame: translate to its footprint centre, rotate by -yaw."""

    def __init__(self, obj: SceneObject):
        self.x, self.y = np.float32(obj.position[0]), np.float32(obj.position[1])
        self.c, self.s = np.float32(math.cos(obj.yaw)), np.float32(math.sin(obj.yaw))

    def point(self, x, y, z):
        x, y = x - self.x, y - self.y
        return self.c * x + self.s * y, self.c * y - self.s * x, z

    def direction(self, x, y, z):
        return self.c * x + self.s * y, self.c * y - self.s * x, z

    def to_world(self, x, y, z):
        return self.c * x - self.s * y, self.s * x + self.c * y, z


def _windows(camera: Camera, corners: np.ndarray) -> list[tuple[slice, slice] | None]:
    """Per object, the pixel rectangle holding every ray through the convex hull of its
    ``corners`` (N objects, M corners, 3); None where that hull is off-screen.

    Testing each object only inside its window, rather than on all pixels, is what makes the
    renderer fast: objects cover a small part of the image.
    """
    H, W = camera.height, camera.width
    n = len(corners)
    if n == 0:
        return []
    u, v, z = (a.reshape(n, -1) for a in project(camera, corners.reshape(-1, 3)))
    # Pixel i's ray passes through i + 0.5; one pixel of margin absorbs rounding.
    u0, u1 = np.maximum(np.floor(u.min(1)) - 1, 0), np.minimum(np.floor(u.max(1)) + 2, W)
    v0, v1 = np.maximum(np.floor(v.min(1)) - 1, 0), np.minimum(np.floor(v.max(1)) + 2, H)
    out = []
    for k in range(n):
        if (z[k] <= 1e-6).any():  # the hull reaches behind the camera: its projection is unbounded
            out.append((slice(0, H), slice(0, W)))
        elif u0[k] >= u1[k] or v0[k] >= v1[k]:
            out.append(None)
        else:
            out.append((slice(int(v0[k]), int(v1[k])), slice(int(u0[k]), int(u1[k]))))
    return out


def _shadow_volume(obj: SceneObject, light: np.ndarray) -> np.ndarray:
    """Corners whose hull holds every point (z >= 0) from which the sun is hidden by ``obj``."""
    corners = obj.bounds()
    on_ground = corners - (corners[:, 2:] / light[2]) * light
    return np.concatenate([corners, on_ground])


def _ray_directions(camera: Camera):
    """World ray directions (three (H, W) float32 arrays) through pixel centres, camera z = 1."""
    Kinv = inv3(camera.K).astype(np.float32)
    u = np.arange(camera.width, dtype=np.float32)[None, :] + np.float32(0.5)
    v = np.arange(camera.height, dtype=np.float32)[:, None] + np.float32(0.5)
    xc = Kinv[0, 0] * u + Kinv[0, 1] * v + Kinv[0, 2]  # K's last row is (0, 0, 1), so z_c = 1
    yc = Kinv[1, 1] * v + Kinv[1, 2]
    R = camera.rotation.astype(np.float32)
    return tuple(R[0, i] * xc + R[1, i] * yc + R[2, i] for i in range(3))  # world = R^T camera


@dataclass(eq=False)
class Render:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metric z-depth, 0 = sky
    instance: np.ndarray  # (H, W) int32, 0 = ground/sky
    semantic: np.ndarray  # (H, W) int32, 1 + index into CATEGORIES, 0 = ground/sky
    boxes: dict[int, tuple[int, int, int, int]]  # visible instance -> (x1, y1, x2, y2), end-exclusive
    camera: Camera = field(repr=False)


_SHADOW_OFFSET = 2e-3  # metres along the normal, against self-intersection ("shadow acne")


def render(scene: Scene, camera: Camera, shadows: bool = True) -> Render:
    """Ray-cast ``scene`` from ``camera``: shaded image and exact per-pixel ground truth."""
    H, W = camera.height, camera.width
    dx, dy, dz = _ray_directions(camera)
    ox, oy, oz = camera.centre.astype(np.float32)
    light = np.asarray(scene.light_dir, dtype=np.float64)
    light /= norm(light)
    Lx, Ly, Lz = light.astype(np.float32)

    with np.errstate(all="ignore"):  # misses and axis-parallel rays make inf and nan by design
        t = -oz / dz
        gx, gy = ox + t * dx, oy + t * dy
        t = np.where((t > 0) & (gx * gx + gy * gy <= GROUND_RADIUS ** 2), t, np.float32(np.inf))
        inst = np.zeros((H, W), np.int32)
        nx, ny, nz = np.zeros((H, W), np.float32), np.zeros((H, W), np.float32), np.ones((H, W), np.float32)

        windows = {}
        bounds = np.array([o.bounds() for o in scene.objects]).reshape(-1, 8, 3)
        for obj, win in zip(scene.objects, _windows(camera, bounds)):
            if win is None:
                continue
            windows[obj.instance_id] = win
            frame, r = _Frame(obj), np.float32(obj.radius)
            o = frame.point(ox, oy, oz)
            d = frame.direction(dx[win], dy[win], dz[win])
            t_obj = _HIT[obj.shape](r, *o, *d)
            closer = t_obj < t[win]
            if not closer.any():
                continue
            normal = frame.to_world(*_local_normal(obj.shape, r, *(oi + t_obj * di for oi, di in zip(o, d))))
            np.copyto(t[win], t_obj, where=closer)
            np.copyto(inst[win], obj.instance_id, where=closer)
            for full, part in zip((nx, ny, nz), normal):
                np.copyto(full[win], part, where=closer)

        hit = np.isfinite(t)
        depth = np.where(hit, t, np.float32(0))
        px, py, pz = ox + depth * dx, oy + depth * dy, oz + depth * dz
        lit = np.ones((H, W), np.float32)
        if shadows:
            # Sky pixels get a meaningless `lit` here; they are never shaded with it.
            sx, sy, sz = (p + _SHADOW_OFFSET * n for p, n in ((px, nx), (py, ny), (pz, nz)))
            volumes = np.array([_shadow_volume(o, light) for o in scene.objects]).reshape(-1, 16, 3)
            for obj, win in zip(scene.objects, _windows(camera, volumes)):
                if win is None:
                    continue
                frame = _Frame(obj)
                ts = _HIT[obj.shape](np.float32(obj.radius), *frame.point(sx[win], sy[win], sz[win]),
                                     *frame.direction(Lx, Ly, Lz))
                # An object's own far side is dark from n.L < 0 already (all shapes are convex).
                np.copyto(lit[win], 0, where=(ts < np.inf) & (inst[win] != obj.instance_id))
        rgb = _shade(scene, inst, hit, (dx, dy, dz), (nx, ny, nz), (px, py), lit, (Lx, Ly, Lz))

    table = np.zeros(max((o.instance_id for o in scene.objects), default=0) + 1, np.int32)
    for o in scene.objects:
        table[o.instance_id] = CATEGORIES.index(o.label) + 1
    boxes = {}
    for k, (rows, cols) in windows.items():
        mask = inst[rows, cols] == k
        ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if ys.size:
            boxes[k] = (cols.start + int(xs[0]), rows.start + int(ys[0]), cols.start + int(xs[-1]) + 1,
                        rows.start + int(ys[-1]) + 1)
    return Render(rgb, depth, inst, table.take(inst), boxes, camera)


def _shade(scene, inst, hit, d, n, ground_xy, lit, light) -> np.ndarray:
    """Lambert + ambient, a Blinn-Phong highlight on metal, a textured ground fading into the sky."""
    (dx, dy, dz), (nx, ny, nz), (px, py), (Lx, Ly, Lz) = d, n, ground_xy, light
    size = max((o.instance_id for o in scene.objects), default=0) + 1
    albedo = np.zeros((3, size), np.float32)  # column 0: the ground
    albedo[:, 0] = scene.ground_color
    ambient, diffuse, specular = (np.zeros(size, np.float32) for _ in range(3))
    ambient[0], diffuse[0] = 0.45, 0.65
    for o in scene.objects:
        albedo[:, o.instance_id] = COLORS[o.color]
        metal = o.material == "metal"
        ambient[o.instance_id], diffuse[o.instance_id] = (0.2, 0.6) if metal else (0.35, 0.75)
        specular[o.instance_id] = 0.9 * 255 if metal else 0.0

    # Masks as float factors and tables read with `take`: both several times faster than
    # np.where and fancy indexing at these sizes, which matters at a few ms per view.
    hit_f = hit.astype(np.float32)
    ground_f = hit_f * (inst == 0)
    inv = 1 / np.sqrt(dx * dx + dy * dy + dz * dz)
    vz = dz * inv
    ndl = np.maximum(nx * Lx + ny * Ly + nz * Lz, 0) * lit
    shade = ambient.take(inst) + diffuse.take(inst) * ndl
    # A faint 1 m checker so the ground has texture for depth and multi-view tasks.
    checker = (np.floor(px).astype(np.int32) + np.floor(py).astype(np.int32)) & 1
    shade *= 1 - 0.08 * checker * ground_f
    fog = np.clip((np.sqrt(px * px + py * py) - 12) / (GROUND_RADIUS - 12), 0, 1) * ground_f

    # Per channel: surface colour fogged towards the horizon, or for sky a horizon-to-zenith
    # gradient, plus a grey term (the metal highlight, and 0.5 so the cast rounds).
    surface = shade * (1 - fog) * hit_f
    horizon = fog + (1 - hit_f)
    zenith = np.clip(vz, 0, 1) * (1 - hit_f)
    grey = np.float32(0.5)
    if specular.any():
        hx, hy, hz = Lx - dx * inv, Ly - dy * inv, Lz - vz  # half vector between sun and eye, unnormalised
        ndh = np.maximum((nx * hx + ny * hy + nz * hz) / np.sqrt(hx * hx + hy * hy + hz * hz), 0)
        for _ in range(5):  # ndh^32, cheaper than np.power
            ndh *= ndh
        grey = grey + specular.take(inst) * ndh * lit
    channels = []
    for c in range(3):
        col = albedo[c].take(inst) * surface + horizon * (SKY_HORIZON[c] * 255) + zenith * (
            (SKY_ZENITH[c] - SKY_HORIZON[c]) * 255) + grey
        channels.append(np.clip(col, 0, 255, out=col))
    return np.stack(channels, -1).astype(np.uint8)


# --------------------------------------------------------------------------- captions

_NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
_OPENERS = ("A photo of", "A rendering of", "A scene with", "An image of")
_RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


_EMPTY = "an empty floor under a clear sky"


def caption_words() -> tuple[str, ...]:
    """Every word ``caption`` writes, lower case, with a plural's "s" left off (it adds it to a shape)."""
    words = {*SHAPES, *COLORS, *MATERIALS, *SIZES, *_NUMBERS.values(), "an", "and", "the", "is", "are"}
    for phrase in (*_OPENERS, *_RELATIONS.values(), _EMPTY):
        words.update(phrase.lower().split())
    return tuple(sorted(words))


def _visible(scene: Scene, camera: Camera, render: Render | None) -> list[tuple[SceneObject, float, float]]:
    """Visible objects with their projected centres (u, v)."""
    u, v, z = project(camera, np.array([o.centre for o in scene.objects]).reshape(-1, 3))
    out = []
    for o, ui, vi, zi in zip(scene.objects, u, v, z):
        seen = o.instance_id in render.boxes if render is not None else (
            zi > 0 and 0 <= ui < camera.width and 0 <= vi < camera.height)
        if seen:
            out.append((o, float(ui), float(vi)))
    return out


def _phrase(objs: list[SceneObject], rng: np.random.Generator, colour: bool) -> str:
    """"two small red spheres", "a blue metal cube": size and material only when all agree, at random; the
    colour where ``colour`` (the group is then of one colour)."""
    words = [_NUMBERS.get(len(objs), str(len(objs)))]
    sizes, materials = {o.size for o in objs}, {o.material for o in objs}
    if len(sizes) == 1 and rng.random() < 0.3:
        words.append(objs[0].size)
    if colour:
        words.append(objs[0].color)
    if len(materials) == 1 and rng.random() < 0.5:
        words.append(objs[0].material)
    words.append(objs[0].shape + ("s" if len(objs) > 1 else ""))
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words)


def caption(scene: Scene, camera: Camera, render: Render | None = None, colours: float = 1.0) -> str:
    """Describe what ``camera`` sees: counts per category, colours, sometimes sizes and materials,
    and one or two image-space relations (left/right, above/below) between categories.

    ``colours``: the chance that the caption names colours. A caption without them counts and relates
    the objects by shape alone ("two spheres", "The cube is to the left of the spheres"), as GenEval's
    single-object, two-object, counting and position prompts read; a model that only ever saw colours
    named has no sample for such a prompt.

    Visibility: with ``render``, objects with at least one visible pixel; otherwise objects whose
    centre projects into the image. Relations compare projected centres and are stated only when
    they hold for every pair of the two categories' objects, so they are never ambiguous.
    """
    # seeded by the camera rounded to 1e-9: its last bits could still differ between machines somewhere upstream
    pose = np.round(np.asarray(camera.world_to_camera, dtype=np.float64), 9) + 0.0  # + 0.0: no -0.0 bytes
    rng = np.random.default_rng([scene.seed, zlib.crc32(np.ascontiguousarray(pose).tobytes())])
    visible = _visible(scene, camera, render)
    opener = _OPENERS[int(rng.integers(len(_OPENERS)))]
    # drawn at any setting: a caption that names colours reads the same at any higher one
    named = bool(rng.random() < colours)
    if not visible:
        return f"{opener} {_EMPTY}."
    groups: dict[str, list[tuple[SceneObject, float, float]]] = {}
    for item in visible:
        groups.setdefault(item[0].label if named else item[0].shape, []).append(item)
    cats = [list(groups)[i] for i in rng.permutation(len(groups))]
    phrases = [_phrase([o for o, _, _ in groups[c]], rng, named) for c in cats]
    text = f"{opener} {phrases[0] if len(phrases) == 1 else ', '.join(phrases[:-1]) + ' and ' + phrases[-1]}."

    margin_u, margin_v = 0.05 * camera.width, 0.05 * camera.height
    relations = []
    for a in cats:
        for b in cats:
            if a == b:
                continue
            du = [ub - ua for _, ua, _ in groups[a] for _, ub, _ in groups[b]]
            dv = [vb - va for _, _, va in groups[a] for _, _, vb in groups[b]]
            for rel, holds in (("left", min(du) > margin_u), ("right", max(du) < -margin_u),
                               ("above", min(dv) > margin_v), ("below", max(dv) < -margin_v)):
                if holds:
                    relations.append((a, b, rel))
    chosen, used = [], set()
    for i in rng.permutation(len(relations))[: int(rng.integers(1, 3))]:
        a, b, rel = relations[i]
        if frozenset((a, b)) not in used:  # one statement per pair: its converse adds nothing
            used.add(frozenset((a, b)))
            chosen.append((a, b, rel))
    for a, b, rel in chosen:
        subject = f"The {a}s are" if len(groups[a]) > 1 else f"The {a} is"
        obj = f"the {b}s" if len(groups[b]) > 1 else f"the {b}"
        text += f" {subject} {_RELATIONS[rel]} {obj}."
    return text


# --------------------------------------------------------------------------- benchmark


def render_throughput(n_views: int = 200, size: int = 128, seed: int = 0) -> float:
    """Views per second rendering 6-object scenes from 4-camera orbits at ``size``² (this process's threads)."""
    jobs = []
    for i in range((n_views + 3) // 4):
        scene = sample_scene(seed + i, 6, 6)
        jobs += [(scene, cam) for cam in orbit_cameras(4, size, size, seed=seed + i)]
    jobs = jobs[:n_views]
    t0 = time.perf_counter()
    for scene, cam in jobs:
        render(scene, cam)
    return len(jobs) / (time.perf_counter() - t0)
