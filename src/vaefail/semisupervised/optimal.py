"""M2's objective at the optimal Gaussian encoders: per-class ``ELBO*`` and the optimal unlabelled bound.

For one class ``y`` the M2 decoder is an ordinary decoder ``z -> f_theta(y, z)`` with prior ``N(0, I)`` and
noise ``sigma``, so its optimal-Gaussian bound is that of :func:`vaefail.metrics.optimal.optimal_bound`,
plus the class prior:

.. math:: \\mathrm{ELBO}^*(x, y) = \\max_{q(z)} \\mathcal L_q(x, y)
          = \\log p_\\theta(x, y) - \\min_{q} KL(q(z) \\,\\|\\, p_\\theta(z \\mid x, y)),

``q`` ranging over mean-field Gaussians and ``log p_theta(x, y) = log pi_y + log p_theta(x | y)``. For an
unlabelled point, M2's bound is :math:`\\mathcal U(x) = \\sum_y q(y|x) [\\mathcal L(x, y) - \\log q(y|x)]`.
With ``q(z|x, y)`` free per class (Kingma's family ``q(y|x) q(z|x, y)``) each :math:`\\mathcal L(x, y)` is at
most ``ELBO*(x, y)``, and for fixed per-class values :math:`\\ell_y` the maximum over the distribution
``q(y|x)`` of :math:`\\sum_y q_y (\\ell_y - \\log q_y)` is :math:`\\log \\sum_y e^{\\ell_y}`, reached at
:math:`q_y \\propto e^{\\ell_y}` (Gibbs' inequality: the sum equals
:math:`\\log \\sum_y e^{\\ell_y} - KL(q \\,\\|\\, \\mathrm{softmax}(\\ell))`). Hence the optimal unlabelled
bound

.. math:: \\mathcal U^*(x) = \\log \\sum_y \\exp \\mathrm{ELBO}^*(x, y) \\le \\log p_\\theta(x),

with gap :math:`\\log p_\\theta(x) - \\mathcal U^*(x) \\ge 0` (the approximation gap: zero exactly when every
class posterior is Gaussian) and, for a trained M2, :math:`\\mathcal U^*(x) - \\mathcal U(x) \\ge 0` (the
amortisation gap of its classifier and encoder). ``U*`` judges the *decoder* only: J's labelled share
``gamma L(x, y) + alpha log q(y|x)`` has the same optimum ``gamma ELBO*(x, y)`` in the decoder, plus a
classifier term that no decoder changes, so two decoders compare at their optimal encoders by ``U*``.

For the fully mean-field family ``q(y|x) q(z|x)`` (``z`` cannot depend on ``y``) ``U*`` is the optimum of the
larger family, an upper bound on what that family's encoders can reach; the difference is part of the
amortisation gap reported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from vaefail.benchmarks.labelled import LabelledBenchmark
from vaefail.errors import ConfigError, require
from vaefail.metrics._stats import Estimate, check_x
from vaefail.metrics.optimal import BoundDecomposition, OptimalBound, optimal_bound, optimal_only
from vaefail.models import VAE
from vaefail.semisupervised.model import M2
from vaefail.semisupervised.objectives import m2_terms, pack


class _ClassDecoder(eqx.Module):
    """``z -> f_theta(label, z)``: one class's slice of an M2 decoder."""

    decoder: eqx.Module
    label: int = eqx.field(static=True)
    n_classes: int = eqx.field(static=True)

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.decoder(jax.nn.one_hot(self.label, self.n_classes, dtype=z.dtype), z)


class _ClassEncoder(eqx.Module):
    """``x -> q(z | x, label)`` of an M2 (``q(z | x)`` for the mean-field family)."""

    model: M2
    label: int = eqx.field(static=True)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.model.encode(x, jnp.asarray(self.label))


def class_vae(model: M2, label: int) -> VAE:
    """The VAE ``p(z) = N(0, I)``, ``p(x|z) = N(f_theta(label, z), sigma^2 I)``, ``q(z|x) = q(z|x, label)``:
    class ``label``'s slice of ``model`` (its ``log p`` is ``log p_theta(x | label)``)."""
    require(0 <= label < model.n_classes, f"label must be in [0, {model.n_classes}), got {label}")
    return VAE(encoder=_ClassEncoder(model, label),  # type: ignore[arg-type]
               decoder=_ClassDecoder(model.decoder, label, model.n_classes),  # type: ignore[arg-type]
               log_sigma=model.log_sigma, learn_sigma=0.0, x_dim=model.x_dim, latent_dim=model.latent_dim)


