"""Known-answer tests of the optimal-Gaussian bound ELBO* and the three-way split of -ELBO."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from vaefail.benchmarks import get_benchmark
from vaefail.errors import ConfigError
from vaefail.metrics.likelihood import decode_np, exact_log_likelihood, refine_per_point, refined_grid_size
from vaefail.metrics.optimal import decompose, optimal_bound, truth_decomposition
from vaefail.models import TrueDecoder, make_vae


def embedded(bench, k, key=0):
    """The benchmark's true decoder in a model with ``K = k`` (extra coordinates ignored)."""
    return make_vae(bench.x_dim, k, bench.sigma_eps, key=jax.random.PRNGKey(key),
                    decoder=TrueDecoder(f_gt=bench.f_gt, true_latent_dim=1))


@pytest.fixture(scope="module")
def linear_x(linear_bench):
    return linear_bench.sample(jax.random.PRNGKey(21), 100).x


def test_linear_truth_has_no_gaps(linear_bench, linear_exact, linear_x):
    """Gaussian posterior: ELBO* = log p; the exact encoder also has no amortisation gap."""
    opt = optimal_bound(linear_bench, linear_x)
    np.testing.assert_allclose(opt.elbo_star, linear_bench.log_prob(linear_x), atol=1e-8)
    dec = truth_decomposition(linear_bench, linear_exact, linear_x, jax.random.PRNGKey(0), elbo_samples=200)
    assert np.max(np.abs(dec.approximation_gap)) < 1e-8
    assert np.max(np.abs(dec.amortisation_gap)) < 2e-4  # float32 rounding of the exact encoder's ELBO
    d = dec.to_dict()
    total = d["neg_log_p"]["mean"] + d["approximation_gap"]["mean"] + d["amortisation_gap"]["mean"]
    assert abs(total - d["neg_elbo"]["mean"]) < 1e-9
    json.dumps(d, allow_nan=False)


def test_linear_truth_embedded_at_k2_has_no_gap(linear_bench, linear_x):
    """K = 2 grid method: the extra dimension's optimal q is the prior, the posterior stays Gaussian."""
    opt = optimal_bound(embedded(linear_bench, 2), linear_x[:40], grid_size=301)
    np.testing.assert_allclose(opt.log_p, linear_bench.log_prob(linear_x[:40]), atol=1e-5)
    assert np.max(np.abs(opt.gap)) < 1e-3
    np.testing.assert_allclose(opt.std[:, 1], 1.0, atol=1e-3)


def test_quadratic_symmetric_modes_cost_log_two():
    """x in (0.05, 0.15): two mirror-image, well separated, nearly Gaussian modes: gap = log 2."""
    bench = get_benchmark("quadratic")
    x = bench.sample(jax.random.PRNGKey(2), 1000).x
    x = x[(x[:, 0] > 0.05) & (x[:, 0] < 0.15)]
    assert len(x) > 100
    opt = optimal_bound(bench, x)
    assert np.max(np.abs(opt.gap - math.log(2))) < 0.01


def _unequal_modes():
    """f(z) = (z - 0.3)^2, sigma = 0.05, x = 1: roots z = -0.7 and 1.3 with equal slopes |f'| = 2, so the
    modes have equal widths and masses in the ratio of the prior, phi(-0.7) : phi(1.3)."""
    model = make_vae(1, 1, 0.05, key=jax.random.PRNGKey(0),
                     decoder=TrueDecoder(f_gt=lambda z: (z - 0.3) ** 2, true_latent_dim=1))
    heavy = math.exp(-0.5 * 0.7**2) / (math.exp(-0.5 * 0.7**2) + math.exp(-0.5 * 1.3**2))
    return model, np.array([[1.0]]), heavy


@pytest.mark.parametrize("k, method", [(1, "grid"), (2, "grid"), (2, "svi"), (3, "svi")])
def test_the_optimiser_picks_the_heavier_of_two_unequal_modes(k, method):
    """The best Gaussian sits on the heavier mode and pays about -log(its mass), whatever the method."""
    base, x, heavy = _unequal_modes()
    model = make_vae(1, k, 0.05, key=jax.random.PRNGKey(1), decoder=base.decoder)
    opt = optimal_bound(model, x, jax.random.PRNGKey(3), method=method, grid_size=601)
    log_p = exact_log_likelihood(base, x).per_point
    gap = log_p - opt.elbo_star  # the same exact log p for the svi estimate (K = 3 would importance-sample)
    assert abs(opt.mean[0, 0] - (-0.7)) < 0.02
    assert abs(gap[0] - (-math.log(heavy))) < 0.01 + 3 * math.sqrt(opt.mc_var[0])
    assert -math.log(heavy) < 0.6  # the lighter mode would cost -log(1 - heavy) = 1.04


def test_k2_grid_and_svi_agree_on_a_k2_model():
    """Two independent optimisers of ELBO* on a (random) K = 2 MLP decoder, on its own data."""
    model = make_vae(2, 2, 0.1, key=jax.random.PRNGKey(4), width=20)
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (60, 2)), np.float64)
    x = decode_np(model, z) + 0.1 * np.asarray(jax.random.normal(jax.random.PRNGKey(6), (60, 2)))
    grid = optimal_bound(model, x, grid_size=301)
    svi = optimal_bound(model, x, jax.random.PRNGKey(7), method="svi", log_p=grid.log_p)
    diff = svi.elbo_star - grid.elbo_star
    assert abs(diff.mean()) < 4 * svi.mc_stderr + 0.005, (diff.mean(), svi.mc_stderr)
    assert np.all(grid.gap > -1e-4)


