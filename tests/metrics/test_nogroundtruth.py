"""Truth-free metrics: the model's optimal-Gaussian gap against closed forms, and `evaluate_data_run` for
K = 2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaefail.errors import ConfigError
from vaefail.metrics.nogroundtruth import evaluate_data_run, model_gaussian_gap
from vaefail.models import TrueDecoder, make_vae

W = np.array([[1.0, 0.8], [0.0, 0.6]])
B = np.array([0.3, -0.2])
SIGMA = 0.5


def _linear(k: int):
    """x = W[:, :k] z + b + eps: a Gaussian posterior with precision L = I + W_k^T W_k / sigma^2."""
    w = jnp.asarray(W[:, :k], jnp.float32)
    b = jnp.asarray(B, jnp.float32)
    return make_vae(2, k, SIGMA, key=jax.random.PRNGKey(0),
                    decoder=TrueDecoder(f_gt=lambda z: w @ z + b, true_latent_dim=k))


def test_k2_gap_of_a_linear_model_is_the_mean_field_closed_form():
    """For a Gaussian posterior N(m, L^-1) the best mean-field Gaussian has precisions L_ii, and
    min KL = 1/2 (sum_i log L_ii - log det L), the same at every x."""
    prec = np.eye(2) + W.T @ W / SIGMA**2
    expected = 0.5 * (np.sum(np.log(np.diag(prec))) - np.linalg.slogdet(prec)[1])
    assert expected > 0.1  # correlated posterior: a real gap to find
    x = np.random.default_rng(0).normal(size=(30, 2)) + B
    out = model_gaussian_gap(_linear(2), x)
    assert out["gap"]["mean"] == pytest.approx(expected, abs=2e-3)
    assert out["max"] - out["median"] < 2e-3
    assert out["share_above"] == (1.0 if expected > out["threshold"] else 0.0)
    assert "K = 2" in out["method"]


def test_k1_gap_of_a_linear_model_is_zero():
    x = np.random.default_rng(1).normal(size=(30, 2))
    out = model_gaussian_gap(_linear(1), x)
    assert out["max"] < 1e-4 and out["share_above"] == 0.0


def test_k3_has_no_quadrature():
    model = make_vae(2, 3, SIGMA, key=jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match="K <= 2"):
        model_gaussian_gap(model, np.zeros((3, 2)))


@pytest.mark.slow
def test_evaluate_data_run_reports_the_k2_gap_below_the_amortised_one():
    """On a fitted K = 2 model the optimal Gaussian's gap is at most the trained encoder's,
    log p_theta(x) - ELBO(x) (both on the same points, exact log p_theta; ELBO by Monte Carlo)."""
    from vaefail.datafit import fit_data

    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 2))
    x = z @ W.T + 0.3 * rng.normal(size=(300, 2))
    result = fit_data(x, latent_dim=2, sigma_eps=0.3, restarts=1, steps=300, batch_size=64)
    n = result.config.n_test
    report = evaluate_data_run(result, jax.random.PRNGKey(0), num_samples=50, mi=False, gap_points=n)
    gap = report["posterior"]["model_gaussian_gap"]
    assert gap is not None and "K = 2" in gap["method"]
    assert "posterior.model_gaussian_gap" not in report["unavailable"]
    amortised = report["likelihood"]["posterior_gap"]
    assert report["likelihood"]["posterior_gap_method"] == "quadrature"
    assert 0 <= gap["gap"]["mean"] <= amortised["mean"] + 2 * amortised["stderr"]
