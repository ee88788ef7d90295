"""The four unlabelled benchmarks: ``linear``, ``quadratic``, ``figure8`` and ``clusters``.

Each writes its decoder mean once, in ``_mean(z, xp, ndtr)``, for both NumPy (float64, used by the
quadrature) and JAX (traceable, used by models initialised at the ground truth).
Throughout, :math:`z \\sim N(0, 1)` and :math:`t = \\Phi(z) \\sim U(0, 1)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from vaefail.benchmarks.base import Benchmark, _as_float, _as_vector, _sigmoid
from vaefail.errors import require


@dataclass(frozen=True, eq=False)
class Linear(Benchmark):
    """Linear-Gaussian control: :math:`x = w z + b + \\epsilon`; the posterior is exactly Gaussian.

    Parameters
    ----------
    w, b
        Loading and offset, 2 numbers each (defaults (1, 0.5) and (0, 0)).
    sigma_eps
        Observation noise std (default 0.1).
    """

    name: ClassVar[str] = "linear"
    x_dim: ClassVar[int] = 2
    summary: ClassVar[str] = "x = w z + b + eps (exactly Gaussian posterior; control case)"

    sigma_eps: float = 0.1
    w: tuple[float, ...] = (1.0, 0.5)
    b: tuple[float, ...] = (0.0, 0.0)

    def _validate(self) -> None:
        object.__setattr__(self, "w", _as_vector("linear: w", self.w, self.x_dim))
        object.__setattr__(self, "b", _as_vector("linear: b", self.b, self.x_dim))

    def _mean(self, z: Any, xp: ModuleType, ndtr: Any) -> Any:
        w = xp.asarray(self.w, dtype=z.dtype)
        b = xp.asarray(self.b, dtype=z.dtype)
        return z[..., :1] * w + b

    def marginal_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Closed-form marginal :math:`p(x) = N(b,\\; w w^T + \\sigma^2 I)`.

        Returns
        -------
        mean, cov
            Shapes (2,) and (2, 2), float64.
        """
        w, b = np.array(self.w), np.array(self.b)
        return b, np.outer(w, w) + self.sigma_eps**2 * np.eye(self.x_dim)

    def posterior_moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Closed-form Gaussian posterior :math:`p(z \\mid x)`.

        Precision :math:`\\lambda = 1 + w^T w / \\sigma^2`, mean
        :math:`w^T (x - b) / (\\sigma^2 \\lambda)`, std :math:`\\lambda^{-1/2}`.

        Returns
        -------
        mean, std
            Each of shape (n, 1), float64.
        """
        x = self._check_x(x)
        w, b = np.array(self.w), np.array(self.b)
        var = self.sigma_eps**2
        precision = 1.0 + w @ w / var
        mean = ((x - b) @ w / var / precision)[:, None]
        return mean, np.full_like(mean, 1.0 / math.sqrt(precision))


@dataclass(frozen=True, eq=False)
class Quadratic(Benchmark):
    """The paper's Example 1: :math:`x = (t - 0.5)^2 + \\epsilon`; the sign of t - 0.5 is lost."""

    name: ClassVar[str] = "quadratic"
    x_dim: ClassVar[int] = 1
    summary: ClassVar[str] = "x = (Phi(z) - 0.5)^2 + eps (paper's Example 1; bimodal posterior)"

    sigma_eps: float = 0.01

    def _mean(self, z: Any, xp: ModuleType, ndtr: Any) -> Any:
        return (ndtr(z[..., :1]) - 0.5) ** 2


