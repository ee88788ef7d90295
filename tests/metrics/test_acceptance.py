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
    paired = ll.per_point - exact.per_point
    paired_se = paired.std(ddof=1) / np.sqrt(len(paired))
    share_bad = float(np.mean(ll.khat > 0.7))
    # the acceptance criterion: within 3 standard errors of the estimate, wherever k-hat does not flag the
    # weights. On figure8 the mean-field encoder misses part of p(z|x) and IS stays biased low at any
    # practical S (measured with this fit: -0.118 nats at S = 1,000, -0.101 at S = 10,000, against
    # 3 s.e. = 0.104; k-hat > 0.7 on 31% / 42% of points); the fit before the column-layout change
    # happened to land at -0.084. There k-hat must say so (below) instead.
    assert abs(diff) <= 3 * ll.stderr or share_bad >= 0.2, (name, diff, ll.stderr, share_bad)
    # the stricter, paired comparison on the same points: either IS is within 3 of its Monte-Carlo
    # standard errors (plus the paired spread), or the k-hat diagnostic flags the weights as unreliable
    assert abs(diff) <= 3 * max(paired_se, ll.mc_stderr) or share_bad >= 0.05, (
        name, diff, paired_se, ll.mc_stderr, share_bad
    )
    assert diff <= 3 * paired_se  # IS is biased low, never high
