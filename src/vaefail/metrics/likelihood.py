"""The model's marginal likelihood ``log p_theta(x)``: importance sampling and exact quadrature."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from vaefail.errors import ConfigError, DataError, require
from vaefail.models import LOG_2PI, VAE
from vaefail.objectives import _normal_logpdf


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
    """

    per_point: np.ndarray
    ess: np.ndarray

    @property
    def mean(self) -> float:
        """``(1/n) sum_i log p_theta(x_i)``."""
        return float(np.mean(self.per_point))

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over the data points, ``std_i / sqrt(n)``."""
        return float(np.std(self.per_point, ddof=1) / np.sqrt(len(self.per_point)))


def _check_x(model: VAE, x: np.ndarray) -> jax.Array:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != model.x_dim:
        raise DataError(f"x must have shape (n, {model.x_dim}), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError("x contains NaN or inf")
    return jnp.asarray(x, dtype=jnp.float32)


def log_likelihood(
    model: VAE,
    x: np.ndarray,
    key: jax.Array,
    num_samples: int = 1000,
    *,
    point_chunk: int = 500,
    sample_chunk: int = 1000,
) -> LogLikelihood:
    """Importance-sampled ``log p_theta(x)`` with the encoder ``q(z|x)`` as proposal.

    ``log p_theta(x) ~= log (1/S) sum_{s=1}^S p_theta(x|z_s) p(z_s) / q(z_s|x)``, ``z_s ~ q(z|x)``. This is
    ``IWAE_S(x)``: a consistent estimator whose downward bias shrinks as ``S`` grows. Log-weights are
    computed in float32 by the model and combined with log-sum-exp in float64 (and the effective sample
    size ``(sum w)^2 / sum w^2`` likewise).

    Memory is bounded by ``point_chunk * sample_chunk`` log-weights plus the model's activations for
    that many (point, sample) pairs (about ``point_chunk * sample_chunk * width * 4`` bytes per hidden
    layer: 100 MB at the defaults with width 50), whatever ``len(x)`` and ``num_samples`` are.

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
    """
    require(num_samples >= 1, f"num_samples must be >= 1, got {num_samples}")
    xs = _check_x(model, x)
    sample_chunk = min(sample_chunk, num_samples)
    n = xs.shape[0]
    log_sum = np.full(n, -np.inf)
    log_sum_sq = np.full(n, -np.inf)
    for c, start in enumerate(range(0, num_samples, sample_chunk)):
        s = min(sample_chunk, num_samples - start)
        for p in range(0, n, point_chunk):
            lw = np.asarray(
                _log_weights(model, xs[p : p + point_chunk], jax.random.fold_in(key, c), s, p),
                dtype=np.float64,
            )
            sl = slice(p, p + point_chunk)
            log_sum[sl] = np.logaddexp(log_sum[sl], logsumexp(lw, axis=1))
            log_sum_sq[sl] = np.logaddexp(log_sum_sq[sl], logsumexp(2 * lw, axis=1))
    return LogLikelihood(
        per_point=log_sum - np.log(num_samples), ess=np.exp(2 * log_sum - log_sum_sq)
    )


@eqx.filter_jit
def _log_weights(model: VAE, x: jax.Array, key: jax.Array, num_samples: int, offset: int) -> jax.Array:
    """``log w_{is}`` for a chunk of points, shape ``(n_chunk, S)``."""

    def point(xi, i):
        mu, log_std = model.encoder(xi)
        k = jax.random.fold_in(key, i)
        z = mu + jnp.exp(log_std) * jax.random.normal(k, (num_samples, mu.shape[0]))
        log_lik = jax.vmap(lambda zs: model.log_likelihood(xi, zs))(z)
        log_prior = jnp.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=-1)
        return log_lik + log_prior - _normal_logpdf(z, mu, log_std)

    return jax.vmap(point)(x, offset + jnp.arange(x.shape[0]))


def exact_log_likelihood(
    model: VAE, x: np.ndarray, *, grid_size: int | None = None, bound: float = 7.0,
    point_chunk: int = 256,
) -> LogLikelihood:
    """``log p_theta(x) = log int p_theta(x|z) N(z; 0, I) dz`` by quadrature, for ``K <= 2``.

    A uniform grid on ``[-bound, bound]^K`` with trapezoid weights; the integrand is computed by the model
    in float32 and summed with log-sum-exp in float64. Default grid sizes: 4001 points for ``K = 1``,
    301 x 301 for ``K = 2``. Prior mass outside the box is below ``1e-11`` per dimension at ``bound=7``.
    A decoder that changes faster than the grid spacing (about 0.0035 for K = 1, 0.047 for K = 2) needs
    a larger ``grid_size``.
    """
    k = model.latent_dim
    if k > 2:
        raise ConfigError(f"exact quadrature supports latent_dim <= 2, the model has {k}")
    xs = _check_x(model, x)
    m = grid_size or (4001 if k == 1 else 301)
    axis = np.linspace(-bound, bound, m)
    w1 = np.full(m, axis[1] - axis[0])
    w1[[0, -1]] *= 0.5
    grid = np.array(list(itertools.product(axis, repeat=k)))
    log_w = np.log(np.prod(np.array(list(itertools.product(w1, repeat=k))), axis=1))
    log_w += np.sum(-0.5 * grid**2 - 0.5 * LOG_2PI, axis=1)
    means = np.asarray(jax.jit(jax.vmap(model.decoder))(jnp.asarray(grid, jnp.float32)), np.float64)
    sigma = float(model.sigma)
    out = np.empty(xs.shape[0])
    xn = np.asarray(x, dtype=np.float64)
    for p in range(0, len(out), point_chunk):
        diff = xn[p : p + point_chunk, None, :] - means[None]
        log_lik = -0.5 * np.sum(diff**2, axis=-1) / sigma**2 - model.x_dim * (
            np.log(sigma) + 0.5 * LOG_2PI
        )
        out[p : p + point_chunk] = logsumexp(log_lik + log_w, axis=1)
    return LogLikelihood(per_point=out, ess=np.full(len(out), np.nan))
