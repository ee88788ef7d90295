"""The ELBO split into the maximum-likelihood objective (MLEO) and the posterior-matching objective (PMO).

For data ``x ~ p_gt(x)`` the expected negative ELBO splits exactly as

    -E_p_gt[ELBO(x)] = -E_p_gt[log p_gt(x)]                     (entropy of the data, a constant)
                       + KL(p_gt(x) || p_theta(x))                  (MLEO)
                       + E_p_gt[KL(q(z|x) || p_theta(z|x))]          (PMO),

because ``log p_theta(x) - ELBO(x) = KL(q(z|x) || p_theta(z|x))`` for every ``x``. Both terms are
estimated as sample means over a test set drawn from ``p_gt``, from the per-point differences

    MLEO_i = log p_gt(x_i) - log p_theta(x_i),      PMO_i = log p_theta(x_i) - ELBO(x_i),

so ``mean(MLEO_i) + mean(PMO_i) = mean(log p_gt(x_i)) - mean(ELBO(x_i))`` holds exactly on the sample.
``log p_gt`` is exact (the benchmark's quadrature); ``log p_theta`` is the best available: exact quadrature
for ``K <= 2``, else importance sampling with ``S`` samples. That estimate is biased low (Jensen), which
biases MLEO up and PMO down by the same amount (the sum is unaffected). The bias is about
``Var[w] / (2 S E[w]^2)`` only when the weights have finite variance (an encoder that covers the
posterior); when the encoder misses a mode of ``p_theta(z|x)`` the bias is about ``-log`` of the mass it
covers and does not shrink with ``S`` until a draw lands in the missed mode, which for a narrow encoder
may take far more samples than are practical (measured: 0.035 nats/point at both ``S = 1,000`` and
``S = 100,000`` for a figure8 ``K = 1`` model, see :func:`vaefail.metrics.likelihood.log_likelihood`).
Pareto k-hat above 0.7 flags it; the optimal-Gaussian bounds (:mod:`vaefail.metrics.optimal`) and
quadrature avoid it for ``K <= 2``.

:func:`truth_comparison` applies the same split to the learned model and to the ground-truth model (true
decoder with its best encoder): the truth has MLEO = 0 but pays PMO; the ELBO's optimum may trade some
MLEO for a smaller PMO, and then the learned model's ELBO is *higher* than the truth's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from vaefail.errors import DataError, require
from vaefail.metrics._stats import Estimate, check_per_point, check_x, elbo_per_point
from vaefail.metrics.likelihood import exact_log_likelihood, log_likelihood
from vaefail.models import VAE


@dataclass(frozen=True)
class ElboSplit:
    """Per-point terms of the ELBO split on one data sample.

    Attributes
    ----------
    elbo
        ``ELBO(x_i)``, shape ``(n,)``.
    log_p_model
        ``log p_theta(x_i)`` (exact or importance-sampled, see ``method``), shape ``(n,)``.
    log_p_true
        ``log p_gt(x_i)``, shape ``(n,)``, or ``None`` when the data's true density is unknown (then only
        PMO is available).
    method
        How ``log p_theta`` was computed: ``"quadrature"`` or ``"importance sampling (S=...)"``.
    """

    elbo: np.ndarray
    log_p_model: np.ndarray
    log_p_true: np.ndarray | None
    method: str

    @property
    def pmo(self) -> Estimate:
        """``E_p(x)[KL(q(z|x) || p_theta(z|x))]``: mean of ``log p_theta(x_i) - ELBO(x_i)`` (>= 0 up to
        noise)."""
        return Estimate.of(self.log_p_model - self.elbo)

    @property
    def mleo(self) -> Estimate | None:
        """``KL(p_gt(x) || p_theta(x))``: mean of ``log p_gt(x_i) - log p_theta(x_i)``; ``None`` without
        the truth."""
        if self.log_p_true is None:
            return None
        return Estimate.of(self.log_p_true - self.log_p_model)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: means with standard errors of ELBO, log p_theta, log p_gt, MLEO and PMO."""
        mleo = self.mleo
        return {
            "method": self.method,
            "n": int(self.elbo.size),
            "elbo": Estimate.of(self.elbo).to_dict(),
            "log_p_model": Estimate.of(self.log_p_model).to_dict(),
            "log_p_true": None if self.log_p_true is None else Estimate.of(self.log_p_true).to_dict(),
            "mleo": None if mleo is None else mleo.to_dict(),
            "pmo": self.pmo.to_dict(),
        }


def best_log_likelihood(
    model: VAE, x: np.ndarray, key: jax.Array, *, num_samples: int = 1000, exact: bool | None = None
) -> tuple[np.ndarray, str]:
    """``log p_theta(x_i)`` per point by the most accurate available method, and its name.

    ``exact=None`` chooses quadrature for ``K <= 2`` (:func:`exact_log_likelihood`) and importance sampling
    with ``num_samples`` samples otherwise (:func:`log_likelihood`).
    """
    use_exact = model.latent_dim <= 2 if exact is None else exact
    if use_exact:
        return exact_log_likelihood(model, x).per_point, "quadrature"
    ll = log_likelihood(model, x, key, num_samples)
    return ll.per_point, f"importance sampling (S={num_samples})"


