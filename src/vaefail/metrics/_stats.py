"""Small shared helpers of the metrics: a mean with its standard error, input checks, chunked ELBO."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import norm

from vaefail.errors import DataError, require
from vaefail.models import VAE
from vaefail.objectives import elbo


@dataclass(frozen=True)
class Estimate:
    """A Monte-Carlo / sample mean with its standard error and a normal-approximation interval.

    Attributes
    ----------
    mean
        The estimate.
    stderr
        Its standard error (``std / sqrt(n)`` for a sample mean of ``n`` independent terms).
    confidence
        Coverage of :attr:`ci` (default 0.95).
    """

    mean: float
    stderr: float
    confidence: float = 0.95

    @classmethod
    def of(cls, values: np.ndarray, confidence: float = 0.95) -> Estimate:
        """The mean of ``values`` (1-D, finite) with ``stderr = std(values, ddof=1) / sqrt(n)``."""
        v = np.asarray(values, dtype=np.float64).ravel()
        se = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
        return cls(float(np.mean(v)), se, confidence)

    @property
    def ci(self) -> tuple[float, float]:
        """``mean -/+ z_{(1+c)/2} stderr`` (normal quantile; the sample sizes here are hundreds or more)."""
        half = float(norm.ppf(0.5 + self.confidence / 2.0)) * self.stderr
        return self.mean - half, self.mean + half

    def to_dict(self) -> dict[str, Any]:
        """``{"mean", "stderr", "ci": [lo, hi], "confidence"}``, JSON-serialisable (non-finite -> None)."""
        lo, hi = self.ci
        return {
            "mean": finite(self.mean),
            "stderr": finite(self.stderr),
            "ci": [finite(lo), finite(hi)],
            "confidence": self.confidence,
        }


def finite(value: Any) -> float | None:
    """``float(value)`` if it is finite, else ``None`` (JSON has no NaN or infinity)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def check_x(x: Any, x_dim: int, what: str = "x") -> np.ndarray:
    """``x`` as a float64 array of shape ``(n, x_dim)``, ``n >= 1``, finite, else :class:`DataError`."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{what} must be a numeric array ({err})") from err
    if arr.ndim == 1 and x_dim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != x_dim or arr.shape[0] < 1:
        raise DataError(f"{what} must have shape (n, {x_dim}) with n >= 1, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{what} contains NaN or inf")
    return arr


def check_per_point(values: Any, n: int, what: str) -> np.ndarray:
    """A per-point float64 vector of length ``n``, finite, else :class:`DataError`."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise DataError(f"{what} must have shape ({n},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{what} contains NaN or inf")
    return arr


@eqx.filter_jit
def _elbo_chunk(model: VAE, x: jax.Array, key: jax.Array, num_samples: int) -> jax.Array:
    return elbo(model, x, key, num_samples).bound


def elbo_per_point(
    model: VAE, x: np.ndarray, key: jax.Array, num_samples: int = 100, *, point_chunk: int = 500
) -> np.ndarray:
    """``ELBO(x_i) = (1/S) sum_s log p_theta(x_i|z_s) - KL(q(z|x_i) || p(z))`` per point, float64.

    The KL is analytic; the reconstruction term is averaged over ``S = num_samples`` draws, so the only
    Monte-Carlo noise is in that term. Chunk ``c`` of points uses ``fold_in(key, c)``; chunks are padded to
    one shape, so this compiles once.
    """
    require(num_samples >= 1, f"num_samples must be >= 1, got {num_samples}")
    xs = check_x(x, model.x_dim)
    n = xs.shape[0]
    chunk = min(point_chunk, n)
    out = np.empty(n)
    for c, p in enumerate(range(0, n, chunk)):
        xc = xs[p : p + chunk]
        rows = xc.shape[0]
        if rows < chunk:
            xc = np.concatenate([xc, np.broadcast_to(xc[:1], (chunk - rows, xc.shape[1]))])
        bound = _elbo_chunk(model, jnp.asarray(xc, jnp.float32), jax.random.fold_in(key, c), num_samples)
        out[p : p + rows] = np.asarray(bound, dtype=np.float64)[:rows]
    return out
