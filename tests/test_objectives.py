"""Known-answer tests of the ELBO, the IWAE bound and the DReG gradient estimator."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaefail._jax import materialise
from vaefail.benchmarks import get_benchmark
from vaefail.errors import ConfigError, UnknownNameError
from vaefail.models import LOG_2PI, TrueDecoder, columns, make_vae, mlp_columns
from vaefail.objectives import (
    _normal_logpdf,
    elbo,
    gaussian_kl_to_standard,
    iwae,
    loss_fn,
    sample_terms,
)


def test_exact_linear_encoder_matches_closed_form_posterior(linear_bench, linear_exact):
    x = linear_bench.sample(jax.random.PRNGKey(1), 50).x
    mu, log_std = jax.vmap(linear_exact.encoder)(jnp.asarray(x, jnp.float32))
    mean, std = linear_bench.posterior_moments(x)
    np.testing.assert_allclose(mu, mean, atol=1e-5)
    np.testing.assert_allclose(np.exp(log_std), std, rtol=1e-5)


def test_elbo_at_analytic_optimum_equals_log_prob(linear_bench, linear_exact):
    """True decoder + exact posterior: ELBO(x) = log p(x) in expectation; IWAE_S(x) = log p(x) exactly."""
    x = linear_bench.sample(jax.random.PRNGKey(2), 200).x
    log_p = linear_bench.log_prob(x)
    rec = elbo(linear_exact, jnp.asarray(x, jnp.float32), jax.random.PRNGKey(3), num_samples=2000)
    per_point_err = np.asarray(rec.bound, np.float64) - log_p
    # MC error of the reconstruction term with 2000 samples is ~1/sqrt(2000) of its per-sample std (~0.7)
    assert abs(per_point_err.mean()) < 4 * 0.71 / np.sqrt(2000 * 200)
    assert np.max(np.abs(per_point_err)) < 0.1
    # every importance weight equals p(x): the IWAE bound is exact for any S (float32 round-off only)
    bound = iwae(linear_exact, jnp.asarray(x, jnp.float32), jax.random.PRNGKey(4), 5).bound
    np.testing.assert_allclose(bound, log_p, atol=2e-4)


def test_kl_closed_form_matches_monte_carlo():
    mu, log_std = jnp.array([0.3, -1.2]), jnp.array([-0.5, 0.4])
    z = mu + jnp.exp(log_std) * jax.random.normal(jax.random.PRNGKey(0), (400_000, 2))
    log_q = jnp.sum(-0.5 * ((z - mu) / jnp.exp(log_std)) ** 2 - log_std, axis=1)
    log_p = jnp.sum(-0.5 * z**2, axis=1)
    mc = jnp.mean(log_q - log_p)
    assert abs(float(gaussian_kl_to_standard(mu, log_std)) - float(mc)) < 5e-3


@pytest.fixture(scope="module")
def figure8_truth_model():
    """Figure-8's true decoder with an arbitrary (untrained) encoder: posteriors far from q."""
    bench = get_benchmark("figure8")
    model = make_vae(2, 1, bench.sigma_eps, key=jax.random.PRNGKey(5),
                     decoder=TrueDecoder(f_gt=bench.f_gt, true_latent_dim=1))
    x = bench.sample(jax.random.PRNGKey(6), 300).x
    return bench, model, x


def test_bound_ordering_elbo_iwae_logp(figure8_truth_model):
    """E[ELBO] <= E[IWAE_5] <= E[IWAE_50] <= log p(x), each gap decisive against its standard error."""
    bench, model, x = figure8_truth_model
    xj = jnp.asarray(x, jnp.float32)
    log_p = bench.log_prob(x)  # exact: the model's decoder and sigma are the truth
    reps = [jax.random.PRNGKey(100 + r) for r in range(20)]
    e = np.mean([np.asarray(elbo(model, xj, k).bound) for k in reps], axis=0)
    i5 = np.mean([np.asarray(iwae(model, xj, k, 5).bound) for k in reps], axis=0)
    i50 = np.mean([np.asarray(iwae(model, xj, k, 50).bound) for k in reps], axis=0)
    for lo, hi in [(e, i5), (i5, i50), (i50, log_p)]:
        gap = hi - lo
        se = gap.std(ddof=1) / np.sqrt(len(gap))
        assert gap.mean() > 5 * se, (gap.mean(), se)


def test_record_terms(figure8_truth_model):
    _, model, x = figure8_truth_model
    rec = elbo(model, jnp.asarray(x, jnp.float32), jax.random.PRNGKey(0))
    assert rec.bound.shape == (len(x),)
    np.testing.assert_allclose(rec.bound, rec.reconstruction - rec.kl, rtol=1e-6)
    assert np.all(np.asarray(rec.kl) >= 0)
    # IWAE with one sample is the single-sample ELBO with the MC KL instead of the analytic one
    one = iwae(model, jnp.asarray(x, jnp.float32), jax.random.PRNGKey(0), 1)
    assert abs(float(jnp.mean(one.bound - rec.bound))) < 0.2


