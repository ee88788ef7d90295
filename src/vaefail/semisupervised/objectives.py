"""The M2 objective with the label enumerated exactly, in a VAE and an IWAE version.

For one point, write :math:`\\log \\pi_y` for the class prior and, for each class :math:`y`,

.. math::

    \\mathcal L(x, y) = E_{q(z|x,y)}[\\log p_\\theta(x \\mid y, z)] - KL(q(z \\mid x, y) \\,\\|\\, N(0, I))
        + \\log \\pi_y \\qquad \\text{(VAE: a lower bound on } \\log p_\\theta(x, y)\\text{)},

    \\mathcal L_S(x, y) = \\log \\frac1S \\sum_{s=1}^S
        \\frac{p_\\theta(x \\mid y, z_s)\\, N(z_s; 0, I)}{q(z_s \\mid x, y)} + \\log \\pi_y,
        \\quad z_s \\sim q(z \\mid x, y) \\qquad \\text{(IWAE)}.

(For the ``"mean_field"`` family :math:`q(z \\mid x, y) = q(z \\mid x)`.) The unlabelled bound sums y
out exactly:

.. math:: \\mathcal U(x) = \\sum_y q(y \\mid x)\\, \\mathcal L(x, y) + H(q(y \\mid x))
          = \\sum_y q(y \\mid x) [\\mathcal L(x, y) - \\log q(y \\mid x)],

and the same expression with :math:`\\mathcal L_S` is the IWAE version :math:`\\mathcal U_S`.

*Why this IWAE form.* The alternative
:math:`\\log \\sum_y \\frac1S \\sum_s p(x, y, z^y_s) / q(z^y_s \\mid x, y) = \\operatorname{logsumexp}_y
\\mathcal L_S(x, y)` is tighter for a given :math:`q(y|x)` but does not depend on :math:`q(y \\mid x)` at
all, so the unlabelled data would stop training the classifier, which is the point of M2. The form
above keeps the classifier's semi-supervised signal and is still tight where it matters: its gap to
:math:`\\log p_\\theta(x)` is :math:`KL(q(y|x) \\| p_\\theta(y|x))` (closed by the categorical
classifier, which can represent any :math:`p_\\theta(y|x)`) plus the z-gap of each
:math:`\\mathcal L_S(x, y)`, which vanishes as :math:`S \\to \\infty`. With :math:`S = 1` it equals the
VAE version in expectation (the VAE version uses the analytic KL).

The training objective over a data set with labelled points :math:`\\mathcal D_l` and unlabelled
:math:`\\mathcal D_u` is

.. math:: J = \\sum_{x \\in \\mathcal D_u} \\mathcal U(x) + \\gamma \\sum_{(x, y) \\in \\mathcal D_l}
          \\mathcal L(x, y) + \\alpha \\sum_{(x, y) \\in \\mathcal D_l} \\log q(y \\mid x).

:func:`m2_terms` returns the per-point terms in an :class:`M2Record`; the per-point objective
``objective_i`` sums to :math:`J`. Training minimises :math:`-J / n` estimated on mini-batches.

Data for training is one float array of shape ``(n, D + 2)``: ``[x, y, labelled]`` (:func:`pack`), so it
passes through :func:`vaefail.training.optimise` unchanged; ``y`` of an unlabelled row is ignored.

Sampling: each point gets its own key; the ``S`` standard-normal draws :math:`\\epsilon_s` are shared by all
classes (common random numbers), so with the ``"mean_field"`` family every class sees the same
:math:`z_s = \\mu(x) + \\sigma(x) \\epsilon_s`, drawn exactly as :func:`vaefail.objectives.elbo` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from vaefail.errors import DataError, require
from vaefail.models import LOG_2PI
from vaefail.objectives import _normal_logpdf, check_objective, gaussian_kl_to_standard
from vaefail.semisupervised.model import M2


class M2Record(NamedTuple):
    """Per-datapoint terms of the M2 objective, each of shape ``(n,)`` (``class_bounds``: ``(n, C)``).

    Attributes
    ----------
    class_bounds
        :math:`\\mathcal L(x, c)` for every class ``c`` (lower bounds on :math:`\\log p_\\theta(x, c)`).
    unlabelled
        :math:`\\mathcal U(x)` (a lower bound on :math:`\\log p_\\theta(x)`), for every point.
    labelled
        :math:`\\mathcal L(x, y)` at the point's given label (meaningful for labelled rows).
    log_qy
        :math:`\\log q(y \\mid x)` at the given label.
    objective
        The point's share of :math:`J`: :math:`\\mathcal U(x)` if unlabelled, else
        :math:`\\gamma \\mathcal L(x, y) + \\alpha \\log q(y \\mid x)`.
    """

    class_bounds: jax.Array
    unlabelled: jax.Array
    labelled: jax.Array
    log_qy: jax.Array
    objective: jax.Array


def pack(x: np.ndarray, y: np.ndarray | None, labelled: np.ndarray | None = None) -> jax.Array:
    """Pack observations, labels and the labelled mask into one float32 array ``(n, D + 2)``.

    Parameters
    ----------
    x
        Observations, shape ``(n, D)``.
    y
        Integer labels, shape ``(n,)`` (``None``: all points unlabelled).
    labelled
        Boolean mask, shape ``(n,)``: which labels the objective may use (default: all when ``y`` is
        given). Labels of unlabelled rows are ignored.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise DataError(f"x must be a finite array of shape (n, D), got shape {x.shape}")
    n = x.shape[0]
    y_arr = np.zeros(n, dtype=np.int64) if y is None else np.asarray(y)
    if y_arr.shape != (n,) or not np.issubdtype(y_arr.dtype, np.integer) or np.any(y_arr < 0):
        raise DataError(
            f"labels must be non-negative integers of shape ({n},), got {y_arr.dtype} {y_arr.shape}"
        )
    if labelled is None:
        mask = np.full(n, y is not None)
    else:
        mask = np.asarray(labelled, dtype=bool)
        if mask.shape != (n,):
            raise DataError(f"labelled mask must have shape ({n},), got {mask.shape}")
        if y is None and mask.any():
            raise DataError("points are marked labelled but no labels were given")
    return jnp.asarray(np.column_stack([x, y_arr, mask]), dtype=jnp.float32)


