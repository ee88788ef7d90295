"""Mutual information I(x; z_i) against the closed form of a linear-Gaussian encoder; active units."""

from __future__ import annotations

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaefail.errors import ConfigError, DataError
from vaefail.metrics.information import mutual_information
from vaefail.models import make_vae

D, K = 3, 3
COV = np.array([[1.0, 0.6, 0.2], [0.6, 1.5, -0.3], [0.2, -0.3, 0.8]])
A = np.array([[1.0, -0.5, 0.3], [0.2, 0.1, -0.05], [0.0, 0.0, 0.0]])  # the third unit ignores x
OFFSET = np.array([0.3, -1.0, 0.5])
STD = np.array([0.5, 0.4, 1.0])


def linear_encoder(a=A, offset=OFFSET, std=STD):
    """A depth-0 encoder q(z|x) = N(a x + offset, diag std^2)."""
    k = a.shape[0]
    model = make_vae(a.shape[1], k, 1.0, key=jax.random.PRNGKey(0), depth=0)
    weight = np.concatenate([a, np.zeros_like(a)])
    bias = np.concatenate([offset, np.log(std)])
    layer = lambda m: m.encoder.net.layers[0]  # noqa: E731
    return eqx.tree_at(lambda m: (layer(m).weight, layer(m).bias), model,
                       (jnp.asarray(weight, jnp.float32), jnp.asarray(bias, jnp.float32)))


def closed_form(a=A, std=STD, cov=COV):
    """z_i = a_i^T x + std_i eps: I(x; z_i) = 1/2 log(1 + a_i^T C a_i / std_i^2); jointly
    I(x; z) = 1/2 log det(I + S^-1 A C A^T) with S = diag(std^2)."""
    per_dim = 0.5 * np.log1p(np.einsum("id,de,ie->i", a, cov, a) / std**2)
    total = 0.5 * np.linalg.slogdet(np.eye(len(std)) + a @ cov @ a.T / std[:, None] ** 2)[1]
    return per_dim, total


@pytest.fixture(scope="module")
def estimate():
    x = np.random.default_rng(0).multivariate_normal(np.zeros(D), COV, size=2000)
    return mutual_information(linear_encoder(), x, jax.random.PRNGKey(0))


def test_each_dimension_within_its_confidence_interval_of_the_closed_form(estimate):
    truth, total = closed_form()
    for i, est in enumerate(estimate.per_dim[:2]):
        lo, hi = est.ci
        assert lo <= truth[i] <= hi, (i, est, truth[i])
    lo, hi = estimate.total.ci
    assert lo <= total <= hi, (estimate.total, total)
    lo, hi = estimate.average.ci
    assert lo <= truth.mean() <= hi
    # the two finite-M estimates bracket in expectation; here they differ by far less than the interval
    assert np.all(np.abs(estimate.per_dim_loo - [e.mean for e in estimate.per_dim]) < 0.01)


def test_unused_dimension_has_no_information_and_is_inactive(estimate):
    # q(z_3|x) is the same for every x: every mixture equals the own component, so the estimate is 0
    # to rounding (its interval has zero width)
    assert abs(estimate.per_dim[2].mean) < 1e-12
    assert estimate.active_units == 2
    np.testing.assert_allclose(estimate.activity[:2], np.einsum("id,de,ie->i", A, COV, A)[:2], rtol=0.1)
    assert estimate.activity[2] < 1e-10


def test_bias_directions_when_the_information_approaches_log_m():
    """A nearly deterministic encoder (I(x; z) ~ 5.6 nats) with only M = 100 points: the self-included
    estimate is capped at log M = 4.6 (a lower bound), the leave-one-out estimate exceeds the truth."""
    a, std = np.array([[1.0]]), np.array([0.01])
    x = np.random.default_rng(1).normal(size=(100, 1))
    truth, _ = closed_form(a, std, np.eye(1))
    est = mutual_information(linear_encoder(a, np.zeros(1), std), x, jax.random.PRNGKey(1))
    assert est.per_dim[0].mean <= math.log(100) + 1e-9 < truth[0]
    assert est.per_dim_loo[0] > truth[0]


def test_report_is_json_ready(estimate):
    out = estimate.to_dict()
    json.dumps(out, allow_nan=False)
    assert out["active_units"] == 2 and len(out["per_dim"]) == K


def test_bad_input_rejected():
    model = linear_encoder()
    with pytest.raises(DataError):
        mutual_information(model, np.zeros((10, 2)), jax.random.PRNGKey(0))
    with pytest.raises(DataError):
        mutual_information(model, np.full((10, 3), np.nan), jax.random.PRNGKey(0))
    with pytest.raises(ConfigError):
        mutual_information(model, np.zeros((1, 3)), jax.random.PRNGKey(0))
    with pytest.raises(ConfigError):
        mutual_information(model, np.zeros((10, 3)), jax.random.PRNGKey(0), samples_per_point=0)
