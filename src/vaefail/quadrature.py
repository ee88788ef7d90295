"""Quadrature over the latent ``z``: grids, trapezoid weights and the integrals built on them.

Every exact quantity of the project (the benchmarks' ``log p_gt(x)`` and posteriors, a model's exact
``log p_theta(x)`` and per-class ``log p_theta(x|y)`` for ``K <= 2``, posterior moments, figures of
posteriors) integrates over a 1-D or 2-D grid of ``z`` with the trapezoid rule, in float64. The grids and
weights live here once; the integrands (a benchmark's ``f_gt`` or a model's decoder) are the callers'.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from vaefail.errors import ConfigError, DataError, require

LOG_2PI = math.log(2.0 * math.pi)

#: Half-width of the benchmarks' quadrature range in z. The prior mass outside [-8, 8] is 2 Phi(-8) ~ 1.2e-15.
Z_LIMIT = 8.0

#: Number of points of the benchmarks' default z-grid, spacing h = 16 / 16000 = 0.001.
#:
#: Justification. The sharpest decoder is ``clusters``: p(t) = sum_j sigmoid(beta (t - j/M)), beta = 300,
#: t = Phi(z). Along a step the mean moves between neighbouring centres (2.35 apart for the defaults) at up
#: to |dp/dz| = beta phi(z) / 4 <= 29 gaps per unit z, so for x between two centres p(x|z) is a bump of std
#: about 0.25 / (2.35 * 29) = 0.0037 in z. The trapezoid rule on a Gaussian bump of std s with spacing h has
#: relative error about 2 exp(-2 pi^2 s^2 / h^2), below 1e-16 once h <= s / 1.4. Measured max |error| of
#: log p(x) against a 64001-point grid, over 2000 samples plus 76 points between centres: 4001 points
#: (h = 0.004): 1.1e-5; 8001 (h = 0.002): 1.5e-14; 16001: 1.1e-14 (rounding). 16001 points give a 2x
#: margin in h (exact to rounding for beta up to about 600); cost is ~0.1 ms per point.
Z_GRID_POINTS = 16001

#: The benchmarks' default uniform quadrature grid over z, shape (Z_GRID_POINTS,), float64.
DEFAULT_Z_GRID: np.ndarray = np.linspace(-Z_LIMIT, Z_LIMIT, Z_GRID_POINTS)
DEFAULT_Z_GRID.setflags(write=False)


def trapezoid_weights(z_grid: np.ndarray) -> np.ndarray:
    """Trapezoid weights ``w`` with ``sum_g w_g f(z_g) = np.trapezoid(f, z_grid)``."""
    dz = np.diff(z_grid)
    w = np.zeros_like(z_grid)
    w[:-1] += 0.5 * dz
    w[1:] += 0.5 * dz
    return w


def normal_trapezoid(points: int, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal quadrature on ``[-bound, bound]``: ``points`` uniform nodes ``u`` and weights
    ``w_g`` proportional to the trapezoid weight times ``phi(u_g)``, normalised to sum to 1, so that
    ``E_{u ~ N(0, 1)}[h(u)] ~ sum_g w_g h(u_g)``."""
    u = np.linspace(-bound, bound, points)
    w = trapezoid_weights(u) * np.exp(-0.5 * u**2) / math.sqrt(2 * math.pi)
    return u, w / w.sum()


