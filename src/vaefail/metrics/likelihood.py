"""The model's marginal likelihood ``log p_theta(x)``: importance sampling and exact quadrature."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from vaefail._jax import put_arrays
from vaefail.errors import ConfigError, require
from vaefail.metrics._stats import check_x
from vaefail.metrics.pareto import TopTracker
from vaefail.models import VAE
from vaefail.objectives import sample_terms
from vaefail.quadrature import box_grid, gaussian_log_marginal


@dataclass(frozen=True)
class LogLikelihood:
    """Per-point log-likelihood estimates and their summary.

    Attributes
    ----------
    per_point
        ``log p_theta(x_i)`` estimates, shape ``(n,)``, float64.
    ess
        Effective sample size of each point's importance weights, ``(sum w)^2 / sum w^2``, shape
        ``(n,)`` (``nan`` for quadrature).
    num_samples
        Importance samples ``S`` per point (``None`` for quadrature).
    khat
        Pareto k-hat of each point's importance weights (see :mod:`vaefail.metrics.pareto`), shape
        ``(n,)``, when requested with ``pareto_k=True``; else ``None``.
    grid, grid_size, grid_change
        Quadrature only: a description of the grid, its nodes per axis and, for a refined ``K = 2`` grid,
        the largest per-point change of ``log p_theta`` against the next finer one.
    """

    per_point: np.ndarray
    ess: np.ndarray
    num_samples: int | None = None
    khat: np.ndarray | None = None
    grid: str | None = None
    grid_size: int | None = None
    grid_change: float | None = None

    @property
    def mean(self) -> float:
        """``(1/n) sum_i log p_theta(x_i)``."""
        return float(np.mean(self.per_point))

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over the data points, ``std_i / sqrt(n)``.

        This is the spread of ``log p_theta(x)`` over the data (what a comparison of two *models* on
        different data needs). For the Monte-Carlo error of the estimate on these fixed points, see
        :attr:`mc_stderr`.
        """
        return float(np.std(self.per_point, ddof=1) / np.sqrt(len(self.per_point)))

    @property
    def mc_stderr(self) -> float:
        """Monte-Carlo standard error of :attr:`mean` given the points (importance sampling only).

        By the delta method, ``Var[log p^_i] ~= Var[p^_i] / p_i^2 = (1/S) (E[w^2]/E[w]^2 - 1)``, estimated
        from the sampled weights as ``1/ESS_i - 1/S``; the points are independent, so the standard error
        of the mean is ``sqrt(sum_i (1/ESS_i - 1/S)) / n``. It is itself estimated from the weights, so it
        is too small when the weights are heavy-tailed (check ``khat``). ``nan`` for quadrature. The
        estimate is also biased low by about ``-(1/2) Var[p^_i] / p_i^2`` per point (Jensen).
        """
        if self.num_samples is None:
            return float("nan")
        var = np.maximum(1.0 / self.ess - 1.0 / self.num_samples, 0.0)
        return float(np.sqrt(np.sum(var)) / len(self.per_point))


