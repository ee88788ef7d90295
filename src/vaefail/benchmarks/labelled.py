"""Labelled ground-truth benchmarks: two classes sharing one manifold (docs/science.md, ``semicircle``).

A labelled benchmark is the generative process

.. math::

    y \\sim \\mathrm{Cat}(\\pi), \\qquad z \\sim \\mathcal N(0, 1), \\qquad
    x = f_{gt}(y, z) + \\sigma_\\epsilon\\,\\epsilon, \\qquad \\epsilon \\sim \\mathcal N(0, I_D),

with a known class-conditional decoder :math:`f_{gt}(y, z)`. Because the latent is 1-D, every exact
quantity is a quadrature over z on the same uniform grid as the unlabelled benchmarks
(:data:`~vaefail.benchmarks.base.DEFAULT_Z_GRID`):

- :math:`\\log p(x \\mid y) = \\log \\int N(x; f_{gt}(y, z), \\sigma^2 I) N(z; 0, 1) dz`
  (:meth:`LabelledBenchmark.log_prob_by_class`, :meth:`~LabelledBenchmark.log_prob_given_y`);
- :math:`\\log p(x) = \\log \\sum_y \\pi_y p(x \\mid y)` (:meth:`~LabelledBenchmark.log_prob`);
- :math:`p(y \\mid x) = \\pi_y p(x \\mid y) / p(x)` (:meth:`~LabelledBenchmark.class_posterior`);
- :math:`p(z \\mid x, y)` and :math:`p(z \\mid x) = \\sum_y p(y \\mid x) p(z \\mid x, y)` on the grid
  (:meth:`~LabelledBenchmark.posterior`);
- the Bayes-optimal accuracy :math:`\\int \\max_y \\pi_y p(x \\mid y)\\, dx`
  (:meth:`~LabelledBenchmark.bayes_accuracy`, exact per benchmark;
  :meth:`~LabelledBenchmark.bayes_accuracy_mc` is the Monte-Carlo cross-check).

Labelled benchmarks are *not* valid inputs to the unsupervised fitting path (``vaefail.fit``): their
decoder takes a label. Calling :meth:`LabelledBenchmark.f_gt` with a latent only raises a
:class:`~vaefail.errors.ConfigError` that points to :mod:`vaefail.semisupervised`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp_special
import numpy as np
import scipy.special as sp_special
from scipy.special import logsumexp

from vaefail.benchmarks.base import (
    CHUNK_ELEMENTS,
    DEFAULT_Z_GRID,
    Benchmark,
    Dataset,
    _as_count,
    _as_float,
    _as_vector,
)
from vaefail.errors import ConfigError, DataError, require
from vaefail.quadrature import check_z_grid, trapezoid_weights

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class LabelledDataset(Dataset):
    """Observations, their true latents and their true labels.

    Attributes
    ----------
    x
        Observations, shape (n, x_dim), float64.
    z
        True latents, shape (n, 1), float64.
    y
        True labels, shape (n,), int64 in ``0 .. n_classes - 1``.
    """

    y: np.ndarray


@dataclass(frozen=True, eq=False)
class LabelledBenchmark(Benchmark):
    """Abstract labelled benchmark with a class-conditional decoder :math:`f_{gt}(y, z)` and a 1-D latent.

    Subclasses set ``name``, ``x_dim``, ``n_classes`` and ``summary``, implement the class-conditional
    mean once in ``_mean_y(y, z, xp, ndtr)`` (``y`` an integer array broadcastable against ``z[..., 0]``)
    and the exact :meth:`bayes_accuracy`. The class prior is :meth:`class_prior` (uniform unless
    overridden).
    """

    labelled: ClassVar[bool] = True
    n_classes: ClassVar[int] = 2

    # ------------------------------------------------------------------ decoder
    def class_prior(self) -> np.ndarray:
        """Class probabilities :math:`\\pi_y`, shape (n_classes,), float64 (uniform by default)."""
        return np.full(self.n_classes, 1.0 / self.n_classes)

    def _mean_y(self, y: Any, z: Any, xp: ModuleType, ndtr: Any) -> Any:
        """Decoder mean f_gt(y, z) for z of shape (..., 1) and integer y broadcastable to z[..., 0]."""
        raise NotImplementedError

    def _mean(self, z: Any, xp: ModuleType, ndtr: Any) -> Any:
        raise ConfigError(
            f"{self.name!r} is a labelled benchmark: its decoder is f_gt(y, z), not f_gt(z), so it cannot be "
            "fitted by the unsupervised vaefail.fit; use vaefail.semisupervised.run_semisupervised"
        )

    def f_gt(self, y: Any, z: Any = None) -> jax.Array:  # type: ignore[override]
        """True class-conditional decoder mean :math:`f_{gt}(y, z)` in JAX (traceable).

        Parameters
        ----------
        y
            Labels, integer array broadcastable against ``z[..., 0]`` (e.g. a scalar or shape (n,)).
        z
            Latents, shape (..., 1). Floating inputs keep their dtype.

        Returns
        -------
        jax.Array
            Shape (..., x_dim).

        Raises
        ------
        ConfigError
            If called with a latent only (the unsupervised signature ``f_gt(z)``).
        """
        if z is None:
            self._mean(y, jnp, jsp_special.ndtr)  # raises the explanatory ConfigError
        z = jnp.asarray(z)
        if not jnp.issubdtype(z.dtype, jnp.floating):
            z = z.astype(jnp.float32)
        return self._mean_y(jnp.asarray(y).astype(jnp.int32), z, jnp, jsp_special.ndtr)

    def f_gt_np(self, y: Any, z: Any = None) -> np.ndarray:  # type: ignore[override]
        """True decoder mean :math:`f_{gt}(y, z)` in float64 NumPy; same formula as :meth:`f_gt`."""
        if z is None:
            self._mean(y, np, sp_special.ndtr)
        z = np.asarray(z, dtype=np.float64)
        y = np.asarray(y).astype(np.int64)
        return np.asarray(self._mean_y(y, z, np, sp_special.ndtr), dtype=np.float64)

    def f_gt_class(self, y: int):
        """The decoder of one class, ``z -> f_gt(y, z)`` (JAX), e.g. for plotting or curve metrics."""
        y = self._check_label(y)
        return lambda z: self.f_gt(y, z)

    # ------------------------------------------------------------------ sampling
    def sample(self, key: jax.Array, n: int) -> LabelledDataset:
        """Draw n points: :math:`y \\sim \\mathrm{Cat}(\\pi)`, :math:`z \\sim N(0, 1)`,
        :math:`x = f_{gt}(y, z) + \\sigma \\epsilon`.

        Parameters
        ----------
        key
            JAX PRNG key; the result is a deterministic function of ``key`` and ``n``.
        n
            Number of points, >= 1.

        Returns
        -------
        LabelledDataset
            ``x`` (n, x_dim), ``z`` (n, 1), both float64, and ``y`` (n,) int64.
        """
        n = _as_count("n", n)
        key_y, key_z, key_eps = jax.random.split(key, 3)
        logits = jnp.log(jnp.asarray(self.class_prior(), jnp.float32))
        y = np.asarray(jax.random.categorical(key_y, logits, shape=(n,)), dtype=np.int64)
        z = np.asarray(jax.random.normal(key_z, (n, 1)), dtype=np.float64)
        eps = np.asarray(jax.random.normal(key_eps, (n, self.x_dim)), dtype=np.float64)
        x = self.f_gt_np(y, z) + self.sigma_eps * eps
        return LabelledDataset(x=x, z=z, y=y)

    # ------------------------------------------------------------------ exact quantities
    def _class_chunks(self, x: np.ndarray, y: int, z_grid: np.ndarray, log_w: np.ndarray):
        """As :meth:`Benchmark._quadrature_chunks`, for the class-y decoder."""
        f = self.f_gt_np(np.full(z_grid.size, y), z_grid[:, None])
        offset = -0.5 * z_grid**2 - 0.5 * _LOG_2PI + log_w
        chunk = max(1, CHUNK_ELEMENTS // z_grid.size)
        for start in range(0, x.shape[0], chunk):
            sl = slice(start, min(start + chunk, x.shape[0]))
            a = self._loglik(x[sl], f, offset)
            peak = a.max(axis=1)
            a -= peak[:, None]
            yield sl, a, peak

    def log_prob_by_class(self, x: np.ndarray, z_grid: np.ndarray | None = None) -> np.ndarray:
        """Exact class-conditional log-densities by quadrature over z.

        .. math:: \\log p(x \\mid y) = \\operatorname{logsumexp}_g \\big[\\log N(x; f_{gt}(y, z_g),
                  \\sigma^2 I) + \\log N(z_g; 0, 1) + \\log w_g\\big]

        with trapezoid weights on ``z_grid`` (default :data:`DEFAULT_Z_GRID`), float64, chunked.

        Returns
        -------
        np.ndarray
            Shape (n, n_classes).
        """
        x = self._check_x(x)
        z_grid = DEFAULT_Z_GRID if z_grid is None else check_z_grid(z_grid)
        log_w = np.log(trapezoid_weights(z_grid))
        out = np.empty((x.shape[0], self.n_classes))
        for c in range(self.n_classes):
            for sl, a, peak in self._class_chunks(x, c, z_grid, log_w):
                out[sl, c] = np.log(np.exp(a, out=a).sum(axis=1)) + peak
        return out

    def log_prob_given_y(self, x: np.ndarray, y: Any, z_grid: np.ndarray | None = None) -> np.ndarray:
        """Exact :math:`\\log p(x \\mid y)` for each point, shape (n,).

        Parameters
        ----------
        x
            Observations, shape (n, x_dim).
        y
            One label for all points, or labels of shape (n,).
        """
        table = self.log_prob_by_class(x, z_grid)
        y = self._check_labels(y, table.shape[0])
        return table[np.arange(table.shape[0]), y]

    def log_prob(self, x: np.ndarray, z_grid: np.ndarray | None = None) -> np.ndarray:
        """Exact marginal :math:`\\log p(x) = \\log \\sum_y \\pi_y p(x \\mid y)`, shape (n,)."""
        return logsumexp(self.log_prob_by_class(x, z_grid) + np.log(self.class_prior()), axis=1)

    def class_posterior(self, x: np.ndarray, z_grid: np.ndarray | None = None) -> np.ndarray:
        """Exact :math:`p(y \\mid x) = \\pi_y p(x \\mid y) / \\sum_c \\pi_c p(x \\mid c)`, shape (n, C)."""
        joint = self.log_prob_by_class(x, z_grid) + np.log(self.class_prior())
        return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))

    def posterior(
        self, x: np.ndarray, y: Any = None, z_grid: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact posterior density over z on a grid, given the label or with the label marginalised.

        .. math:: p(z_g \\mid x, y) = \\frac{N(x; f_{gt}(y, z_g), \\sigma^2 I) N(z_g; 0, 1)}{p(x \\mid y)},
                  \\qquad p(z \\mid x) = \\sum_y p(y \\mid x)\\, p(z \\mid x, y),

        normalised with the trapezoid weights, so ``np.trapezoid(density, z_grid, axis=1)`` is 1.

        Parameters
        ----------
        x
            Observations, shape (n, x_dim).
        y
            ``None`` for :math:`p(z \\mid x)`; one label or labels of shape (n,) for :math:`p(z \\mid x, y)`.
        z_grid
            Optional increasing grid (default :data:`DEFAULT_Z_GRID`; the output is (n, G) float64).

        Returns
        -------
        z_grid, density
            Shapes (G,) and (n, G).
        """
        x = self._check_x(x)
        z_grid = DEFAULT_Z_GRID if z_grid is None else check_z_grid(z_grid)
        log_w = np.log(trapezoid_weights(z_grid))
        if y is None:
            weights = self.class_posterior(x, z_grid)
        else:
            labels = self._check_labels(y, x.shape[0])
            weights = np.eye(self.n_classes)[labels]
        density = np.zeros((x.shape[0], z_grid.size))
        for c in range(self.n_classes):
            rows = np.flatnonzero(weights[:, c] > 0)
            if rows.size == 0:
                continue
            for sl, a, _ in self._class_chunks(x[rows], c, z_grid, log_w):
                log_norm = np.log(np.exp(a).sum(axis=1, keepdims=True))
                a -= log_w
                a -= log_norm
                density[rows[sl]] += weights[rows[sl], c, None] * np.exp(a)
        return np.array(z_grid), density

    def bayes_accuracy(self) -> float:
        """Exact Bayes-optimal accuracy :math:`\\int \\max_y \\pi_y p(x \\mid y)\\, dx` (per benchmark)."""
        raise NotImplementedError

    def bayes_accuracy_mc(
        self, key: jax.Array, n: int = 20000, z_grid: np.ndarray | None = None
    ) -> tuple[float, float]:
        """Monte-Carlo estimate of the Bayes accuracy, :math:`E_{p(x)}[\\max_y p(y \\mid x)]`, and its
        standard error.

        The Rao-Blackwellised form (the expected probability that the Bayes rule is right, given x) has
        a smaller variance than the fraction of sampled labels the rule predicts.
        """
        data = self.sample(key, n)
        best = self.class_posterior(data.x, z_grid).max(axis=1)
        return float(best.mean()), float(best.std(ddof=1) / math.sqrt(n))

    # ------------------------------------------------------------------ validation
    def _check_label(self, y: Any) -> int:
        require(
            isinstance(y, int | np.integer) and not isinstance(y, bool) and 0 <= y < self.n_classes,
            f"{self.name}: label must be an integer in [0, {self.n_classes}), got {y!r}",
        )
        return int(y)

    def _check_labels(self, y: Any, n: int) -> np.ndarray:
        arr = np.asarray(y)
        if arr.ndim == 0:
            arr = np.full(n, arr)
        if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(
                f"{self.name}: labels must be integers of shape ({n},), got {arr.dtype} {arr.shape}"
            )
        if np.any((arr < 0) | (arr >= self.n_classes)):
            raise DataError(f"{self.name}: labels must lie in [0, {self.n_classes})")
        return arr.astype(np.int64)


