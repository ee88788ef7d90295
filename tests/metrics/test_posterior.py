"""Known-answer tests of posterior quality: exact KL(q || p(z|x)), Pareto k-hat and the Gaussian gap."""

from __future__ import annotations

import json
import math

import equinox as eqx
import jax
import numpy as np
import pytest
from scipy.optimize import minimize

from vaefail.benchmarks import get_benchmark
from vaefail.errors import ConfigError, DataError
from vaefail.metrics._curve import as_curve
from vaefail.metrics.posterior import _exact_kl, gaussian_gap, importance_khat, posterior_kl
from vaefail.models import TrueDecoder, make_vae


def rescaled_encoder(model, delta=0.0, scale=1.0):
    """The (depth-0) encoder's mean moved by ``delta`` and its std multiplied by ``scale``."""
    layer = lambda m: m.encoder.net.layers[0]  # noqa: E731
    bias = layer(model).bias.at[0].add(delta).at[1].add(math.log(scale))
    return eqx.tree_at(lambda m: layer(m).bias, model, bias)


@pytest.fixture(scope="module")
def linear_x(linear_bench):
    return linear_bench.sample(jax.random.PRNGKey(21), 300).x


def test_posterior_kl_is_zero_at_the_linear_optimum(linear_exact, linear_x):
    kl = posterior_kl(linear_exact, linear_x)
    assert np.max(np.abs(kl)) < 2e-4


@pytest.mark.parametrize("delta, scale", [(0.05, 1.0), (0.0, 0.5), (-0.1, 1.7)])
def test_posterior_kl_matches_the_gaussian_closed_form(linear_bench, linear_exact, linear_x, delta, scale):
    """KL(N(m + d, (c s)^2) || N(m, s^2)) = -log c + (c^2 s^2 + d^2) / (2 s^2) - 1/2."""
    s = linear_bench.posterior_moments(linear_x[:1])[1][0, 0]
    expected = -math.log(scale) + (scale**2 * s**2 + delta**2) / (2 * s**2) - 0.5
    kl = posterior_kl(rescaled_encoder(linear_exact, delta, scale), linear_x)
    np.testing.assert_allclose(kl, expected, rtol=1e-3, atol=2e-4)


def test_khat_of_a_too_narrow_encoder_matches_theory(linear_bench, linear_exact, linear_x):
    """Proposal N(m, (c s)^2) for the target N(m, s^2): the weights' tail index is 1 / (1 - c^2), so
    k = 1 - c^2 (0.91 for c = 0.3); the exact encoder gives (nearly) constant weights."""
    narrow = importance_khat(rescaled_encoder(linear_exact, 0.0, 0.3), linear_x[:100], jax.random.PRNGKey(0),
                             num_samples=2000)
    assert abs(np.median(narrow.per_point) - 0.91) < 0.1, np.median(narrow.per_point)
    assert narrow.share_above > 0.7  # k-hat's own sampling sd is about (1 + k) / sqrt(M) = 0.16
    exact = importance_khat(linear_exact, linear_x[:100], jax.random.PRNGKey(0), num_samples=500)
    assert np.all(exact.per_point == -np.inf)  # equal weights up to float32 rounding: no tail at all
    json.dumps(narrow.to_dict(), allow_nan=False)


def test_gaussian_gap_is_zero_for_a_gaussian_posterior(linear_bench, linear_exact, linear_x):
    gap = gaussian_gap(linear_bench, linear_x)
    assert np.max(np.abs(gap.per_point)) < 1e-8
    mean, std = linear_bench.posterior_moments(linear_x)
    np.testing.assert_allclose(gap.mean, mean[:, 0], atol=1e-6)
    np.testing.assert_allclose(gap.std, std[:, 0], rtol=1e-5)
    assert gap.share_above == 0.0
    model_gap = gaussian_gap(linear_exact, linear_x[:50])  # a K = 1 model: its own posterior
    assert np.max(np.abs(model_gap.per_point)) < 1e-4


def test_gaussian_gap_of_two_separated_modes_is_about_log_two():
    """quadratic at x = 0.04: t = 0.5 -/+ 0.2, two mirror-image modes 14 widths apart, each nearly
    Gaussian: the best Gaussian sits on one mode and pays log 2 plus the modes' own small skew."""
    gap = gaussian_gap(get_benchmark("quadratic"), np.array([[0.04]]))
    assert math.log(2) < gap.per_point[0] < math.log(2) + 0.02
    assert abs(abs(gap.mean[0]) - 0.524) < 0.02  # near Phi^-1(0.7), pulled in by the prior and the skew


