"""Known-answer tests for the labelled benchmarks: exact p(x|y), p(x), p(y|x), p(z|x, y), Bayes accuracy."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
from scipy import stats

import vaefail
from vaefail.benchmarks import (
    BENCHMARKS,
    LabelledBenchmark,
    LabelledDataset,
    Semicircle,
    SharedLine,
    get_benchmark,
    list_benchmarks,
)
from vaefail.errors import ConfigError, DataError

LABELLED = ["semicircle", "shared_line"]
COARSE = np.linspace(-8.0, 8.0, 4001)  # converged for both benchmarks (checked below)
FAST = np.linspace(-8.0, 8.0, 1001)  # still converged: the narrowest posterior bump is ~0.03 wide in z


@pytest.fixture(params=LABELLED, scope="module")
def bench(request) -> LabelledBenchmark:
    return get_benchmark(request.param)


def test_registered_and_labelled():
    assert set(LABELLED) <= set(list_benchmarks())
    for name in LABELLED:
        b = get_benchmark(name)
        assert isinstance(b, LabelledBenchmark) and b.labelled and b.n_classes == 2 and b.latent_dim == 1
        assert BENCHMARKS[name] is type(b)
        json.dumps(b.params())
        assert b.describe().startswith(name)
    assert get_benchmark("semicircle").sigma_eps == 0.05
    assert get_benchmark("semicircle", sigma_eps=0.1).sigma_eps == 0.1


def test_bad_parameters_raise():
    with pytest.raises(ConfigError):
        Semicircle(sigma_eps=-1.0)
    with pytest.raises(ConfigError):
        SharedLine(scale=0.0)
    with pytest.raises(ConfigError):
        SharedLine(w=(0.0, 0.0))
    with pytest.raises(ConfigError):
        get_benchmark("semicircle", beta=3.0)


def test_unsupervised_signature_gives_clear_error(bench):
    with pytest.raises(ConfigError, match="labelled benchmark"):
        bench.f_gt(np.zeros((3, 1)))
    with pytest.raises(ConfigError, match="labelled benchmark"):
        bench.f_gt_np(np.zeros((3, 1)))


def test_vaefail_fit_rejects_labelled_benchmark():
    with pytest.raises(ConfigError, match="labelled"):
        vaefail.fit("semicircle", restarts=2, steps=10, init_steps=10, eval_every=10, n_train=50, n_val=20,
                    n_test=20, batch_size=16)


def test_semicircle_decoder_formula():
    b = Semicircle()
    z = np.linspace(-3, 3, 7)[:, None]
    t = stats.norm.cdf(z[:, 0])
    for y, angle in ((0, np.pi * t**2), (1, np.pi * (1 - t**2))):
        want = np.stack([np.cos(angle), np.sin(angle)], axis=1)
        np.testing.assert_allclose(b.f_gt_np(np.full(7, y), z), want, atol=1e-12)
        np.testing.assert_allclose(np.asarray(b.f_gt(y, z.astype(np.float32))), want, atol=1e-5)
        np.testing.assert_allclose(np.asarray(jax.vmap(b.f_gt_class(y))(z)), want, atol=1e-5)


def test_sample_matches_generative_process(bench):
    data = bench.sample(jax.random.PRNGKey(0), 4000)
    assert isinstance(data, LabelledDataset)
    assert data.x.shape == (4000, 2) and data.z.shape == (4000, 1) and data.y.shape == (4000,)
    assert set(np.unique(data.y)) == {0, 1}
    assert abs(data.y.mean() - 0.5) < 4 * 0.5 / math.sqrt(4000)
    resid = (data.x - bench.f_gt_np(data.y, data.z)) / bench.sigma_eps
    assert stats.kstest(resid.ravel(), "norm").pvalue > 1e-3
    assert stats.kstest(data.z[:, 0], "norm").pvalue > 1e-3
    again = bench.sample(jax.random.PRNGKey(0), 4000)
    np.testing.assert_array_equal(again.y, data.y)
    splits = bench.splits(100, 50, 60, seed=3)
    assert isinstance(splits.test, LabelledDataset) and len(splits.val) == 50


def test_semicircle_class_conditionals_normalised_over_x():
    """Integrate p(x|y) over a 2-D box holding all the mass (trapezoid, spacing sigma/5).

    (For ``shared_line`` normalisation follows from the closed-form Gaussian test below.)
    """
    b = Semicircle()
    h, pad = b.sigma_eps / 5, 8 * b.sigma_eps
    g0 = np.arange(-1.0 - pad, 1.0 + pad + h / 2, h)
    g1 = np.arange(-pad, 1.0 + pad + h / 2, h)
    xx = np.stack(np.meshgrid(g0, g1, indexing="ij"), axis=-1).reshape(-1, 2)
    dens = np.exp(b.log_prob_by_class(xx, FAST)).reshape(g0.size, g1.size, 2)
    mass = np.trapezoid(np.trapezoid(dens, g1, axis=1), g0, axis=0)
    np.testing.assert_allclose(mass, 1.0, atol=1e-4)


def test_log_prob_against_monte_carlo(bench):
    """log p(x|y) by quadrature against a Monte-Carlo average over z with scipy's normal pdf."""
    x = bench.sample(jax.random.PRNGKey(5), 4).x
    z = np.random.default_rng(1).standard_normal(200_000)
    table = bench.log_prob_by_class(x)
    for y in (0, 1):
        f = bench.f_gt_np(np.full(z.size, y), z[:, None])
        lik = stats.norm.pdf(x[:, None, :], f[None], bench.sigma_eps).prod(axis=-1)
        mc = np.log(lik.mean(axis=1))
        se = lik.std(axis=1) / math.sqrt(z.size) / lik.mean(axis=1)  # delta method
        assert np.all(np.abs(table[:, y] - mc) < 5 * se + 1e-3), (table[:, y], mc, se)
    np.testing.assert_allclose(bench.log_prob_given_y(x, 1), table[:, 1])
    picked = table[[0, 1, 2, 3], [0, 1, 0, 1]]
    np.testing.assert_allclose(bench.log_prob_given_y(x, np.array([0, 1, 0, 1])), picked)
    marginal = np.log(0.5 * np.exp(table).sum(axis=1))
    np.testing.assert_allclose(bench.log_prob(x), marginal, rtol=1e-12)
    np.testing.assert_allclose(bench.log_prob_by_class(x, COARSE), table, atol=1e-10)
    np.testing.assert_allclose(bench.log_prob_by_class(x, FAST), table, atol=1e-8)