def test_k2_quadrature_grid_is_refined_until_log_p_settles():
    """figure8's truth at K = 2 is smooth: 301^2 already meets 1e-3 nats. A steeper decoder (tanh(3 z),
    sigma 0.05: posteriors 0.017 wide, a third of the 301^2 grid's spacing) errs by 0.17 nats at 301^2;
    the refined grid is within 1e-3 of the exact value (a 1-D integral: the decoder ignores z_2)."""
    f8 = get_benchmark("figure8")
    x = f8.sample(jax.random.PRNGKey(1), 30).x
    size, change = refined_grid_size(embedded(f8, 2), x)
    assert size == 301 and change < 1e-3
    sharp = make_vae(1, 2, 0.05, key=jax.random.PRNGKey(0),
                     decoder=TrueDecoder(f_gt=lambda z: jax.numpy.tanh(3.0 * z), true_latent_dim=1))
    xs = np.linspace(-0.9, 0.9, 25)[:, None]
    size, change = refined_grid_size(sharp, xs)
    assert size > 301 and change < 1e-3
    coarse = exact_log_likelihood(sharp, xs, grid_size=301).per_point
    fine = exact_log_likelihood(sharp, xs, grid_size=size).per_point
    exact = exact_log_likelihood(make_vae(1, 1, 0.05, key=jax.random.PRNGKey(0), decoder=sharp.decoder),
                                 xs, grid_size=40001).per_point  # the same integral in 1-D, very fine
    assert np.max(np.abs(fine - exact)) < 1e-3
    assert np.max(np.abs(coarse - exact)) > 0.05


@pytest.mark.parametrize("slope", [3.0, 30.0])
def test_k2_grid_method_uses_each_points_refined_grid(slope):
    """optimal_bound's grid method gives each point the posterior grid exact_log_likelihood's refinement
    settles on for it: the same log p, and per point the same ELBO* as that size passed explicitly; and
    within the refinement's tolerance of the finest size used for all points. tanh(3 z) settles before the
    finest grid; tanh(30 z) at sigma 0.01 does not."""
    sharp = make_vae(1, 2, 0.05 if slope == 3.0 else 0.01, key=jax.random.PRNGKey(0),
                     decoder=TrueDecoder(f_gt=lambda z: jax.numpy.tanh(slope * z), true_latent_dim=1))
    xs = np.linspace(-0.9, 0.9, 12)[:, None]
    sizes, _, _ = refine_per_point(
        lambda m, idx: exact_log_likelihood(sharp, xs[idx], grid_size=m).per_point, len(xs))
    assert (sizes.max() < 1201) == (slope == 3.0)
    own = optimal_bound(sharp, xs, method="grid", steps=20)
    np.testing.assert_allclose(own.log_p, exact_log_likelihood(sharp, xs).per_point, rtol=0, atol=1e-9)
    for size in np.unique(sizes):
        idx = np.flatnonzero(sizes == size)
        given = optimal_bound(sharp, xs[idx], method="grid", grid_size=int(size), steps=20)
        np.testing.assert_allclose(own.elbo_star[idx], given.elbo_star, rtol=0, atol=1e-6)
        assert f"{idx.size} at {size}^2" in own.method
    # at the default 200 Adam steps the starts' grid no longer matters (with 20, an end point's start from
    # the 301^2 grid left ELBO* 0.017 lower)
    own = optimal_bound(sharp, xs, method="grid")
    finest = optimal_bound(sharp, xs, method="grid", grid_size=int(sizes.max()))
    assert np.max(np.abs(own.elbo_star - finest.elbo_star)) < 1e-3


def test_learned_k1_model_decomposition_adds_up():
    bench = get_benchmark("figure8")
    model = embedded(bench, 1, key=5)  # true decoder, untrained encoder: a large amortisation gap
    x = bench.sample(jax.random.PRNGKey(6), 50).x
    dec = decompose(model, x, jax.random.PRNGKey(0), elbo_samples=200)
    np.testing.assert_allclose(dec.optimal.elbo_star, optimal_bound(bench, x).elbo_star, atol=1e-3)
    assert dec.amortisation_gap.mean() > 0.5
    assert np.all(dec.approximation_gap > -1e-6)


def test_bad_input_rejected(linear_bench):
    two = make_vae(2, 3, 0.1, key=jax.random.PRNGKey(0))
    with pytest.raises(ConfigError):
        optimal_bound(two, np.zeros((3, 2)), method="grid")
    with pytest.raises(ConfigError):
        optimal_bound(two, np.zeros((3, 2)))  # svi needs a key
    with pytest.raises(ConfigError):
        optimal_bound(two, np.zeros((3, 2)), jax.random.PRNGKey(0), method="exact")
    with pytest.raises(ConfigError):
        optimal_bound("figure8", np.zeros((3, 2)))
