"""Metrics: a trained model and data in, numbers out.

Nothing here imports the training layer; every function takes a model (and data, and a PRNG key where it
samples) and returns per-point arrays or JSON-ready summaries.

- :mod:`~vaefail.metrics.likelihood` - ``log p_theta(x)`` by importance sampling (with ESS, Monte-Carlo
  error and Pareto k-hat) and by exact quadrature for ``K <= 2``.
- :mod:`~vaefail.metrics.split` - the ELBO split into MLEO and PMO; the truth-vs-learned comparison.
- :mod:`~vaefail.metrics.information` - ``I(x; z_i)`` per dimension, their average, ``I(x; z)``, active units.
- :mod:`~vaefail.metrics.posterior` - exact ``KL(q || p_theta(z|x))`` (``K = 1``), k-hat, and the Gaussian
  gap ``min_N KL(N || p(z|x))`` (the paper's condition Cx1/Cz1).
- :mod:`~vaefail.metrics.curves` - learned vs true curve distance; does a curve pass a point.
- :mod:`~vaefail.metrics.pareto` - the generalized-Pareto fit behind k-hat.
- :mod:`~vaefail.metrics.evaluate` - everything for one run, as a dict and a Rich table.
- :mod:`~vaefail.metrics.downstream` - downstream tasks (latent recovery, ambiguity, denoising, robustness,
  two-sample test, outlier AUROC) for any model family through one adapter.
"""

from vaefail.metrics.curves import Crossing, CurveDistance, curve_distance, passes_through
from vaefail.metrics.evaluate import evaluate_run, evaluation_table
from vaefail.metrics.information import MutualInformation, mutual_information
from vaefail.metrics.likelihood import LogLikelihood, exact_log_likelihood, log_likelihood
from vaefail.metrics.pareto import pareto_khat
from vaefail.metrics.posterior import GaussianGap, KHat, gaussian_gap, importance_khat, posterior_kl
from vaefail.metrics.split import ElboSplit, elbo_split, truth_comparison

__all__ = [
    "Crossing",
    "CurveDistance",
    "ElboSplit",
    "GaussianGap",
    "KHat",
    "LogLikelihood",
    "MutualInformation",
    "curve_distance",
    "elbo_split",
    "evaluate_run",
    "evaluation_table",
    "exact_log_likelihood",
    "gaussian_gap",
    "importance_khat",
    "log_likelihood",
    "mutual_information",
    "pareto_khat",
    "passes_through",
    "posterior_kl",
    "truth_comparison",
]
