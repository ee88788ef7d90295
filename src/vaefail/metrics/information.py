"""Mutual information between the data and each latent dimension under the encoder, and active units.

Under the joint ``q(x, z) = p(x) q(z|x)`` (data from ``p(x)``, codes from the encoder),

    I(x; z_i) = E_{p(x) q(z|x)}[ log q(z_i | x) - log q(z_i) ],   q(z_i) = E_{p(x)}[ q(z_i | x) ],

and likewise ``I(x; z)`` with the joint ``q(z|x) = prod_i q(z_i|x)`` and the aggregate posterior ``q(z)``.
The paper's Table 1 reports the average over dimensions ``(1/K) sum_i I(x; z_i)``: extra latent dimensions
that encode noise pull it down.

Estimator
---------
Given data ``x_1..x_M`` (the evaluation sample itself, ``M = n``) and ``S`` codes ``z_ns ~ q(z|x_n)`` per
point, the aggregate posterior is replaced by the mixture over the sample,
``q^(z_i) = (1/M) sum_m q(z_i | x_m)``, and

    I^(x; z_i) = (1/(n S)) sum_{n,s} [ log q(z_ns,i | x_n) - log q^(z_ns,i) ],

computed with log-sum-exp in float64. Bias: the mixture includes the point's own component ``m = n``,
which is large at ``z_ns`` (the code was drawn from it), so ``q^`` is biased *up* there and the estimate is
biased *down*: it is exactly the InfoNCE bound with critic ``q(z|x)``, a lower bound in expectation for
any ``M``, and it can never exceed ``log M`` (Poole et al., "On variational bounds of mutual
information", 2019). Leaving the own component out (``(1/(M-1)) sum_{m != n}``) gives the "leave-one-out"
estimate, an upper bound in expectation (Jensen: the mixture of the others is an unbiased estimate of
``q(z)``, so its log is biased low). Both are reported; they meet as ``M`` grows, and their gap
measures the finite-``M`` bias (it matters when ``I`` approaches ``log M``, e.g. a total ``I(x; z)`` of
several nats with a few thousand points).

The interval is ``estimate -/+ z_{(1+c)/2} * std_n(t_n) / sqrt(n)`` with ``t_n`` the point's term
averaged over its ``S`` codes. It treats the terms as independent, ignoring their weak dependence through
the shared mixture (``O(1/M)``); it covers the Monte-Carlo and data-sampling error, not the bias above.

Active units
------------
Burda et al. (2016): dimension ``i`` is active when ``A_i = Cov_x(E_q[z_i | x]) = Var_x(mu_i(x)) > 0.01``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from vaefail.errors import require
from vaefail.metrics._stats import Estimate, check_x, finite
from vaefail.models import LOG_2PI, VAE

#: Burda et al. (2016)'s threshold on ``Var_x(E_q[z_i|x])`` for an active unit.
ACTIVE_THRESHOLD = 0.01


@dataclass(frozen=True)
class MutualInformation:
    """Estimates of ``I(x; z_i)`` per dimension, their average, the total ``I(x; z)`` and active units.

    Attributes
    ----------
    per_dim
        ``I(x; z_i)`` for each latent dimension (mixture including the own component: a lower bound in
        expectation), with standard error and interval.
    per_dim_loo
        The leave-one-out estimate of each ``I(x; z_i)`` (an upper bound in expectation), shape ``(K,)``.
    average
        ``(1/K) sum_i I(x; z_i)`` (the paper's Table 1 quantity), with standard error and interval.
    total
        ``I(x; z)`` with the joint ``q(z|x)``; ``total_loo`` its leave-one-out counterpart.
    total_loo
        See ``total``.
    mixture_size
        ``M``, the number of points in the mixture (``log M`` caps every estimate).
    activity
        ``Var_x(mu_i(x))`` per dimension, shape ``(K,)``.
    active_threshold
        Threshold on ``activity`` for an active unit.
    """

    per_dim: tuple[Estimate, ...]
    per_dim_loo: np.ndarray
    average: Estimate
    total: Estimate
    total_loo: float
    mixture_size: int
    activity: np.ndarray
    active_threshold: float = ACTIVE_THRESHOLD

    @property
    def active_units(self) -> int:
        """Number of dimensions with ``Var_x(mu_i(x)) > active_threshold``."""
        return int(np.sum(self.activity > self.active_threshold))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per-dimension, average and total estimates, the leave-one-out values, active units."""
        return {
            "per_dim": [e.to_dict() for e in self.per_dim],
            "per_dim_loo": [finite(v) for v in self.per_dim_loo],
            "average": self.average.to_dict(),
            "total": self.total.to_dict(),
            "total_loo": finite(self.total_loo),
            "mixture_size": self.mixture_size,
            "log_mixture_size": math.log(self.mixture_size),
            "activity": [finite(v) for v in self.activity],
            "active_threshold": self.active_threshold,
            "active_units": self.active_units,
        }


@eqx.filter_jit
def _encode(model: VAE, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jax.vmap(model.encoder)(x)


def encode(model: VAE, x: np.ndarray, *, point_chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Encoder means and log standard deviations for all points, each ``(n, K)`` float64."""
    xs = check_x(x, model.x_dim)
    mus, logs = [], []
    for p in range(0, xs.shape[0], point_chunk):
        mu, log_std = _encode(model, jnp.asarray(xs[p : p + point_chunk], jnp.float32))
        mus.append(np.asarray(mu, np.float64))
        logs.append(np.asarray(log_std, np.float64))
    return np.concatenate(mus), np.concatenate(logs)


def mutual_information(
    model: VAE,
    x: np.ndarray,
    key: jax.Array,
    *,
    samples_per_point: int = 4,
    confidence: float = 0.95,
    active_threshold: float = ACTIVE_THRESHOLD,
) -> MutualInformation:
    """``I(x; z_i)`` for every latent dimension, their average, ``I(x; z)`` and the active units.

    See the module docstring for the estimator, its bias (the reported estimate is a lower bound in
    expectation, at most ``log n``; the leave-one-out value an upper bound) and the interval.

    Parameters
    ----------
    model
        A single VAE; only its encoder is used.
    x
        Data from ``p(x)``, shape ``(n, D)``, ``n >= 2``; it is both the outer sample and the mixture.
    key
        PRNG key for the codes ``z ~ q(z|x)``.
    samples_per_point
        Codes ``S`` drawn per point.
    confidence
        Coverage of the intervals.
    active_threshold
        Threshold on ``Var_x(mu_i(x))`` for an active unit.

    Notes
    -----
    Cost ``O(n^2 S K)`` in float64, in chunks of about 2**21 (code, component) pairs (16 MB buffers): about a
    second for ``n = 2000``, ``S = 4``, ``K = 3``.
    """
    require(samples_per_point >= 1, f"samples_per_point must be >= 1, got {samples_per_point}")
    require(0 < confidence < 1, f"confidence must be in (0, 1), got {confidence}")
    xs = check_x(x, model.x_dim)
    n = xs.shape[0]
    require(n >= 2, "mutual_information needs at least 2 points")
    mu, log_std = encode(model, xs)
    k = mu.shape[1]
    s = samples_per_point
    eps = np.asarray(jax.random.normal(key, (n, s, k)), np.float64)
    z = mu[:, None, :] + np.exp(log_std)[:, None, :] * eps  # (n, S, K)
    mu_t, inv_std_t = mu.T.copy(), np.exp(-log_std).T.copy()  # (K, M)
    log_norm_t = (-log_std - 0.5 * LOG_2PI).T.copy()  # (K, M)
    own = -0.5 * eps**2 + (-log_std - 0.5 * LOG_2PI)[:, None, :]  # log q(z_ns,i | x_n), (n, S, K)
    own_joint = own.sum(axis=-1)  # (n, S)
    dim_terms, dim_loo = np.empty((n, k)), np.empty((n, k))
    joint_terms, joint_loo = np.empty(n), np.empty(n)
    chunk = max(1, (1 << 21) // (s * n * k))
    log_m, log_m1 = math.log(n), math.log(n - 1)
    for p in range(0, n, chunk):
        c = min(chunk, n - p)
        idx = np.arange(c)
        # log q(z_ns,i | x_m) for every component m, (c, S, K, M); the own component (m = p + row) is
        # set to -inf, so the sums below run over the others, and the own term is added back exactly.
        comp = z[p : p + c, :, :, None] - mu_t
        comp *= inv_std_t
        np.square(comp, out=comp)
        comp *= -0.5
        comp += log_norm_t
        comp[idx, :, :, p + idx] = -np.inf
        joint = comp.sum(axis=2) if k > 1 else comp[:, :, 0, :]  # (c, S, M)
        others_dim = _logsumexp_last(comp)  # (c, S, K)
        others_joint = _logsumexp_last(joint) if k > 1 else others_dim[:, :, 0]
        own_c, own_joint_c = own[p : p + c], own_joint[p : p + c]
        dim_terms[p : p + c] = np.mean(own_c - (np.logaddexp(others_dim, own_c) - log_m), axis=1)
        dim_loo[p : p + c] = np.mean(own_c - (others_dim - log_m1), axis=1)
        joint_terms[p : p + c] = np.mean(
            own_joint_c - (np.logaddexp(others_joint, own_joint_c) - log_m), axis=1
        )
        joint_loo[p : p + c] = np.mean(own_joint_c - (others_joint - log_m1), axis=1)
    activity = np.var(mu, axis=0, ddof=1)
    return MutualInformation(
        per_dim=tuple(Estimate.of(dim_terms[:, i], confidence) for i in range(k)),
        per_dim_loo=dim_loo.mean(axis=0),
        average=Estimate.of(dim_terms.mean(axis=1), confidence),
        total=Estimate.of(joint_terms, confidence),
        total_loo=float(joint_loo.mean()),
        mixture_size=n,
        activity=activity,
        active_threshold=active_threshold,
    )


def _logsumexp_last(a: np.ndarray) -> np.ndarray:
    """``log sum exp`` over the last axis in float64, overwriting ``a`` (rows of -inf give -inf)."""
    peak = np.max(a, axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    a -= peak
    np.exp(a, out=a)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(a, axis=-1)) + peak[..., 0]