def test_dreg_gradients_agree_with_iwae_in_expectation():
    """Decoder gradients are identical per draw; encoder gradients agree on average over draws."""
    bench = get_benchmark("figure8")
    model = make_vae(2, 2, bench.sigma_eps, key=jax.random.PRNGKey(7), width=8, depth=1)
    x = jnp.asarray(bench.sample(jax.random.PRNGKey(8), 16).x, jnp.float32)
    std_loss, dreg_loss = loss_fn("iwae", 10), loss_fn("iwae", 10, dreg=True)

    def grads(loss, key):
        g = eqx.filter_grad(lambda m: loss(m, x, key)[0])(model)
        return jax.flatten_util.ravel_pytree(eqx.filter(g, eqx.is_array))[0]

    keys = jax.random.split(jax.random.PRNGKey(9), 3000)
    g_std = np.asarray(jax.jit(jax.vmap(lambda k: grads(std_loss, k)))(keys), np.float64)
    g_dreg = np.asarray(jax.jit(jax.vmap(lambda k: grads(dreg_loss, k)))(keys), np.float64)
    flat_dec = jax.flatten_util.ravel_pytree(
        eqx.filter(eqx.tree_at(lambda m: m.encoder, model, replace_fn=lambda e: jax.tree_util.tree_map(
            lambda a: jnp.full_like(a, np.nan) if eqx.is_array(a) else a, e)), eqx.is_array)
    )[0]
    is_encoder = np.isnan(np.asarray(flat_dec))
    dec = ~is_encoder
    np.testing.assert_allclose(g_dreg[:, dec], g_std[:, dec], rtol=1e-3, atol=1e-4)
    diff = g_dreg[:, is_encoder] - g_std[:, is_encoder]
    z = diff.mean(0) / (diff.std(0, ddof=1) / np.sqrt(len(keys)) + 1e-12)
    assert np.mean(np.abs(z) < 4) > 0.97, np.sort(np.abs(z))[-5:]
    # and DReG has lower variance for the encoder, its reason to exist
    assert np.median(g_dreg[:, is_encoder].var(0) / g_std[:, is_encoder].var(0)) < 1.0


def test_column_layout_computes_the_per_point_model():
    """mlp_columns == vmap of the MLP; sample_terms' log-weights == the per-point, per-sample formula
    ``log N(x; f(z), sigma^2) + log N(z; 0, I) - log N(z; mu, sigma_q^2)`` with the same draws."""
    bench = get_benchmark("figure8")
    model = make_vae(2, 3, bench.sigma_eps, key=jax.random.PRNGKey(3), activation="tanh")
    x = jnp.asarray(bench.sample(jax.random.PRNGKey(4), 7).x, jnp.float32)
    np.testing.assert_allclose(mlp_columns(model.encoder.net, x.T), jax.vmap(model.encoder.net)(x).T,
                               rtol=1e-5, atol=1e-6)
    keys = jax.random.split(jax.random.PRNGKey(5), 7)
    t = sample_terms(model, x, keys, 11)
    assert t.z.shape == (3, 7, 11) and t.log_w.shape == (7, 11)
    for i in range(7):
        eps = jax.random.normal(keys[i], (3, 11)).T  # point i's draws, one sample per row
        mu, log_std = model.encoder(x[i])
        z = mu + jnp.exp(log_std) * eps
        ref = (jax.vmap(lambda zs, xi=x[i]: model.log_likelihood(xi, zs))(z)
               + jnp.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=-1) - _normal_logpdf(z, mu, log_std))
        np.testing.assert_allclose(t.log_w[i], ref, rtol=1e-5, atol=1e-4)
    assert np.array_equal(t.eps, jax.vmap(lambda k: jax.random.normal(k, (3, 11)), out_axes=1)(keys))
    truth = eqx.tree_at(lambda m: m.decoder, model,
                        TrueDecoder(f_gt=bench.f_gt, true_latent_dim=bench.latent_dim))
    z = t.z.reshape(3, -1)
    np.testing.assert_allclose(columns(truth.decoder, z), jax.vmap(truth.decoder)(z.T).T, rtol=1e-6)


@pytest.mark.parametrize("shape", [(1, 100, 20), (3, 8, 2), (1, 7, 5), (2, 3)])
def test_materialise_returns_its_input_bit_for_bit(shape):
    """The identity product that makes XLA store the normals once changes no bit: sizes sharing a factor
    of 16 go through the product, the others (7 x 5, 2 x 3) are returned as they are. (A negative zero
    may come back as +0; normal draws are never -0.)"""
    a = jax.random.normal(jax.random.PRNGKey(0), shape) * 1e3
    out = jax.jit(materialise)(a)
    assert out.shape == a.shape and out.dtype == a.dtype
    assert np.array_equal(np.asarray(out).view(np.uint32), np.asarray(a).view(np.uint32))


def test_bad_objective_options():
    with pytest.raises(UnknownNameError, match="known: iwae, vae"):
        loss_fn("elbo")
    with pytest.raises(ConfigError, match="S must be >= 1"):
        loss_fn("iwae", 0)
    with pytest.raises(ConfigError, match="DReG"):
        loss_fn("vae", 1, dreg=True)
