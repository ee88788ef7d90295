"""Shared fixtures: exact models built from the benchmarks' closed forms."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaefail
from vaefail.benchmarks import get_benchmark
from vaefail.models import TrueDecoder, make_vae

# The tests run with the settings of the `vaefail` command (compilation cache, one CPU device per core).
vaefail.configure()


def exact_linear_vae(bench=None):
    """The `linear` benchmark's true decoder with its exact Gaussian posterior as a linear encoder.

    For x = w z + b + eps, p(z|x) = N(a^T (x - b), s^2) with 1/s^2 = 1 + w^T w / sigma^2 and
    a = s^2 w / sigma^2: a depth-0 MLP (one linear layer) represents it exactly.
    """
    bench = bench or get_benchmark("linear")
    w, b, sigma = np.asarray(bench.w), np.asarray(bench.b), bench.sigma_eps
    prec = 1.0 + w @ w / sigma**2
    a = w / sigma**2 / prec
    decoder = TrueDecoder(f_gt=bench.f_gt, true_latent_dim=1)
    model = make_vae(2, 1, sigma, key=jax.random.PRNGKey(0), depth=0, decoder=decoder)
    weight = jnp.asarray(np.stack([a, np.zeros(2)]), jnp.float32)
    bias = jnp.asarray([-a @ b, -0.5 * np.log(prec)], jnp.float32)
    layer = lambda m: m.encoder.net.layers[0]  # noqa: E731
    return eqx.tree_at(lambda m: (layer(m).weight, layer(m).bias), model, (weight, bias))


@pytest.fixture(scope="session")
def linear_bench():
    return get_benchmark("linear")


@pytest.fixture(scope="session")
def linear_exact(linear_bench):
    return exact_linear_vae(linear_bench)
