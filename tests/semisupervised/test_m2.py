"""Semi-supervised M2: objective identities, metrics against known answers, the protocol end to end."""

from __future__ import annotations

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from vaefail.benchmarks import SharedLine, get_benchmark
from vaefail.errors import ConfigError, DataError, UnknownNameError
from vaefail.models import LOG_2PI, VAE
from vaefail.objectives import elbo
from vaefail.semisupervised import (
    SemiSupervisedConfig,
    SemiSupervisedResult,
    TrueLabelledDecoder,
    collapse_score,
    counterfactual_error,
    decoder_curves,
    evaluate_semisupervised,
    labelled_mask,
    m2_loss_fn,
    make_m2,
    model_class_log_prob,
    pack,
    run_semisupervised,
    unpack,
)
from vaefail.semisupervised.objectives import m2_terms as _m2_terms

m2_terms = eqx.filter_jit(_m2_terms)  # non-array options are static; eager dispatch is far slower

SEMI = get_benchmark("semicircle")
LINE = get_benchmark("shared_line")


def _random_m2(encoder: str, seed: int = 0, bench=SEMI, **kw):
    return make_m2(bench.x_dim, 1, 2, bench.sigma_eps, key=jax.random.PRNGKey(seed), encoder=encoder,
                   width=16, depth=1, **kw)


def _data(bench, n, seed=0):
    return bench.sample(jax.random.PRNGKey(seed), n)


# ------------------------------------------------------------------------------------------ packing
def test_pack_roundtrip_and_errors():
    x = np.arange(12.0).reshape(6, 2)
    y = np.array([0, 1, 1, 0, 1, 0])
    mask = np.array([True, False, True, False, False, True])
    xs, ys, ms = unpack(pack(x, y, mask))
    np.testing.assert_array_equal(np.asarray(xs), x)
    np.testing.assert_array_equal(np.asarray(ys), y)
    np.testing.assert_array_equal(np.asarray(ms), mask)
    assert np.all(np.asarray(unpack(pack(x, None))[2]) == 0)
    assert np.all(np.asarray(unpack(pack(x, y))[2]) == 1)
    with pytest.raises(DataError):
        pack(x, y[:3])
    with pytest.raises(DataError):
        pack(x, y + 0.5)
    with pytest.raises(DataError):
        pack(x, None, mask)
    with pytest.raises(DataError):
        pack(np.full((2, 2), np.nan), None)


def test_labelled_mask_is_balanced():
    y = np.array([0] * 70 + [1] * 30)
    mask = labelled_mask(y, 0.2, 2, 0)
    assert mask.sum() == 20 and mask[y == 0].sum() == 10 and mask[y == 1].sum() == 10
    assert labelled_mask(y, 0.0, 2, 0).sum() == 0 and labelled_mask(y, 1.0, 2, 0).all()
    rare = labelled_mask(np.array([0] * 95 + [1] * 5), 0.2, 2, 1)
    assert rare.sum() == 20 and rare[95:].all()
    np.testing.assert_array_equal(labelled_mask(y, 0.2, 2, 3), labelled_mask(y, 0.2, 2, 3))


# ------------------------------------------------------------------------------------------ model
def test_encoder_families():
    x = jnp.asarray(_data(SEMI, 1).x[0], jnp.float32)
    mf, km = _random_m2("mean_field"), _random_m2("kingma")
    np.testing.assert_array_equal(mf.encode(x, 0)[0], mf.encode(x, 1)[0])
    assert not np.allclose(km.encode(x, 0)[0], km.encode(x, 1)[0])
    mu, log_std = km.encode_all(x)
    assert mu.shape == (2, 1)
    np.testing.assert_allclose(mu[1], km.encode(x, 1)[0], rtol=1e-6)
    np.testing.assert_allclose(jnp.exp(mf.class_log_probs(x)).sum(), 1.0, rtol=1e-6)
    with pytest.raises(UnknownNameError):
        _random_m2("full")
    with pytest.raises(ConfigError):
        make_m2(2, 1, 2, 0.1, key=jax.random.PRNGKey(0), class_prior=[0.2, 0.2])


