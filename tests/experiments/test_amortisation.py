"""Semi-amortised fine-tuning and the truth's optimal warm start run end to end and report what they say."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaefail
from vaefail.experiments.amortisation import (
    amortisation_study,
    semi_amortised_finetune,
    truth_optimal_gaussians,
)
from vaefail.metrics.optimal import optimal_bound
from vaefail.models import TrueDecoder, make_vae


def test_semi_amortised_finetune_keeps_the_linear_truth():
    """The linear truth is the ELBO's optimum with Gaussians per point (its posterior is Gaussian): started
    there, fine-tuning an MLP decoder that represents it exactly (depth 0) barely moves it."""
    bench = vaefail.get_benchmark("linear")
    w, b = np.asarray(bench.w), np.asarray(bench.b)
    model = make_vae(2, 1, bench.sigma_eps, key=jax.random.PRNGKey(0), depth=0)
    layer = lambda m: m.decoder.net.layers[0]  # noqa: E731
    model = eqx.tree_at(lambda m: (layer(m).weight, layer(m).bias), model,
                        (jnp.asarray(w[:, None], jnp.float32), jnp.asarray(b, jnp.float32)))
    x = bench.sample(jax.random.PRNGKey(1), 1000).x
    init = optimal_bound(bench, x)
    tuned = semi_amortised_finetune(model, x, jax.random.PRNGKey(2), steps=2000, init=init)
    # sign of w is not identified, but the tuned decoder stays on the truth (or its mirror image)
    w_new = np.asarray(layer(tuned).weight)[:, 0]
    assert min(np.linalg.norm(w_new - w), np.linalg.norm(w_new + w)) < 0.1 * np.linalg.norm(w)
    assert np.linalg.norm(np.asarray(layer(tuned).bias) - b) < 0.05


@pytest.mark.slow
def test_amortisation_study_runs_on_a_fitted_run():
    result = vaefail.fit("figure8", latent_dim=1, restarts=1, seed=0, steps=200, n_train=300, n_val=100,
                         n_test=100, converge=False, init_steps=50)
    out = amortisation_study(result, jax.random.PRNGKey(0), finetune_steps=50, test_points=60,
                             truth_steps=50)
    json.dumps(out, allow_nan=False)
    for name in ("learned", "truth_mlp"):
        part = out["finetune"][name]
        assert np.isfinite(part["mleo_change"]) and np.isfinite(part["neg_elbo_star_change"])
    warm = out["truth_warm_start"]
    for name in ("moments_then_elbo", "optimum_regressed", "optimum_then_elbo"):
        assert warm[name]["amortisation_gap"]["mean"] > -1e-6


@pytest.mark.slow
def test_truth_optimal_gaussians_at_k2_are_the_grid_optimum():
    """The true decoder ignores z_2, so its K = 2 optimal mean-field Gaussian is the 1-D optimum times the
    prior: the K = 2 grid method on the truth embedded in a K = 2 VAE finds the same KL (within its
    quadrature error) and no better."""
    bench = vaefail.get_benchmark("quadratic")
    x = bench.sample(jax.random.PRNGKey(0), 40).x
    mean, log_std = truth_optimal_gaussians(bench, x, 2)
    assert np.all(mean[:, 1] == 0.0) and np.all(log_std[:, 1] == 0.0)
    one_d = optimal_bound(bench, x)
    np.testing.assert_allclose(mean[:, 0], one_d.mean[:, 0])
    truth2 = make_vae(1, 2, bench.sigma_eps, key=jax.random.PRNGKey(1),
                      decoder=TrueDecoder(f_gt=bench.f_gt, true_latent_dim=1))
    grid = optimal_bound(truth2, x, method="grid", grid_size=801)
    np.testing.assert_allclose(grid.log_p, one_d.log_p, atol=1e-4)
    assert np.all(grid.gap > one_d.gap - 2e-3)  # the grid method cannot beat the closed form
    np.testing.assert_allclose(grid.gap, one_d.gap, atol=0.01)
    np.testing.assert_allclose(np.abs(grid.mean[:, 0]), np.abs(one_d.mean[:, 0]), atol=0.02)