def log_likelihood(
    model: VAE,
    x: np.ndarray,
    key: jax.Array,
    num_samples: int = 1000,
    *,
    point_chunk: int = 50,
    sample_chunk: int = 1000,
    pareto_k: bool = False,
) -> LogLikelihood:
    """Importance-sampled ``log p_theta(x)`` with the encoder ``q(z|x)`` as proposal.

    ``log p_theta(x) ~= log (1/S) sum_{s=1}^S p_theta(x|z_s) p(z_s) / q(z_s|x)``, ``z_s ~ q(z|x)``. This is
    ``IWAE_S(x)``: a consistent estimator whose downward bias shrinks as ``S`` grows. Log-weights are
    computed in float32 by the model and combined with log-sum-exp in float64 (and the effective sample
    size ``(sum w)^2 / sum w^2`` likewise).

    When the encoder misses a mode of ``p_theta(z|x)`` the bias can stay large for any practical ``S``
    and far exceed :attr:`LogLikelihood.mc_stderr` (measured: a figure8 ``K = 1`` VAE after 3,000 steps
    was 0.035 nats/point below the exact value at ``S = 1,000`` and still at ``S = 100,000``, with k-hat
    > 0.7 for 30-50% of the points). Use ``pareto_k=True`` to detect it, and
    :func:`exact_log_likelihood` where ``K <= 2``.

    Memory is bounded by ``point_chunk * sample_chunk`` log-weights plus the model's activations for
    that many (point, sample) pairs (about ``point_chunk * sample_chunk * width * 4`` bytes per hidden
    layer: 10 MB at the defaults with width 50), whatever ``len(x)`` and ``num_samples`` are. Small
    chunks are also faster: activations that stay in cache (measured when the default was chosen, figure8
    K = 1, 2 cores, S = 5,000: ~1,100 points/s at ``point_chunk`` 50 or 100 against ~600-800 at 250 and
    ~650 at 20; the estimates do not depend on ``point_chunk``; later changes made the default faster,
    1,400-2,400 points/s, and ``python benchmarks/run.py`` measures today's rate). Measured with the
    earlier default 250 for 5,000 points x 10,000 samples (figure8, 2x50 MLP, with ``pareto_k``, 2 cores):
    resident memory rose by about 110 MB during the call (peak 540 MB for the whole process). Every chunk
    has the same shape (the last point chunk is padded), so the function compiles at most twice (once more
    for a shorter last sample chunk).

    Parameters
    ----------
    model
        A single (unstacked) VAE.
    x
        Data, shape ``(n, D)``; finite.
    key
        PRNG key; point ``i``, chunk ``c`` draws from ``fold_in(fold_in(key, c), i)``.
    num_samples
        Importance samples ``S`` per point.
    point_chunk, sample_chunk
        Chunk sizes (trade memory for speed).
    pareto_k
        Also compute each point's Pareto k-hat from the ``M + 1`` largest weights (``M ~ 3 sqrt(S)``, kept
        across chunks, so memory stays ``O(n sqrt(S))``); needs ``S >= 21``.
    """
    require(num_samples >= 1, f"num_samples must be >= 1, got {num_samples}")
    require(point_chunk >= 1 and sample_chunk >= 1, "point_chunk and sample_chunk must be >= 1")
    xs = check_x(x, model.x_dim).astype(np.float32)
    n = xs.shape[0]
    tracker = TopTracker(n, num_samples) if pareto_k else None
    log_sum = np.full(n, -np.inf)
    log_sum_sq = np.full(n, -np.inf)
    for sl, lw in _log_weight_chunks(model, xs, key, num_samples, point_chunk, sample_chunk):
        lse, lse_sq = _logsumexp_and_of_squares(lw)
        log_sum[sl] = np.logaddexp(log_sum[sl], lse)
        log_sum_sq[sl] = np.logaddexp(log_sum_sq[sl], lse_sq)
        if tracker is not None:
            tracker.update(sl, lw)
    return LogLikelihood(
        per_point=log_sum - np.log(num_samples),
        ess=np.exp(2 * log_sum - log_sum_sq),
        num_samples=num_samples,
        khat=None if tracker is None else tracker.khat(),
    )