# ------------------------------------------------------------------------------------------ objective
class _IgnoreLabel(eqx.Module):
    """The M2 decoder seen as an unsupervised decoder f(z) (valid when it ignores the label)."""

    decoder: eqx.Module
    n_classes: int = eqx.field(static=True)

    def __call__(self, z):
        return self.decoder(jnp.zeros(self.n_classes), z)


def test_unlabelled_bound_equals_unsupervised_elbo_when_label_is_irrelevant():
    """gamma = alpha = 0, all unlabelled, a decoder that ignores y and q(y|x) = p(y): J = sum ELBO exactly.

    Then U(x) = sum_y p(y) [ELBO(x) + log p(y) - log p(y)] = ELBO(x) of the unsupervised VAE with the same
    encoder and decoder, and the z-draws are the same as :func:`vaefail.objectives.elbo`'s.
    """
    m2 = _random_m2("mean_field", seed=3)
    first = m2.decoder.net.net.layers[0]
    m2 = eqx.tree_at(lambda m: m.decoder.net.net.layers[0].weight, m2, first.weight.at[:, 1:].set(0.0))
    last = m2.classifier.layers[-1]
    m2 = eqx.tree_at(lambda m: (m.classifier.layers[-1].weight, m.classifier.layers[-1].bias), m2,
                     (jnp.zeros_like(last.weight), jnp.log(jnp.full(2, 0.5))))
    vae = VAE(encoder=m2.encoder, decoder=_IgnoreLabel(m2.decoder, 2), log_sigma=m2.log_sigma,
              learn_sigma=False, x_dim=2, latent_dim=1)
    x = _data(SEMI, 64).x
    key = jax.random.PRNGKey(5)
    for samples in (1, 3):
        rec = m2_terms(m2, pack(x, None), key, objective="vae", num_samples=samples, gamma=0.0, alpha=0.0)
        want = eqx.filter_jit(elbo)(vae, jnp.asarray(x, jnp.float32), key, samples).bound
        np.testing.assert_allclose(rec.objective, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(rec.objective, rec.unlabelled)


@pytest.mark.parametrize("encoder", ["mean_field", "kingma"])
def test_unlabelled_bound_is_the_joint_latent_elbo(encoder):
    """U(x) with y enumerated equals E_{q(y|x) q(z|x,y)}[log p(x, y, z) - log q(y|x) - log q(z|x,y)],
    the ELBO of the unsupervised model with latent (y, z), estimated here by sampling y as well."""
    model = _random_m2(encoder, seed=1)
    x = jnp.asarray(_data(SEMI, 4).x, jnp.float32)
    n_draws = 40000
    rec = m2_terms(model, pack(np.asarray(x), None), jax.random.PRNGKey(0), objective="vae",
                   num_samples=n_draws, gamma=0.0, alpha=0.0)

    def joint_elbo(xi, key):
        ky, kz = jax.random.split(key)
        log_q = model.class_log_probs(xi)
        y = jax.random.categorical(ky, log_q, shape=(n_draws,))
        mu, log_std = jax.vmap(lambda c: model.encode(xi, c))(y)
        z = mu + jnp.exp(log_std) * jax.random.normal(kz, mu.shape)
        log_p = (jax.vmap(lambda c, zc: model.log_likelihood(xi, c, zc))(y, z)
                 + jnp.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=1) + jnp.log(0.5))
        log_qz = jnp.sum(-0.5 * ((z - mu) / jnp.exp(log_std)) ** 2 - log_std - 0.5 * LOG_2PI, axis=1)
        terms = log_p - log_q[y] - log_qz
        return jnp.mean(terms), jnp.std(terms) / math.sqrt(n_draws)

    ref, se = jax.jit(jax.vmap(joint_elbo))(x, jax.random.split(jax.random.PRNGKey(1), 4))
    assert np.all(np.abs(np.asarray(rec.unlabelled) - np.asarray(ref)) < 5 * np.asarray(se) + 1e-3)
    # and it is a lower bound on the exact log p_theta(x)
    exact = logsumexp(model_class_log_prob(model, np.asarray(x)) + np.log(0.5), axis=1)
    assert np.all(np.asarray(rec.unlabelled) < exact)