def elbo_split(
    model: VAE,
    x: np.ndarray,
    key: jax.Array,
    *,
    log_p_true: Any = None,
    log_p_model: np.ndarray | None = None,
    num_samples: int = 1000,
    elbo_samples: int = 100,
    exact: bool | None = None,
) -> ElboSplit:
    """Split the negative ELBO of ``model`` on ``x`` into MLEO and PMO (module docstring).

    Parameters
    ----------
    model
        A single VAE.
    x
        Data, shape ``(n, D)``, assumed drawn from the true ``p_gt(x)`` (a test set).
    key
        PRNG key (ELBO samples, and importance samples when needed).
    log_p_true
        Exact ``log p_gt(x_i)``: a per-point array of shape ``(n,)``, or anything with a
        ``log_prob(x)`` method (a benchmark). ``None``: MLEO is not reported.
    log_p_model
        Precomputed ``log p_theta(x_i)`` to reuse (e.g. from :func:`exact_log_likelihood`); else computed
        with :func:`best_log_likelihood`.
    num_samples
        Importance samples when ``log p_theta`` is importance-sampled.
    elbo_samples
        Monte-Carlo samples per point of the ELBO's reconstruction term.
    exact
        Force (``True``) or forbid (``False``) quadrature for ``log p_theta``; default: quadrature if
        ``K <= 2``.

    Returns
    -------
    ElboSplit
        Per-point terms; ``.mleo`` and ``.pmo`` give the means with standard errors.
    """
    xs = check_x(x, model.x_dim)
    n = xs.shape[0]
    require(n >= 2, "elbo_split needs at least 2 points (for a standard error)")
    k_elbo, k_ll = jax.random.split(key)
    if log_p_model is None:
        lp_model, method = best_log_likelihood(model, xs, k_ll, num_samples=num_samples, exact=exact)
    else:
        lp_model, method = check_per_point(log_p_model, n, "log_p_model"), "given"
    lp_true = None
    if log_p_true is not None:
        if hasattr(log_p_true, "log_prob"):
            lp_true = np.asarray(log_p_true.log_prob(xs), np.float64)
        else:
            lp_true = check_per_point(log_p_true, n, "log_p_true")
    return ElboSplit(
        elbo=elbo_per_point(model, xs, k_elbo, elbo_samples),
        log_p_model=lp_model,
        log_p_true=lp_true,
        method=method,
    )


def truth_comparison(
    learned: VAE,
    truth: VAE,
    x: np.ndarray,
    key: jax.Array,
    *,
    log_p_true: Any = None,
    num_samples: int = 1000,
    elbo_samples: int = 100,
) -> dict[str, Any]:
    """The ground-truth model's ELBO against the learned model's, on the same data, with their splits.

    ``truth`` is the true decoder with its *best encoder* (the encoder trained with the decoder fixed at
    ``f_gt``; see :func:`vaefail.mfg.truth_model`): the best ELBO the true generative model can reach
    in the variational family. If the learned model's ELBO is higher, the truth is not the ELBO's global
    optimum - the paper's central claim - and the splits show the trade (the learned model's larger MLEO
    bought a smaller PMO).

    The difference is paired: ``d_i = ELBO_truth(x_i) - ELBO_learned(x_i)`` on the same points, mean with
    standard error ``std(d) / sqrt(n)``. Negative: the learned model beats the truth.

    Parameters
    ----------
    learned, truth
        Two single VAEs with the same ``x_dim``.
    x
        Test data from ``p_gt``, shape ``(n, D)``.
    key
        PRNG key.
    log_p_true
        As in :func:`elbo_split` (array or benchmark); when given, both models' MLEO/PMO are reported.
    num_samples, elbo_samples
        As in :func:`elbo_split`.

    Returns
    -------
    dict
        JSON-ready: ``elbo_learned``, ``elbo_truth``, ``elbo_truth_minus_learned`` (each ``{mean, stderr,
        ci, confidence}``), ``truth_beats_learned`` (``True`` if the truth's ELBO is higher by more than
        2 standard errors, ``False`` if lower by more than 2, ``None`` if undecided) and ``learned`` /
        ``truth``: each model's :meth:`ElboSplit.to_dict`.
    """
    if learned.x_dim != truth.x_dim:
        raise DataError(f"models have different x_dim: {learned.x_dim} and {truth.x_dim}")
    xs = check_x(x, learned.x_dim)
    k_learned, k_truth = jax.random.split(key)
    if log_p_true is not None and hasattr(log_p_true, "log_prob"):
        log_p_true = np.asarray(log_p_true.log_prob(xs), np.float64)
    splits = {
        "learned": elbo_split(learned, xs, k_learned, log_p_true=log_p_true, num_samples=num_samples,
                              elbo_samples=elbo_samples),
        "truth": elbo_split(truth, xs, k_truth, log_p_true=log_p_true, num_samples=num_samples,
                            elbo_samples=elbo_samples),
    }
    diff = Estimate.of(splits["truth"].elbo - splits["learned"].elbo)
    verdict = None
    if diff.mean > 2 * diff.stderr:
        verdict = True
    elif diff.mean < -2 * diff.stderr:
        verdict = False
    return {
        "elbo_learned": Estimate.of(splits["learned"].elbo).to_dict(),
        "elbo_truth": Estimate.of(splits["truth"].elbo).to_dict(),
        "elbo_truth_minus_learned": diff.to_dict(),
        "truth_beats_learned": verdict,
        "learned": splits["learned"].to_dict(),
        "truth": splits["truth"].to_dict(),
    }
