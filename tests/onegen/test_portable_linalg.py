"""portable_linalg: numpy's products and inverses to rounding; and the same world, rays and OpenCV conditions under
every OpenBLAS kernel this CPU can run (the AVX-512 kernel once made another world than the AVX2 one) and with every
SIMD dispatcher (OpenBLAS, numpy, OpenCV) held at its baseline."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onegen.portable_linalg import affine_inverse, det3, inv3, matmul, norm, rq3

ROOT = Path(__file__).resolve().parents[2]


def test_matmul_follows_numpys_shape_rules_and_values():
    rng = np.random.default_rng(0)
    a, b, v = rng.standard_normal((5, 3, 4)), rng.standard_normal((4, 2)), rng.standard_normal(4)
    for x, y in ((a, b), (a, v), (v, b), (a[0], b), (rng.standard_normal((7, 4)), rng.standard_normal((1, 4, 3)))):
        expected = x @ y
        assert matmul(x, y).shape == expected.shape
        np.testing.assert_allclose(matmul(x, y), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="scalars"):
        matmul(2.0, b)
    for x, y in ((np.ones((3, 1)), np.arange(3.0)), (np.ones((2, 3)), np.ones((1, 4)))):  # numpy raises, no broadcast
        with pytest.raises(ValueError, match="inner dimensions"):
            matmul(x, y)


def test_norm_det_and_inverses_match_numpys():
    rng = np.random.default_rng(1)
    m = rng.standard_normal((6, 3, 3))
    np.testing.assert_allclose(norm(m, axis=1, keepdims=True), np.linalg.norm(m, axis=1, keepdims=True), rtol=1e-14)
    assert norm(np.array([3.0, 4.0])) == 5.0
    np.testing.assert_allclose(det3(m), np.linalg.det(m), rtol=1e-12)
    np.testing.assert_allclose(inv3(m), np.linalg.inv(m), rtol=1e-9, atol=1e-9)
    t = np.tile(np.eye(4), (6, 1, 1))
    t[:, :3, :3], t[:, :3, 3] = m, rng.standard_normal((6, 3))
    np.testing.assert_allclose(affine_inverse(t), np.linalg.inv(t), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="singular"):
        inv3(np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"last row is not \(0, 0, 0, 1\)"):
        affine_inverse(np.ones((4, 4)))


def test_rq3_splits_into_a_positive_upper_triangle_and_a_rotation():
    rng = np.random.default_rng(2)
    for _ in range(20):
        m = rng.standard_normal((3, 3))
        m = m if np.linalg.det(m) > 0 else -m
        u, q = rq3(m)
        np.testing.assert_allclose(u @ q, m, atol=1e-12)
        np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(q) > 0 and np.all(np.diag(u) > 0) and np.all(np.tril(u, -1) == 0)
    with pytest.raises(ValueError, match="positive determinant"):
        rq3(-np.eye(3))


# A digest of what a world build writes through camera maths and OpenCV: renders, captions, cameras, the
# normalised rays of a rig, Canny and the degradations; and, as a control that the kernel really changed, BLAS's
# own product and inverse.
_DIGEST = """
import hashlib, json
import numpy as np
from onegen.annotators import degrade
from onegen.plucker import rays_for_cameras
from onegen.sources import procedural as world
h = hashlib.sha256()
for seed in range(3):
    scene = world.sample_scene(seed, 2, 5)
    cams = world.orbit_cameras(4, 32, 48, seed=seed) + [world.random_camera(seed, 32, 48)]
    for cam in cams:
        r = world.render(scene, cam)
        rng = np.random.default_rng(seed)
        made = (degrade.canny(r.rgb)[0], degrade.blur(r.rgb, rng)[0], degrade.downscale(r.rgb, rng)[0])
        for a in (r.rgb, r.depth, r.instance, *made):
            h.update(a.tobytes())
        h.update((world.caption(scene, cam, r) + json.dumps(cam.to_json())).encode())
    h.update(rays_for_cameras(cams[:4], normalize=True).tobytes())
a = np.random.default_rng(0).standard_normal((64, 64))
print(h.hexdigest(), hashlib.sha256((a @ a).tobytes() + np.linalg.inv(a[:3, :3]).tobytes()).hexdigest())
import cv2
print(np._core._multiarray_umath.__cpu_features__["X86_V3"], cv2.getCPUFeaturesLine())  # the dispatch caps took
"""


def _kernels_this_cpu_runs() -> list[str]:
    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                          if line.startswith("flags")), []))
    kernels = ["Prescott"]  # SSE3: every x86-64
    if {"avx2", "fma"} <= flags:
        kernels.append("Haswell")
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        kernels.append("SkylakeX")
    return kernels


# numpy and OpenCV pick SIMD kernels at run time too; these hold both at their builds' baselines (numpy x86-64-v2,
# OpenCV SSE3), beside OpenBLAS's oldest kernel
_BASELINES = {"OPENBLAS_CORETYPE": "Prescott", "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL",
              "OPENCV_CPU_DISABLE": "AVX512F,AVX2,FMA3,AVX,POPCNT,SSSE3"}


def _digest(env: dict) -> list[str]:
    r = subprocess.run([sys.executable, "-c", _DIGEST], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    digests, dispatch = r.stdout.splitlines()
    return [*digests.split(), dispatch]


def test_the_world_and_its_conditions_are_the_same_bytes_under_every_simd_kernel():
    kernels = _kernels_this_cpu_runs()
    digests = {kernel: _digest({"OPENBLAS_CORETYPE": kernel}) for kernel in kernels}
    digests["every dispatcher at baseline"] = *world_and_blas, dispatch = _digest(_BASELINES)
    if "Haswell" in kernels:  # a CPU with AVX2, which both would otherwise dispatch to
        assert dispatch.startswith("False") and "AVX2?" in dispatch, f"numpy or OpenCV ignored the caps: {dispatch}"
    digests["this CPU's own"] = _digest({})
    if len(kernels) > 1:
        assert len({d[1] for d in digests.values()}) > 1, f"OPENBLAS_CORETYPE changed no BLAS result: {digests}"
    assert len({d[0] for d in digests.values()}) == 1, f"the world differs between kernels: {digests}"
