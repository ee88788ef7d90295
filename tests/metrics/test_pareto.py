"""Known-answer tests of the generalized-Pareto fit and the PSIS k-hat diagnostic."""

from __future__ import annotations

import numpy as np
import pytest

from vaefail.errors import DataError
from vaefail.metrics.pareto import TopTracker, gpd_fit, khat_from_top, pareto_khat, tail_length


def _gpd_sample(rng, k, sigma, shape):
    """Inverse-CDF draws of GPD(k, sigma): y = sigma ((1 - U)^(-k) - 1) / k."""
    u = rng.random(shape)
    return sigma * ((1.0 - u) ** (-k) - 1.0) / k


@pytest.mark.parametrize("k_true", [-0.3, 0.2, 0.5, 0.9])
def test_gpd_fit_recovers_known_shape_and_scale(k_true):
    """Zhang-Stephens on 400 rows of 2000 GPD draws: mean estimates within 0.02 of the truth."""
    rng = np.random.default_rng(0)
    y = np.sort(_gpd_sample(rng, k_true, 2.0, (400, 2000)), axis=1)
    k, sigma = gpd_fit(y, prior=False)
    assert abs(k.mean() - k_true) < 0.02, k.mean()
    assert abs(np.median(sigma) / 2.0 - 1.0) < 0.05
    # the spread of the estimates is what the asymptotic theory says: sd(k) ~ (1 + k) / sqrt(n)
    assert k.std() < 1.5 * (1 + k_true) / np.sqrt(2000)


@pytest.mark.parametrize("num_samples", [21, 100, 226, 1000, 4000])
def test_khat_equals_arviz_psislw(num_samples):
    """ArviZ's own ``psislw`` (test-only dependency) on GPD, Student-t and log-normal weight sets at several
    S: the same k-hat to 1e-10 (same tail length, same Zhang-Stephens fit with the PSIS prior)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's refactoring notice and its k-hat > 0.7 warnings
        from arviz.stats import psislw

        rng = np.random.default_rng(num_samples)
        u = rng.random((3, num_samples))
        k_true = np.array([0.2, 0.6, 1.0])[:, None]
        log_w = np.concatenate([
            np.log(1.0 + ((1 - u) ** (-k_true) - 1) / k_true),  # GPD weights, k = 0.2, 0.6, 1.0
            rng.standard_t(3, size=(2, num_samples)),
            0.5 * rng.normal(size=(2, num_samples)),
        ])
        expected = psislw(log_w.copy())[1]
    np.testing.assert_allclose(pareto_khat(log_w), expected, rtol=1e-10, atol=1e-12)


def test_khat_separates_light_and_heavy_tails():
    rng = np.random.default_rng(1)
    light = rng.normal(size=(50, 4000)) * 0.3  # log-normal weights with small spread: all moments finite
    heavy = np.log(_gpd_sample(rng, 1.2, 1.0, (50, 4000)) + 1.0)
    assert np.all(pareto_khat(light) < 0.5)
    assert np.mean(pareto_khat(heavy) > 0.7) > 0.95


def test_streaming_top_tracker_equals_full_fit():
    rng = np.random.default_rng(2)
    log_w = rng.standard_t(3, size=(20, 3000))
    tracker = TopTracker(20, 3000)
    for start in range(0, 3000, 700):  # uneven chunks
        tracker.update(slice(0, 10), log_w[:10, start : start + 700])
        tracker.update(slice(10, 20), log_w[10:, start : start + 700])
    np.testing.assert_allclose(tracker.khat(), pareto_khat(log_w), rtol=1e-12)


def test_tail_length_follows_psis_rule():
    assert tail_length(1000) == 95  # ceil(3 sqrt(1000)) = ceil(94.87), as ArviZ and loo
    assert tail_length(100) == 20  # S / 5 for S <= 225
    assert tail_length(226) == 46  # ceil(min(45.2, 45.1))
    assert tail_length(21) == 5 and tail_length(20) == 4


def test_equal_weights_give_minus_infinity_and_shift_invariance():
    assert khat_from_top(np.zeros((2, 10)))[0] == -np.inf
    rounding = np.log1p(np.linspace(0.0, 5e-6, 10))[None, :]  # float32 rounding of the log-weights
    assert khat_from_top(rounding)[0] == -np.inf
    assert np.isfinite(khat_from_top(np.log1p(np.linspace(0.0, 1e-3, 10))[None, :])[0])  # a real spread
    rng = np.random.default_rng(3)
    lw = rng.normal(size=(3, 500))
    np.testing.assert_allclose(pareto_khat(lw + 123.0), pareto_khat(lw), rtol=1e-9)


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 3)), np.full((1, 10), np.nan), -np.ones((1, 10))],
)
def test_bad_exceedances_rejected(bad):
    with pytest.raises(DataError):
        gpd_fit(bad)


def test_too_few_samples_rejected():
    with pytest.raises(DataError, match="21"):
        pareto_khat(np.zeros((2, 20)))
    with pytest.raises(DataError):
        khat_from_top(np.array([[0.0, np.nan, 1, 2, 3, 4]]))
