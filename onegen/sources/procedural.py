"""The procedural world: seeded CLEVR-like scenes, rendered by our own vectorised ray caster.

Coloured primitives (sphere, cube, cylinder, cone) in the ten GenEval colours rest on a
textured ground plane. ``render`` casts one ray per pixel centre and intersects every shape
analytically, so depth, instance masks and boxes are exact -- the offline ground truth that
feeds every One-Gen task family and the procedural editions of the benchmarks.

Conventions: world z-up, ground z = 0, metres; cameras are ``onegen.camera.Camera`` (OpenCV).
Rays are not normalised: each direction has camera-space z = 1, so the ray parameter of a hit
*is* its z-depth. Each object is only tested against the pixels inside its projected bounding
box, which keeps a 128² view with six objects at a few milliseconds on one core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from onegen.camera import Camera, intrinsics_from_fov, look_at

RENDERER_VERSION = "1"
SHAPES = ("sphere", "cube", "cylinder", "cone")
COLORS = {  # GenEval's ten colour names
    "red": (200, 40, 40), "orange": (235, 130, 30), "yellow": (230, 210, 40), "green": (50, 160, 60),
    "blue": (40, 80, 210), "purple": (130, 50, 170), "pink": (240, 140, 180), "brown": (120, 75, 40),
    "black": (25, 25, 25), "white": (235, 235, 235),
}
MATERIALS = ("rubber", "metal")
SIZES = {"small": 0.35, "large": 0.7}  # half-extent in metres; every shape is 2x this tall
CATEGORIES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
PLACEMENT_RADIUS = 3.0
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_SKY = np.array([185, 205, 230], np.float32)
_EPS = 1e-4


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    material: str
    size: str
    position: tuple[float, float]  # footprint centre on the ground
    yaw: float  # radians about z; only a cube shows it
    instance_id: int

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What makes "the same object" across scenes (the ID task's subject)."""
        return (self.shape, self.color, self.material, self.size)

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    def to_json(self) -> dict:
        return {"shape": self.shape, "color": self.color, "material": self.material, "size": self.size,
                "position": list(self.position), "yaw": self.yaw, "instance_id": self.instance_id}

    @classmethod
    def from_json(cls, d: dict) -> "SceneObject":
        return cls(d["shape"], d["color"], d["material"], d["size"], tuple(d["position"]), float(d["yaw"]),
                   int(d["instance_id"]))


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    seed: int
    light_dir: tuple[float, float, float]  # unit vector towards the light
    ground_color: tuple[int, int, int]

    def to_json(self) -> dict:
        return {"objects": [o.to_json() for o in self.objects], "seed": self.seed,
                "light_dir": list(self.light_dir), "ground_color": list(self.ground_color)}

    @classmethod
    def from_json(cls, d: dict) -> "Scene":
        return cls(tuple(SceneObject.from_json(o) for o in d["objects"]), int(d["seed"]),
                   tuple(d["light_dir"]), tuple(d["ground_color"]))


def sample_scene(seed: int, min_objects: int = 2, max_objects: int = 6,
                 include: tuple[tuple[str, str, str, str], ...] = ()) -> Scene:
    """A random non-overlapping arrangement; ``include`` forces identities into the scene."""
    rng = np.random.default_rng(seed)
    n = max(int(rng.integers(min_objects, max_objects + 1)), len(include))
    wanted = list(include) + [
        (str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(MATERIALS)), str(rng.choice(list(SIZES))))
        for _ in range(n - len(include))
    ]
    placed: list[SceneObject] = []
    for shape, color, material, size in wanted:
        r = SIZES[size]
        for _ in range(100):  # rejection sampling; an object that never fits is left out
            rho, phi = PLACEMENT_RADIUS * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            xy = (float(rho * np.cos(phi)), float(rho * np.sin(phi)))
            # footprints are bounded by circles of radius r*sqrt(2) (the cube's diagonal)
            if all(np.hypot(xy[0] - o.position[0], xy[1] - o.position[1]) > 1.42 * (r + o.radius) + 0.1 for o in placed):
                placed.append(SceneObject(shape, color, material, size, xy, float(rng.uniform(0, np.pi / 2)),
                                          len(placed) + 1))
                break
    az, el = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(35, 70))
    light = (float(np.cos(el) * np.cos(az)), float(np.cos(el) * np.sin(az)), float(np.sin(el)))
    grey = int(rng.integers(150, 200))
    return Scene(tuple(placed), int(seed), light, (grey, grey, int(grey * 0.95)))


