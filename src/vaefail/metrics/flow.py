"""Metrics of a model whose encoder is a normalising flow (:class:`vaefail.flows.FlowEncoder`).

The MFG metrics use the encoder's closed-form Gaussian; a flow has an exact density instead
(:meth:`~vaefail.flows.FlowEncoder.log_prob_columns`), so the quantities below replace the Gaussian
formulas with that density: ``log q`` on a latent grid (the exact posterior KL for ``K = 1`` and the
normalisation check), the mutual information ``I(x; z)`` with the flow's density in the mixture, and the
posterior mean ``E_q[z | x]`` by Monte Carlo. :func:`is_flow` tells them apart.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from vaefail.metrics._stats import Estimate, check_per_point, check_x, finite
from vaefail.metrics.likelihood import decode
from vaefail.models import LOG_2PI
from vaefail.objectives import sample_terms
from vaefail.quadrature import trapezoid_weights


def is_flow(model: Any) -> bool:
    """Whether ``model``'s encoder is a flow (has an exact ``log_prob_columns``)."""
    return hasattr(model.encoder, "log_prob_columns")


@eqx.filter_jit
def _log_q_pairs(encoder: Any, x: jax.Array, z: jax.Array) -> jax.Array:
    """``log q(z_c | x_m)`` for every component ``m`` (rows of ``x``, ``(M, D)``) and code ``c`` (rows of
    ``z``, ``(C, K)``): shape ``(M, C)``."""
    zz = jnp.broadcast_to(z.T[:, None, :], (z.shape[1], x.shape[0], z.shape[0]))
    return encoder.log_prob_columns(x.T, zz)


