"""Learned curve ``f_theta`` against the true curve ``f_gt`` (1-D latents); does a curve pass a point.

A ``K = 1`` decoder maps the prior ``z ~ N(0, 1)`` onto a curve in data space. Two decoders can trace the
same curve with different speeds or directions (the latent is not identified), so the comparison is made
between the curves as *sets*, weighted by where the data lies on them:

    d(f -> g) = E_{z ~ N(0,1)} [ dist(f(z), curve g) ],

with ``dist`` the Euclidean distance from a point to the polyline through ``g`` at dense prior quantiles.
:func:`curve_distance` reports both directions and their average (0 iff the curves coincide where the prior
has mass, whatever their parameterisations). It is in data units: compare it with ``sigma_eps``.

:func:`passes_through` asks whether a curve comes within ``radius`` of a point, e.g. the self-crossing
of ``figure8`` at the origin, which the paper's VAE fails to learn (its curve breaks the loop, Figure 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import ndtri

from vaefail.errors import ConfigError, DataError, require
from vaefail.metrics._curve import Curve, as_curve
from vaefail.metrics._stats import finite


def quantile_nodes(size: int) -> np.ndarray:
    """``z_j = Phi^{-1}((j + 1/2) / size)``, ``j = 0..size-1``: equal prior mass per node, increasing."""
    return ndtri((np.arange(size) + 0.5) / size)


def trace(source: Any, size: int = 4001) -> tuple[np.ndarray, np.ndarray]:
    """A K = 1 model's or benchmark's curve at :func:`quantile_nodes`: ``z (size,)``, ``f(z) (size, D)``."""
    curve = as_curve(source, what="a curve")
    z = quantile_nodes(size)
    return z, curve.f_np(z)


def distance_to_polyline(points: np.ndarray, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each point to the polyline through ``vertices``, and the nearest segment's index.

    Parameters
    ----------
    points
        Shape ``(n, D)``.
    vertices
        Shape ``(V, D)``, ``V >= 2``, in order along the curve.

    Returns
    -------
    distance, segment
        Shapes ``(n,)``: Euclidean distance to the nearest point of the polyline, and the index ``v`` of
        the segment ``[vertices[v], vertices[v+1]]`` holding it.
    """
    pts = np.asarray(points, np.float64)
    ver = np.asarray(vertices, np.float64)
    if pts.ndim != 2 or ver.ndim != 2 or pts.shape[1] != ver.shape[1] or ver.shape[0] < 2:
        raise DataError(f"need points (n, D) and vertices (V >= 2, D), got {pts.shape} and {ver.shape}")
    n, seg_len = pts.shape[0], np.linalg.norm(np.diff(ver, axis=0), axis=1)
    # Exact pruning: a segment of length L whose nearest point to p is within d of p has an end within
    # d + L/2 of p. d_v (distance to the nearest vertex) bounds the answer, so for segments no longer
    # than `short` the candidates are the segments at the vertices within d_v + short/2; the (at most 32)
    # longer segments are checked against every point.
    extent = float(np.max(np.ptp(ver, axis=0)))
    if float(np.median(seg_len)) < 1e-6 * extent:
        # Most vertices piled on a few spots (the plateaus of `clusters`): every ball holds a pile.
        return _distance_all_segments(pts, ver)
    short = max(float(np.median(seg_len)) * 4.0, float(np.sort(seg_len)[max(0, len(seg_len) - 33)]), 1e-12)
    tree = cKDTree(ver)
    d_v = tree.query(pts)[0]
    radius = d_v * (1 + 1e-9) + short / 2
    counts = np.asarray(tree.query_ball_point(pts, radius, return_length=True), dtype=np.int64)
    long = np.flatnonzero(seg_len > short)
    if 2 * counts.sum() + n * len(long) > n * len(seg_len) // 4:
        # Pruning does not pay (e.g. thousands of vertices piled on the plateaus of `clusters`).
        return _distance_all_segments(pts, ver)
    near = tree.query_ball_point(pts, radius)
    vert = np.fromiter((i for v in near for i in v), dtype=np.int64, count=int(counts.sum()))
    owner = np.repeat(np.arange(n), counts)
    segs = np.concatenate([vert - 1, vert])
    owner = np.concatenate([owner, owner])
    ok = (segs >= 0) & (segs < len(seg_len)) & (seg_len[np.clip(segs, 0, len(seg_len) - 1)] <= short)
    owner = np.concatenate([owner[ok], np.repeat(np.arange(n), len(long))])
    segs = np.concatenate([segs[ok], np.tile(long, n)])
    d2 = _segment_d2(pts[owner], ver[segs], ver[segs + 1])
    order = np.lexsort((segs, d2, owner))  # per point: smallest distance, then lowest segment index
    first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
    return np.sqrt(d2[first]), segs[first]