@dataclass(frozen=True)
class _ClassSlice:
    """Class ``label`` of a labelled benchmark seen as an unlabelled one with a 1-D latent (the attributes
    :func:`vaefail.metrics.optimal.optimal_bound` reads of a benchmark)."""

    benchmark: LabelledBenchmark
    label: int

    @property
    def sigma_eps(self) -> float:
        return float(self.benchmark.sigma_eps)

    @property
    def x_dim(self) -> int:
        return int(self.benchmark.x_dim)

    @property
    def name(self) -> str:
        return f"{self.benchmark.name}[y={self.label}]"

    latent_dim = 1

    def f_gt(self, z: Any) -> jax.Array:
        return self.benchmark.f_gt(self.label, z)

    def f_gt_np(self, z: Any) -> np.ndarray:
        return self.benchmark.f_gt_np(self.label, np.asarray(z, np.float64).reshape(-1, 1))


@dataclass(frozen=True)
class M2OptimalBound:
    """Per point and class: ``log p_theta(x, y)`` and ``ELBO*(x, y)`` (both include ``log pi_y``).

    Attributes
    ----------
    log_joint
        ``log p_theta(x_i, y)``, shape ``(n, C)`` (quadrature).
    elbo_star
        ``ELBO*(x_i, y)``, shape ``(n, C)``.
    per_class
        Each class's :class:`~vaefail.metrics.optimal.OptimalBound` (without ``log pi_y``).
    method
        How each class's bound was computed.
    """

    log_joint: np.ndarray
    elbo_star: np.ndarray
    per_class: tuple[OptimalBound, ...]
    method: str

    @property
    def log_p(self) -> np.ndarray:
        """``log p_theta(x_i) = log sum_y p_theta(x_i, y)``, shape ``(n,)``."""
        return logsumexp(self.log_joint, axis=1)

    @property
    def unlabelled_star(self) -> np.ndarray:
        """``U*(x_i) = log sum_y exp ELBO*(x_i, y)``, the optimal unlabelled bound, shape ``(n,)``."""
        return logsumexp(self.elbo_star, axis=1)

    @property
    def class_posterior(self) -> np.ndarray:
        """The optimal ``q*(y | x_i) = softmax_y ELBO*(x_i, y)``, shape ``(n, C)``."""
        return np.exp(self.elbo_star - self.unlabelled_star[:, None])

    def as_optimal_bound(self) -> OptimalBound:
        """``log p_theta(x)`` and ``U*(x)`` as an :class:`OptimalBound` (its ``gap`` is
        ``log p_theta(x) - U*(x)``); ``mean``/``std`` are the optimal Gaussian of the most probable class
        under ``q*(y|x)``."""
        best = np.argmax(self.elbo_star, axis=1)
        rows = np.arange(best.size)
        mean = np.stack([b.mean for b in self.per_class], axis=1)[rows, best]
        std = np.stack([b.std for b in self.per_class], axis=1)[rows, best]
        return OptimalBound(log_p=self.log_p, elbo_star=self.unlabelled_star, mc_var=np.zeros(best.size),
                            mean=mean, std=std, method=f"per class: {self.method}; U* = logsumexp_y ELBO*")


def m2_optimal_bound(source: M2 | LabelledBenchmark, x: np.ndarray, *,
                     grid_size: int | None = None) -> M2OptimalBound:
    """``ELBO*(x, y)`` for every class of an M2 (``K <= 2``) or of a labelled benchmark (its truth).

    Each class's decoder slice goes through :func:`vaefail.metrics.optimal.optimal_bound` by quadrature
    (``K = 1``: Newton from grid starts with an exact KL; ``K = 2``: the 2-D grid method, ``grid_size``
    nodes per axis if given); ``log pi_y`` is added to both ``log p_theta(x | y)`` and ``ELBO*(x | y)``.
    """
    if isinstance(source, M2):
        if source.latent_dim > 2:
            raise ConfigError(f"M2's optimal bounds use quadrature, K <= 2 (K = {source.latent_dim})")
        xs = check_x(x, source.x_dim)
        log_pi = np.asarray(source.class_log_prior(), np.float64)
        parts = tuple(optimal_bound(class_vae(source, c), xs, method="grid", grid_size=grid_size)
                      for c in range(source.n_classes))
    elif isinstance(source, LabelledBenchmark):
        xs = check_x(x, source.x_dim)
        log_pi = np.log(np.asarray(source.class_prior(), np.float64))
        parts = tuple(optimal_bound(_ClassSlice(source, c), xs) for c in range(source.n_classes))
    else:
        raise ConfigError("m2_optimal_bound needs an M2 or a labelled benchmark, got "
                          f"{type(source).__name__}")
    return M2OptimalBound(
        log_joint=np.stack([p.log_p for p in parts], axis=1) + log_pi,
        elbo_star=np.stack([p.elbo_star for p in parts], axis=1) + log_pi,
        per_class=parts, method=parts[0].method,
    )


