"""Variational objectives: the MFG-VAE ELBO, the IWAE bound and the DReG gradient estimator.

Every objective returns a :class:`BoundRecord` of *per-datapoint* terms (one value per row of ``x``), so
sums, means and signs are never ambiguous. All bounds are lower bounds on ``log p_theta(x)`` (higher is
better); training minimises the *negative mean* bound over a mini-batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from vaefail._jax import materialise
from vaefail.errors import require, unknown_name
from vaefail.models import LOG_2PI, VAE, columns

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


def _normal_logpdf(z: jax.Array, mu: jax.Array, log_std: jax.Array, axis: int = -1) -> jax.Array:
    """``log N(z; mu, diag exp(2 log_std))`` summed over ``axis`` (the latent dimensions)."""
    return jnp.sum(-0.5 * ((z - mu) * jnp.exp(-log_std)) ** 2 - log_std - 0.5 * LOG_2PI, axis=axis)


class SampleTerms(NamedTuple):
    """Monte-Carlo terms of ``n`` points with ``S`` reparameterised samples each, ``z_is ~ q(z|x_i)``.

    Attributes
    ----------
    mu, log_std
        Encoder outputs, shape ``(K, n)`` (one point per column).
    eps, z
        Standard-normal draws and ``z = mu + exp(log_std) * eps``, shape ``(K, n, S)``.
    log_lik
        ``log p_theta(x_i | z_is)``, shape ``(n, S)``.
    log_prior
        ``log p(z_is)`` (standard normal, summed over ``K``), shape ``(n, S)``.
    flow_log_q
        For an encoder that is not mean-field Gaussian (one with a ``sample_columns`` method, e.g.
        :class:`vaefail.flows.FlowEncoder`): its exact ``log q(z_is | x_i)``, shape ``(n, S)``; then ``mu``
        and ``log_std`` are its base Gaussian's. ``None`` for the Gaussian encoder.
    """

    mu: jax.Array
    log_std: jax.Array
    eps: jax.Array
    z: jax.Array
    log_lik: jax.Array
    log_prior: jax.Array
    flow_log_q: jax.Array | None = None

    @property
    def log_q(self) -> jax.Array:
        """``log q(z_is | x_i) = sum_k (-eps^2 / 2 - log sigma_k - log(2 pi) / 2)``, shape ``(n, S)``; with
        ``z = mu + sigma eps`` this equals ``log N(z; mu, sigma^2)`` in value and in its total gradient.
        For a flow encoder, :attr:`flow_log_q`."""
        if self.flow_log_q is not None:
            return self.flow_log_q
        return jnp.sum(-0.5 * self.eps**2 - self.log_std[..., None] - 0.5 * LOG_2PI, axis=0)

    @property
    def log_w(self) -> jax.Array:
        """Log importance weights ``log p_theta(x|z) + log p(z) - log q(z|x)``, shape ``(n, S)``."""
        return self.log_lik + self.log_prior - self.log_q

    @property
    def kl(self) -> jax.Array:
        """``KL(q(z|x_i) || p(z))``, shape ``(n,)``: analytic for the Gaussian encoder; for a flow encoder the
        Monte-Carlo estimate ``(1/S) sum_s [log q(z_is|x_i) - log p(z_is)]`` on the same samples."""
        if self.flow_log_q is not None:
            return jnp.mean(self.flow_log_q - self.log_prior, axis=1)
        return gaussian_kl_to_standard(self.mu.T, self.log_std.T)


def sample_terms(model: VAE, x: jax.Array, keys: jax.Array, num_samples: int) -> SampleTerms:
    """Encode ``x`` (``(n, D)``), draw ``S = num_samples`` samples per point and score them.

    Point ``i`` draws its ``(K, S)`` standard normals from ``keys[i]`` (so a point's samples do not depend
    on which other points share the batch). All arrays keep the points x samples on their last axes,
    ``(K, n, S)``: the decoder sees one sample per column (:meth:`VAE.log_likelihood_columns`). An encoder
    with a ``sample_columns(x, eps) -> (z, log q)`` method (a flow) maps the same normals to its samples
    and gives their exact ``log q`` (:attr:`SampleTerms.flow_log_q`).
    """
    mu, log_std = columns(model.encoder, x.T)
    eps = jax.vmap(lambda k: jax.random.normal(k, (mu.shape[0], num_samples), mu.dtype), out_axes=1)(keys)
    eps = materialise(eps)  # else XLA redoes the normals' transform in every consumer
    flow_log_q = None
    if hasattr(model.encoder, "sample_columns"):
        z, flow_log_q = model.encoder.sample_columns(x.T, eps)
    else:
        z = mu[..., None] + jnp.exp(log_std)[..., None] * eps
    log_lik = model.log_likelihood_columns(x.T[..., None], z)
    log_prior = jnp.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=0)
    return SampleTerms(mu, log_std, eps, z, log_lik, log_prior, flow_log_q)


def elbo(model: VAE, x: jax.Array, key: jax.Array, num_samples: int = 1) -> BoundRecord:
    """The ELBO of each point, with an analytic KL (Monte-Carlo for a flow encoder, :attr:`SampleTerms.kl`).

    ``ELBO(x) = (1/S) sum_s log p_theta(x | z_s) - KL(q(z|x) || p(z))``, ``z_s ~ q(z|x)``
    reparameterised, ``S = num_samples``; with the Monte-Carlo KL this is
    ``(1/S) sum_s [log p_theta(x|z_s) + log p(z_s) - log q(z_s|x)]``.

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
    t = sample_terms(model, x, jax.random.split(key, x.shape[0]), num_samples)
    rec, kl = jnp.mean(t.log_lik, axis=1), t.kl
    return BoundRecord(reconstruction=rec, kl=kl, bound=rec - kl)