@pytest.mark.parametrize("encoder", ["mean_field", "kingma"])
def test_fully_labelled_objective_ignores_the_unlabelled_bound(encoder):
    model = _random_m2(encoder, seed=2)
    data = _data(SEMI, 32)
    packed = pack(data.x, data.y)
    key = jax.random.PRNGKey(3)
    gamma, alpha = 0.7, 1.3
    rec = m2_terms(model, packed, key, objective="vae", num_samples=2, gamma=gamma, alpha=alpha)
    np.testing.assert_allclose(rec.objective, gamma * rec.labelled + alpha * rec.log_qy, rtol=1e-6)
    np.testing.assert_allclose(rec.labelled, np.asarray(rec.class_bounds)[np.arange(32), data.y], rtol=1e-6)
    # with alpha = 0 the classifier enters J only through U, which plays no part: its gradient is exactly 0
    loss = m2_loss_fn("vae", 1, gamma, 0.0)
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: loss(m, packed, key)[0]))(model)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree_util.tree_leaves(grads.classifier))
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree_util.tree_leaves(grads.decoder))
    loss_a = m2_loss_fn("vae", 1, gamma, alpha)
    grads_a = eqx.filter_jit(eqx.filter_grad(lambda m: loss_a(m, packed, key)[0]))(model)
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree_util.tree_leaves(grads_a.classifier))
    # and labels of unlabelled rows are ignored
    unl = m2_terms(model, pack(data.x, data.y, np.zeros(32, bool)), key, objective="vae", gamma=gamma,
                   alpha=alpha)
    flipped = m2_terms(model, pack(data.x, 1 - data.y, np.zeros(32, bool)), key, objective="vae",
                       gamma=gamma, alpha=alpha)
    np.testing.assert_array_equal(unl.objective, flipped.objective)
    np.testing.assert_array_equal(unl.objective, unl.unlabelled)


def test_iwae_version_tightens_towards_the_exact_likelihood():
    """U_S (IWAE, y enumerated) increases with S, stays below log p_theta(x), and U_1 ~ the VAE version."""
    model = _random_m2("kingma", seed=4, decoder=TrueLabelledDecoder(f_gt=SEMI.f_gt))
    x = _data(SEMI, 300, seed=2).x
    packed = pack(x, None)
    exact = float(np.mean(logsumexp(model_class_log_prob(model, x) + np.log(0.5), axis=1)))

    def mean_u(objective, s, seed):
        rec = m2_terms(model, packed, jax.random.PRNGKey(seed), objective=objective, num_samples=s)
        return float(jnp.mean(rec.unlabelled))

    u1 = np.mean([mean_u("iwae", 1, k) for k in range(8)])
    vae = np.mean([mean_u("vae", 1, k) for k in range(8)])
    u10, u100 = mean_u("iwae", 10, 0), mean_u("iwae", 100, 0)
    assert u1 < u10 < u100 < exact
    assert abs(u1 - vae) < 0.05 * abs(vae) + 0.5


# ------------------------------------------------------------------------------------------ metrics
class _OracleLineEncoder(eqx.Module):
    """Exact posterior mean of ``shared_line`` given y (Kingma family input ``[x, onehot(y)]``), with an
    optional per-class sign matching a decoder that runs class 1 backwards."""

    bench: SharedLine = eqx.field(static=True)
    sign1: float = eqx.field(static=True, default=1.0)

    def __call__(self, inp):
        x, y = inp[:2], jnp.argmax(inp[2:])
        w, b = jnp.asarray(self.bench.w), jnp.asarray(self.bench.b)
        a = jnp.where(y == 0, 1.0, -self.bench.scale)
        c = jnp.where(y == 0, 0.0, self.bench.shift)
        var = self.bench.sigma_eps**2
        lam = 1.0 + a**2 * (w @ w) / var
        mean = a * (w @ (x - b - c * w)) / var / lam
        mean = jnp.where(y == 0, mean, self.sign1 * mean)
        return mean[None], (-0.5 * jnp.log(lam))[None]


