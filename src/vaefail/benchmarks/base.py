"""Ground-truth benchmark interface, exact quadrature over a 1-D latent, and train/val/test splits.

Every benchmark is a generative process

.. math::

    z \\sim \\mathcal N(0, I_K), \\qquad x = f_{gt}(z) + \\sigma_\\epsilon\\,\\epsilon,
    \\qquad \\epsilon \\sim \\mathcal N(0, I_D),

with a known decoder :math:`f_{gt}`. All current benchmarks have :math:`K = 1`, so the marginal
:math:`p_{gt}(x)` and the posterior :math:`p_{gt}(z \\mid x)` are computed by quadrature on a fixed,
uniform z-grid (:data:`DEFAULT_Z_GRID`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp_special
import numpy as np
import scipy.special as sp_special

from vaefail.errors import DataError, require
from vaefail.quadrature import DEFAULT_Z_GRID, check_z_grid, trapezoid_weights

#: Maximum number of (point, grid node) pairs held in one chunk of the quadrature. One float64
#: buffer of this size is 512 kB (4 points on the default grid); the quadrature holds at most three
#: (log-joint, one squared-residual term, the exp temporary in ``posterior``), so its working memory
#: is below 2 MB whatever n is, plus the (G, x_dim) decoder table. Small chunks that stay in the L2
#: cache measured about 1.5x faster than 32 MB chunks.
CHUNK_ELEMENTS = 1 << 16

_LOG_2PI = math.log(2.0 * math.pi)


#: ``fold_in`` constant of the data keys (see :meth:`Benchmark.splits`), distinct from every key the
#: training derives from the same seed.
DATA_FOLD = 0x0DA7A


@dataclass(frozen=True)
class Dataset:
    """Observations and the true latents that generated them.

    Attributes
    ----------
    x
        Observations, shape (n, x_dim), float64.
    z
        True latents, shape (n, latent_dim), float64.
    """

    x: np.ndarray
    z: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class Splits:
    """Train, validation and test datasets drawn with distinct, fixed seeds."""

    train: Dataset
    val: Dataset
    test: Dataset


def _sigmoid(a: Any, xp: ModuleType) -> Any:
    """Logistic function written with ``tanh`` so it is stable and exists in numpy and jax.numpy."""
    return 0.5 * (1.0 + xp.tanh(0.5 * a))


@dataclass(frozen=True, eq=False)
class Benchmark:
    """Abstract ground-truth benchmark with a 1-D latent.

    Subclasses set the class attributes ``name``, ``x_dim``, ``latent_dim`` and ``summary``, declare
    their parameters (including ``sigma_eps``) as dataclass fields, validate them in
    ``_validate`` and implement the decoder mean once in ``_mean(z, xp, ndtr)``, where ``xp`` is
    ``numpy`` or ``jax.numpy`` and ``ndtr`` the matching standard normal CDF. Instances compare and
    hash by identity, so they can be static fields of Equinox modules.
    """

    name: ClassVar[str] = ""
    x_dim: ClassVar[int] = 0
    latent_dim: ClassVar[int] = 1
    labelled: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    sigma_eps: float = 0.1

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        sigma = _as_float("sigma_eps", self.sigma_eps)
        require(sigma > 0.0, f"{self.name}: sigma_eps must be > 0, got {sigma!r}")
        object.__setattr__(self, "sigma_eps", sigma)
        self._validate()

    def _validate(self) -> None:
        """Check and normalise subclass parameters (raise ConfigError)."""

    def _mean(self, z: Any, xp: ModuleType, ndtr: Any) -> Any:
        """Decoder mean f_gt(z) for z of shape (..., latent_dim), in namespace ``xp``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ description
    def params(self) -> dict[str, float | list[float]]:
        """All generator parameters (including ``sigma_eps``) as a JSON-serialisable dict."""
        out: dict[str, float | list[float]] = {}
        for field in fields(self):
            key, value = field.name, getattr(self, field.name)
            if isinstance(value, tuple):
                out[key] = [float(v) for v in value]
            elif isinstance(value, int):
                out[key] = int(value)
            else:
                out[key] = float(value)
        return out

    def describe(self) -> str:
        """One line: name, dimensions, noise and the generating formula."""
        return (
            f"{self.name}: x_dim={self.x_dim}, K={self.latent_dim}, "
            f"sigma_eps={self.sigma_eps:.4g}; {self.summary}"
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ decoder
    def f_gt(self, z: Any) -> jax.Array:
        """True decoder mean :math:`f_{gt}(z)` in JAX (jit/grad/vmap-traceable).

        Parameters
        ----------
        z
            Latents, shape (..., latent_dim); numpy or JAX array. Floating inputs keep their
            dtype (float32 in, float32 out); non-floating inputs are cast to float32.

        Returns
        -------
        jax.Array
            Shape (..., x_dim).
        """
        z = jnp.asarray(z)
        if not jnp.issubdtype(z.dtype, jnp.floating):
            z = z.astype(jnp.float32)
        return self._mean(z, jnp, jsp_special.ndtr)

    def f_gt_np(self, z: np.ndarray) -> np.ndarray:
        """True decoder mean in float64 NumPy; same formula as :meth:`f_gt`.

        Parameters
        ----------
        z
            Latents, shape (..., latent_dim).

        Returns
        -------
        np.ndarray
            Shape (..., x_dim), float64.
        """
        z = np.asarray(z, dtype=np.float64)
        return np.asarray(self._mean(z, np, sp_special.ndtr), dtype=np.float64)

    # ------------------------------------------------------------------ sampling
    def sample(self, key: jax.Array, n: int) -> Dataset:
        """Draw n points: :math:`z \\sim N(0, I_K)`, :math:`x = f_{gt}(z) + \\sigma \\epsilon`.

        Parameters
        ----------
        key
            JAX PRNG key; the result is a deterministic function of ``key`` and ``n``.
        n
            Number of points, >= 1.

        Returns
        -------
        Dataset
            ``x`` of shape (n, x_dim) and ``z`` of shape (n, latent_dim), both float64. The mean is
            evaluated in float64 from the (float32-drawn) z.
        """
        n = _as_count("n", n)
        key_z, key_eps = jax.random.split(key)
        z = np.asarray(jax.random.normal(key_z, (n, self.latent_dim)), dtype=np.float64)
        eps = np.asarray(jax.random.normal(key_eps, (n, self.x_dim)), dtype=np.float64)
        x = self.f_gt_np(z) + self.sigma_eps * eps
        return Dataset(x=x, z=z)

    def splits(
        self, n_train: int = 5000, n_val: int = 1000, n_test: int = 2000, seed: int = 0
    ) -> Splits:
        """Train/validation/test sets from the keys ``split(fold_in(PRNGKey(seed), DATA_FOLD), 3)``.

        Deterministic in ``seed``; different seeds give different data. The data keys come from their own
        fold of the seed's key: under JAX's partitionable Threefry ``split(key, 3)`` equals the first three
        keys of ``split(key, 5)``, so splitting ``PRNGKey(seed)`` directly would hand the data the same keys
        as the training's initialisation, decoder and encoder phases of the same seed.
        """
        for label, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            _as_count(label, value)
        require(
            isinstance(seed, int | np.integer) and not isinstance(seed, bool),
            f"seed must be an integer, got {seed!r}",
        )
        data_key = jax.random.fold_in(jax.random.PRNGKey(int(seed)), DATA_FOLD)
        k_train, k_val, k_test = jax.random.split(data_key, 3)
        return Splits(
            train=self.sample(k_train, n_train),
            val=self.sample(k_val, n_val),
            test=self.sample(k_test, n_test),
        )

    # ------------------------------------------------------------------ exact quantities
    def log_likelihood_grid(self, x: np.ndarray, z_grid: np.ndarray) -> np.ndarray:
        """Gaussian log-likelihood on a z-grid, unchunked.

        .. math:: \\log p(x_i \\mid z_g) = -\\frac{\\lVert x_i - f_{gt}(z_g) \\rVert^2}{2\\sigma^2}
                  - \\frac{D}{2}\\log(2\\pi\\sigma^2)

        Parameters
        ----------
        x
            Observations, shape (n, x_dim) (or (n,) when x_dim = 1); finite.
        z_grid
            1-D array of G finite latent values (any order; need not be a quadrature grid).

        Returns
        -------
        np.ndarray
            Shape (n, G), float64. Memory is O(n G); use :meth:`log_prob` / :meth:`posterior`,
            which chunk, for large n.
        """
        x = self._check_x(x)
        z_grid = check_z_grid(z_grid, quadrature=False)
        return self._loglik(x, self.f_gt_np(z_grid[:, None]))

    def _loglik(self, x: np.ndarray, f: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
        """log N(x_i; f_g, sigma^2 I) + offset_g as an (n, G) array, built in place in at most two
        (n, G) buffers."""
        var = self.sigma_eps**2
        out = np.empty((x.shape[0], f.shape[0]))
        tmp = np.empty_like(out) if self.x_dim > 1 else None
        np.square(np.subtract(x[:, 0, None], f[None, :, 0], out=out), out=out)
        for d in range(1, self.x_dim):
            out += np.square(np.subtract(x[:, d, None], f[None, :, d], out=tmp), out=tmp)
        out *= -0.5 / var
        out += -0.5 * self.x_dim * (_LOG_2PI + math.log(var))
        if offset is not None:
            out += offset
        return out

    def _quadrature_chunks(self, x: np.ndarray, z_grid: np.ndarray, log_w: np.ndarray):
        """Yield ``(slice, a, peak)`` over chunks of at most CHUNK_ELEMENTS (point, node) pairs.

        ``a[i, g] = log p(x_i | z_g) + log N(z_g; 0, 1) + log w_g - peak_i`` with ``peak_i`` the
        row maximum, so ``log p(x_i) = log sum_g exp(a[i, g]) + peak_i``. ``a`` is a fresh buffer
        the caller may overwrite.
        """
        f = self.f_gt_np(z_grid[:, None])
        offset = -0.5 * z_grid**2 - 0.5 * _LOG_2PI + log_w
        chunk = max(1, CHUNK_ELEMENTS // z_grid.size)
        for start in range(0, x.shape[0], chunk):
            sl = slice(start, min(start + chunk, x.shape[0]))
            a = self._loglik(x[sl], f, offset)
            peak = a.max(axis=1)
            a -= peak[:, None]
            yield sl, a, peak

    def log_prob(self, x: np.ndarray, z_grid: np.ndarray | None = None) -> np.ndarray:
        """Exact marginal log-density by quadrature over the 1-D latent.

        .. math:: \\log p_{gt}(x) = \\log \\int N(x; f_{gt}(z), \\sigma^2 I)\\, N(z; 0, 1)\\, dz
                  \\approx \\operatorname{logsumexp}_g\\big[\\log p(x \\mid z_g)
                  + \\log N(z_g; 0, 1) + \\log w_g\\big]

        with trapezoid weights :math:`w_g` on ``z_grid`` (default :data:`DEFAULT_Z_GRID`), in
        float64. Points are processed in chunks of at most ``max(1, CHUNK_ELEMENTS // G)``, so the
        working memory stays below 2 MB (plus the (G, x_dim) table of f_gt) whatever n is.

        Parameters
        ----------
        x
            Observations, shape (n, x_dim) (or (n,) when x_dim = 1); finite.
        z_grid
            Optional increasing 1-D quadrature grid.

        Returns
        -------
        np.ndarray
            Shape (n,), float64.

        Raises
        ------
        DataError
            If ``x`` has the wrong shape or non-finite values.
        """
        x = self._check_x(x)
        z_grid = DEFAULT_Z_GRID if z_grid is None else check_z_grid(z_grid)
        out = np.empty(x.shape[0])
        for sl, a, peak in self._quadrature_chunks(x, z_grid, np.log(trapezoid_weights(z_grid))):
            out[sl] = np.log(np.exp(a, out=a).sum(axis=1)) + peak
        return out

    def posterior(
        self, x: np.ndarray, z_grid: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact posterior density :math:`p_{gt}(z \\mid x)` on a grid.

        .. math:: p(z_g \\mid x) = \\frac{p(x \\mid z_g) N(z_g; 0, 1)}{\\sum_h w_h\\, p(x \\mid z_h)
                  N(z_h; 0, 1)}

        normalised with the same trapezoid weights, so ``np.trapezoid(density, z_grid, axis=1)``
        is 1 to rounding.

        Parameters
        ----------
        x
            Observations, shape (n, x_dim) (or (n,) when x_dim = 1); finite.
        z_grid
            Optional increasing 1-D grid (default :data:`DEFAULT_Z_GRID`). The output is
            (n, G) float64, i.e. 128 kB per point on the default grid: pass a coarser grid for many
            points when the decoder allows it.

        Returns
        -------
        z_grid, density
            The grid, shape (G,), and the density, shape (n, G).
        """
        x = self._check_x(x)
        z_grid = DEFAULT_Z_GRID if z_grid is None else check_z_grid(z_grid)
        log_w = np.log(trapezoid_weights(z_grid))
        density = np.empty((x.shape[0], z_grid.size))
        for sl, a, _ in self._quadrature_chunks(x, z_grid, log_w):
            # density_g = exp(a_g - log w_g) / sum_h exp(a_h): the peak cancels.
            log_norm = np.log(np.exp(a).sum(axis=1, keepdims=True))
            a -= log_w
            a -= log_norm
            density[sl] = np.exp(a, out=a)
        return np.array(z_grid), density

    # ------------------------------------------------------------------ validation
    def _check_x(self, x: Any) -> np.ndarray:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{self.name}: x must be a numeric array ({exc})") from exc
        if arr.ndim == 1 and self.x_dim == 1:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2 or arr.shape[1] != self.x_dim:
            raise DataError(
                f"{self.name}: x must have shape (n, {self.x_dim}), got {tuple(arr.shape)}"
            )
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.all(np.isfinite(arr), axis=1)))
            raise DataError(f"{self.name}: x contains NaN or inf in {bad} row(s)")
        return arr


def _as_float(label: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    require(
        not isinstance(value, bool) and math.isfinite(out),
        f"{label} must be a finite number, got {value!r}",
    )
    return out


def _as_count(label: str, value: Any) -> int:
    require(
        isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1,
        f"{label} must be an integer >= 1, got {value!r}",
    )
    return int(value)


def _as_vector(label: str, value: Any, length: int) -> tuple[float, ...]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.array([np.nan])
    require(
        arr.shape == (length,) and bool(np.all(np.isfinite(arr))),
        f"{label} must be {length} finite numbers, got {value!r}",
    )
    return tuple(float(v) for v in arr)