def iwae(model: VAE, x: jax.Array, key: jax.Array, num_samples: int) -> BoundRecord:
    """The importance-weighted bound of each point.

    ``IWAE_S(x) = log (1/S) sum_{s=1}^S p_theta(x, z_s) / q(z_s | x)``, ``z_s ~ q(z|x)`` i.i.d.,
    computed with log-sum-exp. ``IWAE_1`` is the single-sample ELBO; ``IWAE_S`` increases with ``S`` in
    expectation and tends to ``log p_theta(x)``.
    """
    t = sample_terms(model, x, jax.random.split(key, x.shape[0]), num_samples)
    bound = logsumexp(t.log_w, axis=1) - jnp.log(num_samples)
    return BoundRecord(reconstruction=jnp.mean(t.log_lik, axis=1), kl=t.kl, bound=bound)


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
    t = sample_terms(_stop_decoder(model), x, jax.random.split(key, x.shape[0]), num_samples)
    # encoder path: decoder frozen (above), q's parameters stopped; gradient flows only through z_s.
    log_q = _normal_logpdf(t.z, jax.lax.stop_gradient(t.mu[..., None]),
                           jax.lax.stop_gradient(t.log_std[..., None]), axis=0)
    log_w_phi = t.log_lik + t.log_prior - log_q
    # decoder path: z_s fixed.
    log_lik = model.log_likelihood_columns(x.T[..., None], jax.lax.stop_gradient(t.z))
    log_w = jax.lax.stop_gradient(log_w_phi)
    w = jax.nn.softmax(log_w, axis=1)
    surrogate = jnp.sum(w**2 * log_w_phi, axis=1) + jnp.sum(w * log_lik, axis=1)
    bound = logsumexp(log_w, axis=1) - jnp.log(num_samples)
    return jnp.mean(surrogate), BoundRecord(jnp.mean(log_lik, axis=1), t.kl, bound)


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


@dataclass(frozen=True)
class Objective:
    """A training objective as a small hashable value. Calling it gives the training loss (:meth:`loss`);
    equal options give equal objects, so a jitted program that takes it as a static argument
    (:func:`vaefail.training.optimise`) is compiled once per option set.

    Parameters
    ----------
    name
        ``"vae"`` (:func:`elbo`, analytic KL) or ``"iwae"`` (:func:`iwae`).
    num_samples
        Samples ``S`` per point of :meth:`bound` (Monte-Carlo samples of the ELBO's reconstruction term, or
        the IWAE's importance samples).
    dreg
        Train with the doubly-reparameterised gradient (:func:`iwae_dreg_surrogate`; ``"iwae"`` only).
    """

    name: str = "vae"
    num_samples: int = 1
    dreg: bool = False

    def __post_init__(self) -> None:
        check_objective(self.name, self.num_samples)
        require(not self.dreg or self.name == "iwae", "DReG gradients apply to the 'iwae' objective only")

    def bound(self, model: VAE, x: jax.Array, key: jax.Array) -> BoundRecord:
        """The per-point bound: :func:`elbo` or :func:`iwae` with ``num_samples`` samples."""
        if self.name == "vae":
            return elbo(model, x, key, self.num_samples)
        return iwae(model, x, key, self.num_samples)

    def loss(self, model: VAE, x: jax.Array, key: jax.Array) -> tuple[jax.Array, BoundRecord]:
        """Training loss ``-(1/n) sum_i bound(x_i)`` (or minus the DReG surrogate), with the record."""
        if self.dreg:
            surrogate, record = iwae_dreg_surrogate(model, x, key, self.num_samples)
            return -surrogate, record
        record = self.bound(model, x, key)
        return -jnp.mean(record.bound), record

    __call__ = loss


@dataclass(frozen=True)
class MeanBound:
    """The validation score of an objective, a hashable value: ``score(model, (x, key))`` is the mean over
    the rows of ``x`` of the per-point bound (a fixed key makes it deterministic; higher is better)."""

    objective: Objective

    def __call__(self, model: VAE, data: tuple[jax.Array, jax.Array]) -> jax.Array:
        return jnp.mean(self.objective.bound(model, data[0], data[1]).bound)


def bound_fn(objective: str, num_samples: int = 1) -> Callable[[VAE, jax.Array, jax.Array], BoundRecord]:
    """The per-point bound of ``objective`` (:meth:`Objective.bound`)."""
    return Objective(objective, num_samples).bound


def loss_fn(objective: str, num_samples: int = 1, dreg: bool = False) -> Objective:
    """The training loss ``-(1/n) sum_i bound(x_i)`` (or the DReG surrogate), with the record as aux output:
    the :class:`Objective` itself, which is called as its :meth:`~Objective.loss`."""
    return Objective(objective, num_samples, dreg)


def check_objective(objective: str, num_samples: int) -> None:
    """Raise a clear error for an unknown objective or a sample count < 1."""
    if objective not in OBJECTIVES:
        raise unknown_name("objective", objective, OBJECTIVES)
    require(num_samples >= 1, f"number of importance samples S must be >= 1, got {num_samples}")
