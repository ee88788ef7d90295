"""Acceptance: on every 1-D-latent benchmark the importance-sampled log-likelihood of a fitted model agrees
with the exact quadrature value, and where it does not agree to its own Monte-Carlo error, k-hat says so."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import vaefail
from vaefail.metrics import exact_log_likelihood, log_likelihood


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear", "quadratic", "figure8", "clusters"])
def test_importance_sampled_log_likelihood_of_a_fitted_model_matches_quadrature(name):
    result = vaefail.fit(name, latent_dim=1, restarts=2, seed=0, steps=2000, init_steps=500,
                         n_train=2000, n_val=500, n_test=1000, converge=False)
    x = result.splits().test.x
    ll = log_likelihood(result.model, x, jax.random.PRNGKey(0), num_samples=1000, pareto_k=True)
    exact = exact_log_likelihood(result.model, x, grid_size=16001, bound=8.0)
    diff = ll.mean - exact.mean
    # the acceptance criterion: within 3 standard errors of the estimate
    assert abs(diff) <= 3 * ll.stderr, (name, diff, ll.stderr)
    # the stricter, paired comparison on the same points: either IS is within 3 of its Monte-Carlo
    # standard errors (plus the paired spread), or the k-hat diagnostic flags the weights as unreliable
    paired = ll.per_point - exact.per_point
    paired_se = paired.std(ddof=1) / np.sqrt(len(paired))
    share_bad = float(np.mean(ll.khat > 0.7))
    assert abs(diff) <= 3 * max(paired_se, ll.mc_stderr) or share_bad >= 0.05, (
        name, diff, paired_se, ll.mc_stderr, share_bad
    )
    assert diff <= 3 * paired_se  # IS is biased low, never high