def log_q_matrix(model: Any, x: np.ndarray, z: np.ndarray, *, pairs: int = 1 << 20) -> np.ndarray:
    """``log q(z_c | x_m)`` of a flow encoder for every point ``m`` and latent ``c``: ``(n, C)`` float64.

    ``x`` is ``(n, D)``, ``z`` ``(C, K)``; evaluated in blocks of about ``pairs`` (point, latent) pairs.
    """
    xs = jnp.asarray(check_x(x, model.x_dim), jnp.float32)
    zs = np.asarray(z, np.float32).reshape(-1, model.latent_dim)
    block = max(1, pairs // max(1, xs.shape[0]))
    out = [np.asarray(_log_q_pairs(model.encoder, xs, jnp.asarray(zs[c : c + block])), np.float64)
           for c in range(0, zs.shape[0], block)]
    return np.concatenate(out, axis=1)


def flow_posterior_kl(
    model: Any, x: np.ndarray, *, log_p_model: np.ndarray, z_grid: np.ndarray | None = None
) -> np.ndarray:
    """``KL(q(z|x) || p_theta(z|x))`` of each point for a flow encoder with ``K = 1``, by quadrature.

    ``KL = int q(z|x) [log q(z|x) - log p_theta(x|z) - log p(z)] dz + log p_theta(x)`` with the trapezoid
    rule on ``z_grid`` (default 8,001 nodes on ``[-8, 8]``) and the exact ``log p_theta(x)`` given. The
    quadrature renormalises ``q`` on the grid (its mass there, which is 1 up to quadrature error, divides
    it). Shape ``(n,)``, float64.
    """
    xs = check_x(x, model.x_dim)
    log_p_model = check_per_point(log_p_model, xs.shape[0], "log_p_model")
    grid = np.linspace(-8.0, 8.0, 8001) if z_grid is None else np.asarray(z_grid, np.float64)
    log_w = np.log(trapezoid_weights(grid))
    means = np.asarray(decode(model, jnp.asarray(grid[:, None], jnp.float32)), np.float64)
    sigma = float(model.sigma)
    out = np.empty(xs.shape[0])
    chunk = 100
    for p in range(0, xs.shape[0], chunk):
        xc = xs[p : p + chunk]
        log_q = log_q_matrix(model, xc, grid[:, None])  # (c, G)
        log_lik = (-0.5 * np.sum((xc[:, None, :] - means[None]) ** 2, axis=-1) / sigma**2
                   - model.x_dim * (math.log(sigma) + 0.5 * LOG_2PI))
        log_joint = log_lik - 0.5 * grid**2 - 0.5 * LOG_2PI
        q = np.exp(log_q + log_w)
        mass = q.sum(axis=1)
        out[p : p + chunk] = (q * (log_q - log_joint)).sum(axis=1) / mass + np.log(mass)
    return out + log_p_model


def posterior_mean(model: Any, x: np.ndarray, key: jax.Array, samples: int = 256) -> np.ndarray:
    """``E_q[z | x]`` of each point by Monte Carlo (``samples`` reparameterised draws), ``(n, K)`` float64."""
    xs = jnp.asarray(check_x(x, model.x_dim), jnp.float32)
    keys = jax.random.split(key, xs.shape[0])
    z = mean_codes(model, xs, keys, samples)
    return np.asarray(z, np.float64)


@eqx.filter_jit
def mean_codes(model: Any, x: jax.Array, keys: jax.Array, samples: int) -> jax.Array:
    """``E_q[z | x_i]`` of each row of ``x`` (``(n, D)``) as the mean of ``samples`` reparameterised draws,
    point ``i``'s normals from ``keys[i]``: ``(n, K)``; differentiable in ``x``."""
    return jnp.mean(sample_terms(model, x, keys, samples).z, axis=-1).T


def flow_mutual_information(
    model: Any, x: np.ndarray, key: jax.Array, *, samples_per_point: int = 4, confidence: float = 0.95,
    active_threshold: float = 0.01, max_points_coupled: int = 500,
) -> dict[str, Any]:
    """``I(x; z)`` under a flow encoder, in the JSON form of
    :meth:`vaefail.metrics.information.MutualInformation.to_dict`.

    Same estimator as :func:`vaefail.metrics.information.mutual_information` (the mixture over the sample
    with the own component: a lower bound in expectation, at most ``log n``; without it, the leave-one-out
    upper bound), with the flow's exact ``log q(z | x_m)``. Per-dimension values need the marginals
    ``q(z_i | x)``, which a coupling flow does not give in closed form: for ``K = 1`` the dimension is the
    whole code (``per_dim`` = ``total``); for ``K >= 2`` ``per_dim`` is empty and ``average`` is ``None``.
    Activity is ``Var_x(E_q[z_i | x])`` with the means by Monte Carlo (:func:`posterior_mean`).

    For ``K >= 2`` the coupling layers' conditioners run once per (code, component) pair, ``O(n^2 S)`` MLP
    evaluations, so only the first ``max_points_coupled`` points are used (the estimate's cap is then
    ``log max_points_coupled``; ``mixture_size`` says how many were used).
    """
    xs = check_x(x, model.x_dim)
    if model.latent_dim > 1:
        xs = xs[:max_points_coupled]
    n, s = xs.shape[0], samples_per_point
    k_z, k_mean = jax.random.split(key)
    keys = jax.random.split(k_z, n)
    terms = _codes(model, jnp.asarray(xs, jnp.float32), keys, s)
    z = np.asarray(terms[0], np.float64)  # (n, S, K)
    own = np.asarray(terms[1], np.float64)  # (n, S)
    log_q = log_q_matrix(model, xs, z.reshape(n * s, -1)).reshape(n, n, s)  # [m, n, s]
    idx = np.arange(n)
    log_q[idx, idx, :] = -np.inf
    peak = np.max(log_q, axis=0)
    others = np.log(np.sum(np.exp(log_q - peak), axis=0)) + peak  # (n, S)
    terms_in = np.mean(own - (np.logaddexp(others, own) - math.log(n)), axis=1)
    terms_loo = np.mean(own - (others - math.log(n - 1)), axis=1)
    total = Estimate.of(terms_in, confidence)
    activity = np.var(posterior_mean(model, xs, k_mean), axis=0, ddof=1)
    one = model.latent_dim == 1
    return {
        "per_dim": [total.to_dict()] if one else [],
        "per_dim_loo": [finite(terms_loo.mean())] if one else [],
        "average": total.to_dict() if one else None,
        "total": total.to_dict(),
        "total_loo": finite(terms_loo.mean()),
        "mixture_size": n,
        "log_mixture_size": math.log(n),
        "activity": [finite(v) for v in activity],
        "active_threshold": active_threshold,
        "active_units": int(np.sum(activity > active_threshold)),
    }


@eqx.filter_jit
def _codes(model: Any, x: jax.Array, keys: jax.Array, samples: int) -> tuple[jax.Array, jax.Array]:
    t = sample_terms(model, x, keys, samples)
    return jnp.moveaxis(t.z, 0, -1), t.log_q
