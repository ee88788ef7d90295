"""Known-answer tests of the ELBO split (MLEO, PMO) and the truth-vs-learned comparison."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import numpy as np
import pytest

from vaefail.benchmarks import get_benchmark
from vaefail.errors import DataError
from vaefail.metrics.split import elbo_split, truth_comparison
from vaefail.models import TrueDecoder, make_vae


def shifted_encoder(model, delta):
    """The model with its (depth-0) encoder's mean moved by ``delta``."""
    layer = lambda m: m.encoder.net.layers[0]  # noqa: E731
    return eqx.tree_at(lambda m: layer(m).bias, model, layer(model).bias.at[0].add(delta))


@pytest.fixture(scope="module")
def linear_x(linear_bench):
    return linear_bench.sample(jax.random.PRNGKey(11), 1000).x


def test_pmo_is_zero_and_mleo_is_zero_at_the_linear_optimum(linear_bench, linear_exact, linear_x):
    """True decoder + exact Gaussian posterior: KL(q || p(z|x)) = 0 and p_theta = p_gt."""
    split = elbo_split(linear_exact, linear_x, jax.random.PRNGKey(0), log_p_true=linear_bench)
    pmo, mleo = split.pmo, split.mleo
    assert split.method == "quadrature"
    assert abs(pmo.mean) < 3 * pmo.stderr, (pmo.mean, pmo.stderr)
    assert pmo.stderr < 0.01  # 100 reconstruction samples per point: the MC error is small
    assert abs(mleo.mean) < 1e-4  # exact vs exact: quadrature and float32 rounding only
    # the split is an identity on the sample
    total = np.mean(split.log_p_true) - np.mean(split.elbo)
    assert mleo.mean + pmo.mean == pytest.approx(total, abs=1e-12)


def test_mleo_is_zero_when_the_decoder_is_the_truth_for_any_encoder():
    """figure8's true decoder with an untrained encoder: MLEO = 0, PMO clearly positive."""
    bench = get_benchmark("figure8")
    model = make_vae(2, 1, bench.sigma_eps, key=jax.random.PRNGKey(5),
                     decoder=TrueDecoder(f_gt=bench.f_gt, true_latent_dim=1))
    x = bench.sample(jax.random.PRNGKey(6), 300).x
    split = elbo_split(model, x, jax.random.PRNGKey(1), log_p_true=bench.log_prob(x))
    assert abs(split.mleo.mean) < 1e-3
    assert split.pmo.mean > 10 * split.pmo.stderr


def test_importance_sampled_split_agrees_with_quadrature(linear_bench, linear_exact, linear_x):
    """exact=False uses IS for log p_theta; at the optimum every weight is p(x), so it is exact too."""
    split = elbo_split(linear_exact, linear_x[:200], jax.random.PRNGKey(0), log_p_true=linear_bench,
                       exact=False, num_samples=50)
    assert split.method == "importance sampling (S=50)"
    assert abs(split.mleo.mean) < 1e-3


def test_truth_comparison_recovers_a_known_posterior_mismatch(linear_bench, linear_exact, linear_x):
    """An encoder whose mean is off by delta pays KL = delta^2 / (2 s^2) per point (s = posterior std),
    so the truth (exact encoder) beats it by exactly that in ELBO."""
    delta = 0.05
    worse = shifted_encoder(linear_exact, delta)
    s = linear_bench.posterior_moments(linear_x[:1])[1][0, 0]
    expected = delta**2 / (2 * s**2)
    out = truth_comparison(worse, linear_exact, linear_x, jax.random.PRNGKey(2), log_p_true=linear_bench)
    diff = out["elbo_truth_minus_learned"]
    assert abs(diff["mean"] - expected) < 3 * diff["stderr"] + 1e-3, (diff, expected)
    assert out["truth_beats_learned"] is True
    assert out["learned"]["pmo"]["mean"] == pytest.approx(expected, abs=3 * out["learned"]["pmo"]["stderr"])
    assert abs(out["truth"]["mleo"]["mean"]) < 1e-4
    json.dumps(out, allow_nan=False)


def test_truth_against_itself_is_undecided(linear_exact, linear_x):
    out = truth_comparison(linear_exact, linear_exact, linear_x[:300], jax.random.PRNGKey(3))
    assert out["truth_beats_learned"] is None
    assert out["learned"]["mleo"] is None  # no log p_gt given


def test_bad_input_rejected(linear_exact, linear_x):
    with pytest.raises(DataError):
        elbo_split(linear_exact, linear_x[:, :1], jax.random.PRNGKey(0))
    bad = linear_x[:10].copy()
    bad[0, 1] = np.inf
    with pytest.raises(DataError):
        elbo_split(linear_exact, bad, jax.random.PRNGKey(0))
    with pytest.raises(DataError):
        elbo_split(linear_exact, linear_x[:10], jax.random.PRNGKey(0), log_p_true=np.zeros(9))
    quadratic = make_vae(1, 1, 0.1, key=jax.random.PRNGKey(0))
    with pytest.raises(DataError, match="x_dim"):
        truth_comparison(quadratic, linear_exact, linear_x[:10], jax.random.PRNGKey(0))