def product_rule(u1: np.ndarray, w1: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k``-fold product of a 1-D rule ``(u1, w1)``: nodes ``(len(u1)^k, k)`` and weights
    ``prod_i w1[g_i]`` (in ``itertools.product`` order, the last coordinate fastest)."""
    u = np.stack(np.meshgrid(*[u1] * k, indexing="ij"), axis=-1).reshape(-1, k)
    w = functools.reduce(np.multiply.outer, [w1] * k).ravel()
    return u, w


def check_z_grid(z_grid: Any, quadrature: bool = True) -> np.ndarray:
    """Validate z values: finite 1-D; a quadrature grid must also be strictly increasing, >= 2 points."""
    try:
        grid = np.asarray(z_grid, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"z_grid must be a numeric array ({exc})") from exc
    if grid.ndim != 1 or grid.size < (2 if quadrature else 1):
        raise DataError(f"z_grid must be 1-D with at least 2 points, got shape {grid.shape}")
    if not np.all(np.isfinite(grid)):
        raise DataError("z_grid must be finite")
    if quadrature and not np.all(np.diff(grid) > 0):
        raise DataError("z_grid must be strictly increasing")
    return grid


def box_grid(
    latent_dim: int, grid_size: int | None = None, bound: float = 7.0
) -> tuple[np.ndarray, np.ndarray]:
    """A product trapezoid grid on ``[-bound, bound]^K`` (``K <= 2``) weighted by the standard-normal prior.

    Returns the nodes ``z_g``, shape ``(G, K)``, and ``log(w_g N(z_g; 0, I))``, shape ``(G,)``, so that
    ``log int h(z) N(z; 0, I) dz ~ logsumexp_g [log h(z_g) + log_w_g]``. Default ``grid_size`` (nodes per
    axis): 4001 for ``K = 1``, 301 for ``K = 2``; the prior mass outside the box is below ``1e-11`` per
    dimension at ``bound = 7``.
    """
    if latent_dim > 2:
        raise ConfigError(f"exact quadrature supports latent_dim <= 2, the model has {latent_dim}")
    m = grid_size or (4001 if latent_dim == 1 else 301)
    require(m >= 3, f"grid_size must be >= 3, got {m}")
    axis = np.linspace(-bound, bound, m)
    w1 = np.full(m, axis[1] - axis[0])  # the uniform grid's trapezoid weights, spacing exactly h
    w1[[0, -1]] *= 0.5
    nodes, w = product_rule(axis, w1, latent_dim)
    return nodes, np.log(w) + np.sum(-0.5 * nodes**2 - 0.5 * LOG_2PI, axis=1)


def gaussian_log_marginal(
    x: np.ndarray, means: np.ndarray, sigma: float, log_w: np.ndarray, *, chunk: int | None = None
) -> np.ndarray:
    """``log sum_g exp(log N(x_i; m_g, sigma^2 I) + log_w_g)`` per point, in float64.

    With ``log_w`` from :func:`box_grid` this is
    ``log p(x_i) = log int N(x_i; f(z), sigma^2 I) N(z; 0, I) dz`` for a decoder with
    ``means[g] = f(z_g)``. The squared distances are expanded, ``||x - m||^2 = ||x||^2 - 2 x.m + ||m||^2``,
    so a chunk of points costs one matrix product with the means
    (losing at most about ``1e-16 ||x||^2 / sigma^2`` nats) and one log-sum-exp, computed by one compiled
    float64 program (JAX with 64-bit types enabled for the call only); ``chunk`` points at a time (default:
    about 2**21 (point, node) pairs, 16 MB; the last chunk is padded so every call has one shape).
    """
    if chunk is None:
        chunk = max(1, (1 << 21) // len(means))
    require(chunk >= 1, f"point_chunk must be >= 1, got {chunk}")
    inv_var = 1.0 / sigma**2
    x_dim = means.shape[1]
    node = log_w - 0.5 * inv_var * np.sum(means**2, axis=1) - x_dim * (np.log(sigma) + 0.5 * LOG_2PI)
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    chunk = max(1, min(chunk, n))
    out = np.empty(n)
    with jax.enable_x64(True):
        means_t, node_j = jnp.asarray(means.T, jnp.float64), jnp.asarray(node, jnp.float64)
        for p in range(0, n, chunk):
            xc = x[p : p + chunk]
            rows = xc.shape[0]
            if rows < chunk:
                xc = np.concatenate([xc, np.repeat(xc[:1], chunk - rows, axis=0)])
            lp = _log_marginal_chunk(jnp.asarray(xc), means_t, node_j, inv_var)
            out[p : p + rows] = np.asarray(lp)[:rows]
    return out


@jax.jit
def _log_marginal_chunk(xc: jax.Array, means_t: jax.Array, node: jax.Array, inv_var: float) -> jax.Array:
    """:func:`gaussian_log_marginal` of one chunk of points (float64 under ``jax.enable_x64``)."""
    a = (xc * inv_var) @ means_t + node
    top = jnp.max(a, axis=1, keepdims=True)
    return jnp.log(jnp.sum(jnp.exp(a - top), axis=1)) + top[:, 0] - 0.5 * inv_var * jnp.sum(xc**2, axis=1)


def posterior_moments_1d(
    posterior: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], x: np.ndarray,
    z_grid: np.ndarray, chunk: int = 500,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and log-std of a 1-D posterior per point, by the trapezoid rule.

    ``posterior(x_chunk, z_grid) -> (z_grid, density)`` gives the normalised density on the grid (e.g.
    :meth:`vaefail.benchmarks.Benchmark.posterior`). ``mean = int z p(z|x) dz``,
    ``log std = 0.5 log max(int (z - mean)^2 p(z|x) dz, 1e-12)``.
    """
    mean, log_std = np.empty(len(x)), np.empty(len(x))
    for start in range(0, len(x), chunk):
        _, density = posterior(x[start : start + chunk], z_grid)
        m = np.trapezoid(density * z_grid, z_grid, axis=1)
        var = np.trapezoid(density * (z_grid - m[:, None]) ** 2, z_grid, axis=1)
        mean[start : start + chunk] = m
        log_std[start : start + chunk] = 0.5 * np.log(np.maximum(var, 1e-12))
    return mean, log_std


def normalised_density_1d(log_joint: np.ndarray, z_grid: np.ndarray) -> np.ndarray:
    """``exp(log_joint)`` normalised so that its trapezoid integral over ``z_grid`` is 1 (a posterior on a
    grid from an unnormalised log joint ``log p(x, z_g)``)."""
    density = np.exp(log_joint - logsumexp(log_joint))
    return density / np.trapezoid(density, z_grid)
