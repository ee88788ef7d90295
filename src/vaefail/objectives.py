"""Variational objectives: the MFG-VAE ELBO, the IWAE bound and the DReG gradient estimator.

Every objective returns a :class:`BoundRecord` of *per-datapoint* terms (one value per row of ``x``), so
sums, means and signs are never ambiguous. All bounds are lower bounds on ``log p_theta(x)`` (higher is
better); training minimises the *negative mean* bound over a mini-batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from vaefail.errors import require, unknown_name
from vaefail.models import LOG_2PI, VAE

OBJECTIVES = ("vae", "iwae")


class BoundRecord(NamedTuple):
    """Per-datapoint terms of a bound, each of shape ``(n,)``.

    Attributes
    ----------
    reconstruction
        Monte-Carlo estimate of ``E_q(z|x)[log p_theta(x|z)]`` (mean over the samples drawn).
    kl
        Analytic ``KL(q(z|x) || p(z))``, summed over latent dimensions.
    bound
        The bound itself: ``reconstruction - kl`` for the ELBO; for IWAE,
        ``log (1/S) sum_s p_theta(x, z_s) / q(z_s|x)``, which is >= ``reconstruction - kl``
        in expectation.
    """

    reconstruction: jax.Array
    kl: jax.Array
    bound: jax.Array


def gaussian_kl_to_standard(mu: jax.Array, log_std: jax.Array) -> jax.Array:
    """``KL(N(mu, diag exp(2 log_std)) || N(0, I))``, summed over the last axis.

    ``= 0.5 * sum_k (mu_k^2 + sigma_k^2 - 1 - 2 log sigma_k)``.
    """
    return 0.5 * jnp.sum(mu**2 + jnp.exp(2.0 * log_std) - 1.0 - 2.0 * log_std, axis=-1)


def _normal_logpdf(z: jax.Array, mu: jax.Array, log_std: jax.Array) -> jax.Array:
    """``log N(z; mu, diag exp(2 log_std))`` summed over the last axis."""
    return jnp.sum(-0.5 * ((z - mu) * jnp.exp(-log_std)) ** 2 - log_std - 0.5 * LOG_2PI, axis=-1)


def _draw(mu: jax.Array, log_std: jax.Array, key: jax.Array, num_samples: int) -> jax.Array:
    eps = jax.random.normal(key, (num_samples, *mu.shape), dtype=mu.dtype)
    return mu + jnp.exp(log_std) * eps


def _point_log_weights(
    model: VAE, x: jax.Array, key: jax.Array, num_samples: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For one point: ``log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x)`` with ``z_s ~ q``.

    Returns ``(log_w (S,), log_lik (S,), kl ())``.
    """
    mu, log_std = model.encoder(x)
    z = _draw(mu, log_std, key, num_samples)
    log_lik = jax.vmap(lambda zs: model.log_likelihood(x, zs))(z)
    log_prior = jnp.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=-1)
    log_q = _normal_logpdf(z, mu, log_std)
    return log_lik + log_prior - log_q, log_lik, gaussian_kl_to_standard(mu, log_std)


def elbo(model: VAE, x: jax.Array, key: jax.Array, num_samples: int = 1) -> BoundRecord:
    """The ELBO of each point, with an analytic KL.

    ``ELBO(x) = (1/S) sum_s log p_theta(x | z_s) - KL(q(z|x) || p(z))``, ``z_s ~ q(z|x)``
    reparameterised, ``S = num_samples``.

    Parameters
    ----------
    model
        The VAE.
    x
        Data, shape ``(n, D)``.
    key
        PRNG key; each point gets its own samples.
    num_samples
        Monte-Carlo samples ``S`` for the reconstruction term.
    """
    keys = jax.random.split(key, x.shape[0])

    def point(xi, ki):
        mu, log_std = model.encoder(xi)
        z = _draw(mu, log_std, ki, num_samples)
        rec = jnp.mean(jax.vmap(lambda zs: model.log_likelihood(xi, zs))(z))
        kl = gaussian_kl_to_standard(mu, log_std)
        return rec, kl

    rec, kl = jax.vmap(point)(x, keys)
    return BoundRecord(reconstruction=rec, kl=kl, bound=rec - kl)


def iwae(model: VAE, x: jax.Array, key: jax.Array, num_samples: int) -> BoundRecord:
    """The importance-weighted bound of each point.

    ``IWAE_S(x) = log (1/S) sum_{s=1}^S p_theta(x, z_s) / q(z_s | x)``, ``z_s ~ q(z|x)`` i.i.d.,
    computed with log-sum-exp. ``IWAE_1`` is the single-sample ELBO; ``IWAE_S`` increases with ``S`` in
    expectation and tends to ``log p_theta(x)``.
    """
    keys = jax.random.split(key, x.shape[0])

    def point(xi, ki):
        log_w, log_lik, kl = _point_log_weights(model, xi, ki, num_samples)
        return jnp.mean(log_lik), kl, logsumexp(log_w) - jnp.log(num_samples)

    rec, kl, bound = jax.vmap(point)(x, keys)
    return BoundRecord(reconstruction=rec, kl=kl, bound=bound)


