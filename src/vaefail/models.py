"""Equinox modules of the MFG-VAE family: Gaussian encoder, MLP or ground-truth decoder, Gaussian likelihood.

The generative model is

    p(z) = N(0, I_K),    p_theta(x | z) = N(f_theta(z), sigma_eps^2 I_D),

and the amortised variational family is mean-field Gaussian,

    q_phi(z | x) = N(mu_phi(x), diag sigma_phi(x)^2).

Modules act on a single data point (``x`` of shape ``(D,)``, ``z`` of shape ``(K,)``). The objectives and the
likelihood estimator evaluate many points at once through the ``columns`` methods, which take one point per
*column* (``(D, m)``, ``(K, m)``): see :func:`mlp_columns` for why.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from vaefail.errors import require, unknown_name

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
}

LOG_2PI = math.log(2.0 * math.pi)


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Return the activation function called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise unknown_name("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]


def mlp_columns(net: eqx.nn.MLP, h: jax.Array) -> jax.Array:
    """``net`` applied to every column of ``h``: ``(in, m) -> (out, m)``.

    The same function as ``jax.vmap(net, in_axes=1, out_axes=1)(h)``, written as the products
    ``W h + b[:, None]`` so that the long axis (the ``m`` columns) is the last, contiguous one. XLA on CPU
    keeps that layout, so the activations and the likelihood's elementwise tail run over long vectors
    instead of rows of ``width`` (50) floats. Measured on 2 cores (figure8, 2x50 MLP, against the vmapped
    row-per-point form): the importance-sampled log-likelihood about 1.3x faster, IWAE training with
    S = 20 1.2-1.5x. Falls back to that form for an MLP with learnt activations or ``scan=True``.
    """
    acts = (net.activation, net.final_activation)
    if net.scan or any(eqx.is_array(a) for a in jax.tree_util.tree_leaves(acts)):
        return jax.vmap(net, in_axes=1, out_axes=1)(h)
    for layer in net.layers[:-1]:
        h = net.activation(_linear_columns(layer, h))
    return net.final_activation(_linear_columns(net.layers[-1], h))


def columns(module: Callable, h: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
    """``module`` applied to every column of ``h``: its ``columns`` method where it has one (the MLPs
    here), else ``jax.vmap`` over axis 1 (e.g. a :class:`TrueDecoder` or a user's own module)."""
    method = getattr(module, "columns", None)
    return method(h) if method is not None else jax.vmap(module, in_axes=1, out_axes=1)(h)


def _linear_columns(layer: eqx.nn.Linear, h: jax.Array) -> jax.Array:
    out = layer.weight @ h
    return out if layer.bias is None else out + layer.bias[:, None]


class GaussianEncoder(eqx.Module):
    """Mean-field Gaussian encoder ``x -> (mu_phi(x), log sigma_phi(x))``, an MLP with ``2K`` outputs."""

    net: eqx.nn.MLP
    latent_dim: int = eqx.field(static=True)

    def __init__(
        self, x_dim: int, latent_dim: int, width: int, depth: int, activation: str, *, key: jax.Array
    ):
        self.net = eqx.nn.MLP(
            x_dim, 2 * latent_dim, width, depth, activation=get_activation(activation), key=key
        )
        self.latent_dim = latent_dim

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Posterior mean and log standard deviation, each of shape ``(K,)``."""
        out = self.net(x)
        return out[: self.latent_dim], out[self.latent_dim :]

    def columns(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """:meth:`__call__` of every column of ``x`` (``(D, m)``): ``mu``, ``log sigma``, each ``(K, m)``."""
        out = mlp_columns(self.net, x)
        return out[: self.latent_dim], out[self.latent_dim :]


class MLPDecoder(eqx.Module):
    """Decoder mean ``f_theta: R^K -> R^D``, an MLP."""

    net: eqx.nn.MLP

    def __init__(
        self, latent_dim: int, x_dim: int, width: int, depth: int, activation: str, *, key: jax.Array
    ):
        self.net = eqx.nn.MLP(
            latent_dim, x_dim, width, depth, activation=get_activation(activation), key=key
        )

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.net(z)

    def columns(self, z: jax.Array) -> jax.Array:
        """``f_theta`` of every column of ``z`` (``(K, m)``), shape ``(D, m)``."""
        return mlp_columns(self.net, z)


class TrueDecoder(eqx.Module):
    """The ground-truth decoder ``f_gt`` of a benchmark, with no trainable parameters.

    Only the first ``benchmark.latent_dim`` coordinates of ``z`` are used, so the truth embeds into a
    model with more latent dimensions than the benchmark has.
    """

    f_gt: Callable[[jax.Array], jax.Array] = eqx.field(static=True)
    true_latent_dim: int = eqx.field(static=True)

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.f_gt(z[: self.true_latent_dim])


class VAE(eqx.Module):
    """An MFG-VAE: encoder, decoder and the Gaussian observation noise ``sigma_eps``.

    ``log_sigma`` is a scalar array. ``learn_sigma`` is a float32 scalar array, 1 to learn ``sigma_eps`` and
    0 to keep it fixed: the gradient reaching ``log_sigma`` is multiplied by it (and none reaches the flag
    itself), so a fixed ``sigma_eps`` stays at its initial value under any optimiser. It is data, not a
    static field, so models with learned and fixed ``sigma_eps`` share every compiled program.
    """

    encoder: GaussianEncoder
    decoder: MLPDecoder | TrueDecoder
    log_sigma: jax.Array
    learn_sigma: jax.Array = eqx.field(converter=lambda v: jnp.asarray(v, jnp.float32))
    x_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)

    @property
    def sigma(self) -> jax.Array:
        """Observation noise standard deviation ``sigma_eps = exp(log_sigma)``.

        Computed as ``exp(sg(a) + sg(flag) * (a - sg(a)))`` with ``a = log_sigma`` and ``sg`` the
        stop-gradient: the value is exactly ``exp(a)``, its gradient in ``a`` is ``flag`` times the usual one.
        """
        fixed = jax.lax.stop_gradient(self.log_sigma)
        return jnp.exp(fixed + jax.lax.stop_gradient(self.learn_sigma) * (self.log_sigma - fixed))

    def log_likelihood(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """``log N(x; f_theta(z), sigma_eps^2 I)``, summed over the ``D`` data dimensions (scalar)."""
        sigma = self.sigma
        resid = (x - self.decoder(z)) / sigma
        return -0.5 * jnp.sum(resid**2) - self.x_dim * (jnp.log(sigma) + 0.5 * LOG_2PI)

    def log_likelihood_columns(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """:meth:`log_likelihood` for every column: ``z`` of shape ``(K, *batch)``, ``x`` of shape
        ``(D, *batch)`` or broadcastable to it (e.g. ``(D, n, 1)`` against ``z`` of ``(K, n, S)``);
        returns ``(*batch)``, summed over axis 0 (the ``D`` data dimensions)."""
        sigma = self.sigma
        mean = columns(self.decoder, z.reshape(z.shape[0], -1)).reshape(self.x_dim, *z.shape[1:])
        resid = (x - mean) / sigma
        return -0.5 * jnp.sum(resid**2, axis=0) - self.x_dim * (jnp.log(sigma) + 0.5 * LOG_2PI)


def make_vae(
    x_dim: int,
    latent_dim: int,
    sigma_eps: float,
    *,
    key: jax.Array,
    learn_sigma: bool = False,
    width: int = 50,
    depth: int = 2,
    activation: str = "leaky_relu",
    decoder: MLPDecoder | TrueDecoder | None = None,
) -> VAE:
    """Build a VAE with freshly initialised MLPs.

    Parameters
    ----------
    x_dim, latent_dim
        Data dimension ``D`` and latent dimension ``K`` (both >= 1).
    sigma_eps
        Initial (or fixed, when ``learn_sigma`` is false) observation noise standard deviation, > 0.
    key
        PRNG key for the weights.
    learn_sigma
        Whether ``sigma_eps`` is a trainable parameter.
    width, depth, activation
        Hidden width, number of hidden layers and activation of both MLPs.
    decoder
        Use this decoder instead of a new MLP (e.g. a :class:`TrueDecoder`).
    """
    require(x_dim >= 1, f"x_dim must be >= 1, got {x_dim}")
    require(latent_dim >= 1, f"latent dimension K must be >= 1, got {latent_dim}")
    require(
        math.isfinite(sigma_eps) and sigma_eps > 0, f"sigma_eps must be > 0, got {sigma_eps}"
    )
    require(width >= 1 and depth >= 0, f"need width >= 1 and depth >= 0, got {width}, {depth}")
    k_enc, k_dec = jax.random.split(key)
    encoder = GaussianEncoder(x_dim, latent_dim, width, depth, activation, key=k_enc)
    if decoder is None:
        decoder = MLPDecoder(latent_dim, x_dim, width, depth, activation, key=k_dec)
    return VAE(
        encoder=encoder,
        decoder=decoder,
        log_sigma=jnp.asarray(math.log(sigma_eps), dtype=jnp.float32),
        learn_sigma=learn_sigma,
        x_dim=x_dim,
        latent_dim=latent_dim,
    )
