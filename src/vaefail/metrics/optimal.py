"""The optimal-Gaussian bound ``ELBO*`` of any decoder, and the three-way split of the negative ELBO.

For a decoder ``p_theta(x|z)`` (a fitted model or a benchmark's truth) the best bound that *any* mean-field
Gaussian ``q = N(m, diag s^2)`` reaches at a point ``x`` is

    ELBO*(x) = max_q ELBO_q(x) = log p_theta(x) - min_q KL(q || p_theta(z|x)),

what an infinitely flexible amortised Gaussian encoder would reach (Cremer, Li & Duvenaud 2018,
"Inference Suboptimality in Variational Autoencoders"). Every amortised ELBO then splits exactly as

    -ELBO(x) = -log p_theta(x)                                   (the model's fit of x)
               + [log p_theta(x) - ELBO*(x)]                     (approximation gap: the Gaussian family)
               + [ELBO*(x) - ELBO(x)]                            (amortisation gap: the encoder network)

both gaps >= 0. Comparing two decoders at ``ELBO*`` (not at their trained encoders' ELBO) says which one
the ELBO's global optimum prefers.

How ``ELBO*`` is computed (:func:`optimal_bound`):

- ``K = 1`` (a ``K = 1`` model or a benchmark's truth): :func:`vaefail.metrics.posterior.gaussian_gap`
  (grid starts, Newton in ``(m, log s)``, exact float64 KL of the Gaussian found).
- ``K = 2``: ``log p_theta(x)`` and the posterior on a 2-D grid (float64 sums of the float32 decoder);
  starting Gaussians at the posterior's moments and at its best two modes, each with the diagonal of the
  precision of a full-covariance (Laplace) fit at the mode (the reverse-KL optimal diagonal of that full
  Gaussian); from each start Adam in ``(m, log s)`` on the bound computed by a Gauss-Hermite product rule;
  every start and every optimum is scored by the exact KL (trapezoid rule in ``q``'s own coordinates,
  float64) and the smallest kept. An upper bound on the true minimum KL, tight when the optimiser found
  the global minimiser.
- ``K >= 3`` (or on request for any ``K``): per-point stochastic VI of ``(m, log s)``, started at the
  encoder's output and at approximate posterior draws (prior draws resampled by their
  likelihood), with reparameterised gradients and Adam; the best
  start per point is chosen on one set of samples and its bound is estimated on fresh samples, with the
  Monte-Carlo standard error; ``log p_theta(x)`` is importance-sampled
  (:func:`vaefail.metrics.likelihood.log_likelihood`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.special import logsumexp

from vaefail.errors import ConfigError, require, unknown_name
from vaefail.metrics._stats import Estimate, check_per_point, check_x, elbo_per_point, finite
from vaefail.metrics.information import encode
from vaefail.metrics.likelihood import (
    decode_np,
    exact_log_likelihood,
    log_likelihood,
    refine_per_point,
)
from vaefail.metrics.posterior import best_of_starts, gaussian_gap, mode_starts, posterior_kl, second_mode
from vaefail.models import LOG_2PI, VAE
from vaefail.quadrature import box_grid, normal_trapezoid, product_rule

METHODS = ("auto", "grid", "svi")

#: Stochastic VI runs every start for ``steps // SCREEN_FRACTION`` steps and continues only the start with
#: the highest estimated bound for the full ``steps`` (the later of the two kept only if it is higher).
SCREEN_FRACTION = 5


@dataclass(frozen=True)
class OptimalBound:
    """Per point: ``log p_theta(x)``, the best Gaussian's bound ``ELBO*(x)`` and the Gaussian itself.

    Attributes
    ----------
    log_p
        ``log p_theta(x_i)``, shape ``(n,)`` (quadrature for ``K <= 2``, importance sampling otherwise).
    elbo_star
        ``ELBO*(x_i) = max_q ELBO_q(x_i)`` as found, shape ``(n,)``: a lower bound on the true maximum.
    mc_var
        Monte-Carlo variance of each ``elbo_star`` entry, shape ``(n,)`` (0 for quadrature).
    mean, std
        The best Gaussian's mean and standard deviation per point, shape ``(n, K)`` each.
    method
        ``"grid"`` or ``"svi"``, with its settings.
    """

    log_p: np.ndarray
    elbo_star: np.ndarray
    mc_var: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    method: str

    @classmethod
    def from_gap(cls, gap: Any, method: str, n: int | None = None) -> OptimalBound:
        """From a :class:`vaefail.metrics.posterior.GaussianGap` (``K = 1``), optionally its first ``n``
        points."""
        sl = slice(None) if n is None else slice(0, n)
        lp, g = gap.log_p[sl], gap.per_point[sl]
        return cls(log_p=lp, elbo_star=lp - g, mc_var=np.zeros(lp.size), mean=gap.mean[sl, None],
                   std=gap.std[sl, None], method=method)

    @property
    def gap(self) -> np.ndarray:
        """Approximation gap per point, ``log p_theta(x_i) - ELBO*(x_i) = min_q KL(q || p_theta(z|x_i))``."""
        return self.log_p - self.elbo_star

    @property
    def mc_stderr(self) -> float:
        """Monte-Carlo standard error of the mean ``ELBO*`` over the points, ``sqrt(sum_i var_i) / n``."""
        return float(np.sqrt(np.sum(self.mc_var)) / self.mc_var.size)


def optimal_bound(
    source: Any,
    x: np.ndarray,
    key: jax.Array | None = None,
    *,
    method: str = "auto",
    log_p: np.ndarray | None = None,
    grid_size: int | None = None,
    steps: int = 200,
    nodes: int = 16,
    eval_nodes: int = 61,
    svi_steps: int = 1000,
    svi_samples: int = 64,
    eval_samples: int = 4096,
    prior_draws: int = 4096,
    prior_starts: int = 5,
    ll_samples: int = 5000,
) -> OptimalBound:
    """``ELBO*(x) = log p_theta(x) - min_q KL(q || p_theta(z|x))`` over mean-field Gaussians, per point.

    Parameters
    ----------
    source
        A single VAE (its decoder and ``sigma_eps``; the encoder only seeds the stochastic method) or a
        benchmark with a 1-D latent (the truth).
    x
        Data, shape ``(n, D)``.
    key
        PRNG key; needed by the stochastic method.
    method
        ``"auto"`` (quadrature for ``K <= 2``, stochastic VI above), ``"grid"`` or ``"svi"``.
    log_p
        Precomputed exact ``log p_theta(x_i)`` (``K <= 2``) to reuse.
    grid_size
        Nodes per axis of the ``K = 2`` posterior grid that gives ``log p_theta(x)`` (when not passed) and
        the starts (default: per point, the size the refinement of
        :func:`~vaefail.metrics.likelihood.exact_log_likelihood` settles on for it).
    steps, nodes, eval_nodes
        ``K = 2``: Adam steps, Gauss-Hermite nodes per axis of the optimised bound, trapezoid nodes per
        axis of the exact KL.
    svi_steps, svi_samples, eval_samples, prior_draws, prior_starts, ll_samples
        Stochastic VI: Adam steps (every start is screened for ``svi_steps // SCREEN_FRACTION`` of them;
        the best per point runs all), samples per gradient, samples of the final estimate; ``prior_starts``
        extra starts resampled from ``prior_draws`` prior draws by their likelihood (approximate posterior
        draws, width ``min(encoder's, 0.1)``); importance samples of ``log p_theta(x)`` (``K >= 3``).
    """
    if method not in METHODS:
        raise unknown_name("method", method, METHODS)
    if not isinstance(source, VAE):
        gap = gaussian_gap(source, x)  # raises a ConfigError for anything but a 1-D-latent benchmark
        return OptimalBound.from_gap(gap, "grid (K = 1, Newton from grid starts)")
    k = int(source.latent_dim)
    if method == "auto":
        method = "grid" if k <= 2 else "svi"
    if method == "grid":
        if k == 1:
            gap = gaussian_gap(source, x, newton_nodes=101, eval_nodes=801)
            return OptimalBound.from_gap(gap, "grid (K = 1, Newton from grid starts)")
        if k != 2:
            raise ConfigError(f"the grid method needs K <= 2 (K = {k}); use method='svi'")
        return _grid2(source, x, log_p=log_p, grid_size=grid_size, steps=steps, nodes=nodes,
                      eval_nodes=eval_nodes)
    if key is None:
        raise ConfigError("the stochastic (svi) method needs a PRNG key")
    return _svi(source, x, key, steps=svi_steps, samples=svi_samples, eval_samples=eval_samples,
                prior_draws=prior_draws, prior_starts=prior_starts, ll_samples=ll_samples, log_p=log_p)


# --------------------------------------------------------------------------------------------------
# K = 2: posterior grid, starts, deterministic optimisation, exact KL
# --------------------------------------------------------------------------------------------------

def _grid2(
    model: VAE, x: np.ndarray, *, log_p: np.ndarray | None, grid_size: int | None, steps: int, nodes: int,
    eval_nodes: int, bound: float = 7.0,
) -> OptimalBound:
    xs = check_x(x, model.x_dim)
    n = xs.shape[0]
    require(nodes >= 2 and eval_nodes >= 3 and steps >= 0, "bad K = 2 grid settings")
    if grid_size is None:
        # each point's posterior grid: the size exact_log_likelihood's refinement settles on for it
        sizes, _, _ = refine_per_point(
            lambda m, idx: exact_log_likelihood(model, xs[idx], grid_size=m, bound=bound).per_point, n)
    else:
        require(grid_size >= 11, f"grid_size must be >= 11, got {grid_size}")
        sizes = np.full(n, grid_size)
    lp_grid, starts = np.empty(n), np.empty((n, 3, 4))
    for size in np.unique(sizes):
        idx = np.flatnonzero(sizes == size)
        lp_grid[idx], starts[idx] = _grid2_starts(model, xs[idx], int(size), bound)
    lp = lp_grid if log_p is None else check_per_point(log_p, n, "log_p")
    kl, chosen = best_of_starts(
        xs, starts, lp, lambda rx, init: _adam_gh(model, rx, init, steps, nodes),
        lambda rx, cand, lp_rows: _exact_kl_2d(model, rx, cand, lp_rows, eval_nodes),
    )
    used = ", ".join(f"{int(np.sum(sizes == m))} at {m}^2" for m in np.unique(sizes))
    return OptimalBound(
        log_p=lp, elbo_star=lp - kl, mc_var=np.zeros(n), mean=chosen[:, :2],
        std=np.exp(chosen[:, 2:]),
        method=f"grid (K = 2, posterior grids {used}, Adam x {steps} on {nodes}^2 Gauss-Hermite, "
        f"exact KL on {eval_nodes}^2)",
    )


def _grid2_starts(model: VAE, xs: np.ndarray, size: int, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """``log p_theta(x)`` on a ``size^2`` trapezoid grid and three starting ``(m1, m2, log s1, log s2)``.

    Starts: the posterior's mean with its marginal standard deviations; the highest grid mode and the best
    other local mode (8-neighbour maximum farther than four widths from the first, within 30 nats of it),
    each with ``s_i = (-d^2 log p / dz_i^2)^(-1/2)`` by finite differences (the diagonal of the precision
    of the full-covariance Laplace fit, which is the reverse-KL optimal diagonal Gaussian of that fit).
    """
    axis = np.linspace(-bound, bound, size)
    h = axis[1] - axis[0]
    grid, log_w = box_grid(2, size, bound)  # nodes (i, j) at row i * size + j; log(trapezoid w * prior)
    log_prior = -0.5 * np.sum(grid**2, axis=1) - LOG_2PI
    log_trap = log_w - log_prior
    means = decode_np(model, grid)
    sigma = float(model.sigma)
    inv_var = 1.0 / sigma**2
    node = -0.5 * inv_var * np.sum(means**2, axis=1) - model.x_dim * (math.log(sigma) + 0.5 * LOG_2PI)
    node_prior = node + log_prior  # log p(x, z_g) up to the x-only term
    n = xs.shape[0]
    log_p = np.empty(n)
    starts = np.empty((n, 3, 4))
    chunk = max(1, (1 << 21) // grid.shape[0])
    for p in range(0, n, chunk):
        xc = xs[p : p + chunk]
        xterm = -0.5 * inv_var * np.sum(xc**2, axis=1)[:, None]
        lj = (xc * inv_var) @ means.T + node_prior + xterm  # log p(x, z_g), (c, G)
        lp = logsumexp(lj + log_trap, axis=1)
        log_p[p : p + chunk] = lp
        post = np.exp(lj + log_trap - lp[:, None])
        post /= post.sum(axis=1, keepdims=True)
        mean = post @ grid
        var = np.maximum(post @ grid**2 - mean**2, h**2)
        lj3 = lj.reshape(-1, size, size)
        g1 = np.argmax(lj, axis=1)
        s1 = _curvature_2d(lj3, g1, size, h, np.sqrt(var))
        local = _local_max_2d(lj3)
        i1, j1 = np.divmod(g1, size)
        ii, jj = np.divmod(np.arange(size * size), size)
        dist = np.maximum(np.abs(axis[ii][None] - axis[i1][:, None]) / s1[:, :1],
                          np.abs(axis[jj][None] - axis[j1][:, None]) / s1[:, 1:])
        g2, has2 = second_mode(lj, g1, local & (dist > 4.0))
        s2 = _curvature_2d(lj3, g2, size, h, np.sqrt(var))
        starts[p : p + chunk] = mode_starts(mean, 0.5 * np.log(var), (grid[g1], np.log(s1)),
                                            (grid[g2], np.log(s2)), has2)
    return log_p, starts


def _local_max_2d(lj3: np.ndarray) -> np.ndarray:
    """Interior nodes at least as high as their 8 neighbours, flattened ``(c, size^2)`` booleans."""
    c, s, _ = lj3.shape
    out = np.zeros_like(lj3, dtype=bool)
    mid = lj3[:, 1:-1, 1:-1]
    ok = np.ones_like(mid, dtype=bool)
    for di, dj in itertools.product((-1, 0, 1), repeat=2):
        if di or dj:
            ok &= mid >= lj3[:, 1 + di : s - 1 + di, 1 + dj : s - 1 + dj]
    out[:, 1:-1, 1:-1] = ok
    return out.reshape(c, -1)


def _curvature_2d(lj3: np.ndarray, g: np.ndarray, size: int, h: float, std: np.ndarray) -> np.ndarray:
    """Per axis ``(-d^2 log p / dz_i^2)^(-1/2)`` at flat node ``g`` (central differences), clipped to
    ``[h/2, posterior std]``; the posterior std where the curvature is not negative."""
    rows = np.arange(lj3.shape[0])
    i, j = np.divmod(g, size)
    i, j = np.clip(i, 1, size - 2), np.clip(j, 1, size - 2)
    c0 = lj3[rows, i, j]
    d_i = (lj3[rows, i + 1, j] - 2 * c0 + lj3[rows, i - 1, j]) / h**2
    d_j = (lj3[rows, i, j + 1] - 2 * c0 + lj3[rows, i, j - 1]) / h**2
    second = np.stack([d_i, d_j], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        width = np.where(second < 0, 1.0 / np.sqrt(-second), std)
    return np.clip(width, 0.5 * h, np.maximum(std, 0.5 * h))


def _hermite(nodes: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite (probabilists') product rule for ``E_{u ~ N(0, I_k)}``: nodes ``(nodes^k, k)``,
    weights summing to 1."""
    u1, w1 = np.polynomial.hermite_e.hermegauss(nodes)
    return product_rule(u1, w1 / w1.sum(), k)


@eqx.filter_jit
def _adam_gh_chunk(model: VAE, x: jax.Array, init: jax.Array, u: jax.Array, w: jax.Array,
                   steps: int) -> jax.Array:
    """Maximise ``J = E_{u}[log p(x, m + s u)] + sum log s`` per row by Adam (learning rate 0.05 decaying
    to 0.005), the expectation by the product rule ``(u, w)``; returns the best ``(m, log s)`` visited."""
    k = init.shape[1] // 2

    def objective(params: jax.Array) -> jax.Array:  # per row, (rows,)
        m, log_s = params[:, :k], params[:, k:]
        z = m[:, None, :] + jnp.exp(log_s)[:, None, :] * u[None]  # (rows, Q, K)
        ll = model.log_likelihood_columns(x.T[:, :, None], jnp.moveaxis(z, 2, 0))  # (rows, Q)
        lj = ll - 0.5 * jnp.sum(z**2, axis=-1)
        return lj @ w + jnp.sum(log_s, axis=1)

    sched = optax.exponential_decay(0.05, steps, 0.1)
    opt = optax.adam(sched)
    value_and_grad = jax.value_and_grad(lambda p: -jnp.sum(objective(p)))

    def step(state, _):
        params, opt_state, best, best_j = state
        j = objective(params)
        better = jnp.isfinite(j) & (j > best_j)
        best = jnp.where(better[:, None], params, best)
        best_j = jnp.where(better, j, best_j)
        _, grad = value_and_grad(params)
        grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
        upd, opt_state = opt.update(grad, opt_state)
        return (params + upd, opt_state, best, best_j), None

    state = (init, opt.init(init), init, jnp.full(init.shape[0], -jnp.inf))
    (params, _, best, best_j), _ = jax.lax.scan(step, state, None, length=steps)
    j = objective(params)
    return jnp.where((jnp.isfinite(j) & (j > best_j))[:, None], params, best)


def _per_row_chunks(fn: Callable[[jax.Array, jax.Array, int], jax.Array], xs: np.ndarray,
                    params: np.ndarray, chunk: int) -> np.ndarray:
    """``fn(x_c, params_c, p)`` on chunks of ``chunk`` rows (``p``: the chunk's first row), in float32, the
    last chunk padded with copies of its first row so every call has one shape (one compilation); the
    per-row results (first axis) gathered in float64."""
    size = min(chunk, xs.shape[0])
    parts = []
    for p in range(0, xs.shape[0], size):
        xc, pc = xs[p : p + size], params[p : p + size]
        rows = xc.shape[0]
        if rows < size:
            xc = np.concatenate([xc, np.repeat(xc[:1], size - rows, axis=0)])
            pc = np.concatenate([pc, np.repeat(pc[:1], size - rows, axis=0)])
        res = fn(jnp.asarray(xc, jnp.float32), jnp.asarray(pc, jnp.float32), p)
        parts.append(np.asarray(res, np.float64)[:rows])
    return np.concatenate(parts)


def _optimise_rows(fn: Callable[[jax.Array, jax.Array, int], jax.Array], xs: np.ndarray, init: np.ndarray,
                   chunk: int) -> np.ndarray:
    """Per-point optimisation ``fn(x_c, init_c, p) -> optimum_c`` of ``(m, log s)`` rows by
    :func:`_per_row_chunks`; a row whose optimum is not finite keeps its start."""
    out = _per_row_chunks(fn, xs, init, chunk)
    bad = ~np.all(np.isfinite(out), axis=1)
    out[bad] = init[bad]
    return out


def _adam_gh(model: VAE, xs: np.ndarray, init: np.ndarray, steps: int, nodes: int,
             chunk: int = 32) -> np.ndarray:
    # 32 rows x 256 nodes x width 50 activations fit a core's L2 cache (512 rows: 10-25% slower)
    if steps == 0:
        return init.copy()
    u, w = _hermite(nodes, init.shape[1] // 2)
    uj, wj = jnp.asarray(u, jnp.float32), jnp.asarray(w, jnp.float32)
    return _optimise_rows(lambda xc, ic, _p: _adam_gh_chunk(model, xc, ic, uj, wj, steps), xs, init, chunk)


def _exact_kl_2d(model: VAE, xs: np.ndarray, params: np.ndarray, log_p: np.ndarray, nodes: int) -> np.ndarray:
    """``KL(N(m, diag s^2) || p_theta(z|x))`` per row, trapezoid rule in ``N``'s coordinates, float64:
    ``KL = -H[N] - E_N[log p_theta(x, z)] + log p_theta(x)``."""
    k = params.shape[1] // 2
    u, w = product_rule(*normal_trapezoid(nodes, 7.0), k)  # E over N(0, I_k) on [-7, 7]^k
    sigma = float(model.sigma)
    const = -model.x_dim * (math.log(sigma) + 0.5 * LOG_2PI) - 0.5 * k * LOG_2PI
    out = np.empty(xs.shape[0])
    chunk = max(1, (1 << 18) // u.shape[0])
    for p in range(0, xs.shape[0], chunk):
        m, log_s = params[p : p + chunk, :k], params[p : p + chunk, k:]
        z = m[:, None, :] + np.exp(log_s)[:, None, :] * u[None]  # (c, Q, K)
        fz = decode_np(model, z.reshape(-1, k)).reshape(*z.shape[:2], model.x_dim)
        lj = -0.5 * np.sum((xs[p : p + chunk, None, :] - fz) ** 2, axis=-1) / sigma**2
        lj += -0.5 * np.sum(z**2, axis=-1) + const
        entropy = 0.5 * k * (LOG_2PI + 1.0) + np.sum(log_s, axis=1)
        out[p : p + chunk] = -entropy - lj @ w + log_p[p : p + chunk]
    return out


# --------------------------------------------------------------------------------------------------
# Any K: per-point stochastic VI
# --------------------------------------------------------------------------------------------------


def _bound_samples(model: VAE, x: jax.Array, params: jax.Array, eps: jax.Array) -> jax.Array:
    """Per row and sample ``log p_theta(x|z_s) - KL(N(m, s^2) || N(0, I))``, ``z_s = m + s eps_s``:
    shape ``(rows, S)``; its mean over ``s`` estimates the ELBO of ``N(m, s^2)`` (the KL analytic)."""
    k = params.shape[1] // 2
    m, log_s = params[:, :k], params[:, k:]
    z = m[:, None, :] + jnp.exp(log_s)[:, None, :] * eps  # (rows, S, K)
    ll = model.log_likelihood_columns(x.T[:, :, None], jnp.moveaxis(z, 2, 0))
    kl = 0.5 * jnp.sum(m**2 + jnp.exp(2 * log_s) - 1.0 - 2.0 * log_s, axis=1)
    return ll - kl[:, None]


@eqx.filter_jit
def _svi_chunk(model: VAE, x: jax.Array, init: jax.Array, key: jax.Array, steps: int,
               samples: int) -> jax.Array:
    """Adam (learning rate 0.03 decaying to 0.001) on the reparameterised ELBO of each row's Gaussian;
    returns the average of the iterates over the last quarter of the steps (Polyak averaging)."""
    sched = optax.exponential_decay(0.03, steps, 1.0 / 30.0)
    opt = optax.adam(sched)
    tail = max(1, steps // 4)

    def loss(params: jax.Array, eps: jax.Array) -> jax.Array:
        return -jnp.sum(jnp.mean(_bound_samples(model, x, params, eps), axis=1))

    def step(state, i):
        params, opt_state, avg = state
        eps = jax.random.normal(jax.random.fold_in(key, i), (x.shape[0], samples, init.shape[1] // 2))
        grad = jax.grad(loss)(params, eps)
        grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
        upd, opt_state = opt.update(grad, opt_state)
        params = params + upd
        avg = jnp.where(i >= steps - tail, avg + params / tail, avg)
        return (params, opt_state, avg), None

    state = (init, opt.init(init), jnp.zeros_like(init))
    (_, _, avg), _ = jax.lax.scan(step, state, jnp.arange(steps))
    return avg


@eqx.filter_jit
def _bound_moments(model: VAE, x: jax.Array, params: jax.Array, key: jax.Array, samples: int) -> jax.Array:
    """Sum and sum of squares over ``samples`` draws of :func:`_bound_samples`, shape ``(2, rows)``."""
    eps = jax.random.normal(key, (x.shape[0], samples, params.shape[1] // 2))
    b = _bound_samples(model, x, params, eps)
    return jnp.stack([jnp.sum(b, axis=1), jnp.sum(b**2, axis=1)])


def _estimate_bound(model: VAE, xs: np.ndarray, params: np.ndarray, key: jax.Array, samples: int,
                    chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo ELBO of each row's Gaussian with ``samples`` draws: mean and variance of the mean."""
    per = 512
    total = np.zeros((2, xs.shape[0]))
    for c, s0 in enumerate(range(0, samples, per)):
        s, k_c = min(per, samples - s0), jax.random.fold_in(key, c)
        total += _per_row_chunks(
            lambda xc, pc, p, s=s, k_c=k_c: _bound_moments(model, xc, pc, jax.random.fold_in(k_c, p), s).T,
            xs, params, chunk).T
    mean = total[0] / samples
    var = np.maximum(total[1] / samples - mean**2, 0.0) / samples
    return mean, var


def _prior_starts(model: VAE, xs: np.ndarray, key: jax.Array, draws: int, count: int) -> np.ndarray:
    """Per point ``count`` draws resampled (with replacement, weights ``p_theta(x|z)``) from ``draws``
    prior draws ``z ~ N(0, I)``: approximate posterior samples, so the starts land on the posterior's
    modes in proportion to their mass. Shape ``(count, n, K)``."""
    k = model.latent_dim
    k_z, k_pick = jax.random.split(key)
    z = np.asarray(jax.random.normal(k_z, (draws, k)), np.float64)
    fz = decode_np(model, z)
    sigma = float(model.sigma)
    out = np.empty((count, xs.shape[0], k))
    u = np.asarray(jax.random.uniform(k_pick, (xs.shape[0], count)), np.float64)
    chunk = max(1, (1 << 22) // draws)
    for p in range(0, xs.shape[0], chunk):
        xc = xs[p : p + chunk]
        d2 = np.sum(xc**2, axis=1)[:, None] - 2 * xc @ fz.T + np.sum(fz**2, axis=1)[None]
        lw = -0.5 * d2 / sigma**2
        cdf = np.cumsum(np.exp(lw - lw.max(axis=1, keepdims=True)), axis=1)
        cdf /= cdf[:, -1:]
        idx = np.array([np.searchsorted(row, ur) for row, ur in zip(cdf, u[p : p + chunk], strict=True)])
        out[:, p : p + chunk] = z[np.minimum(idx, draws - 1)].transpose(1, 0, 2)
    return out


def _svi(model: VAE, x: np.ndarray, key: jax.Array, *, steps: int, samples: int, eval_samples: int,
         prior_draws: int, prior_starts: int, ll_samples: int, log_p: np.ndarray | None,
         chunk: int = 256) -> OptimalBound:
    require(steps >= 1 and samples >= 1 and eval_samples >= 2 and prior_draws >= 1, "bad svi settings")
    xs = check_x(x, model.x_dim)
    n, k = xs.shape[0], model.latent_dim
    k_prior, k_fit, k_select, k_eval, k_ll = jax.random.split(key, 5)
    mu, log_std = encode(model, xs)
    mu, log_std = np.asarray(mu, np.float64), np.asarray(log_std, np.float64)
    narrow = np.minimum(log_std, math.log(0.1))
    drawn = _prior_starts(model, xs, k_prior, prior_draws, prior_starts)
    starts = [np.concatenate([mu, log_std], axis=1)] + [np.concatenate([z, narrow], axis=1) for z in drawn]

    def run(init: np.ndarray, n_steps: int, k_run: jax.Array) -> np.ndarray:
        return _optimise_rows(
            lambda xc, ic, p: _svi_chunk(model, xc, ic, jax.random.fold_in(k_run, p), n_steps, samples),
            xs, init, chunk)

    def score(params: np.ndarray, k_score: jax.Array) -> np.ndarray:
        return _estimate_bound(model, xs, params, k_score, max(256, samples))[0]

    # screening: every start for a fifth of the steps; the best per point goes on for all of them
    screen = max(1, steps // SCREEN_FRACTION)
    screened = [run(init, screen, jax.random.fold_in(k_fit, i)) for i, init in enumerate(starts)]
    scores = np.stack([score(p, jax.random.fold_in(k_select, i)) for i, p in enumerate(screened)])
    rows = np.arange(n)
    lead = np.stack(screened)[np.argmax(scores, axis=0), rows]
    final = run(lead, steps, jax.random.fold_in(k_fit, len(starts)))
    keep = score(final, jax.random.fold_in(k_select, len(starts))) >= scores.max(axis=0)
    chosen = np.where(keep[:, None], final, lead)
    elbo_star, var = _estimate_bound(model, xs, chosen, k_eval, eval_samples)
    if log_p is None:
        lp = (exact_log_likelihood(model, xs).per_point if k <= 2
              else log_likelihood(model, xs, k_ll, ll_samples).per_point)
    else:
        lp = check_per_point(log_p, n, "log_p")
    return OptimalBound(
        log_p=lp, elbo_star=elbo_star, mc_var=var, mean=chosen[:, :k], std=np.exp(chosen[:, k:]),
        method=f"svi ({len(starts)} starts screened by Adam x {screen}, the best per point Adam x {steps}; "
        f"{samples} samples per step, {eval_samples} "
        "samples in the estimate)" + ("" if k <= 2 else f"; log p by importance sampling, S = {ll_samples}"),
    )


# --------------------------------------------------------------------------------------------------
# The decomposition -ELBO = -log p + approximation gap + amortisation gap
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundDecomposition:
    """Per-point terms of ``-ELBO = -log p_theta + approximation gap + amortisation gap``.

    Attributes
    ----------
    elbo
        The amortised encoder's ``ELBO(x_i)``, shape ``(n,)``.
    optimal
        ``log p_theta`` and ``ELBO*`` per point (:class:`OptimalBound`).
    elbo_mc_var
        Monte-Carlo variance of each ``elbo`` entry (0 if not known).
    """

    elbo: np.ndarray
    optimal: OptimalBound
    elbo_mc_var: np.ndarray | None = None

    @property
    def approximation_gap(self) -> np.ndarray:
        """``log p_theta(x_i) - ELBO*(x_i)`` per point."""
        return self.optimal.gap

    @property
    def amortisation_gap(self) -> np.ndarray:
        """``ELBO*(x_i) - ELBO(x_i)`` per point."""
        return self.optimal.elbo_star - self.elbo

    def to_dict(self) -> dict[str, Any]:
        """Means over the points, each with its standard error over the points (``stderr``) and, where
        a term is a Monte-Carlo estimate, the Monte-Carlo standard error of the mean given the points
        (``mc_stderr``): ``neg_log_p``, ``neg_elbo``, ``neg_elbo_star``, ``approximation_gap``,
        ``amortisation_gap``; ``neg_elbo = neg_log_p + approximation_gap + amortisation_gap`` holds
        exactly for the means."""
        o = self.optimal
        n = self.elbo.size
        mc_star = o.mc_stderr
        mc_elbo = 0.0 if self.elbo_mc_var is None else float(np.sqrt(np.sum(self.elbo_mc_var)) / n)

        def est(v: np.ndarray, mc: float) -> dict[str, Any]:
            d = Estimate.of(v).to_dict()
            d["mc_stderr"] = finite(mc)
            return d

        return {
            "method": o.method,
            "n": int(n),
            "neg_log_p": est(-o.log_p, 0.0),
            "neg_elbo": est(-self.elbo, mc_elbo),
            "neg_elbo_star": est(-o.elbo_star, mc_star),
            "approximation_gap": est(self.approximation_gap, mc_star),
            "amortisation_gap": est(self.amortisation_gap, math.hypot(mc_star, mc_elbo)),
        }


def optimal_only(opt: OptimalBound) -> dict[str, Any]:
    """The terms that need no encoder, in :meth:`BoundDecomposition.to_dict`'s form: ``-log p``, ``-ELBO*``
    and the approximation gap (``neg_elbo`` and ``amortisation_gap`` are None)."""
    return {
        "method": opt.method, "n": int(opt.log_p.size), "neg_log_p": Estimate.of(-opt.log_p).to_dict(),
        "neg_elbo": None, "neg_elbo_star": Estimate.of(-opt.elbo_star).to_dict(),
        "approximation_gap": Estimate.of(opt.gap).to_dict(), "amortisation_gap": None,
    }


def amortised_elbo(model: VAE, x: np.ndarray, key: jax.Array, *, log_p: np.ndarray | None = None,
                   elbo_samples: int = 1000) -> tuple[np.ndarray, str]:
    """The model's own encoder's ``ELBO(x_i)`` and how it was computed.

    ``K = 1``: exactly, ``log p_theta(x_i) - KL(q(z|x_i) || p_theta(z|x_i))`` by quadrature
    (:func:`vaefail.metrics.posterior.posterior_kl`; ``log_p`` reused when given). Otherwise the
    Monte-Carlo estimate with ``elbo_samples`` draws per point
    (:func:`vaefail.metrics._stats.elbo_per_point`).
    """
    xs = check_x(x, model.x_dim)
    if model.latent_dim == 1:
        lp = exact_log_likelihood(model, xs).per_point if log_p is None else log_p
        return lp - posterior_kl(model, xs, log_p_model=lp), "quadrature"
    return elbo_per_point(model, xs, key, elbo_samples), f"Monte Carlo (S={elbo_samples})"


def decompose(
    model: VAE, x: np.ndarray, key: jax.Array, *, optimal: OptimalBound | None = None,
    elbo: np.ndarray | None = None, elbo_samples: int = 1000, **kwargs: Any,
) -> BoundDecomposition:
    """Split ``model``'s ``-ELBO`` on ``x`` into ``-log p_theta``, the approximation and the amortisation gap.

    The ELBO of the model's own encoder by :func:`amortised_elbo` (exact for ``K = 1``; for ``K >= 2`` a
    Monte-Carlo estimate whose own error is not tracked: small next to the spread over points at the
    default ``elbo_samples``), unless given; ``ELBO*`` by :func:`optimal_bound` (``kwargs``), unless given.
    """
    xs = check_x(x, model.x_dim)
    k_opt, k_elbo = jax.random.split(key)
    if optimal is None:
        optimal = optimal_bound(model, xs, k_opt, **kwargs)
    if elbo is None:
        exact_lp = optimal.log_p if model.latent_dim == 1 else None
        own, _ = amortised_elbo(model, xs, k_elbo, log_p=exact_lp, elbo_samples=elbo_samples)
    else:
        own = check_per_point(elbo, xs.shape[0], "elbo")
    return BoundDecomposition(elbo=own, optimal=optimal)


def truth_decomposition(
    benchmark: Any, truth_model: VAE | None, x: np.ndarray, key: jax.Array, *, elbo_samples: int = 1000,
) -> BoundDecomposition | OptimalBound:
    """The truth's split: ``log p_gt`` and ``ELBO*`` from the benchmark's exact posterior
    (:func:`vaefail.metrics.posterior.gaussian_gap`); the amortised ELBO from ``truth_model`` (the true
    decoder with its trained encoder, :func:`amortised_elbo`), when given. Without it, only the
    :class:`OptimalBound`.

    The truth's extra latent dimensions (a ``truth_model`` with ``K`` above the benchmark's) do not change
    ``ELBO*``: the true decoder ignores them, so their optimal ``q`` is the prior.
    """
    optimal = optimal_bound(benchmark, x)
    if truth_model is None:
        return optimal
    xs = check_x(x, truth_model.x_dim)
    exact_lp = optimal.log_p if truth_model.latent_dim == 1 else None
    own, _ = amortised_elbo(truth_model, xs, key, log_p=exact_lp, elbo_samples=elbo_samples)
    return BoundDecomposition(elbo=own, optimal=optimal)