@dataclass(frozen=True, eq=False)
class Semicircle(LabelledBenchmark):
    """Two classes on one arc with different densities, running in opposite directions (docs/science.md).

    .. math:: t = \\Phi(z), \\quad a_0(t) = \\pi t^2, \\quad a_1(t) = \\pi (1 - t^2), \\quad
              f_{gt}(y, z) = [\\cos a_y(t), \\sin a_y(t)], \\quad y \\sim \\mathrm{Bernoulli}(1/2).

    Along the arc, class 0 has angle density :math:`p_0(a) = (4 \\pi a)^{-1/2}` (piled up near angle 0)
    and class 1 its mirror image :math:`p_1(a) = p_0(\\pi - a)`. A point on the arc has one latent per
    class, at opposite ends of the prior, so the label-marginal posterior :math:`p(z \\mid x)` is bimodal
    while :math:`p(z \\mid x, y)` is not.

    Parameters
    ----------
    sigma_eps
        Observation noise std (default 0.05).
    """

    name: ClassVar[str] = "semicircle"
    x_dim: ClassVar[int] = 2
    summary: ClassVar[str] = (
        "labelled: y ~ Bernoulli(1/2), t = Phi(z), angle a_0 = pi t^2, a_1 = pi (1 - t^2); "
        "x = [cos a_y, sin a_y] + eps"
    )

    sigma_eps: float = 0.05

    def _mean_y(self, y: Any, z: Any, xp: ModuleType, ndtr: Any) -> Any:
        t2 = ndtr(z[..., 0]) ** 2
        angle = math.pi * xp.where(y == 0, t2, 1.0 - t2)
        return xp.stack([xp.cos(angle), xp.sin(angle)], axis=-1)

    def bayes_accuracy(self, z_grid: np.ndarray | None = None) -> float:
        """Exact Bayes accuracy by a 1-D quadrature over z.

        The classes are mirror images, :math:`p(x \\mid 1) = p(M x \\mid 0)` with
        :math:`M (x_1, x_2) = (-x_1, x_2)`, so

        .. math:: p(x \\mid 0) - p(x \\mid 1) = \\int_0^{\\pi/2} [p_0(a) - p_0(\\pi - a)]\\,
                  [N(x; u(a), \\sigma^2 I) - N(x; u(\\pi - a), \\sigma^2 I)]\\, da,
                  \\quad u(a) = (\\cos a, \\sin a).

        For :math:`a < \\pi/2` the first bracket is positive (:math:`p_0` decreases) and the second has
        the sign of :math:`x_1`. Hence the Bayes rule is :math:`\\hat y = 0` iff :math:`x_1 > 0`, and
        its accuracy (equal in both classes by symmetry) is

        .. math:: P(x_1 > 0 \\mid y = 0) = \\int N(z; 0, 1)\\,
                  \\Phi\\big(\\cos(\\pi \\Phi(z)^2) / \\sigma\\big)\\, dz.
        """
        z_grid = DEFAULT_Z_GRID if z_grid is None else check_z_grid(z_grid)
        angle = math.pi * sp_special.ndtr(z_grid) ** 2
        prior = np.exp(-0.5 * z_grid**2 - 0.5 * _LOG_2PI)
        integrand = prior * sp_special.ndtr(np.cos(angle) / self.sigma_eps)
        return float(np.sum(trapezoid_weights(z_grid) * integrand))

    def bayes_rule(self, x: np.ndarray) -> np.ndarray:
        """The Bayes-optimal label, ``0`` where :math:`x_1 > 0` else ``1`` (see :meth:`bayes_accuracy`)."""
        return (self._check_x(x)[:, 0] <= 0.0).astype(np.int64)