def _logsumexp_and_of_squares(lw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise ``log sum_s w_s`` and ``log sum_s w_s^2`` from float64 log-weights ``lw`` (rows, S).

    One shared shift by the row maximum ``m``: ``log sum w = m + log sum e_s`` and
    ``log sum w^2 = 2 m + log sum e_s^2`` with ``e_s = exp(lw_s - m)`` in (0, 1], so one ``exp`` serves
    both (10x faster than two ``scipy.special.logsumexp`` calls, equal to 1e-14).
    """
    m = np.max(lw, axis=1)
    m = np.where(np.isfinite(m), m, 0.0)  # an all -inf row stays -inf below, not nan
    e = np.exp(lw - m[:, None])
    with np.errstate(divide="ignore"):
        return m + np.log(np.sum(e, axis=1)), 2 * m + np.log(np.einsum("ij,ij->i", e, e))


def _log_weight_chunks(
    model: VAE, xs: np.ndarray, key: jax.Array, num_samples: int, point_chunk: int, sample_chunk: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, log_w)`` with ``log_w`` float64 of shape ``(rows, s)`` over all chunks.

    Chunks run on the process's first CPU device, which has XLA's whole thread pool (one thread per core)
    for its operations. Splitting each chunk's points across one device per core (:mod:`vaefail._jax`)
    was slower: measured on 2 cores, figure8, S = 5,000, 2,000 points, five interleaved rounds, 2,970
    points/s split against 3,838 on one device (medians; the estimates differ by at most 2e-6 nats, float32
    rounding in a differently partitioned program). The next chunk is dispatched before the current one is
    handed to the caller, so that the host's float64 reductions could overlap it; on XLA:CPU (jax 0.10) the
    call returns only when the chunk is done, so they do not (the host's share is 10-20%). Every input of a
    call (points, key, offset) is made on the host beforehand: an eager JAX op (slicing, ``fold_in``) would
    queue behind the running chunk, and the dispatch of the next one would wait for it (measured: 1,400
    -> 2,100 points/s on 2 cores, figure8, S = 5,000).
    """
    n = xs.shape[0]
    sample_chunk = min(sample_chunk, num_samples)
    point_chunk = min(point_chunk, n)
    model = put_arrays(model, jax.devices()[0])  # a restart taken from a split fit may live elsewhere
    starts = range(0, num_samples, sample_chunk)
    chunk_keys = [jax.random.fold_in(key, c) for c in range(len(starts))]  # all before the first call
    padded = np.concatenate([xs, np.broadcast_to(xs[-1:], (-n % point_chunk, xs.shape[1]))])  # one shape

    def to_host(rows: slice, lw: jax.Array) -> tuple[slice, np.ndarray]:
        return rows, np.asarray(lw, dtype=np.float64)[: rows.stop - rows.start]

    pending = None
    for c, start in enumerate(starts):
        s = min(sample_chunk, num_samples - start)
        for p in range(0, n, point_chunk):
            lw = _log_weights(model, padded[p : p + point_chunk], chunk_keys[c], s, np.int32(p))
            if pending is not None:
                yield to_host(*pending)
            pending = (slice(p, min(p + point_chunk, n)), lw)
    if pending is not None:
        yield to_host(*pending)


@eqx.filter_jit
def _log_weights(model: VAE, x: jax.Array, key: jax.Array, num_samples: int, offset: jax.Array) -> jax.Array:
    """``log w_{is}`` for a chunk of points, shape ``(n_chunk, S)``; point ``i`` draws from
    ``fold_in(key, offset + i)``. ``offset`` is the index of the first point (a traced array, so chunks at
    different offsets share one compilation)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(x.shape[0]))
    return sample_terms(model, x, keys, num_samples).log_w


@eqx.filter_jit
def decode(model: VAE, z: jax.Array) -> jax.Array:
    """``f_theta(z)`` for a batch of latents ``z`` of shape ``(m, K)``; shape ``(m, D)``, compiled once per
    model structure and batch shape."""
    return jax.vmap(model.decoder)(z)


#: Per-axis sizes tried, coarsest first, when the ``K = 2`` quadrature grid is refined.
GRID_SIZES_2D = (301, 601, 1201)

#: Largest per-point change of ``log p_theta(x)`` (nats) accepted between a ``K = 2`` grid and the next finer.
GRID_TOL = 1e-3


def decode_np(model: VAE, z: np.ndarray, step: int = 1 << 16) -> np.ndarray:
    """``f_theta(z)`` for ``z (m, K)`` as float64, computed in float32 chunks of ``step`` rows (padded to one
    shape, so one compilation; memory bounded whatever ``m``)."""
    out = np.empty((z.shape[0], model.x_dim))
    size = min(step, z.shape[0])
    for p in range(0, z.shape[0], size):
        zc = z[p : p + size]
        rows = zc.shape[0]
        if rows < size:
            zc = np.concatenate([zc, np.zeros((size - rows, z.shape[1]))])
        out[p : p + rows] = np.asarray(decode(model, jnp.asarray(zc, jnp.float32)), np.float64)[:rows]
    return out


def exact_log_likelihood(
    model: VAE, x: np.ndarray, *, grid_size: int | None = None, bound: float = 7.0,
    point_chunk: int | None = None, tol: float = GRID_TOL,
) -> LogLikelihood:
    """``log p_theta(x) = log int p_theta(x|z) N(z; 0, I) dz`` by quadrature, for ``K <= 2``.

    A uniform grid on ``[-bound, bound]^K`` with trapezoid weights; the integrand is computed by the model
    in float32 and summed with log-sum-exp in float64. Default grid: 4001 points for ``K = 1``; for
    ``K = 2`` each point's grid is refined through :data:`GRID_SIZES_2D` (301^2, 601^2, 1201^2) until its
    ``log p_theta(x)`` changes by at most ``tol`` nats from one size to the next, and its value on the
    coarser of the two is returned (on the finest, when it does not settle: then ``grid`` says the change
    still seen); only unsettled points are computed on the finer grids (:func:`refine_per_point`). A
    fixed 301^2 grid erred by up to 0.04 nats per point for a learned ``K = 2`` clusters model; a decoder
    whose posterior is narrower than the spacing (0.047 at 301, 0.0117 at 1201) needs the refinement.
    Prior mass outside the box is below ``1e-11`` per dimension at ``bound=7``. Pass ``grid_size`` to fix
    the grid.

    The squared distances are expanded, ``||x - m_j||^2 = ||x||^2 - 2 x.m_j + ||m_j||^2``, so each chunk of
    points costs one float64 matrix product with the grid's decoder means and one log-sum-exp (the
    expansion loses at most about ``1e-16 * ||x||^2 / sigma^2`` nats). Points are processed
    ``point_chunk`` at a time (default: as many as keep one chunk's ``point_chunk * grid_size^K``
    (point, node) pairs at about 2**22, i.e. 32 MB of float64), so memory is bounded for ``K = 2``
    grids too.
    """
    xn = check_x(x, model.x_dim)
    k = model.latent_dim
    if k > 2:
        raise ConfigError(f"exact quadrature supports latent_dim <= 2, the model has {k}")
    if grid_size is not None or k == 1:
        m = grid_size or 4001
        out = _quadrature(model, xn, m, bound, point_chunk)
        return LogLikelihood(per_point=out, ess=np.full(len(out), np.nan), num_samples=None,
                             grid=f"{m}^{k} nodes on [-{bound:g}, {bound:g}]^{k}", grid_size=m)
    require(tol > 0, f"tol must be > 0, got {tol}")
    sizes, values, changes = refine_per_point(
        lambda m, idx: _quadrature(model, xn[idx], m, bound, point_chunk), len(xn), tol)
    size, change = int(sizes.max()), float(changes.max())
    used = ", ".join(f"{int(np.sum(sizes == m))} at {m}^2" for m in GRID_SIZES_2D if np.any(sizes == m))
    return LogLikelihood(
        per_point=values, ess=np.full(len(values), np.nan), num_samples=None,
        grid=f"per point, the coarsest of {'/'.join(map(str, GRID_SIZES_2D))}^2 nodes on [-{bound:g}, "
        f"{bound:g}]^2 that agrees with the next within {tol:g} nats ({used}); largest per-point change "
        f"against the next grid {change:.2g} nats"
        + ("" if change < tol else f" (above the tolerance {tol:g})"),
        grid_size=size, grid_change=change,
    )


def refine_per_point(
    log_p_at: Callable[[int, np.ndarray], np.ndarray], n: int, tol: float = GRID_TOL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``K = 2`` grid refinement point by point: ``log_p_at(size, idx)`` gives ``log p_theta`` of the
    points ``idx`` on a ``size^2`` grid; each size of :data:`GRID_SIZES_2D` is computed only for the points
    that have not yet settled (two consecutive sizes within ``tol`` nats).

    Returns per point ``(size, log_p, change)``: the coarser size of its first agreeing pair (else the
    finest), the value there, and its change against the next finer size: every point's value is within
    ``tol`` of its value on the next finer grid, as when all points share the largest ``size``.
    """
    active = np.arange(n)
    prev = log_p_at(GRID_SIZES_2D[0], active)
    sizes = np.full(n, GRID_SIZES_2D[-1])
    values, changes = prev.copy(), np.full(n, math.inf)
    for coarse, fine in itertools.pairwise(GRID_SIZES_2D):
        nxt = log_p_at(fine, active)
        diff = np.abs(nxt - prev)
        done = diff < tol
        sizes[active[done]], values[active[done]], changes[active[done]] = coarse, prev[done], diff[done]
        values[active[~done]], changes[active[~done]] = nxt[~done], diff[~done]
        active, prev = active[~done], nxt[~done]
        if active.size == 0:
            break
    return sizes, values, changes


def refined_grid_size(
    model: VAE, x: np.ndarray, *, tol: float = GRID_TOL, bound: float = 7.0
) -> tuple[int, float]:
    """The per-axis ``K = 2`` grid size :func:`exact_log_likelihood` settles on for ``x``, and the largest
    per-point change of ``log p_theta`` between it and the next finer grid."""
    require(model.latent_dim == 2, "refined_grid_size is for K = 2 models")
    ll = exact_log_likelihood(model, x, tol=tol, bound=bound)
    return int(ll.grid_size), float(ll.grid_change)


def _quadrature(model: VAE, xn: np.ndarray, m: int, bound: float, point_chunk: int | None) -> np.ndarray:
    """Trapezoid quadrature of ``log p_theta(x_i)`` on ``m^K`` nodes (see :func:`exact_log_likelihood`)."""
    grid, log_w = box_grid(model.latent_dim, m, bound)
    return gaussian_log_marginal(xn, decode_np(model, grid), float(model.sigma), log_w, chunk=point_chunk)