class _SignedDecoder(eqx.Module):
    """``f_gt(y, s_y z)``: the truth, or class 1 run backwards, or every class collapsed onto class 0."""

    bench: object = eqx.field(static=True)
    sign1: float = eqx.field(static=True, default=1.0)
    collapse: bool = eqx.field(static=True, default=False)

    def __call__(self, y_onehot, z):
        y = jnp.argmax(y_onehot)
        if self.collapse:
            return self.bench.f_gt(0, z[:1])
        return self.bench.f_gt(y, jnp.where(y == 0, 1.0, self.sign1) * z[:1])


def _line_model(sign1=1.0, collapse=False):
    model = make_m2(2, 1, 2, LINE.sigma_eps, key=jax.random.PRNGKey(0), encoder="kingma", width=8, depth=1,
                    decoder=_SignedDecoder(LINE, sign1, collapse))
    return eqx.tree_at(lambda m: m.encoder, model, _OracleLineEncoder(LINE, sign1))


def test_model_density_of_the_truth_is_the_benchmarks():
    for bench in (SEMI, LINE):
        model = _random_m2("kingma", bench=bench, decoder=TrueLabelledDecoder(f_gt=bench.f_gt))
        x = _data(bench, 50, seed=6).x
        np.testing.assert_allclose(model_class_log_prob(model, x), bench.log_prob_by_class(x), atol=2e-3)


def test_collapse_score_known_answers():
    key = jax.random.PRNGKey(0)
    truth = collapse_score(_line_model(), LINE, key, n=1000)
    assert abs(truth["score"] - 1.0) < 4 * truth["score_stderr"], truth
    assert abs(truth["decoder_gap"] - truth["decoder_gap_truth"]) < 1e-3
    # running one class backwards changes the curves' gap but not p(x|y): the score does not move
    flipped = collapse_score(_line_model(sign1=-1.0), LINE, key, n=1000)
    assert abs(flipped["score"] - 1.0) < 4 * flipped["score_stderr"]
    assert abs(flipped["decoder_gap"] - flipped["decoder_gap_truth"]) > 0.2
    collapsed = collapse_score(_line_model(collapse=True), LINE, key, n=500)
    assert abs(collapsed["js_model"]) < 1e-12 and collapsed["decoder_gap"] == 0.0
    assert abs(collapsed["score"]) < 1e-10


def test_counterfactual_error_allows_per_class_sign_only():
    data = _data(LINE, 1500, seed=8)
    truth = counterfactual_error(_line_model(), LINE, data)
    assert truth["relative_sign"] == [1, 1]
    assert abs(truth["error"] - truth["error_oracle"]) < 1e-4
    assert truth["ratio"] < 0.2 and truth["error_by_sign"]["flipped"] > 5 * truth["error"]
    flipped = counterfactual_error(_line_model(sign1=-1.0), LINE, data)
    assert flipped["relative_sign"] == [1, -1]
    assert abs(flipped["error"] - truth["error"]) < 1e-4
    assert abs(flipped["error_by_sign"]["same"] - truth["error_by_sign"]["flipped"]) < 1e-4
    collapsed = counterfactual_error(_line_model(collapse=True), LINE, data)
    assert collapsed["ratio"] > 0.8


