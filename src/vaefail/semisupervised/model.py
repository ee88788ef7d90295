"""The semi-supervised M2 model (Kingma et al. 2014) as an Equinox module, in two encoder families.

Generative model, with ``C`` classes and latent dimension ``K``:

.. math::

    p(y) = \\mathrm{Cat}(\\pi), \\qquad p(z) = N(0, I_K), \\qquad
    p_\\theta(x \\mid y, z) = N(f_\\theta(y, z), \\sigma_\\epsilon^2 I_D),

where :math:`f_\\theta` is an MLP on ``[z, onehot(y)]``. The class prior :math:`\\pi` and
:math:`\\sigma_\\epsilon` are fixed (not trained). Variational families:

- ``"mean_field"`` (the paper's MFG setting): :math:`q_\\phi(y \\mid x)\\, q_\\phi(z \\mid x)`, with
  :math:`q(z \\mid x) = N(\\mu_\\phi(x), \\mathrm{diag}\\, \\sigma_\\phi(x)^2)`: z's posterior cannot depend
  on y.
- ``"kingma"``: :math:`q_\\phi(y \\mid x)\\, q_\\phi(z \\mid x, y)` with a Gaussian encoder on
  ``[x, onehot(y)]``.
- ``"flow"`` and ``"flow_kingma"``: the same two factorisations with a conditional normalising-flow
  :math:`q_\\phi(z \\mid x)` or :math:`q_\\phi(z \\mid x, y)` (:class:`vaefail.flows.FlowEncoder`,
  :data:`FLOW_LAYERS` rational-quadratic spline layers of :data:`FLOW_BINS` bins on a Gaussian base): does a
  flexible ``q(z|x)`` alone remove the functional collapse, or only one that sees ``y``?

:math:`q_\\phi(y \\mid x)` is a softmax MLP classifier. Modules act on one data point; the objectives
vectorise with :func:`jax.vmap`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from vaefail.errors import require, unknown_name
from vaefail.flows import FlowEncoder
from vaefail.models import LOG_2PI, GaussianEncoder, MLPDecoder, get_activation

#: The variational families of M2.
ENCODERS = ("mean_field", "kingma", "flow", "flow_kingma")
#: The families whose ``q(z | x, y)`` sees the label, and those whose ``q(z | ...)`` is a flow.
SEES_LABEL = ("kingma", "flow_kingma")
FLOWS = ("flow", "flow_kingma")
#: Coupling layers and spline bins of the flow families (those of ``reproduce flexible``).
FLOW_LAYERS = 3
FLOW_BINS = 16


def check_encoder(encoder: str) -> None:
    """Raise an :class:`~vaefail.errors.UnknownNameError` unless ``encoder`` is one of :data:`ENCODERS`."""
    if encoder not in ENCODERS:
        raise unknown_name("M2 encoder family", encoder, ENCODERS)


class LabelledDecoder(eqx.Module):
    """Decoder mean :math:`f_\\theta(y, z)`: an MLP on the concatenation ``[z, onehot(y)]``."""

    net: MLPDecoder

    def __init__(
        self, latent_dim: int, n_classes: int, x_dim: int, width: int, depth: int, activation: str,
        *, key: jax.Array,
    ):
        self.net = MLPDecoder(latent_dim + n_classes, x_dim, width, depth, activation, key=key)

    def __call__(self, y_onehot: jax.Array, z: jax.Array) -> jax.Array:
        return self.net(jnp.concatenate([z, y_onehot]))


class TrueLabelledDecoder(eqx.Module):
    """The ground-truth decoder :math:`f_{gt}(y, z)` of a labelled benchmark, no trainable parameters.

    The label is read as ``argmax(onehot)``; only the first latent coordinate is used.
    """

    f_gt: Callable[[jax.Array, jax.Array], jax.Array] = eqx.field(static=True)

    def __call__(self, y_onehot: jax.Array, z: jax.Array) -> jax.Array:
        return self.f_gt(jnp.argmax(y_onehot), z[:1])


class M2(eqx.Module):
    """The M2 model: classifier :math:`q(y|x)`, Gaussian encoder, labelled decoder and fixed noise/prior.

    Attributes
    ----------
    classifier
        MLP ``x -> logits`` of :math:`q_\\phi(y \\mid x)`.
    encoder
        Gaussian encoder on ``x`` (``"mean_field"``) or on ``[x, onehot(y)]`` (``"kingma"``); a
        :class:`~vaefail.flows.FlowEncoder` on the same inputs for ``"flow"`` and ``"flow_kingma"``.
    decoder
        :class:`LabelledDecoder` or :class:`TrueLabelledDecoder`.
    log_sigma
        ``log sigma_eps`` (scalar; gradients always stopped).
    log_prior
        ``log pi`` (shape ``(C,)``; gradients always stopped).
    """

    classifier: eqx.nn.MLP
    encoder: GaussianEncoder | FlowEncoder
    decoder: LabelledDecoder | TrueLabelledDecoder
    log_sigma: jax.Array
    log_prior: jax.Array
    encoder_family: str = eqx.field(static=True)
    x_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    n_classes: int = eqx.field(static=True)

    @property
    def sigma(self) -> jax.Array:
        """Observation noise standard deviation :math:`\\sigma_\\epsilon` (fixed)."""
        return jnp.exp(jax.lax.stop_gradient(self.log_sigma))

    def class_log_prior(self) -> jax.Array:
        """:math:`\\log \\pi_y`, shape ``(C,)`` (fixed)."""
        return jax.lax.stop_gradient(self.log_prior)

    def class_log_probs(self, x: jax.Array) -> jax.Array:
        """:math:`\\log q_\\phi(y \\mid x)` for every class, shape ``(C,)`` (log-softmax of the logits)."""
        return jax.nn.log_softmax(self.classifier(x))

    @property
    def is_flow(self) -> bool:
        """Whether :math:`q(z \\mid \\cdot)` is a flow (then :meth:`encode` gives its Gaussian base)."""
        return self.encoder_family in FLOWS

    def encoder_inputs(self, x: jax.Array) -> jax.Array:
        """The encoder's input for every class, ``(C, D')``: ``x`` itself, or ``[x, onehot(y)]`` when
        :math:`q(z \\mid x, y)` sees the label."""
        xs = jnp.broadcast_to(x, (self.n_classes, x.shape[0]))
        if self.encoder_family not in SEES_LABEL:
            return xs
        return jnp.concatenate([xs, jnp.eye(self.n_classes, dtype=x.dtype)], axis=1)

    def sample_all(self, x: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Reparameterised :math:`z_{cs} \\sim q(z \\mid x, y=c)` and :math:`\\log q(z_{cs} \\mid x, y=c)`
        for every class ``c`` from the standard normals ``eps`` (``(S, K)``, shared by the classes):
        ``z`` ``(C, S, K)``, ``log q`` ``(C, S)``. Exact for both the Gaussian and the flow families."""
        inputs = self.encoder_inputs(x)  # (C, D')
        if self.is_flow:
            e = jnp.broadcast_to(eps.T[:, None, :], (self.latent_dim, self.n_classes, eps.shape[0]))
            z, log_q = self.encoder.sample_columns(inputs.T, e)
            return jnp.moveaxis(z, 0, -1), log_q
        mu, log_std = self.encode_all(x)
        z = mu[:, None, :] + jnp.exp(log_std)[:, None, :] * eps[None]
        log_q = jnp.sum(-0.5 * eps**2 - 0.5 * LOG_2PI, axis=-1)[None] - jnp.sum(log_std, axis=-1)[:, None]
        return z, log_q

    def encode_all(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and log-std of :math:`q(z \\mid x, y)` for every class, each of shape ``(C, K)`` (for the
        flow families, of the flow's Gaussian base).

        For ``"mean_field"`` all rows are equal (:math:`q(z \\mid x)`); the encoder is evaluated once.
        """
        if self.encoder_family not in SEES_LABEL:
            mu, log_std = self.encoder(x)
            return (jnp.broadcast_to(mu, (self.n_classes, self.latent_dim)),
                    jnp.broadcast_to(log_std, (self.n_classes, self.latent_dim)))
        eye = jnp.eye(self.n_classes, dtype=x.dtype)
        inputs = jnp.concatenate([jnp.broadcast_to(x, (self.n_classes, x.shape[0])), eye], axis=1)
        return jax.vmap(self.encoder)(inputs)

    def encode(self, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and log-std of :math:`q(z \\mid x, y)` (of :math:`q(z \\mid x)` for ``"mean_field"``; of
        the flow's Gaussian base for the flow families)."""
        if self.encoder_family not in SEES_LABEL:
            return self.encoder(x)
        return self.encoder(jnp.concatenate([x, jax.nn.one_hot(y, self.n_classes, dtype=x.dtype)]))

    def decode(self, y: jax.Array, z: jax.Array) -> jax.Array:
        """Decoder mean :math:`f_\\theta(y, z)` for an integer label ``y`` and ``z`` of shape ``(K,)``."""
        return self.decoder(jax.nn.one_hot(y, self.n_classes, dtype=z.dtype), z)

    def log_likelihood(self, x: jax.Array, y: jax.Array, z: jax.Array) -> jax.Array:
        """:math:`\\log N(x; f_\\theta(y, z), \\sigma^2 I)`, summed over the ``D`` data dimensions."""
        sigma = self.sigma
        resid = (x - self.decode(y, z)) / sigma
        return -0.5 * jnp.sum(resid**2) - self.x_dim * (jnp.log(sigma) + 0.5 * LOG_2PI)


def make_m2(
    x_dim: int,
    latent_dim: int,
    n_classes: int,
    sigma_eps: float,
    *,
    key: jax.Array,
    encoder: str = "mean_field",
    class_prior: np.ndarray | None = None,
    width: int = 50,
    depth: int = 2,
    activation: str = "leaky_relu",
    decoder: LabelledDecoder | TrueLabelledDecoder | None = None,
) -> M2:
    """Build an M2 model with freshly initialised MLPs.

    Parameters
    ----------
    x_dim, latent_dim, n_classes
        Data dimension ``D >= 1``, latent dimension ``K >= 1`` and number of classes ``C >= 2``.
    sigma_eps
        Fixed observation noise standard deviation, > 0.
    key
        PRNG key for the weights.
    encoder
        ``"mean_field"`` (:math:`q(y|x) q(z|x)`), ``"kingma"`` (:math:`q(y|x) q(z|x,y)`), or ``"flow"`` /
        ``"flow_kingma"`` (the same with a flow for :math:`q(z|\\cdot)`).
    class_prior
        Class probabilities :math:`\\pi` (default uniform).
    width, depth, activation
        Hidden width, number of hidden layers and activation of the three MLPs.
    decoder
        Use this decoder instead of a new MLP (e.g. a :class:`TrueLabelledDecoder`).
    """
    check_encoder(encoder)
    require(x_dim >= 1, f"x_dim must be >= 1, got {x_dim}")
    require(latent_dim >= 1, f"latent dimension K must be >= 1, got {latent_dim}")
    require(n_classes >= 2, f"M2 needs at least 2 classes, got {n_classes}")
    require(math.isfinite(sigma_eps) and sigma_eps > 0, f"sigma_eps must be > 0, got {sigma_eps}")
    require(width >= 1 and depth >= 0, f"need width >= 1 and depth >= 0, got {width}, {depth}")
    get_activation(activation)
    if class_prior is None:
        class_prior = np.full(n_classes, 1.0 / n_classes)
    prior = np.asarray(class_prior, dtype=np.float64)
    require(
        prior.shape == (n_classes,) and bool(np.all(prior > 0)) and abs(prior.sum() - 1.0) < 1e-6,
        f"class_prior must be {n_classes} positive probabilities summing to 1, got {class_prior!r}",
    )
    k_cls, k_enc, k_dec = jax.random.split(key, 3)
    enc_in = x_dim + (n_classes if encoder in SEES_LABEL else 0)
    if decoder is None:
        decoder = LabelledDecoder(latent_dim, n_classes, x_dim, width, depth, activation, key=k_dec)
    return M2(
        classifier=eqx.nn.MLP(
            x_dim, n_classes, width, depth, activation=get_activation(activation), key=k_cls
        ),
        encoder=(FlowEncoder(enc_in, latent_dim, width, depth, activation, layers=FLOW_LAYERS,
                             bins=FLOW_BINS, key=k_enc) if encoder in FLOWS
                 else GaussianEncoder(enc_in, latent_dim, width, depth, activation, key=k_enc)),
        decoder=decoder,
        log_sigma=jnp.asarray(math.log(sigma_eps), dtype=jnp.float32),
        log_prior=jnp.asarray(np.log(prior), dtype=jnp.float32),
        encoder_family=encoder,
        x_dim=x_dim,
        latent_dim=latent_dim,
        n_classes=n_classes,
    )