def iwae_dreg_surrogate(
    model: VAE, x: jax.Array, key: jax.Array, num_samples: int
) -> tuple[jax.Array, BoundRecord]:
    """A scalar surrogate whose gradient is the doubly-reparameterised (DReG) IWAE gradient.

    Tucker et al. (2019): for the encoder, ``grad_phi IWAE = E[sum_s w~_s^2 d log w_s / d z_s
    d z_s / d phi]`` with normalised weights ``w~_s``; for the decoder the usual
    ``sum_s w~_s grad_theta log p_theta(x, z_s)``. The surrogate is the mean over points of

        sum_s sg(w~_s^2) log w_s(phi-path only)  +  sum_s sg(w~_s) log p_theta(x, sg(z_s)),

    where ``sg`` stops gradients. Its value is not a bound; the bound is returned in the record.
    """
    keys = jax.random.split(key, x.shape[0])
    frozen = _stop_decoder(model)

    def point(xi, ki):
        mu, log_std = model.encoder(xi)
        z = _draw(mu, log_std, ki, num_samples)
        log_prior = jnp.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=-1)
        log_q = _normal_logpdf(z, jax.lax.stop_gradient(mu), jax.lax.stop_gradient(log_std))
        # encoder path: decoder frozen, q's parameters stopped; gradient flows only through z_s.
        log_w_phi = jax.vmap(lambda zs: frozen.log_likelihood(xi, zs))(z) + log_prior - log_q
        # decoder path: z_s fixed.
        log_lik = jax.vmap(lambda zs: model.log_likelihood(xi, zs))(jax.lax.stop_gradient(z))
        log_w = jax.lax.stop_gradient(log_w_phi)
        w = jax.nn.softmax(log_w)
        surrogate = jnp.sum(w**2 * log_w_phi) + jnp.sum(w * log_lik)
        bound = logsumexp(log_w) - jnp.log(num_samples)
        return surrogate, jnp.mean(log_lik), gaussian_kl_to_standard(mu, log_std), bound

    surrogate, rec, kl, bound = jax.vmap(point)(x, keys)
    return jnp.mean(surrogate), BoundRecord(rec, kl, bound)


def _stop_decoder(model: VAE) -> VAE:
    """The model with gradients stopped through the decoder and ``sigma_eps`` (encoder-only path)."""
    decoder = jax.tree_util.tree_map(
        lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a, model.decoder
    )
    return eqx.tree_at(
        lambda m: (m.decoder, m.log_sigma),
        model,
        (decoder, jax.lax.stop_gradient(model.log_sigma)),
    )


@functools.cache
def bound_fn(objective: str, num_samples: int = 1) -> Callable[[VAE, jax.Array, jax.Array], BoundRecord]:
    """The per-point bound of ``objective``: ``"vae"`` -> :func:`elbo`, ``"iwae"`` -> :func:`iwae`.

    Cached: the same arguments return the same function object, so jitted code built on it is reused.
    """
    check_objective(objective, num_samples)
    if objective == "vae":
        return lambda model, x, key: elbo(model, x, key, num_samples)
    return lambda model, x, key: iwae(model, x, key, num_samples)


@functools.cache
def loss_fn(
    objective: str, num_samples: int = 1, dreg: bool = False
) -> Callable[[VAE, jax.Array, jax.Array], tuple[jax.Array, BoundRecord]]:
    """Training loss ``-(1/n) sum_i bound(x_i)`` (or the DReG surrogate) with the record as aux output."""
    check_objective(objective, num_samples)
    require(not dreg or objective == "iwae", "DReG gradients apply to the 'iwae' objective only")
    if dreg:

        def dreg_loss(model, x, key):
            surrogate, record = iwae_dreg_surrogate(model, x, key, num_samples)
            return -surrogate, record

        return dreg_loss
    bound = bound_fn(objective, num_samples)

    def loss(model, x, key):
        record = bound(model, x, key)
        return -jnp.mean(record.bound), record

    return loss


def check_objective(objective: str, num_samples: int) -> None:
    """Raise a clear error for an unknown objective or a sample count < 1."""
    if objective not in OBJECTIVES:
        raise unknown_name("objective", objective, OBJECTIVES)
    require(num_samples >= 1, f"number of importance samples S must be >= 1, got {num_samples}")