def test_evaluate_semisupervised_on_the_truth():
    data = _data(LINE, 600, seed=9)
    report = evaluate_semisupervised(_line_model(), LINE, data, jax.random.PRNGKey(1), collapse_samples=500)
    json.dumps(report)
    cls = report["classification"]
    assert cls["generative_accuracy"] == pytest.approx(cls["bayes_rule_accuracy"], abs=0.005)
    assert abs(cls["bayes_accuracy"] - LINE.bayes_accuracy()) < 1e-12
    for row in report["class_conditional_kl"]:
        assert abs(row["kl"]) < 1e-3
    assert report["likelihood"]["quadrature_check"] < 1e-3
    assert abs(report["likelihood"]["log_prob_model"] - report["likelihood"]["log_prob_true"]) < 1e-3
    z, curves = decoder_curves(_line_model())
    assert curves.shape == (2, z.size, 2)
    np.testing.assert_allclose(curves[1], LINE.f_gt_np(np.ones(z.size, int), z[:, None]), atol=1e-5)


# ------------------------------------------------------------------------------------------ config & protocol
def test_config_validation():
    with pytest.raises(UnknownNameError):
        SemiSupervisedConfig(encoder="realnvp")
    with pytest.raises(UnknownNameError):
        SemiSupervisedConfig(objective="elbo")
    for bad in ({"gamma": -1.0}, {"alpha": math.nan}, {"labelled_fraction": 1.5}, {"restarts": 0},
                {"num_samples": 0}, {"truth_restarts": 5, "restarts": 2}):
        with pytest.raises(ConfigError):
            SemiSupervisedConfig(**bad)
    with pytest.raises(ConfigError, match="unknown semi-supervised config keys"):
        SemiSupervisedConfig.from_dict({"benchmark": "semicircle", "K": 2})
    with pytest.raises(ConfigError, match="not labelled"):
        run_semisupervised(SemiSupervisedConfig(benchmark="figure8"))


TINY = dict(restarts=2, steps=100, init_steps=50, eval_every=50, n_train=300, n_val=200, n_test=200,
            converge=False, labelled_fraction=0.1, hidden_width=16, truth=False, truth_restarts=0)


def test_run_semisupervised_end_to_end(tmp_path):
    result, metrics = run_semisupervised(SemiSupervisedConfig(**TINY), collapse_samples=300)
    json.dumps(metrics)
    table = result.restarts
    assert list(table["start"]) == ["random", "random"]
    assert table["selected"].sum() == 1 and result.selected == int(np.argmax(table["val_objective"]))
    assert metrics["summary"]["n_labelled"] == 30 and "truth_test_objective" not in metrics["summary"]
    assert {"classification", "collapse", "counterfactual", "class_conditional_kl"} <= set(metrics["test"])
    assert len(metrics["restarts"]) == 2 and "collapse_score" in metrics["restarts"][0]
    loaded = SemiSupervisedResult.load(result.save(tmp_path / "run"))
    assert loaded.config == result.config and loaded.selected == result.selected
    x = jnp.asarray(result.data().test.x[:5], jnp.float32)
    np.testing.assert_array_equal(jax.vmap(loaded.model.class_log_probs)(x),
                                  jax.vmap(result.model.class_log_probs)(x))


def test_plot_decoder_curves():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vaefail.semisupervised import plot_decoder_curves

    fig, (a, b) = plt.subplots(1, 2)
    plot_decoder_curves(_line_model(), LINE, a, title="truth")
    plot_decoder_curves(_line_model(), LINE, b, kind="data", data=_data(LINE, 50))
    assert len(a.lines) == 4 and a.get_title() == "truth" and len(b.collections) == 2
    with pytest.raises(ConfigError):
        plot_decoder_curves(_line_model(), LINE, a, kind="3d")
    plt.close(fig)


# ------------------------------------------------------------------------------------------ flow encoders
def _perturbed_flow_m2(encoder: str, seed: int = 0):
    """An M2 whose flow is far from its Gaussian base (every encoder array perturbed)."""
    model = _random_m2(encoder, seed=seed)
    leaves, tree = jax.tree_util.tree_flatten(model.encoder)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 7), len(leaves)))
    leaves = [a + 0.3 * jax.random.normal(next(keys), a.shape) if isinstance(a, jax.Array) else a
              for a in leaves]
    return eqx.tree_at(lambda m: m.encoder, model, jax.tree_util.tree_unflatten(tree, leaves))