def m2_amortised_unlabelled(model: M2, x: np.ndarray, key: jax.Array, *, num_samples: int = 1000,
                            chunk: int = 500) -> np.ndarray:
    """The trained classifier's and encoder's unlabelled ELBO ``U(x_i)`` per point (the VAE form of
    :func:`vaefail.semisupervised.objectives.m2_terms`, ``num_samples`` reconstruction draws per point and
    class: a Monte-Carlo estimate)."""
    xs = check_x(x, model.x_dim)
    out = [np.asarray(_unlabelled_chunk(model, pack(xs[p : p + chunk], None), jax.random.fold_in(key, p),
                                        num_samples), np.float64)
           for p in range(0, xs.shape[0], chunk)]
    return np.concatenate(out)


@eqx.filter_jit
def _unlabelled_chunk(model: M2, data: jax.Array, key: jax.Array, num_samples: int) -> jax.Array:
    """``U(x_i)`` of :func:`m2_terms` (VAE form) on one packed chunk; jitted (``num_samples`` static), so
    the chunks and later calls with the same shapes share one compiled program."""
    return m2_terms(model, data, key, objective="vae", num_samples=num_samples).unlabelled


def m2_bounds(model: M2, benchmark: LabelledBenchmark, x: np.ndarray, key: jax.Array, *,
              truth_model: M2 | None = None, points: int | None = 500,
              num_samples: int = 1000) -> dict[str, Any]:
    """``-U = -log p_theta + approximation gap + amortisation gap`` for ``model`` and the truth, JSON-ready.

    On the first ``points`` points of ``x`` (all for ``K = 1`` or ``points=None``): the model's and the
    truth's :func:`m2_optimal_bound` (the truth from the benchmark's exact class posteriors), their
    amortised unlabelled ELBO (:func:`m2_amortised_unlabelled`; the truth's needs ``truth_model``, the
    true decoder with its trained classifier and encoder), and ``u_star_truth_minus_model`` =
    mean of ``U*_gt(x_i) - U*_theta(x_i)`` with its paired standard error over the points (negative: the
    learned decoder is preferred by M2's objective at the optimal encoders). ``truth_is_better``: True or
    False beyond two standard errors, else None.
    """
    xs = check_x(x, model.x_dim)
    m = xs.shape[0] if (model.latent_dim == 1 or points is None) else min(xs.shape[0], max(2, points))
    xb = xs[:m]
    k_model, k_truth = jax.random.split(key)
    learned = m2_optimal_bound(model, xb)
    truth = m2_optimal_bound(benchmark, xb)
    parts = {"model": BoundDecomposition(elbo=m2_amortised_unlabelled(model, xb, k_model,
                                                                       num_samples=num_samples),
                                         optimal=learned.as_optimal_bound()).to_dict()}
    if truth_model is not None:
        parts["truth"] = BoundDecomposition(
            elbo=m2_amortised_unlabelled(truth_model, xb, k_truth, num_samples=num_samples),
            optimal=truth.as_optimal_bound()).to_dict()
    else:
        parts["truth"] = optimal_only(truth.as_optimal_bound())
    d = Estimate.of(truth.unlabelled_star - learned.unlabelled_star)
    verdict = True if d.mean > 2 * d.stderr else (False if d.mean < -2 * d.stderr else None)
    return {"n": int(m), "bound": "U (unlabelled ELBO); U* = logsumexp_y ELBO*(x, y)", **parts,
            "u_star_truth_minus_model": d.to_dict(), "truth_is_better": verdict}
