"""Known-answer tests for the ground-truth benchmarks (exact log p(x), posteriors, sampling)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import vaefail.benchmarks.base as base
from vaefail.benchmarks import (
    BENCHMARKS,
    DEFAULT_Z_GRID,
    Benchmark,
    Dataset,
    Splits,
    get_benchmark,
    list_benchmarks,
)
from vaefail.errors import ConfigError, DataError, UnknownNameError

NAMES = ["linear", "quadratic", "figure8", "clusters"]


@pytest.fixture(params=NAMES)
def bench(request) -> Benchmark:
    return get_benchmark(request.param)


def _test_points(b: Benchmark, n: int = 4) -> np.ndarray:
    """A few typical points, plus (for clusters) points half-way between two centres."""
    x = b.sample(jax.random.PRNGKey(123), n).x
    if b.name == "clusters":
        c = b.centres()
        x = np.concatenate([x, 0.5 * (c[1:3] + c[2:4]), [0.3 * c[0] + 0.7 * c[1]]])
    return x


def _mc_lik(
    b: Benchmark, x: np.ndarray, n_draws: int = 200_000, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """p(x_i | z_s) for z_s ~ N(0, 1) from an independent RNG, shape (n, n_draws); and z_s.

    Written with scipy.stats, independently of the benchmark's own likelihood code.
    """
    z = np.random.default_rng(seed).standard_normal(n_draws)
    f = b.f_gt_np(z[:, None])  # (S, D)
    lik = stats.norm.pdf(x[:, None, :], f[None], b.sigma_eps).prod(axis=-1)
    return lik, z


# --------------------------------------------------------------------------- registry and config
def test_registry_lists_the_four_unsupervised_benchmarks():
    assert list_benchmarks() == sorted(BENCHMARKS)
    assert {n for n, cls in BENCHMARKS.items() if not cls.labelled} == set(NAMES)
    for name in NAMES:
        b = get_benchmark(name)
        assert b.name == name and b.latent_dim == 1 and not b.labelled
        assert "\n" not in b.describe() and b.describe().startswith(name)


def test_unknown_benchmark_name_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        get_benchmark("figure-8")
    msg = str(info.value)
    assert all(name in msg for name in NAMES) and "Did you mean 'figure8'" in msg


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(ConfigError, match="valid parameters: sigma_eps, n_clusters, radius, beta"):
        get_benchmark("clusters", sigma=0.1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sigma", [0.0, -0.1, math.nan, math.inf, "abc", True])
def test_bad_sigma_eps_rejected(name, sigma):
    with pytest.raises(ConfigError, match="sigma_eps"):
        get_benchmark(name, sigma_eps=sigma)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("clusters", {"n_clusters": 1}, "n_clusters"),
        ("clusters", {"n_clusters": 2.5}, "n_clusters"),
        ("clusters", {"radius": 0.0}, "radius"),
        ("clusters", {"beta": -3.0}, "beta"),
        ("linear", {"w": (1.0, 2.0, 3.0)}, "w"),
        ("linear", {"b": (0.0, math.nan)}, "b"),
    ],
)
def test_bad_parameters_rejected(name, params, match):
    with pytest.raises(ConfigError, match=match):
        get_benchmark(name, **params)


def test_params_json_round_trip(bench):
    params = json.loads(json.dumps(bench.params()))
    assert "sigma_eps" in params
    assert get_benchmark(bench.name, **params).params() == bench.params()


def test_benchmarks_hash_by_identity_and_are_static_jit_args(bench):
    other = type(bench)()
    assert bench != other and len({bench, other, bench}) == 2
    # get_benchmark shares one instance per (name, parameters), so compiled code is reused across fits.
    assert get_benchmark(bench.name) is get_benchmark(bench.name)
    assert get_benchmark(bench.name, sigma_eps=0.3) is not get_benchmark(bench.name)
    f = jax.jit(lambda b, z: b.f_gt(z), static_argnums=0)
    z = jnp.linspace(-2.0, 2.0, 5)[:, None]
    np.testing.assert_allclose(f(bench, z), bench.f_gt(z), rtol=1e-6, atol=1e-6)


def test_custom_parameters_change_the_decoder():
    b = get_benchmark("linear", w=[2.0, -1.0], b=[1.0, 3.0], sigma_eps=0.5)
    np.testing.assert_allclose(b.f_gt_np(np.array([[2.0]])), [[5.0, 1.0]])
    assert b.params() == {"sigma_eps": 0.5, "w": [2.0, -1.0], "b": [1.0, 3.0]}


# --------------------------------------------------------------------------- decoder
def test_f_gt_jax_matches_numpy_and_keeps_float32(bench):
    z = np.linspace(-5.0, 5.0, 2001)[:, None]
    out = bench.f_gt(z.astype(np.float32))
    assert out.dtype == jnp.float32 and out.shape == (2001, bench.x_dim)
    ref = bench.f_gt_np(z)
    assert ref.dtype == np.float64 and ref.shape == (2001, bench.x_dim)
    # float32 rounding of t = Phi(z) is amplified by beta = 300 in clusters: allow 1e-4.
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4)
    # batch dimensions are preserved
    assert bench.f_gt_np(np.zeros((3, 4, 1))).shape == (3, 4, bench.x_dim)


def test_f_gt_is_jittable_vmappable_and_differentiable(bench):
    z = jnp.array([[-1.3], [-0.2533], [0.0], [0.84], [2.5]], dtype=jnp.float32)
    np.testing.assert_allclose(jax.jit(bench.f_gt)(z), bench.f_gt(z), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(bench.f_gt)(z), bench.f_gt(z), rtol=1e-6, atol=1e-6)
    jac = jax.vmap(jax.jacfwd(bench.f_gt))(z)  # (5, x_dim, 1)
    assert jac.shape == (5, bench.x_dim, 1) and bool(jnp.all(jnp.isfinite(jac)))
    grad = jax.grad(lambda zz: jnp.sum(bench.f_gt(zz) ** 2))(z)
    assert bool(jnp.all(jnp.isfinite(grad)))
    # the derivative matches a float64 central finite difference of the numpy decoder
    h = 1e-5
    fd = (bench.f_gt_np(np.asarray(z, np.float64) + h) - bench.f_gt_np(np.asarray(z) - h)) / (2 * h)
    np.testing.assert_allclose(np.asarray(jac[..., 0]), fd, rtol=2e-3, atol=2e-3)


def test_known_decoder_values():
    assert get_benchmark("quadratic").f_gt_np(np.array([[0.0]]))[0, 0] == 0.0
    np.testing.assert_allclose(get_benchmark("quadratic").f_gt_np(np.array([[-40.0]])), 0.25)
    # figure8 crosses itself at the origin where u = 3 pi / 2, i.e. t = 0.5, z = 0
    np.testing.assert_allclose(get_benchmark("figure8").f_gt_np(np.zeros((1, 1))), 0.0, atol=1e-15)
    c = get_benchmark("clusters")
    ends = c.f_gt_np(np.array([[-8.0], [8.0]]))
    np.testing.assert_allclose(ends, c.centres()[[0, -1]], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(c.centres(), axis=1), 2.0)


def test_clusters_puts_about_six_percent_of_mass_between_centres():
    """t is uniform, so the mass within the 10-90% rise of the M-1 steps is 2 (M-1) ln 9 / beta."""
    c = get_benchmark("clusters")
    t = (np.arange(2_000_000) + 0.5) / 2_000_000
    frac = c.position(t) % 1.0
    between = np.mean((frac > 0.1) & (frac < 0.9))
    assert between == pytest.approx(2 * 4 * math.log(9) / 300, rel=1e-3)
    assert 0.055 < between < 0.065


# --------------------------------------------------------------------------- sampling
def test_sample_shapes_dtypes_and_determinism(bench):
    key = jax.random.PRNGKey(3)
    d = bench.sample(key, 50)
    assert isinstance(d, Dataset) and len(d) == 50
    assert d.x.shape == (50, bench.x_dim) and d.z.shape == (50, 1)
    assert d.x.dtype == np.float64 and d.z.dtype == np.float64
    again = bench.sample(key, 50)
    np.testing.assert_array_equal(d.x, again.x)
    np.testing.assert_array_equal(d.z, again.z)
    assert not np.array_equal(d.x, bench.sample(jax.random.PRNGKey(4), 50).x)


def test_sample_noise_and_latents_have_the_right_law(bench):
    n = 20_000
    d = bench.sample(jax.random.PRNGKey(11), n)
    resid = d.x - bench.f_gt_np(d.z)
    se_mean = bench.sigma_eps / math.sqrt(n)
    np.testing.assert_array_less(np.abs(resid.mean(0)), 5 * se_mean)
    # sd of a sample sd is about sigma / sqrt(2n) = 0.5% of sigma
    np.testing.assert_allclose(resid.std(0), bench.sigma_eps, rtol=0.03)
    assert abs(d.z.mean()) < 5 / math.sqrt(n) and abs(d.z.std() - 1) < 0.03


def test_linear_sample_moments_match_closed_form():
    b = get_benchmark("linear")
    n = 40_000
    x = b.sample(jax.random.PRNGKey(5), n).x
    mean, cov = b.marginal_moments()
    np.testing.assert_allclose(cov, [[1.01, 0.5], [0.5, 0.26]])
    se = np.sqrt(np.diag(cov) / n)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * se)
    # sd of a sample covariance entry is sqrt((S_ii S_jj + S_ij^2) / n) < 0.008 here
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.04)


def test_splits_deterministic_distinct_and_sized(bench):
    s = bench.splits(n_train=30, n_val=20, n_test=10, seed=1)
    assert isinstance(s, Splits)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 20, 10)
    again = bench.splits(n_train=30, n_val=20, n_test=10, seed=1)
    for a, b in [(s.train, again.train), (s.val, again.val), (s.test, again.test)]:
        np.testing.assert_array_equal(a.x, b.x)
    firsts = [s.train.z[:10], s.val.z[:10], s.test.z[:10]]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.allclose(firsts[i], firsts[j])
    other = bench.splits(n_train=30, n_val=20, n_test=10, seed=2)
    assert not np.allclose(other.train.x, s.train.x)


@pytest.mark.parametrize("n", [0, -3, 2.0, True])
def test_bad_sample_sizes_rejected(n):
    b = get_benchmark("linear")
    with pytest.raises(ConfigError, match="n"):
        b.sample(jax.random.PRNGKey(0), n)
    with pytest.raises(ConfigError, match="n_val"):
        b.splits(n_val=n)


# --------------------------------------------------------------------------- exact log p(x)
def test_log_prob_integrates_to_one(bench):
    """Trapezoid over an x-grid covering f_gt(z) for |z| <= 8 plus 7 sigma on each side.

    p(x) is a Gaussian(sigma) convolution, so a spacing of 0.75 sigma gives trapezoid error
    ~2 exp(-2 pi^2 / 0.75^2) ~ 1e-15 and the 7-sigma margins lose < 1e-11: we expect 1 to 1e-8.
    (For linear, |z| <= 6.5 bounds the box: the prior mass beyond is 8e-11.)
    """
    sigma = bench.sigma_eps
    zmax = 6.5 if bench.name == "linear" else 8.0
    f = bench.f_gt_np(np.linspace(-zmax, zmax, 20001)[:, None])
    axes = [
        np.arange(lo - 7 * sigma, hi + 7 * sigma + 0.75 * sigma, 0.75 * sigma)
        for lo, hi in zip(f.min(0), f.max(0), strict=True)
    ]
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    dens = np.exp(bench.log_prob(mesh.reshape(-1, bench.x_dim))).reshape(mesh.shape[:-1])
    for axis in reversed(axes):
        dens = np.trapezoid(dens, axis, axis=-1)
    assert abs(float(dens) - 1.0) < 1e-8


def test_log_prob_matches_monte_carlo(bench):
    x = _test_points(bench)
    lik, _ = _mc_lik(bench, x)
    p_hat = lik.mean(1)
    rel_se = lik.std(1) / math.sqrt(lik.shape[1]) / p_hat
    assert np.all(rel_se < 0.1)  # the check below is informative
    lp = bench.log_prob(x)
    assert lp.dtype == np.float64 and lp.shape == (x.shape[0],)
    np.testing.assert_array_less(np.abs(np.log(p_hat) - lp), 5 * rel_se + 1e-9)


def test_linear_log_prob_matches_closed_form():
    b = get_benchmark("linear", w=(1.0, 0.5), b=(0.3, -0.2))
    x = np.concatenate([b.sample(jax.random.PRNGKey(0), 200).x, [[4.0, -3.0], [0.3, -0.2]]])
    mean, cov = b.marginal_moments()
    exact = stats.multivariate_normal(mean, cov).logpdf(x)
    np.testing.assert_allclose(b.log_prob(x), exact, rtol=0, atol=1e-6)


def test_log_prob_chunking_is_consistent(monkeypatch):
    b = get_benchmark("clusters")
    x = b.sample(jax.random.PRNGKey(9), 23).x
    grid = np.linspace(-8.0, 8.0, 8001)
    dz = grid[1] - grid[0]
    ll = b.log_likelihood_grid(x, grid) + stats.norm.logpdf(grid)
    w = np.full(grid.size, dz)
    w[[0, -1]] = dz / 2
    from scipy.special import logsumexp

    expected = logsumexp(ll + np.log(w), axis=1)
    monkeypatch.setattr(base, "CHUNK_ELEMENTS", 5 * grid.size)  # 5 chunks of 5 and one of 3
    np.testing.assert_allclose(b.log_prob(x, z_grid=grid), expected, rtol=0, atol=1e-12)


def test_default_grid_converged_on_clusters_steps():
    """Points between centres sit on the steepest steps; a 2x finer grid changes nothing."""
    b = get_benchmark("clusters")
    x = _test_points(b, n=20)
    fine = np.linspace(-8.0, 8.0, 32001)
    np.testing.assert_allclose(b.log_prob(x), b.log_prob(x, z_grid=fine), rtol=0, atol=1e-9)
    assert DEFAULT_Z_GRID.dtype == np.float64 and DEFAULT_Z_GRID[0] == -8.0


def test_quadrature_is_float64_even_for_float32_input(bench):
    x = bench.sample(jax.random.PRNGKey(0), 3).x.astype(np.float32)
    assert bench.log_prob(x).dtype == np.float64
    grid, dens = bench.posterior(x, z_grid=np.linspace(-4, 4, 101))
    assert grid.dtype == np.float64 and dens.dtype == np.float64
    assert bench.log_likelihood_grid(x, grid).dtype == np.float64


# --------------------------------------------------------------------------- posterior
def test_posterior_normalised_and_mean_matches_importance_sampling(bench):
    x = _test_points(bench)
    grid, dens = bench.posterior(x)
    assert grid.shape == DEFAULT_Z_GRID.shape and dens.shape == (x.shape[0], grid.size)
    assert np.all(dens >= 0)
    np.testing.assert_allclose(np.trapezoid(dens, grid, axis=1), 1.0, rtol=0, atol=1e-10)
    mean_grid = np.trapezoid(dens * grid, grid, axis=1)
    # self-normalised importance sampling with the prior as proposal
    lik, z = _mc_lik(bench, x, seed=8)
    wsum = lik.sum(1)
    mean_is = (lik * z).sum(1) / wsum
    se = np.sqrt((lik**2 * (z - mean_is[:, None]) ** 2).sum(1)) / wsum
    np.testing.assert_array_less(np.abs(mean_grid - mean_is), 5 * se + 1e-6)


def test_linear_posterior_matches_closed_form():
    b = get_benchmark("linear", b=(0.5, 0.0))
    x = np.array([[0.0, 0.0], [1.2, 0.4], [-2.0, 1.0], [3.0, 1.5]])
    grid, dens = b.posterior(x)
    mean, std = b.posterior_moments(x)
    assert mean.shape == (4, 1) and std.shape == (4, 1)
    precision = 1 + 1.25 / 0.01
    np.testing.assert_allclose(std, 1 / math.sqrt(precision))
    np.testing.assert_allclose(mean[1, 0], (0.7 * 1.0 + 0.4 * 0.5) / 0.01 / precision)
    exact = stats.norm.pdf(grid, mean, std)
    np.testing.assert_allclose(dens, exact, rtol=0, atol=1e-8 * exact.max())
    np.testing.assert_allclose(np.trapezoid(dens * grid, grid, axis=1), mean[:, 0], atol=1e-10)


def test_quadratic_posterior_is_symmetric():
    """(Phi(z) - 0.5)^2 is even in z, so p(z|x) is symmetric and bimodal with mean 0."""
    b = get_benchmark("quadratic")
    grid, dens = b.posterior(np.array([0.01, 0.1, 0.2]))
    np.testing.assert_allclose(dens, dens[:, ::-1], rtol=1e-9, atol=1e-12)
    assert dens[1, grid.size // 2] < 1e-3 * dens[1].max()  # z = 0 is far from x = 0.1


def test_posterior_on_custom_grid():
    b = get_benchmark("figure8")
    grid = np.linspace(-5.0, 5.0, 2001)
    out_grid, dens = b.posterior(np.zeros((2, 2)), z_grid=grid)
    np.testing.assert_array_equal(out_grid, grid)
    np.testing.assert_allclose(np.trapezoid(dens, grid, axis=1), 1.0, atol=1e-10)
    # the crossing point has two distinct posterior modes (two branches through the origin)
    peaks = (dens[0, 1:-1] > dens[0, :-2]) & (dens[0, 1:-1] > dens[0, 2:])
    assert peaks.sum() >= 2


# --------------------------------------------------------------------------- input validation
@pytest.mark.parametrize(
    "x, match",
    [
        (np.array([[0.0, math.nan]]), "NaN"),
        (np.array([[0.0, math.inf], [1.0, 1.0]]), "NaN or inf in 1 row"),
        (np.zeros((3, 3)), r"shape \(n, 2\)"),
        (np.zeros(4), r"shape \(n, 2\)"),
        (np.zeros((2, 2, 2)), r"shape \(n, 2\)"),
        ([["a", "b"]], "numeric"),
    ],
)
def test_bad_x_rejected(x, match):
    b = get_benchmark("figure8")
    for fn in (b.log_prob, b.posterior, lambda xx: b.log_likelihood_grid(xx, DEFAULT_Z_GRID)):
        with pytest.raises(DataError, match=match):
            fn(x)


def test_one_dimensional_x_accepted_for_quadratic():
    b = get_benchmark("quadratic")
    np.testing.assert_array_equal(b.log_prob(np.array([0.1, 0.2])), b.log_prob([[0.1], [0.2]]))
    with pytest.raises(DataError, match=r"shape \(n, 1\)"):
        b.log_prob(np.zeros((2, 2)))


@pytest.mark.parametrize(
    "grid", [np.array([0.0]), np.array([0.0, 0.0, 1.0]), np.zeros((2, 2)), [0.0, math.nan]]
)
def test_bad_z_grid_rejected(grid):
    b = get_benchmark("linear")
    with pytest.raises(DataError, match="z_grid"):
        b.log_prob(np.zeros((1, 2)), z_grid=grid)
    with pytest.raises(DataError, match="z_grid"):
        b.posterior(np.zeros((1, 2)), z_grid=grid)


def test_log_likelihood_grid_accepts_any_z_values():
    b = get_benchmark("linear")
    z = np.array([0.5, -1.0, 0.5])
    ll = b.log_likelihood_grid(np.array([[0.5, 0.25]]), z)
    np.testing.assert_allclose(ll[0, [0, 2]], 2 * stats.norm.logpdf(0.0, scale=0.1))
    assert ll.shape == (1, 3) and ll[0, 1] < ll[0, 0]
