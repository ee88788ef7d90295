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


def test_khat_matches_arviz_psislw_reference():
    """Reference values from ArviZ (arviz-stats 0.8.0, ``array_stats.psislw(-log_w)[1]``) on fixed draws."""
    rng = np.random.default_rng(123)
    u = rng.random((3, 1000))
    k_true = np.array([0.2, 0.6, 1.0])[:, None]
    log_w = np.log(1.0 + ((1 - u) ** (-k_true) - 1) / k_true)
    expected = [0.14353779061438682, 0.3863023664567154, 1.0642577802621604]
    np.testing.assert_allclose(pareto_khat(log_w), expected, rtol=1e-10)


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
    assert tail_length(1000) == 94  # floor(3 sqrt(1000))
    assert tail_length(100) == 20  # S / 5 for S <= 225
    assert tail_length(24) == 4


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
    with pytest.raises(DataError, match="25"):
        pareto_khat(np.zeros((2, 20)))
    with pytest.raises(DataError):
        khat_from_top(np.array([[0.0, np.nan, 1, 2, 3, 4]]))