def orbit_cameras(n_views: int, height: int, width: int, radius: float = 7.0, elevation_deg: float = 30.0,
                  fov_deg: float = 50.0, start_azimuth_deg: float = 0.0, target=(0.0, 0.0, 0.5),
                  seed: int | None = None) -> list[Camera]:
    """``n_views`` cameras evenly spaced in azimuth around ``target``; ``seed`` jitters each pose."""
    rng = np.random.default_rng(seed) if seed is not None else None
    K = intrinsics_from_fov(fov_deg, height, width)
    cams = []
    for k in range(n_views):
        az = start_azimuth_deg + 360.0 * k / n_views
        el, rad = elevation_deg, radius
        if rng is not None:
            az += rng.uniform(-10, 10)
            el += rng.uniform(-8, 8)
            rad += rng.uniform(-0.7, 0.7)
        a, e = np.deg2rad(az), np.deg2rad(el)
        eye = np.asarray(target) + rad * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        cams.append(Camera(K, look_at(eye, target), height, width))
    return cams


def random_camera(seed: int, height: int, width: int, fov_deg: float = 50.0) -> Camera:
    rng = np.random.default_rng(seed)
    return orbit_cameras(1, height, width, radius=float(rng.uniform(6.0, 9.0)),
                         elevation_deg=float(rng.uniform(20, 50)), fov_deg=fov_deg,
                         start_azimuth_deg=float(rng.uniform(0, 360)))[0]


@dataclass
class Render:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 z-depth in metres, 0 where the ray hits nothing (sky)
    instance: np.ndarray  # (H, W) int32, 0 = ground or sky
    semantic: np.ndarray  # (H, W) int32, 1 + index into CATEGORIES, 0 = background
    boxes: dict[int, tuple[int, int, int, int]]  # instance -> (x1, y1, x2, y2), end-exclusive
    camera: Camera