def _distance_all_segments(pts: np.ndarray, ver: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`distance_to_polyline` by brute force over every (point, segment) pair, in chunks."""
    start, seg = ver[:-1], np.diff(ver, axis=0)
    length2 = np.sum(seg**2, axis=1)
    safe = np.where(length2 > 0, length2, 1.0)
    dist = np.empty(pts.shape[0])
    which = np.empty(pts.shape[0], dtype=int)
    chunk = max(1, (1 << 20) // start.shape[0])
    for p in range(0, pts.shape[0], chunk):
        rel = pts[p : p + chunk, None, :] - start[None]  # (c, V-1, D)
        t = np.clip(np.einsum("cvd,vd->cv", rel, seg) / safe, 0.0, 1.0)
        t = np.where(length2 > 0, t, 0.0)
        d2 = np.sum((rel - t[..., None] * seg[None]) ** 2, axis=-1)
        k = np.argmin(d2, axis=1)
        which[p : p + chunk] = k
        dist[p : p + chunk] = np.sqrt(d2[np.arange(d2.shape[0]), k])
    return dist, which


def _segment_d2(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance from each ``p[i]`` to the segment ``[a[i], b[i]]`` (all shape ``(m, D)``)."""
    seg, rel = b - a, p - a
    length2 = np.sum(seg**2, axis=1)
    t = np.clip(np.sum(rel * seg, axis=1) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    t = np.where(length2 > 0, t, 0.0)
    return np.sum((rel - t[:, None] * seg) ** 2, axis=1)


@dataclass(frozen=True)
class CurveDistance:
    """Distances between a learned and a true curve (data units), averaged over the prior.

    Attributes
    ----------
    learned_to_true
        ``E_z[dist(f_theta(z), true curve)]``: how far the learned curve strays from the truth.
    true_to_learned
        ``E_z[dist(f_gt(z), learned curve)]``: how much of the true curve the learned one misses.
    symmetric
        Their average.
    hausdorff
        The larger of the two maxima over the quantile nodes (a worst case, sensitive to the extreme
        quantiles).
    sigma_eps
        The noise of ``truth`` (the second curve), the natural scale.
    """

    learned_to_true: float
    true_to_learned: float
    hausdorff: float
    sigma_eps: float

    @property
    def symmetric(self) -> float:
        """``(learned_to_true + true_to_learned) / 2``."""
        return 0.5 * (self.learned_to_true + self.true_to_learned)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the symmetric distance also in units of ``sigma_eps``."""
        return {
            "learned_to_true": finite(self.learned_to_true),
            "true_to_learned": finite(self.true_to_learned),
            "symmetric": finite(self.symmetric),
            "symmetric_over_sigma": finite(self.symmetric / self.sigma_eps),
            "hausdorff": finite(self.hausdorff),
            "sigma_eps": self.sigma_eps,
        }


def curve_distance(learned: Any, truth: Any, *, size: int = 4001) -> CurveDistance:
    """Parameterisation-free distance between two 1-D-latent curves (module docstring).

    Both curves are traced at ``size`` prior quantiles ``z_j`` (equal prior mass each, so the averages
    are expectations over ``z ~ N(0, 1)``); each node's distance to the other curve's polyline is exact
    for the polyline, which follows the curve closely at this density (for ``clusters``, whose steps are
    about 0.004 wide in ``z``, the polyline *is* the straight segment between centres the step traces).

    Parameters
    ----------
    learned
        A VAE with ``latent_dim == 1`` (or a benchmark).
    truth
        A benchmark with a 1-D latent (or a ``K = 1`` VAE).
    size
        Quantile nodes per curve.
    """
    require(size >= 3, f"size must be >= 3, got {size}")
    a, b = as_curve(learned, "curve_distance"), as_curve(truth, "curve_distance")
    if a.x_dim != b.x_dim:
        raise ConfigError(f"curves live in different data dimensions: {a.x_dim} and {b.x_dim}")
    z = quantile_nodes(size)
    fa, fb = a.f_np(z), b.f_np(z)
    d_ab, _ = distance_to_polyline(fa, fb)
    d_ba, _ = distance_to_polyline(fb, fa)
    return CurveDistance(
        learned_to_true=float(d_ab.mean()), true_to_learned=float(d_ba.mean()),
        hausdorff=float(max(d_ab.max(), d_ba.max())), sigma_eps=float(b.sigma),
    )


@dataclass(frozen=True)
class Crossing:
    """Whether a curve passes within ``radius`` of ``point``.

    Attributes
    ----------
    passes
        ``distance <= radius``.
    distance
        ``min_z ||f(z) - point||`` over the traced part of the curve (data units).
    z
        The latent value where the minimum is attained (interpolated on the nearest segment).
    point, radius
        The query.
    """

    passes: bool
    distance: float
    z: float
    point: tuple[float, ...]
    radius: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "passes": bool(self.passes),
            "distance": finite(self.distance),
            "z": finite(self.z),
            "point": list(self.point),
            "radius": self.radius,
        }


def passes_through(source: Any, point: Any, radius: float, *, size: int = 20001) -> Crossing:
    """Does the curve of ``source`` come within ``radius`` of ``point``?

    ``min_z ||f(z) - point||`` over ``z`` at ``size`` prior quantiles (from about ``-4.4`` to ``4.4`` at the
    default, i.e. all but ``1e-5`` of the prior mass), measured to the polyline through them.

    Parameters
    ----------
    source
        A VAE with ``latent_dim == 1`` or a benchmark with a 1-D latent.
    point
        A data-space point, ``D`` numbers (e.g. ``(0, 0)``, the crossing of ``figure8``).
    radius
        Tolerance, > 0, data units.
    size
        Quantile nodes.
    """
    curve: Curve = as_curve(source, "passes_through")
    p = np.asarray(point, np.float64).reshape(-1)
    if p.shape != (curve.x_dim,) or not np.all(np.isfinite(p)):
        raise DataError(f"point must be {curve.x_dim} finite numbers, got {point!r}")
    require(np.isfinite(radius) and radius > 0, f"radius must be > 0, got {radius}")
    require(size >= 3, f"size must be >= 3, got {size}")
    z = quantile_nodes(size)
    f = curve.f_np(z)
    dist, seg = distance_to_polyline(p[None], f)
    v = int(seg[0])
    d = f[v + 1] - f[v]
    length2 = float(d @ d)
    t = float(np.clip((p - f[v]) @ d / length2, 0.0, 1.0)) if length2 > 0 else 0.0
    return Crossing(
        passes=bool(dist[0] <= radius), distance=float(dist[0]), z=float(z[v] + t * (z[v + 1] - z[v])),
        point=tuple(float(c) for c in p), radius=float(radius),
    )