@dataclass(frozen=True, eq=False)
class SharedLine(LabelledBenchmark):
    """Two linear-Gaussian classes on one line, with different densities and opposite directions.

    .. math:: f_{gt}(0, z) = w z + b, \\qquad f_{gt}(1, z) = w (m - s z) + b, \\qquad
              y \\sim \\mathrm{Bernoulli}(1/2).

    Along the line (coordinate :math:`u = w^T (x - b) / \\lVert w \\rVert^2`) class 0 is
    :math:`N(0, 1)` and class 1 is :math:`N(m, s^2)`. This is the labelled analogue of ``linear`` and
    shows the semi-supervised failure differently from ``semicircle``: every class posterior
    :math:`p(z \\mid x, y)` is *exactly* Gaussian (Kingma's :math:`q(z \\mid x, y)` family contains it,
    so the Kingma cells have no variational gap at the truth), while the label-marginal
    :math:`p(z \\mid x)` is a two-component mixture whose modes :math:`u` and :math:`(m - u)/s` differ.
    Any failure of the fully mean-field M2 here is caused by :math:`q(z \\mid x)` ignoring y, not by a
    non-Gaussian class posterior. Everything is closed form (:meth:`class_moments`,
    :meth:`posterior_moments`), which also checks the quadrature.

    Parameters
    ----------
    w, b
        Direction and offset of the line, 2 numbers each (defaults (1, 0.5) and (0, 0)).
    shift, scale
        Class 1's centre ``m`` and spread ``s > 0`` along the line (defaults 0.5 and 0.5).
    sigma_eps
        Observation noise std (default 0.1).
    """

    name: ClassVar[str] = "shared_line"
    x_dim: ClassVar[int] = 2
    summary: ClassVar[str] = (
        "labelled: y ~ Bernoulli(1/2); x = w z + b (y = 0) or w (shift - scale z) + b (y = 1), + eps"
    )

    sigma_eps: float = 0.1
    w: tuple[float, ...] = (1.0, 0.5)
    b: tuple[float, ...] = (0.0, 0.0)
    shift: float = 0.5
    scale: float = 0.5

    def _validate(self) -> None:
        object.__setattr__(self, "w", _as_vector("shared_line: w", self.w, self.x_dim))
        object.__setattr__(self, "b", _as_vector("shared_line: b", self.b, self.x_dim))
        require(any(v != 0.0 for v in self.w), "shared_line: w must not be zero")
        object.__setattr__(self, "shift", _as_float("shared_line: shift", self.shift))
        scale = _as_float("shared_line: scale", self.scale)
        require(scale > 0.0, f"shared_line: scale must be > 0, got {scale!r}")
        object.__setattr__(self, "scale", scale)

    def _line(self) -> tuple[np.ndarray, np.ndarray]:
        """Per class ``(a_y, c_y)`` with ``f(y, z) = w (a_y z + c_y) + b``."""
        return np.array([1.0, -self.scale]), np.array([0.0, self.shift])

    def _mean_y(self, y: Any, z: Any, xp: ModuleType, ndtr: Any) -> Any:
        w = xp.asarray(self.w, dtype=z.dtype)
        b = xp.asarray(self.b, dtype=z.dtype)
        u = xp.where(y == 0, z[..., 0], self.shift - self.scale * z[..., 0])
        return u[..., None] * w + b

    def class_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Closed form :math:`p(x \\mid y) = N(w c_y + b,\\; a_y^2 w w^T + \\sigma^2 I)`.

        Returns
        -------
        means, covs
            Shapes (2, 2) and (2, 2, 2).
        """
        w, b = np.array(self.w), np.array(self.b)
        a, c = self._line()
        means = c[:, None] * w + b
        covs = a[:, None, None] ** 2 * np.outer(w, w) + self.sigma_eps**2 * np.eye(self.x_dim)
        return means, covs

    def posterior_moments(self, x: np.ndarray, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Closed-form Gaussian :math:`p(z \\mid x, y)`: precision :math:`1 + a_y^2 w^T w / \\sigma^2`,
        mean :math:`a_y w^T (x - b - c_y w) / (\\sigma^2 \\lambda)`.

        Returns
        -------
        mean, std
            Each of shape (n,).
        """
        x = self._check_x(x)
        labels = self._check_labels(y, x.shape[0])
        w, b = np.array(self.w), np.array(self.b)
        a, c = self._line()
        a_y, c_y = a[labels], c[labels]
        var = self.sigma_eps**2
        precision = 1.0 + a_y**2 * (w @ w) / var
        resid = x - b - c_y[:, None] * w
        return a_y * (resid @ w) / var / precision, 1.0 / np.sqrt(precision)

    def bayes_accuracy(self, grid_size: int = 200001) -> float:
        """Exact Bayes accuracy by a 1-D quadrature along the line.

        Write :math:`x - b = u\\, w + v` with :math:`v \\perp w`. Under both classes :math:`v` has the same
        distribution (the noise's orthogonal part) independent of :math:`u`, so the Bayes rule depends on
        :math:`u` only, and :math:`u \\mid y \\sim N(c_y, a_y^2 + \\sigma^2 / \\lVert w \\rVert^2)`. The
        accuracy is :math:`\\int \\max_y \\pi_y N(u; c_y, v_y)\\, du`, computed on a uniform grid covering
        +-12 standard deviations of both classes.
        """
        a, c = self._line()
        var_u = a**2 + self.sigma_eps**2 / float(np.dot(self.w, self.w))
        sd = np.sqrt(var_u)
        lo, hi = float(np.min(c - 12 * sd)), float(np.max(c + 12 * sd))
        u = np.linspace(lo, hi, grid_size)
        dens = self.class_prior()[:, None] * np.exp(
            -0.5 * (u[None, :] - c[:, None]) ** 2 / var_u[:, None]
        ) / np.sqrt(2 * np.pi * var_u[:, None])
        return float(np.sum(trapezoid_weights(u) * dens.max(axis=0)))


__all__ = ["LabelledBenchmark", "LabelledDataset", "Semicircle", "SharedLine"]
