"""A 1-D latent generative model seen as a curve: ``p(x|z) = N(f(z), sigma^2 I)``, ``z ~ N(0, 1)``.

Wraps either a benchmark's true decoder or a ``K = 1`` VAE's decoder, so the posterior and curve metrics
treat the truth and a learned model alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaefail.errors import ConfigError
from vaefail.metrics.likelihood import decode
from vaefail.models import VAE


@dataclass(frozen=True)
class Curve:
    """``f: R -> R^D`` in two forms, the noise and the data dimension.

    Attributes
    ----------
    f_jax
        ``z (m, 1) -> f(z) (m, D)``, JAX-traceable (float32).
    f_np
        ``z (m,) -> f(z) (m, D)``, float64 NumPy (a model's decoder computes in float32 and is cast).
    sigma
        Observation noise ``sigma_eps``.
    x_dim
        ``D``.
    name
        ``"model"`` or the benchmark's name.
    """

    f_jax: Callable[[jax.Array], jax.Array]
    f_np: Callable[[np.ndarray], np.ndarray]
    sigma: float
    x_dim: int
    name: str


def model_curve(model: VAE) -> Callable[[np.ndarray], np.ndarray]:
    """``z (m,) -> f_theta(z) (m, D)`` in float64, evaluated in fixed-size chunks (one compilation)."""
    step = 1 << 16

    def f(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, np.float64).reshape(-1)
        out = np.empty((z.size, model.x_dim))
        size = step if z.size > step else z.size
        for p in range(0, z.size, size):
            zc = z[p : p + size]
            if zc.size < size:
                zc = np.concatenate([zc, np.zeros(size - zc.size)])
            res = np.asarray(decode(model, jnp.asarray(zc[:, None], jnp.float32)), np.float64)
            out[p : p + size] = res[: min(size, z.size - p)]
        return out

    return f


def as_curve(source: Any, what: str = "this metric") -> Curve:
    """A :class:`Curve` from a VAE with ``latent_dim == 1`` or a benchmark with a 1-D latent."""
    if isinstance(source, VAE):
        if source.latent_dim != 1:
            raise ConfigError(f"{what} needs a model with a 1-D latent, this one has K = {source.latent_dim}")
        decoder = source.decoder
        return Curve(
            f_jax=lambda z: jax.vmap(decoder)(z), f_np=model_curve(source), sigma=float(source.sigma),
            x_dim=source.x_dim, name="model",
        )
    if hasattr(source, "f_gt") and hasattr(source, "f_gt_np") and hasattr(source, "sigma_eps"):
        if getattr(source, "latent_dim", 1) != 1:
            raise ConfigError(f"{what} needs a benchmark with a 1-D latent")
        return Curve(
            f_jax=source.f_gt, f_np=lambda z: source.f_gt_np(np.asarray(z).reshape(-1, 1)),
            sigma=float(source.sigma_eps), x_dim=int(source.x_dim),
            name=str(getattr(source, "name", "benchmark")),
        )
    raise ConfigError(f"{what} needs a benchmark or a K = 1 VAE, got {type(source).__name__}")