def pixel_rays(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Camera centre (3,) and per-pixel world directions (H, W, 3) with camera-space z = 1."""
    d_cam = _camera_space_rays(camera.height, camera.width, camera.K.tobytes())
    return camera.centre.astype(np.float32), d_cam @ camera.rotation.astype(np.float32)  # rows: R^T d


@lru_cache(maxsize=16)
def _camera_space_rays(height: int, width: int, k_bytes: bytes) -> np.ndarray:
    K = np.frombuffer(k_bytes, dtype=np.float64).reshape(3, 3)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    return (pix @ np.linalg.inv(K).T).astype(np.float32)


# --- analytic intersections --------------------------------------------------------------
# o: origins (3,) or (..., 3); d: directions (..., 3), broadcast against o. ``_hit_*`` return the
# nearest hit parameter t (inf = miss); ``_normal_*`` the unit normal at surface points (M, 3),
# computed only for the pixels an object wins.

def _nearest_root(a, b, c, valid_fn):
    """Smallest positive root of a t^2 + b t + c = 0 that passes ``valid_fn(t)``."""
    disc = b * b - 4 * a * c
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0))
    a2 = 2 * np.where(np.abs(a) < 1e-12, 1e-12, a)
    near, far = (-b - sq) / a2, (-b + sq) / a2
    near, far = np.minimum(near, far), np.maximum(near, far)
    use_near = ok & (near > _EPS) & valid_fn(near)
    use_far = ok & ~use_near & (far > _EPS) & valid_fn(far)
    return np.where(use_near, near, np.where(use_far, far, np.inf)).astype(np.float32)


def _centre(obj: SceneObject) -> np.ndarray:
    return np.array([*obj.position, obj.radius], np.float32)


def _yaw_matrix(obj: SceneObject) -> np.ndarray:
    cy, sy = np.cos(obj.yaw), np.sin(obj.yaw)
    return np.array([[cy, sy, 0], [-sy, cy, 0], [0, 0, 1]], np.float32)  # world -> object frame


def _hit_sphere(obj: SceneObject, o, d):
    r = obj.radius
    oc = o - _centre(obj)
    return _nearest_root((d * d).sum(-1), 2 * (d * oc).sum(-1), (oc * oc).sum(-1) - r * r, lambda t: True)


def _normal_sphere(obj: SceneObject, p):
    return (p - _centre(obj)) / obj.radius


def _hit_cube(obj: SceneObject, o, d):
    r, Rz = obj.radius, _yaw_matrix(obj)
    po, pd = (o - _centre(obj)) @ Rz.T, d @ Rz.T
    inv = 1.0 / np.where(np.abs(pd) < 1e-12, 1e-12, pd)
    t1, t2 = (-r - po) * inv, (r - po) * inv
    tnear, tfar = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
    return np.where((tnear <= tfar) & (tnear > _EPS), tnear, np.inf).astype(np.float32)


def _normal_cube(obj: SceneObject, p):
    Rz = _yaw_matrix(obj)
    q = (p - _centre(obj)) @ Rz.T
    axis = np.abs(q).argmax(-1)
    n = np.zeros_like(q)
    n[np.arange(len(q)), axis] = np.sign(q[np.arange(len(q)), axis])
    return n @ Rz


def _hit_cylinder(obj: SceneObject, o, d):
    r, h = obj.radius, 2 * obj.radius
    x0, y0, z0 = o[..., 0] - obj.position[0], o[..., 1] - obj.position[1], o[..., 2]
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    side = _nearest_root(dx * dx + dy * dy, 2 * (x0 * dx + y0 * dy), x0 * x0 + y0 * y0 - r * r,
                         lambda t: (z0 + t * dz >= 0) & (z0 + t * dz <= h))
    tc = (h - z0) / np.where(np.abs(dz) < 1e-12, 1e-12, dz)
    cap_ok = (tc > _EPS) & ((x0 + tc * dx) ** 2 + (y0 + tc * dy) ** 2 <= r * r)
    return np.minimum(side, np.where(cap_ok, tc, np.inf)).astype(np.float32)


def _normal_cylinder(obj: SceneObject, p):
    q = p - np.array([*obj.position, 0], np.float32)
    radial = np.stack([q[:, 0], q[:, 1], np.zeros(len(q), np.float32)], -1) / obj.radius
    cap = q[:, 2] >= 2 * obj.radius - 1e-3
    return np.where(cap[:, None], np.array([0, 0, 1], np.float32), radial)


def _hit_cone(obj: SceneObject, o, d):
    """Apex up at height h = 2r above a base of radius r; the base itself lies on the ground."""
    r, h = obj.radius, 2 * obj.radius
    k2 = (r / h) ** 2
    x0, y0, z0 = o[..., 0] - obj.position[0], o[..., 1] - obj.position[1], o[..., 2]
    hz = h - z0
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    return _nearest_root(dx * dx + dy * dy - k2 * dz * dz, 2 * (x0 * dx + y0 * dy + k2 * hz * dz),
                         x0 * x0 + y0 * y0 - k2 * hz * hz, lambda t: (z0 + t * dz >= 0) & (z0 + t * dz <= h))


def _normal_cone(obj: SceneObject, p):
    h = 2 * obj.radius
    q = p - np.array([*obj.position, 0], np.float32)
    n = np.stack([q[:, 0], q[:, 1], (obj.radius / h) ** 2 * (h - q[:, 2])], -1)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-9)


_HIT = {"sphere": _hit_sphere, "cube": _hit_cube, "cylinder": _hit_cylinder, "cone": _hit_cone}
_NORMAL = {"sphere": _normal_sphere, "cube": _normal_cube, "cylinder": _normal_cylinder, "cone": _normal_cone}


def _bounds_corners(obj: SceneObject) -> np.ndarray:
    r = obj.radius * 1.42  # covers the rotated cube's corners
    x, y = obj.position
    return np.array([[x + sx * r, y + sy * r, z] for sx in (-1, 1) for sy in (-1, 1) for z in (0, 2 * obj.radius)])


def _rect_of_points(points: np.ndarray, camera: Camera) -> tuple[int, int, int, int]:
    """Pixel rectangle containing the projections of world points (whole image if any is behind)."""
    pc = points @ camera.rotation.T + camera.world_to_camera[:3, 3]
    if (pc[:, 2] < 0.05).any():
        return 0, 0, camera.width, camera.height
    uv = pc @ camera.K.T
    uv = uv[:, :2] / uv[:, 2:]
    x1, y1 = np.floor(uv.min(0)).astype(int) - 1
    x2, y2 = np.ceil(uv.max(0)).astype(int) + 1
    return max(x1, 0), max(y1, 0), min(x2, camera.width), min(y2, camera.height)


def _shadow_mask(scene: Scene, camera: Camera, points: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """Ground pixels an object hides from the light (objects cast shadows, the ground receives)."""
    L = np.asarray(scene.light_dir, np.float32)
    out = np.zeros(ground.shape, bool)
    for obj in scene.objects:
        # only ground inside the footprint (the object's bounds projected along the light) can be hit
        c = _bounds_corners(obj)
        foot = c[:, :2] - (c[:, 2:] / L[2]) * L[:2]
        (lx, ly), (hx, hy) = foot.min(0), foot.max(0)
        x1, y1, x2, y2 = _rect_of_points(np.array([[lx, ly, 0], [lx, hy, 0], [hx, ly, 0], [hx, hy, 0]]), camera)
        if x1 >= x2 or y1 >= y2:
            continue
        p = points[y1:y2, x1:x2]
        cand = ground[y1:y2, x1:x2] & ~out[y1:y2, x1:x2] & (p[..., 0] >= lx) & (p[..., 0] <= hx) \
            & (p[..., 1] >= ly) & (p[..., 1] <= hy)
        if cand.any():
            t = _HIT[obj.shape](obj, p[cand] + 1e-3 * L, L[None])
            window = out[y1:y2, x1:x2]
            window[cand] = np.isfinite(t)
    return out


def render(scene: Scene, camera: Camera) -> Render:
    H, W = camera.height, camera.width
    o, d = pixel_rays(camera)
    depth = np.full((H, W), np.inf, np.float32)
    normal = np.zeros((H, W, 3), np.float32)
    instance = np.zeros((H, W), np.int32)

    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(d[..., 2] < -1e-9, -o[2] / d[..., 2], np.inf).astype(np.float32)
    ground = np.isfinite(t_ground) & (t_ground > _EPS)
    depth = np.where(ground, t_ground, depth)
    normal[..., 2] = ground

    rects = {}
    for obj in scene.objects:
        x1, y1, x2, y2 = _rect_of_points(_bounds_corners(obj), camera)
        if x1 >= x2 or y1 >= y2:
            continue
        rects[obj] = (x1, y1, x2, y2)
        t = _HIT[obj.shape](obj, o, d[y1:y2, x1:x2])
        win = t < depth[y1:y2, x1:x2]
        depth[y1:y2, x1:x2] = np.where(win, t, depth[y1:y2, x1:x2])
        instance[y1:y2, x1:x2][win] = obj.instance_id

    hit = np.isfinite(depth)
    points = o + d * np.where(hit, depth, 0)[..., None]
    for obj, (x1, y1, x2, y2) in rects.items():
        mine = instance[y1:y2, x1:x2] == obj.instance_id
        if mine.any():
            normal[y1:y2, x1:x2][mine] = _NORMAL[obj.shape](obj, points[y1:y2, x1:x2][mine])
    # per-instance look-up tables: row 0 is the ground, row k object k
    n_lut = max((obj.instance_id for obj in scene.objects), default=0) + 1
    colour_lut = np.zeros((n_lut, 3), np.float32)
    colour_lut[0] = scene.ground_color
    metal_lut = np.zeros(n_lut, bool)
    class_lut = np.zeros(n_lut, np.int32)
    for obj in scene.objects:
        colour_lut[obj.instance_id] = COLORS[obj.color]
        metal_lut[obj.instance_id] = obj.material == "metal"
        class_lut[obj.instance_id] = CATEGORIES.index(obj.label) + 1
    g = ground & (instance == 0)
    L = np.asarray(scene.light_dir, np.float32)
    lambert = np.clip(normal @ L, 0, 1)
    lambert = np.where(_shadow_mask(scene, camera, points, g), 0.25 * lambert, lambert)
    # one brightness per pixel: shading, times a faint 1 m checker on the ground for texture
    checker = (np.floor(points[..., 0]) + np.floor(points[..., 1])) % 2
    brightness = (0.35 + 0.65 * lambert) * np.where(g, 0.92 + 0.08 * checker, 1.0)
    rgb = colour_lut[instance] * brightness[..., None]
    rgb[~hit] = _SKY
    metal = metal_lut[instance]
    if metal.any():
        view = -d[metal] / np.linalg.norm(d[metal], axis=-1, keepdims=True)
        nm = normal[metal]
        refl = 2 * (nm @ L)[:, None] * nm - L
        spec = np.clip(np.einsum("ij,ij->i", refl, view), 0, 1) ** 24
        rgb[metal] = rgb[metal] * 0.8 + 255 * 0.6 * spec[:, None]

    boxes = {}
    for obj, (x1, y1, x2, y2) in rects.items():  # an object's pixels all lie inside its rectangle
        ys, xs = np.nonzero(instance[y1:y2, x1:x2] == obj.instance_id)
        if len(xs):
            boxes[obj.instance_id] = (x1 + int(xs.min()), y1 + int(ys.min()), x1 + int(xs.max()) + 1,
                                      y1 + int(ys.max()) + 1)
    rgb8 = np.clip(rgb, 0, 255).astype(np.uint8)
    return Render(rgb8, np.where(hit, depth, 0).astype(np.float32), instance, class_lut[instance], boxes, camera)


# --- captions from the scene graph ---

def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def _project(obj: SceneObject, camera: Camera) -> tuple[float, float, float]:
    c = np.array([*obj.position, obj.radius])
    pc = camera.rotation @ c + camera.world_to_camera[:3, 3]
    uv = camera.K @ pc
    return float(uv[0] / uv[2]), float(uv[1] / uv[2]), float(pc[2])


def visible_objects(scene: Scene, camera: Camera) -> list[SceneObject]:
    """Objects whose centre projects inside the image in front of the camera."""
    out = []
    for obj in scene.objects:
        u, v, z = _project(obj, camera)
        if z > 0 and 0 <= u < camera.width and 0 <= v < camera.height:
            out.append(obj)
    return out


def caption(scene: Scene, camera: Camera) -> str:
    """Counts per colour and shape, materials where unambiguous, and up to two spatial relations
    (left/right, above/below in the image) between objects whose class is unique in view."""
    rng = np.random.default_rng(scene.seed)
    objs = visible_objects(scene, camera)
    if not objs:
        return "An empty grey floor."
    counts: dict[str, list[SceneObject]] = {}
    for obj in objs:
        counts.setdefault(obj.label, []).append(obj)
    phrases = []
    for label, group in counts.items():
        color, shape = label.split()
        if len(group) == 1:
            o = group[0]
            mat = f"{o.material} " if o.material == "metal" else ""
            phrases.append(f"a {o.size} {color} {mat}{shape}")
        else:
            phrases.append(f"{_NUMBERS[min(len(group), 10)]} {color} {_plural(shape, len(group))}")
    listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    text = f"A photo of {listing} on a grey floor."
    unique = [g[0] for g in counts.values() if len(g) == 1]
    pairs = [(a, b) for i, a in enumerate(unique) for b in unique[i + 1:]]
    for j in rng.permutation(len(pairs))[:2]:
        a, b = pairs[int(j)]
        (ua, va, _), (ub, vb, _) = _project(a, camera), _project(b, camera)
        if abs(ua - ub) >= abs(va - vb):
            rel = "to the left of" if ua < ub else "to the right of"
        else:
            rel = "above" if va < vb else "below"
        text += f" The {a.label} is {rel} the {b.label}."
    return text


def render_throughput(n_views: int = 200, size: int = 128, seed: int = 0) -> float:
    """Views per second of ``render`` on random 6-object scenes (whatever threads numpy has)."""
    jobs = [(sample_scene(seed + i, 6, 6), random_camera(seed + i, size, size)) for i in range(n_views)]
    render(*jobs[0])  # warm-up
    t0 = time.perf_counter()
    for scene, cam in jobs:
        render(scene, cam)
    return n_views / (time.perf_counter() - t0)