def test_class_posterior_and_latent_posteriors(bench):
    x = bench.sample(jax.random.PRNGKey(7), 6).x
    post = bench.class_posterior(x)
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    grid, given = bench.posterior(x, 0, z_grid=COARSE)
    np.testing.assert_allclose(np.trapezoid(given, grid, axis=1), 1.0, atol=1e-10)
    _, given1 = bench.posterior(x, 1, z_grid=COARSE)
    _, marginal = bench.posterior(x, z_grid=COARSE)
    np.testing.assert_allclose(marginal, post[:, :1] * given + post[:, 1:] * given1, atol=1e-10)
    np.testing.assert_allclose(np.trapezoid(marginal, grid, axis=1), 1.0, atol=1e-10)


def test_bad_inputs(bench):
    with pytest.raises(DataError):
        bench.log_prob(np.zeros((3, 3)))
    with pytest.raises(DataError):
        bench.log_prob_given_y(np.zeros((3, 2)), np.array([0, 2, 1]))
    with pytest.raises(DataError):
        bench.posterior(np.zeros((2, 2)), np.array([0.5, 1.0]))
    with pytest.raises(ConfigError):
        bench.f_gt_class(2)


def test_semicircle_bayes_rule_is_sign_of_x1():
    b = Semicircle()
    x = b.sample(jax.random.PRNGKey(11), 3000).x
    np.testing.assert_array_equal(np.argmax(b.class_posterior(x, FAST), axis=1), b.bayes_rule(x))
    # without noise the rule is right iff t^2 < 1/2, so the accuracy tends to sqrt(1/2)
    assert abs(Semicircle(sigma_eps=1e-4).bayes_accuracy() - math.sqrt(0.5)) < 1e-3


@pytest.mark.parametrize("name", LABELLED)
def test_bayes_accuracy_against_monte_carlo(name):
    b = get_benchmark(name)
    exact = b.bayes_accuracy()
    assert 0.5 < exact < 1.0
    mc, se = b.bayes_accuracy_mc(jax.random.PRNGKey(3), 10000, z_grid=FAST)
    assert abs(mc - exact) < 4 * se, (exact, mc, se)
    # the plain hit rate of the exact Bayes rule on fresh labelled samples
    data = b.sample(jax.random.PRNGKey(4), 10000)
    hits = np.argmax(b.class_posterior(data.x, FAST), axis=1) == data.y
    assert abs(hits.mean() - exact) < 4 * math.sqrt(exact * (1 - exact) / 10000)


def test_shared_line_closed_forms_match_quadrature():
    b = SharedLine()
    x = b.sample(jax.random.PRNGKey(9), 8).x
    means, covs = b.class_moments()
    closed = np.stack([stats.multivariate_normal(means[c], covs[c]).logpdf(x) for c in range(2)], axis=1)
    np.testing.assert_allclose(b.log_prob_by_class(x), closed, atol=1e-10)
    for y in (0, 1):
        mean, std = b.posterior_moments(x, y)
        grid, dens = b.posterior(x, y, z_grid=COARSE)
        q_mean = np.trapezoid(dens * grid, grid, axis=1)
        q_var = np.trapezoid(dens * (grid - q_mean[:, None]) ** 2, grid, axis=1)
        np.testing.assert_allclose(q_mean, mean, atol=1e-8)
        np.testing.assert_allclose(np.sqrt(q_var), std, atol=1e-8)
    # at x = b the classes' posterior means disagree (0 against shift / scale = 1): p(z|x) is bimodal
    m0, s0 = b.posterior_moments(np.zeros((1, 2)), 0)
    m1, s1 = b.posterior_moments(np.zeros((1, 2)), 1)
    assert abs(m0[0]) < 0.01 and abs(m1[0] - 0.96) < 0.05 and abs(m1[0] - m0[0]) > 5 * max(s0[0], s1[0])