@pytest.mark.parametrize("encoder", ["flow", "flow_kingma"])
def test_flow_families_sample_with_their_exact_density(encoder):
    model = _perturbed_flow_m2(encoder)
    x = jnp.asarray(_data(SEMI, 1).x[0], jnp.float32)
    eps = jax.random.normal(jax.random.PRNGKey(1), (5, 1))
    z, log_q = model.sample_all(x, eps)
    assert z.shape == (2, 5, 1) and log_q.shape == (2, 5)
    inputs = model.encoder_inputs(x)
    back = model.encoder.log_prob_columns(inputs.T, jnp.moveaxis(z, -1, 0))  # the inverse's density
    np.testing.assert_allclose(back, log_q, atol=2e-3)
    same = np.allclose(z[0], z[1])
    assert same == (encoder == "flow")  # q(z|x) ignores the label; q(z|x, y) does not


@pytest.mark.parametrize("encoder", ["flow", "flow_kingma"])
def test_flow_unlabelled_bound_is_the_joint_latent_elbo(encoder):
    """U(x) of a flow family equals the joint-latent ELBO E_{q(y|x) q(z|x,y)}[log p(x, y, z) - log q(y|x)
    - log q(z|x,y)] estimated by sampling y too, with log q(z|x,y) from the flow's inverse."""
    model = _perturbed_flow_m2(encoder, seed=1)
    x = jnp.asarray(_data(SEMI, 3).x, jnp.float32)
    n_draws = 20000
    rec = m2_terms(model, pack(np.asarray(x), None), jax.random.PRNGKey(0), objective="vae",
                   num_samples=n_draws, gamma=0.0, alpha=0.0)

    def joint_elbo(xi, key):
        ky, kz = jax.random.split(key)
        log_qy = model.class_log_probs(xi)
        y = jax.random.categorical(ky, log_qy, shape=(n_draws,))
        inputs = model.encoder_inputs(xi)[y]  # (n, D')
        z, _ = model.encoder.sample_columns(inputs.T, jax.random.normal(kz, (1, n_draws, 1)))
        log_qz = model.encoder.log_prob_columns(inputs.T, z)[:, 0]
        z = z[:, :, 0].T  # (n, K)
        log_p = (jax.vmap(lambda c, zc: model.log_likelihood(xi, c, zc))(y, z)
                 + jnp.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=1) + jnp.log(0.5))
        terms = log_p - log_qy[y] - log_qz
        return jnp.mean(terms), jnp.std(terms) / math.sqrt(n_draws)

    ref, se = jax.jit(jax.vmap(joint_elbo))(x, jax.random.split(jax.random.PRNGKey(1), 3))
    assert np.all(np.abs(np.asarray(rec.unlabelled) - np.asarray(ref)) < 5 * np.asarray(se) + 2e-3)
    exact = logsumexp(model_class_log_prob(model, np.asarray(x)) + np.log(0.5), axis=1)
    assert np.all(np.asarray(rec.unlabelled) < exact)
    iw = m2_terms(model, pack(np.asarray(x), None), jax.random.PRNGKey(0), objective="iwae",
                  num_samples=2000, gamma=0.0, alpha=0.0)
    assert np.all(np.asarray(rec.unlabelled) < np.asarray(iw.unlabelled))
    assert np.all(np.asarray(iw.unlabelled) < exact + 1e-3)


@pytest.mark.parametrize("encoder", ["flow", "flow_kingma"])
def test_run_semisupervised_with_a_flow_encoder(encoder):
    config = SemiSupervisedConfig(**{**TINY, "encoder": encoder, "steps": 50, "eval_every": 25})
    result, metrics = run_semisupervised(config, collapse_samples=200)
    again, _ = run_semisupervised(config, collapse_samples=200)
    assert result.summary == again.summary
    assert np.isfinite(metrics["test"]["counterfactual"]["error"])
    assert 0 <= metrics["test"]["collapse"]["score"]