def unpack(data: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inverse of :func:`pack`: ``x (n, D)``, ``y (n,)`` int32, ``labelled (n,)`` float (0 or 1)."""
    return data[:, :-2], data[:, -2].astype(jnp.int32), data[:, -1]


def _point_class_bounds(
    model: M2, x: jax.Array, key: jax.Array, objective: str, num_samples: int
) -> jax.Array:
    """:math:`\\mathcal L(x, c)` (VAE) or :math:`\\mathcal L_S(x, c)` (IWAE) for all classes, ``(C,)``.

    For a flow :math:`q(z \\mid \\cdot)` the VAE bound's KL is Monte-Carlo on the same samples,
    :math:`(1/S) \\sum_s [\\log p_\\theta(x|c, z_s) + \\log p(z_s) - \\log q(z_s|x, c)]`, and the IWAE
    bound uses the flow's exact :math:`\\log q`."""
    classes = jnp.arange(model.n_classes)

    def log_lik_of(z: jax.Array) -> jax.Array:  # (C, S, K) -> (C, S)
        return jax.vmap(lambda c, zc: jax.vmap(lambda zs: model.log_likelihood(x, c, zs))(zc))(classes, z)

    if model.is_flow:
        eps = jax.random.normal(key, (num_samples, model.latent_dim), dtype=x.dtype)
        z, log_q = model.sample_all(x, eps)
        log_w = log_lik_of(z) + jnp.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=-1) - log_q
        if objective == "vae":
            return jnp.mean(log_w, axis=1) + model.class_log_prior()
        return logsumexp(log_w, axis=1) - jnp.log(num_samples) + model.class_log_prior()
    mu, log_std = model.encode_all(x)  # (C, K)
    eps = jax.random.normal(key, (num_samples, model.latent_dim), dtype=mu.dtype)
    z = mu[:, None, :] + jnp.exp(log_std)[:, None, :] * eps[None]  # (C, S, K)
    log_lik = log_lik_of(z)  # (C, S)
    if objective == "vae":
        bound = jnp.mean(log_lik, axis=1) - gaussian_kl_to_standard(mu, log_std)
    else:
        log_prior = jnp.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=-1)
        log_q = _normal_logpdf(z, mu[:, None, :], log_std[:, None, :])
        bound = logsumexp(log_lik + log_prior - log_q, axis=1) - jnp.log(num_samples)
    return bound + model.class_log_prior()