@dataclass(frozen=True, eq=False)
class Figure8(Benchmark):
    """Figure-eight curve crossing itself at the origin.

    .. math:: u = \\pi (0.6 + 1.8 t), \\quad
              f(z) = \\Big[\\frac{\\tfrac{\\sqrt2}{2}\\cos u}{\\sin^2 u + 1},\\;
              \\frac{\\sqrt2 \\cos u \\sin u}{\\sin^2 u + 1}\\Big]
    """

    name: ClassVar[str] = "figure8"
    x_dim: ClassVar[int] = 2
    summary: ClassVar[str] = (
        "u = pi (0.6 + 1.8 Phi(z)); x = [(sqrt2/2) cos u, sqrt2 cos u sin u] / (sin^2 u + 1) + eps"
    )

    sigma_eps: float = math.sqrt(0.02)

    def _mean(self, z: Any, xp: ModuleType, ndtr: Any) -> Any:
        u = math.pi * (0.6 + 1.8 * ndtr(z[..., 0]))
        cos, sin = xp.cos(u), xp.sin(u)
        denom = sin**2 + 1.0
        return xp.stack(
            [(math.sqrt(2.0) / 2.0) * cos / denom, math.sqrt(2.0) * cos * sin / denom], axis=-1
        )


@dataclass(frozen=True, eq=False)
class Clusters(Benchmark):
    """Clusters on a circle joined by a smooth staircase.

    Centres :math:`c_m = r(\\cos(2\\pi m/M), \\sin(2\\pi m/M))`, :math:`m = 0..M-1`; position
    :math:`p(t) = \\sum_{j=1}^{M-1} \\sigma(\\beta (t - j/M))`; with
    :math:`i = \\mathrm{clip}(\\lfloor p \\rfloor, 0, M-2)`,
    :math:`f(z) = c_i + (p - i)(c_{i+1} - c_i)`. Since t is uniform, a fraction
    :math:`2(M-1)\\ln 9 / \\beta` of the mass (5.9% for M = 5, beta = 300) has p within a 10-90%
    rise of a step, i.e. lies between centres.

    Parameters
    ----------
    n_clusters
        M >= 2 (default 5).
    radius
        r > 0 (default 2).
    beta
        Step sharpness in t, > 0 (default 300).
    sigma_eps
        Observation noise std (default 0.25).
    """

    name: ClassVar[str] = "clusters"
    x_dim: ClassVar[int] = 2
    summary: ClassVar[str] = (
        "M centres on a circle; x = interpolation along a sigmoid staircase "
        "p(Phi(z)) = sum_j sigmoid(beta (Phi(z) - j/M)) + eps"
    )

    sigma_eps: float = 0.25
    n_clusters: int = 5
    radius: float = 2.0
    beta: float = 300.0

    def _validate(self) -> None:
        m = self.n_clusters
        require(
            isinstance(m, int | np.integer) and not isinstance(m, bool) and m >= 2,
            f"clusters: n_clusters must be an integer >= 2, got {m!r}",
        )
        object.__setattr__(self, "n_clusters", int(m))
        for label in ("radius", "beta"):
            value = _as_float(f"clusters: {label}", getattr(self, label))
            require(value > 0.0, f"clusters: {label} must be > 0, got {value!r}")
            object.__setattr__(self, label, value)

    def centres(self) -> np.ndarray:
        """Cluster centres, shape (n_clusters, 2), float64."""
        angle = 2.0 * np.pi * np.arange(self.n_clusters) / self.n_clusters
        return self.radius * np.stack([np.cos(angle), np.sin(angle)], axis=-1)

    def position(self, t: Any, xp: ModuleType = np) -> Any:
        """Staircase :math:`p(t) = \\sum_{j=1}^{M-1} \\sigma(\\beta (t - j/M)) \\in (0, M-1)`."""
        m = self.n_clusters
        steps = [_sigmoid(self.beta * (t - j / m), xp) for j in range(1, m)]
        return sum(steps[1:], steps[0])

    def _mean(self, z: Any, xp: ModuleType, ndtr: Any) -> Any:
        p = self.position(ndtr(z[..., 0]), xp)
        i = xp.clip(xp.floor(p), 0, self.n_clusters - 2).astype(int)
        c = xp.asarray(self.centres(), dtype=z.dtype)
        return c[i] + (p - i)[..., None] * (c[i + 1] - c[i])
