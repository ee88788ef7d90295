"""The strongest-peer PyTorch baselines (benchmarks/torch_peer.py) compute vaefail's objectives: same weights,
same noise -> same per-point bounds and gradients; and the checks fail when the torch objective differs."""

from __future__ import annotations

import sys
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import torch_baseline  # noqa: E402
import torch_peer  # noqa: E402


def _perturbed_flow(latent_dim: int, scale: float = 0.1, restarts: int = 2):
    """Stacked flow VAEs whose encoder weights are moved off the initialisation (a fresh flow's coupling
    layers are the identity, which would leave the spline untested)."""
    models = torch_peer.vaefail_models("flow", latent_dim, restarts)
    params, static = eqx.partition(models.encoder, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    moved = [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)]
    encoder = eqx.combine(jax.tree_util.tree_unflatten(tree, moved), static)
    return eqx.tree_at(lambda m: m.encoder, models, encoder)


@pytest.mark.parametrize(("objective", "samples", "latent_dim"),
                         [("vae", 1, 1), ("vae", 1, 3), ("iwae", 20, 1), ("iwae", 20, 3)])
def test_stacked_peer_has_vaefails_bound_and_gradients(objective, samples, latent_dim):
    check = torch_peer.check_same_objective(objective, samples, latent_dim, restarts=2)
    assert check.ok, str(check)


@pytest.mark.slow
@pytest.mark.parametrize("latent_dim", [1, 3])
def test_flow_peer_has_vaefails_bound_and_gradients(latent_dim):
    models = _perturbed_flow(latent_dim)
    check = torch_peer.check_same_objective("vae", 1, latent_dim, encoder="flow", models=models)
    assert check.ok, str(check)


def test_checks_fail_when_the_torch_objective_differs(monkeypatch):
    models = _perturbed_flow(3)
    monkeypatch.setattr(torch_peer, "DERIVATIVE_SHIFT", 0.0)  # another spline: knot slopes differ
    assert not torch_peer.check_same_objective("vae", 1, 3, encoder="flow", models=models).ok
    monkeypatch.undo()
    monkeypatch.setattr(torch_peer.gaussian_bounds, "__defaults__", (0.15,))  # wrong sigma_eps
    assert not torch_peer.check_same_objective("iwae", 20, 1).ok


@pytest.mark.slow
def test_flow_check_fails_for_the_plain_elbo_gradient(monkeypatch):
    """``fit`` trains the flow on the path-derivative ELBO: a peer with the full reparameterised gradient
    (same value, plus the score term) fails the gradient check, and only it."""
    models = _perturbed_flow(1)
    monkeypatch.setattr(torch_peer.flow_bounds, "__defaults__", (torch_peer.FIGURE8_SIGMA, False))
    check = torch_peer.check_same_objective("vae", 1, 1, encoder="flow", models=models)
    assert check.max_abs_bound_diff <= check.tol and check.max_rel_grad_diff > check.tol, str(check)


def test_inverse_spline_inverts_and_negates_the_log_derivative():
    rng = np.random.default_rng(1)
    v = torch.from_numpy(rng.normal(scale=3.0, size=(300,)))
    params = torch.from_numpy(rng.normal(size=(300, 23)))
    y, ld = torch_peer.rational_quadratic_spline(v, params)
    back, ld_inv = torch_peer.rational_quadratic_spline(y, params, inverse=True)
    np.testing.assert_allclose(back.numpy(), v.numpy(), atol=1e-9)
    np.testing.assert_allclose(ld_inv.numpy(), -ld.numpy(), atol=1e-9)


def test_spline_is_vaefails_formula():
    """In float64 (no float32 rounding, which steep random splines amplify) the torch spline and
    vaefail's agree to rounding, inside and outside [-B, B]."""
    from vaefail.flows import rational_quadratic_spline

    rng = np.random.default_rng(0)
    v = rng.normal(scale=3.0, size=(200,))
    params = rng.normal(size=(200, 23))
    with jax.enable_x64(True):
        y_v, ld_v = rational_quadratic_spline(jax.numpy.asarray(v), jax.numpy.asarray(params))
        y_v, ld_v = np.asarray(y_v), np.asarray(ld_v)
    assert y_v.dtype == np.float64
    y_t, ld_t = torch_peer.rational_quadratic_spline(torch.from_numpy(v), torch.from_numpy(params))
    np.testing.assert_allclose(y_t.numpy(), y_v, atol=1e-10)
    np.testing.assert_allclose(ld_t.numpy(), ld_v, atol=1e-10)
    assert np.max(np.abs(y_v - v)) > 0.1  # the parameters do move the points


def test_batched_log_likelihood_agrees_with_exact_quadrature():
    """A K = 1 VAE: the chunked estimator of log p(x) against the exact value by quadrature, per point
    within its delta-method Monte-Carlo standard error (sqrt(1/ESS - 1/S)) plus the estimator's bias."""
    from vaefail.metrics import exact_log_likelihood
    from vaefail.models import make_vae

    model = make_vae(2, 1, float(torch_peer.FIGURE8_SIGMA), key=jax.random.PRNGKey(3))
    x = torch_baseline.figure8_train_x()[:40]
    torch.manual_seed(0)
    log_p, ess = torch_peer.batched_log_likelihood(torch_baseline.torch_from_vaefail(model), x, 2000,
                                                   chunk=16)
    exact = np.asarray(exact_log_likelihood(model, x).per_point)
    se = np.sqrt(np.maximum(1 / ess - 1 / 2000, 0))
    z = (log_p - exact) / np.maximum(se, 1e-12)
    assert np.mean(np.abs(z) < 3) >= 0.95, z
    # a wrong estimator (here: the decoder's noise scale halved) is far off
    wrong = torch_baseline.torch_from_vaefail(model)
    wrong.log_sigma.fill_(float(np.log(torch_peer.FIGURE8_SIGMA / 2)))
    log_p_wrong, _ = torch_peer.batched_log_likelihood(wrong, x, 2000, chunk=16)
    assert np.mean(np.abs(log_p_wrong - exact) / np.maximum(se, 1e-12) < 3) < 0.5


@pytest.mark.slow
def test_peer_trainer_trains_every_restart():
    arrays = torch_peer.vaefail_arrays(torch_peer.vaefail_models("gaussian", 1, 2))
    x = torch_baseline.figure8_train_x()
    run, params = torch_peer.make_trainer(arrays, x, "vae", 1, 100, 200, torch_peer.Peer("foreach"))
    xt = torch.from_numpy(x[:500]).unsqueeze(0).expand(2, 500, 2)
    eps = torch.zeros(2, 1, 500, 1)
    before = torch_peer.bounds(params, xt, eps, "vae").mean(-1).detach()
    run(200)
    after = torch_peer.bounds(params, xt, eps, "vae").mean(-1).detach()
    assert torch.all(after > before + 1.0)  # both restarts train (fresh ELBO about -8, trained near -1)
    rate = torch_peer.peer_restart_steps_per_second("vae", 1, 1, restarts=2, steps=8, x=x)
    assert rate > 0


@pytest.mark.parametrize(("objective", "samples", "latent_dim"), [("vae", 1, 3), ("iwae", 20, 3)])
def test_eager_baseline_has_vaefails_bound_and_gradients(objective, samples, latent_dim):
    """The eager baseline's check regenerates vaefail's (K, S) noise per point (it read it as (S, K), which
    differs for K > 1 and S > 1: IWAE K = 3 gave per-point bounds 1.6 nats apart)."""
    check = torch_baseline.check_same_objective(objective, samples, latent_dim)
    assert check.ok, str(check)