def m2_terms(
    model: M2,
    data: jax.Array,
    key: jax.Array,
    *,
    objective: str = "vae",
    num_samples: int = 1,
    gamma: float = 1.0,
    alpha: float = 1.0,
) -> M2Record:
    """Per-point terms of the M2 objective for packed data (see the module docstring for the math).

    Parameters
    ----------
    model
        One M2 model.
    data
        Packed data ``(n, D + 2)`` from :func:`pack`.
    key
        PRNG key; point ``i`` uses ``split(key, n)[i]``.
    objective
        ``"vae"`` (analytic KL, ``num_samples`` reconstruction samples) or ``"iwae"`` (``S = num_samples``).
    num_samples
        Monte-Carlo / importance samples per point and class.
    gamma, alpha
        Weights of the labelled bound and of the labelled classification term.
    """
    x, y, labelled = unpack(data)
    keys = jax.random.split(key, x.shape[0])

    def point(xi, yi, ki):
        bounds = _point_class_bounds(model, xi, ki, objective, num_samples)
        log_q = model.class_log_probs(xi)
        u = jnp.sum(jnp.exp(log_q) * (bounds - log_q))
        return bounds, u, bounds[yi], log_q[yi]

    bounds, u, lab, log_qy = jax.vmap(point)(x, y, keys)
    obj = jnp.where(labelled > 0.5, gamma * lab + alpha * log_qy, u)
    return M2Record(class_bounds=bounds, unlabelled=u, labelled=lab, log_qy=log_qy, objective=obj)


@dataclass(frozen=True)
class M2Objective:
    """The M2 objective with fixed options, a small hashable value (see
    :class:`vaefail.objectives.Objective`): calling it gives the training loss ``-(1/n) sum_i objective_i``
    on a packed batch, with the :class:`M2Record` as aux output.

    ``num_samples`` is used as given (:func:`m2_loss_fn` sets it to 1 for the VAE's training loss).
    """

    name: str = "vae"
    num_samples: int = 1
    gamma: float = 1.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_m2_options(self.name, self.num_samples, self.gamma, self.alpha)

    def terms(self, model: M2, data: jax.Array, key: jax.Array) -> M2Record:
        """:func:`m2_terms` with these options."""
        return m2_terms(model, data, key, objective=self.name, num_samples=self.num_samples,
                        gamma=self.gamma, alpha=self.alpha)

    def __call__(self, model: M2, batch: jax.Array, key: jax.Array) -> tuple[jax.Array, M2Record]:
        record = self.terms(model, batch, key)
        return -jnp.mean(record.objective), record


@dataclass(frozen=True)
class M2MeanObjective:
    """Validation score, a hashable value: ``score(model, (packed data, key))`` is the mean per-point share
    of J (higher is better)."""

    objective: M2Objective

    def __call__(self, model: M2, data_and_key: tuple[jax.Array, jax.Array]) -> jax.Array:
        return jnp.mean(self.objective.terms(model, *data_and_key).objective)


def m2_loss_fn(
    objective: str = "vae", num_samples: int = 1, gamma: float = 1.0, alpha: float = 1.0
) -> M2Objective:
    """Training loss ``-(1/n) sum_i objective_i`` on a packed batch, with the record as aux output.

    For ``"vae"`` one reconstruction sample per point is used (``num_samples`` is the IWAE ``S``).
    """
    check_m2_options(objective, num_samples, gamma, alpha)
    return M2Objective(objective, num_samples if objective == "iwae" else 1, float(gamma), float(alpha))


def check_m2_options(objective: str, num_samples: int, gamma: float, alpha: float) -> None:
    """Raise a :class:`~vaefail.errors.ConfigError` for an unknown objective or impossible weights."""
    check_objective(objective, num_samples)
    for name, value in (("gamma", gamma), ("alpha", alpha)):
        require(
            isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
            and value >= 0,
            f"{name} must be a finite number >= 0, got {value!r}",
        )
