"""The flow family: exact density of the flow encoder, known answers on linear and quadratic, configs."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from vaefail.api import fit
from vaefail.benchmarks import get_benchmark
from vaefail.cli import app
from vaefail.config import FlowConfig
from vaefail.errors import ConfigError
from vaefail.flows import FlowEncoder, rational_quadratic_spline
from vaefail.flowvae import (
    FLOW,
    DecoderL2,
    PathwiseELBO,
    fit_flow_to_posterior,
    make_flow_vae,
    warm_start_flow,
)
from vaefail.metrics._stats import elbo_per_point
from vaefail.metrics.evaluate import evaluate_run
from vaefail.metrics.flow import flow_posterior_kl, log_q_matrix
from vaefail.metrics.posterior import gaussian_gap
from vaefail.models import TrueDecoder
from vaefail.objectives import Objective
from vaefail.protocol import fit_inference
from vaefail.results import FitResult
from vaefail.stacking import stack, take


def _perturbed(encoder, scale, seed=1):
    """The encoder with every array perturbed: a flow far from its Gaussian base."""
    leaves, tree = jax.tree_util.tree_flatten(encoder)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(leaves)))
    leaves = [a + scale * jax.random.normal(next(keys), a.shape) if isinstance(a, jax.Array) else a
              for a in leaves]
    return jax.tree_util.tree_unflatten(tree, leaves)


def test_spline_inverts_and_its_log_derivative_is_the_derivative():
    params = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (40, 3 * 6 - 1))
    v = jnp.linspace(-7.0, 7.0, 40)
    y, log_d = rational_quadratic_spline(v, params)
    back, log_d_inv = rational_quadratic_spline(y, params, inverse=True)
    # float32: where the spline is nearly flat, v = T^-1(y) is ill-conditioned; compare in y, and in v
    # where the slope is not tiny
    np.testing.assert_allclose(rational_quadratic_spline(back, params)[0], y, atol=2e-5)
    steep = np.exp(np.asarray(log_d)) > 0.2
    np.testing.assert_allclose(np.asarray(back)[steep], np.asarray(v)[steep], atol=2e-4)
    np.testing.assert_allclose(np.asarray(log_d + log_d_inv)[steep], 0.0, atol=2e-3)
    grad = jax.vmap(jax.grad(lambda a, p: rational_quadratic_spline(a, p)[0]))(v, params)
    np.testing.assert_allclose(jnp.log(grad), log_d, atol=1e-4)
    one, _ = rational_quadratic_spline(v, jnp.broadcast_to(params[0], params.shape))
    assert np.all(np.diff(np.asarray(one)) > 0)  # monotone
    identity, zero = rational_quadratic_spline(v, jnp.zeros_like(params))
    np.testing.assert_allclose(identity, v, atol=1e-3)  # up to the 1e-3 floor on the knot derivatives
    np.testing.assert_allclose(zero, 0.0, atol=1e-3)


@pytest.mark.parametrize("flow_type", ["spline", "affine"])
def test_log_q_integrates_to_one_on_a_grid_k1(flow_type):
    enc = _perturbed(FlowEncoder(2, 1, 16, 1, "tanh", flow_type=flow_type, layers=2, bins=6,
                                 key=jax.random.PRNGKey(0)), 0.3)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (5, 2)))
    grid = np.linspace(-30.0, 30.0, 120001)

    class M:  # the minimal model log_q_matrix needs
        encoder, x_dim, latent_dim = enc, 2, 1

    q = np.exp(log_q_matrix(M, x, grid[:, None]))
    np.testing.assert_allclose(np.trapezoid(q, grid, axis=1), 1.0, atol=1e-3)
    assert np.max(q) > 0.5  # not a trivially flat density
    # the density of a sample, from the forward pass, is the density the inverse gives at that point
    eps = jax.random.normal(jax.random.PRNGKey(3), (1, 5, 7))
    z, log_q = enc.sample_columns(jnp.asarray(x.T, jnp.float32), eps)
    np.testing.assert_allclose(enc.log_prob_columns(jnp.asarray(x.T, jnp.float32), z), log_q, atol=2e-3)


def test_log_q_integrates_to_one_on_a_grid_k2():
    enc = _perturbed(FlowEncoder(2, 2, 16, 1, "tanh", layers=2, bins=6, key=jax.random.PRNGKey(0)), 0.15)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (2, 2)))
    axis = np.linspace(-10.0, 10.0, 1001)
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)

    class M:
        encoder, x_dim, latent_dim = enc, 2, 2

    q = np.exp(log_q_matrix(M, x, grid)).reshape(2, 1001, 1001)
    mass = np.trapezoid(np.trapezoid(q, axis, axis=2), axis, axis=1)
    np.testing.assert_allclose(mass, 1.0, atol=5e-3)


def _truth_flow(bench, key, **flow):
    return stack([make_flow_vae(bench.x_dim, 1, bench.sigma_eps, key=key,
                                decoder=TrueDecoder(f_gt=bench.f_gt, true_latent_dim=1), **flow)])


def test_flow_elbo_reaches_log_p_gt_on_linear():
    """The truth's posterior is Gaussian: with the true decoder the flow's best ELBO is log p_gt(x)."""
    bench = get_benchmark("linear")
    config = FlowConfig(benchmark="linear", steps=1000, learning_rate=1e-3, n_train=2000, n_val=500,
                        n_test=500, converge=False)
    data = FLOW.make_data(bench, config)
    models = warm_start_flow(_truth_flow(bench, jax.random.PRNGKey(0)), bench, data.train.x,
                             jax.random.PRNGKey(1), steps=1000)
    model = take(fit_inference(FLOW, models, data, config, jax.random.PRNGKey(2), steps=1000).model, 0)
    x = data.test.x
    gap = bench.log_prob(x) - elbo_per_point(model, x, jax.random.PRNGKey(3), 200)
    se = np.std(gap, ddof=1) / np.sqrt(len(gap))
    assert abs(gap.mean()) < max(3 * se, 0.005), (gap.mean(), se)


@pytest.mark.slow
def test_flow_with_the_true_decoder_represents_the_bimodal_quadratic_posterior():
    """The forward-KL fit to the exact posterior, then the ELBO (path-derivative gradient) at the rate the
    forward fit ended near: the flow keeps both modes, KL(q || p_gt(z|x)) < 0.05 nats on average."""
    bench = get_benchmark("quadratic")
    config = FlowConfig(benchmark="quadratic", flow_layers=3, flow_bins=16, steps=2000, learning_rate=1e-4,
                        n_train=2000, n_val=500, n_test=500, converge=False)
    data = FLOW.make_data(bench, config)
    models = warm_start_flow(_truth_flow(bench, jax.random.PRNGKey(0), flow_layers=3, flow_bins=16),
                             bench, data.train.x, jax.random.PRNGKey(1), steps=4000)
    model = take(fit_inference(FLOW, models, data, config, jax.random.PRNGKey(2), steps=2000).model, 0)
    x = data.test.x[:300]
    kl = flow_posterior_kl(model, x, log_p_model=bench.log_prob(x, np.linspace(-8, 8, 8001)))
    gap = np.asarray(gaussian_gap(bench, x).per_point)
    assert np.median(gap) == pytest.approx(np.log(2), abs=0.05)  # the best Gaussian: one mode of two
    assert kl.mean() < 0.05, kl.mean()  # both modes (one mode of two costs about log 2)


def test_fit_flow_to_posterior_lowers_the_forward_kl():
    bench = get_benchmark("quadratic")
    data = FLOW.make_data(bench, FlowConfig(benchmark="quadratic", n_train=500, n_val=100, n_test=100))
    models = _truth_flow(bench, jax.random.PRNGKey(0))
    x = data.test.x[:50]
    lp = bench.log_prob(x)
    before = flow_posterior_kl(take(models, 0), x, log_p_model=lp).mean()
    after = flow_posterior_kl(take(fit_flow_to_posterior(models, bench, data.train.x, jax.random.PRNGKey(1),
                                                         steps=300), 0), x, log_p_model=lp).mean()
    assert after < before


def test_pathwise_elbo_is_the_elbo_in_value_and_drops_only_the_score_term():
    model = stack([_perturbed(make_flow_vae(2, 1, 0.1, key=jax.random.PRNGKey(0), flow_layers=2), 0.2)])
    model = take(model, 0)
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 2))
    value, record = PathwiseELBO(3).loss(model, x, jax.random.PRNGKey(2))
    full, full_record = Objective("vae", 3).loss(model, x, jax.random.PRNGKey(2))
    assert float(value) == pytest.approx(float(full), rel=1e-4)
    np.testing.assert_allclose(record.bound, full_record.bound, rtol=1e-4, atol=1e-4)
    # the decoder's gradient is the same (the score term concerns the encoder only)
    grad = eqx.filter_grad(lambda m: PathwiseELBO(3).loss(m, x, jax.random.PRNGKey(2))[0])(model)
    grad_full = eqx.filter_grad(lambda m: Objective("vae", 3).loss(m, x, jax.random.PRNGKey(2))[0])(model)
    np.testing.assert_allclose(grad.decoder.net.layers[0].weight, grad_full.decoder.net.layers[0].weight,
                               rtol=1e-3, atol=1e-5)
    assert not np.allclose(grad.encoder.layers[0].net.layers[0].weight,
                           grad_full.encoder.layers[0].net.layers[0].weight)


def test_decoder_l2_adds_the_decoder_penalty_only():
    model = make_flow_vae(2, 1, 0.1, key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    base, _ = Objective("vae", 1).loss(model, x, jax.random.PRNGKey(2))
    penalised, _ = DecoderL2(Objective("vae", 1), 0.5)(model, x, jax.random.PRNGKey(2))
    squares = sum(float(jnp.sum(a**2)) for a in jax.tree_util.tree_leaves(model.decoder)
                  if isinstance(a, jax.Array))
    assert float(penalised - base) == pytest.approx(0.5 * squares, rel=1e-5)
    assert FLOW.loss(FlowConfig(decoder_l2=0.0)) == PathwiseELBO(1)
    assert FLOW.loss(FlowConfig(objective="iwae", num_samples=5)) == Objective("iwae", 5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"latent_dim": 0}, "latent dimension K must be >= 1"),
        ({"flow_layers": 0}, "flow_layers must be >= 1"),
        ({"flow_type": "maf"}, "unknown flow type 'maf'"),
        ({"flow_bins": 1}, "flow_bins must be >= 2"),
        ({"decoder_l2": -1.0}, "decoder_l2 must be >= 0"),
        ({"objective": "iwae", "dreg": True}, "--dreg is not available with the flow encoder"),
    ],
)
def test_bad_flow_config(changes, message):
    with pytest.raises(ConfigError, match=message):
        FlowConfig(**changes)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--encoder", "flow", "--flow-layers", "0"], "flow_layers must be >= 1"),
        (["--encoder", "flow", "--flow-type", "maf"], "unknown flow type 'maf'"),
        (["--encoder", "flow", "-k", "0"], "latent dimension K must be >= 1"),
        (["--encoder", "maf"], "unknown encoder 'maf'"),
        (["--flow-layers", "3"], "--flow-layers needs --encoder flow"),
    ],
)
def test_fit_cli_bad_flow_settings_one_line_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(app, ["fit", "-b", "linear", "--steps", "10", "--quiet",
                                      "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    assert not (tmp_path / "run").exists()


TINY = {"steps": 40, "init_steps": 20, "eval_every": 20, "n_train": 200, "n_val": 100, "n_test": 100,
        "restarts": 2, "converge": False, "batch_size": 64}


def test_flow_fit_saves_loads_reproduces_and_evaluates(tmp_path):
    first = fit("figure8", "iwae", latent_dim=2, seed=3, encoder="flow", num_samples=5, **TINY)
    again = fit("figure8", "iwae", latent_dim=2, seed=3, encoder="flow", num_samples=5, **TINY)
    assert first.summary == again.summary
    assert isinstance(first.config, FlowConfig) and first.family is FLOW or first.family.name == "flow"
    first.save(tmp_path / "run")
    loaded = FitResult.load(tmp_path / "run")
    assert loaded.config == first.config and loaded.family.name == "flow"
    np.testing.assert_array_equal(loaded.restarts["val_bound"], first.restarts["val_bound"])
    report = evaluate_run(loaded, jax.random.PRNGKey(0), num_samples=50, max_points=60,
                          sections=("mutual_information",))
    assert report["run"]["encoder"] == "flow"
    mi = report["mutual_information"]
    assert mi["per_dim"] == [] and mi["average"] is None and np.isfinite(mi["total"]["mean"])
    assert "mutual_information.per_dim" in report["not_applicable"]