def _brute_force(curve, x, log_p):
    """min over (m, log s) of the exact KL by Nelder-Mead from a grid of starts."""
    f = lambda th: _exact_kl(curve, x[None], np.array([th]), np.array([log_p]), 1601)[0]  # noqa: E731
    runs = [minimize(f, np.array([m0, ls]), method="Nelder-Mead",
                     options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 2000})
            for m0 in np.linspace(-2.5, 2.5, 6) for ls in (math.log(0.02), math.log(0.3))]
    return min(r.fun for r in runs)


@pytest.mark.parametrize("name", ["clusters", "figure8"])
def test_gaussian_gap_reaches_the_brute_force_minimum(name):
    bench = get_benchmark(name)
    x = bench.sample(jax.random.PRNGKey(3), 3).x
    gap = gaussian_gap(bench, x)
    curve = as_curve(bench)
    for i in range(len(x)):
        best = _brute_force(curve, x[i], gap.log_p[i])
        assert gap.per_point[i] <= best + 1e-6, (i, gap.per_point[i], best)


def test_encoder_kl_is_never_below_the_gaussian_gap():
    """For a K = 1 model, KL(q || p_theta(z|x)) >= min over Gaussians; equality needs the best q."""
    bench = get_benchmark("figure8")
    model = make_vae(2, 1, bench.sigma_eps, key=jax.random.PRNGKey(5),
                     decoder=TrueDecoder(f_gt=bench.f_gt, true_latent_dim=1))
    x = bench.sample(jax.random.PRNGKey(6), 100).x
    kl = posterior_kl(model, x)
    gap = gaussian_gap(model, x)
    assert np.all(kl >= gap.per_point - 1e-4)
    # the model's decoder is the truth, so its posterior's gap is the true posterior's gap
    np.testing.assert_allclose(gap.per_point, gaussian_gap(bench, x).per_point, atol=1e-4)
    json.dumps(gap.to_dict(), allow_nan=False)


def test_bad_input_rejected(linear_bench, linear_exact):
    two = make_vae(2, 2, 0.1, key=jax.random.PRNGKey(0))
    with pytest.raises(ConfigError):
        posterior_kl(two, np.zeros((3, 2)))
    with pytest.raises(ConfigError):
        gaussian_gap(two, np.zeros((3, 2)))
    with pytest.raises(ConfigError):
        gaussian_gap("figure8", np.zeros((3, 2)))
    with pytest.raises(DataError):
        gaussian_gap(linear_bench, np.zeros((3, 3)))
    with pytest.raises(DataError):
        posterior_kl(linear_exact, np.array([[0.0, np.nan]]))
    with pytest.raises(DataError):
        posterior_kl(linear_exact, np.zeros((3, 2)), log_p_model=np.zeros(2))


def test_best_of_starts_optimises_each_distinct_start_once():
    """Starts repeated within a point (a unimodal posterior's second-mode start is its top mode again) are
    optimised and evaluated once, and every point still gets the best of its starts and their optima."""
    from vaefail.metrics.posterior import best_of_starts

    xs = np.arange(3.0)[:, None]
    starts = np.array([[[0.0], [5.0], [5.0]], [[1.0], [1.0], [1.0]], [[2.0], [7.0], [3.0]]])
    seen = []

    def optimise(rows_x, init):
        seen.append(init[:, 0].tolist())
        return init + 0.5  # every optimum half a unit above its start

    def exact_kl(rows_x, params, lp):
        return (params[:, 0] - rows_x[:, 0] - 2.0) ** 2  # point i's best Gaussian is at i + 2

    kl, best = best_of_starts(xs, starts, np.zeros(3), optimise, exact_kl)
    assert seen == [[0.0, 5.0, 1.0, 2.0, 7.0, 3.0]]
    np.testing.assert_allclose(best[:, 0], [0.5, 1.5, 3.5])  # the candidates nearest 2, 3 and 4
    np.testing.assert_allclose(kl, [2.25, 2.25, 0.25])
