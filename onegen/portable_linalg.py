"""Small-matrix linear algebra that gives the same bits on every CPU, for geometry that ends up in shard bytes.

numpy's ``@``, ``dot``, ``linalg.norm`` of a vector and ``linalg.inv``/``solve`` call OpenBLAS and LAPACK, whose
kernels are picked at run time by CPU (``OPENBLAS_CORETYPE`` Prescott, Haswell, SkylakeX, ...) and round
differently (summation order, fused multiply-adds). The procedural world of one seed came out as three different
worlds under three of them, so an AVX-512 node of a cluster rebuilt another world than an AVX2 one. Here every
product is an elementwise multiply and every sum a numpy reduction over a fixed axis: exactly rounded IEEE
operations in an order that depends on the shapes and memory layout, never on the CPU.

Only for the 3x3 and 4x4 matrices of cameras and the point sets they map; heavy numerics keep BLAS.
"""

from __future__ import annotations

import numpy as np


def matmul(a, b) -> np.ndarray:
    """``a @ b`` with numpy's broadcasting and 1-d rules, summed in a fixed order."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: scalars have no matrix product")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: inner dimensions of {a.shape} and {b.shape} differ")
    if b.ndim == 1:
        return (a * b).sum(axis=-1)
    if a.ndim == 1:
        return (a[:, None] * b).sum(axis=-2)
    return (a[..., :, :, None] * b[..., None, :, :]).sum(axis=-2)


def norm(v, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """Euclidean length along ``axis`` (a 0-d array for a vector)."""
    v = np.asarray(v)
    return np.sqrt((v * v).sum(axis=axis, keepdims=keepdims))


def det3(m) -> np.ndarray:
    """Determinants of (..., 3, 3) matrices."""
    m = np.asarray(m)
    return (m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
            - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
            + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0]))


def inv3(m) -> np.ndarray:
    """Inverses of (..., 3, 3) matrices by their adjugates; ValueError for a singular one."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"inv3: expected (..., 3, 3) matrices, got {m.shape}")
    det = det3(m)
    if not np.all(np.isfinite(m)):
        raise ValueError("inv3: a matrix is not finite")
    if np.any(det == 0):
        raise ValueError("inv3: a matrix is singular")
    cof = np.empty_like(m)
    for i in range(3):
        for j in range(3):
            r, c = [k for k in range(3) if k != i], [k for k in range(3) if k != j]
            minor = m[..., r[0], c[0]] * m[..., r[1], c[1]] - m[..., r[0], c[1]] * m[..., r[1], c[0]]
            cof[..., j, i] = minor if (i + j) % 2 == 0 else -minor  # transposed: the adjugate
    return cof / det[..., None, None]


def affine_inverse(t) -> np.ndarray:
    """Inverses of (..., 4, 4) affine transforms [A | b; 0 0 0 1]: [A^-1 | -A^-1 b]."""
    t = np.asarray(t, dtype=np.float64)
    if t.shape[-2:] != (4, 4):
        raise ValueError(f"affine_inverse: expected (..., 4, 4) transforms, got {t.shape}")
    if np.any(t[..., 3, :] != (0.0, 0.0, 0.0, 1.0)):
        raise ValueError("affine_inverse: a transform's last row is not (0, 0, 0, 1)")
    a_inv = inv3(t[..., :3, :3])
    out = np.zeros_like(t)
    out[..., :3, :3] = a_inv
    out[..., :3, 3] = -matmul(a_inv, t[..., :3, 3:])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def rq3(m) -> tuple[np.ndarray, np.ndarray]:
    """``m = U Q`` for a 3x3 ``m`` of positive determinant: U upper triangular with a positive diagonal, Q a rotation.
    Gram-Schmidt from the last row, where LAPACK's QR would pick its kernels per CPU."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)) or det3(m) <= 0:
        raise ValueError("rq3: expected a finite 3x3 matrix of positive determinant")
    u, q = np.zeros((3, 3)), np.zeros((3, 3))
    for i in (2, 1, 0):
        row = m[i].copy()
        for j in range(i + 1, 3):
            u[i, j] = (m[i] * q[j]).sum()
            row -= u[i, j] * q[j]
        u[i, i] = norm(row)
        q[i] = row / u[i, i]
    return u, q
