"""Pareto k-hat of importance weights (PSIS diagnostic), vectorised over data points.

The generalized Pareto distribution (GPD) with shape ``k`` and scale ``sigma`` has CDF
``1 - (1 + k y / sigma)^(-1/k)`` for exceedances ``y >= 0``. Vehtari, Simpson, Gelman, Yao & Gabry
("Pareto smoothed importance sampling", JMLR 2024, arXiv:1507.02646) fit it to the ``M`` largest
importance weights; the fitted shape ``k-hat`` estimates how many finite moments the weight distribution
has (``1/k``): for ``k-hat > 0.7`` the importance-sampling estimate is unreliable (its error falls too
slowly with ``S`` to be trusted), for ``k-hat <= 0.5`` the variance of the weights is finite.

The fit is the empirical-Bayes estimator of Zhang & Stephens (2009, Technometrics 51:316) with the weakly
informative prior of the PSIS paper (``k-hat`` shrunk towards 0.5 with weight 10 observations), written as
in ArviZ (``arviz_stats.base.diagnostics._gpdfit``) and the R package ``loo`` (``gpdfit``), but vectorised
over rows so thousands of data points are fitted in one NumPy pass.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from vaefail.errors import DataError

#: Above this k-hat the importance-sampling estimate is unreliable (PSIS paper, Section 3.2.4).
KHAT_THRESHOLD = 0.7

#: Prior of the PSIS paper: k shrunk towards PRIOR_K_MEAN with the weight of PRIOR_K_WEIGHT observations.
PRIOR_K_MEAN = 0.5
PRIOR_K_WEIGHT = 10.0


def tail_length(num_samples: int) -> int:
    """Number ``M`` of largest weights the GPD is fitted to: ``M = ceil(min(S / 5, 3 sqrt(S)))``.

    The PSIS rule for independent draws (relative efficiency 1), as in the PSIS paper, ArviZ (``psislw``)
    and ``loo``: 95 at ``S = 1000``, 20 at ``S = 100``. ``M < 5`` (``S < 21``) means k-hat cannot be
    estimated.
    """
    return int(math.ceil(min(num_samples / 5.0, 3.0 * math.sqrt(num_samples))))


def gpd_fit(exceedances: np.ndarray, *, prior: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fit a generalized Pareto distribution to each row of ``exceedances`` (Zhang & Stephens, 2009).

    Parameters
    ----------
    exceedances
        Shape ``(n, M)`` (or ``(M,)``), each row sorted ascending, non-negative, with a positive maximum;
        ``M >= 5``. These are the ``M`` largest values minus the threshold (the next largest value).
    prior
        Shrink ``k`` towards 0.5 as the PSIS paper does: ``k <- (M k + 10 * 0.5) / (M + 10)``.

    Returns
    -------
    k, sigma
        Shape and scale per row, each of shape ``(n,)`` (scalars' arrays for 1-D input).

    Notes
    -----
    With ``m = 30 + floor(sqrt(M))`` candidate values ``b_j = 1/y_(M) + (1 - sqrt(m / (j - 1/2)))
    / (3 y_(floor(M/4 + 1/2)))``, the profile log-likelihood is ``l(b) = M (log(-b/k(b)) - k(b) - 1)`` with
    ``k(b) = (1/M) sum_i log(1 - b y_i)``; ``b`` is the ``softmax(l)``-weighted mean of the ``b_j``, then
    ``k = (1/M) sum_i log(1 - b y_i)`` and ``sigma = -k / b``. This sign convention (``k > 0`` heavy tail)
    matches ArviZ and ``loo``.
    """
    y = np.asarray(exceedances, dtype=np.float64)
    single = y.ndim == 1
    y = np.atleast_2d(y)
    if y.ndim != 2 or y.shape[1] < 5:
        raise DataError(f"gpd_fit needs rows of at least 5 exceedances, got shape {np.shape(exceedances)}")
    if not np.all(np.isfinite(y)) or np.any(y < 0) or np.any(y[:, -1] <= 0) or np.any(np.diff(y, axis=1) < 0):
        raise DataError("exceedances must be finite, >= 0, sorted ascending with a positive maximum")
    n = y.shape[1]
    m_est = 30 + int(math.sqrt(n))
    j = np.arange(1, m_est + 1, dtype=np.float64)
    quartile = y[:, int(n / 4 + 0.5) - 1]
    # ties at the threshold (exceedances of exactly 0) would make the quartile 0: use the smallest
    # positive exceedance instead, which keeps every candidate b finite
    smallest_positive = np.min(np.where(y > 0, y, np.inf), axis=1)
    quartile = np.where(quartile > 0, quartile, smallest_positive)
    with np.errstate(divide="ignore"):
        b = 1.0 / y[:, -1:] + (1.0 - np.sqrt(m_est / (j - 0.5)))[None, :] / (3.0 * quartile[:, None])
    # k(b_j) for every candidate: (rows, m_est); chunk rows so the (rows, m_est, M) temporary stays small.
    k_b = np.empty_like(b)
    step = max(1, (1 << 20) // (m_est * n))
    for s in range(0, y.shape[0], step):
        k_b[s : s + step] = np.mean(np.log1p(-b[s : s + step, :, None] * y[s : s + step, None, :]), axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lik = n * (np.log(-b / k_b) - k_b - 1.0)
    log_lik = np.where(np.isfinite(log_lik), log_lik, -np.inf)
    log_lik[~np.any(np.isfinite(log_lik), axis=1)] = 0.0  # no usable candidate: plain average of b
    weights = np.exp(log_lik - logsumexp(log_lik, axis=1, keepdims=True))
    b_post = np.sum(b * weights, axis=1)
    k = np.mean(np.log1p(-b_post[:, None] * y), axis=1)
    sigma = -k / b_post
    if prior:
        k = (n * k + PRIOR_K_WEIGHT * PRIOR_K_MEAN) / (n + PRIOR_K_WEIGHT)
    if single:
        return k[:1], sigma[:1]
    return k, sigma


#: Relative spread of the largest weights below which they count as equal (see :func:`khat_from_top`).
#: float32 log-weights carry rounding errors of several ulps of their terms: the linear benchmark's exact
#: encoder (log-weights about -4.5, S = 500) gave top-weight spreads up to 4.8e-6, and with the earlier
#: threshold 1e-6 k-hat was fitted to that noise for 39 of 100 points (values up to 1.1). A genuinely
#: heavy tail spreads its largest weights by orders of magnitude, far above this.
NO_SPREAD = 1e-4


def khat_from_top(top_log_weights: np.ndarray) -> np.ndarray:
    """k-hat per row from the ``M + 1`` largest log-weights of each row (any order).

    The largest ``M`` weights minus the ``(M+1)``-th are the exceedances (weights are ``exp(log_w - max)``,
    in float64). A row whose ``M + 1`` largest weights agree to a relative :data:`NO_SPREAD` (a proposal
    equal to the target up to float32 rounding of the log-weights) has bounded weights of no spread; it gets
    ``k-hat = -inf``: a GPD fitted to rounding noise says nothing about the proposal.

    Parameters
    ----------
    top_log_weights
        Shape ``(n, M + 1)`` with ``M >= 5``; finite (``-inf`` allowed for zero weights).
    """
    lw = np.sort(np.asarray(top_log_weights, dtype=np.float64), axis=1)
    if lw.ndim != 2 or lw.shape[1] < 6:
        raise DataError(f"need at least 6 top log-weights per row, got shape {lw.shape}")
    if np.any(np.isnan(lw)) or np.any(lw == np.inf):
        raise DataError("log-weights contain NaN or +inf")
    top = lw[:, -1:]
    ok = np.isfinite(top[:, 0])
    w = np.exp(lw - np.where(ok[:, None], top, 0.0))
    y = w[:, 1:] - w[:, :1]
    spread = y[:, -1] > NO_SPREAD
    out = np.full(lw.shape[0], -np.inf)
    rows = ok & spread
    if np.any(rows):
        out[rows] = gpd_fit(y[rows])[0]
    out[~ok] = np.nan
    return out


def pareto_khat(log_weights: np.ndarray) -> np.ndarray:
    """PSIS k-hat of each row of ``log_weights`` (shape ``(n, S)`` or ``(S,)``), fitted to the right tail.

    The tail length is :func:`tail_length` of ``S``; ``S`` must be large enough for ``M >= 5`` (``S >= 21``).
    Returns shape ``(n,)`` (or ``(1,)`` for 1-D input). See :func:`khat_from_top` for the degenerate case.
    """
    lw = np.atleast_2d(np.asarray(log_weights, dtype=np.float64))
    m = tail_length(lw.shape[1])
    if m < 5:
        raise DataError(f"k-hat needs at least 21 importance samples per point, got {lw.shape[1]}")
    top = -np.partition(-lw, m, axis=1)[:, : m + 1]
    return khat_from_top(top)


class TopTracker:
    """Keep the ``M + 1`` largest log-weights of each of ``n`` rows while weights arrive in chunks.

    Lets :func:`vaefail.metrics.likelihood.log_likelihood` compute k-hat with memory ``O(n sqrt(S))``
    rather than ``O(n S)``.
    """

    def __init__(self, n: int, num_samples: int):
        self.m = tail_length(num_samples)
        if self.m < 5:
            raise DataError(f"k-hat needs at least 21 importance samples per point, got {num_samples}")
        self._buffer = np.full((n, self.m + 1), -np.inf)

    def update(self, rows: slice, log_weights: np.ndarray) -> None:
        """Merge a chunk of log-weights, shape ``(rows, s)``, into the running top ``M + 1``."""
        both = np.concatenate([self._buffer[rows], np.asarray(log_weights, np.float64)], axis=1)
        k = self.m + 1
        self._buffer[rows] = -np.partition(-both, k - 1, axis=1)[:, :k]

    def khat(self) -> np.ndarray:
        """k-hat per row from everything merged so far."""
        return khat_from_top(self._buffer)
