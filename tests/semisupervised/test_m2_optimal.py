"""M2's optimal-encoder bounds: per-class ELBO* and U* = log sum_y exp ELBO*(x, y), against known answers."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import vaefail
from vaefail.errors import ConfigError
from vaefail.semisupervised import make_m2
from vaefail.semisupervised.model import TrueLabelledDecoder
from vaefail.semisupervised.optimal import class_vae, m2_bounds, m2_optimal_bound


def true_m2(bench, latent_dim=1, encoder="kingma"):
    return make_m2(bench.x_dim, latent_dim, bench.n_classes, bench.sigma_eps, key=jax.random.PRNGKey(1),
                   encoder=encoder, class_prior=bench.class_prior(),
                   decoder=TrueLabelledDecoder(f_gt=bench.f_gt))


def test_shared_line_truth_has_no_approximation_gap():
    """shared_line's class posteriors p(z|x, y) are exactly Gaussian: ELBO*(x, y) = log p(x, y) per class,
    so U* = log p_gt(x) (to quadrature error), for the benchmark and for the true decoder inside an M2."""
    bench = vaefail.get_benchmark("shared_line")
    x = bench.sample(jax.random.PRNGKey(0), 200).x
    truth = m2_optimal_bound(bench, x)
    np.testing.assert_allclose(truth.log_p, bench.log_prob(x), atol=1e-9)
    np.testing.assert_allclose(truth.elbo_star, truth.log_joint, atol=1e-6)
    np.testing.assert_allclose(truth.unlabelled_star, bench.log_prob(x), atol=1e-6)
    as_model = m2_optimal_bound(true_m2(bench), x)  # float32 decoder, the model's own quadrature
    np.testing.assert_allclose(as_model.unlabelled_star, truth.unlabelled_star, atol=1e-4)


def test_u_star_is_the_best_class_posterior_and_its_bound():
    """U* is the maximum over q(y|x) of sum_y q(y) (ELBO*(x, y) - log q(y)), reached at softmax(ELBO*):
    any other q(y|x) gives less, by exactly KL(q || q*)."""
    bench = vaefail.get_benchmark("semicircle")
    x = bench.sample(jax.random.PRNGKey(0), 200).x
    opt = m2_optimal_bound(bench, x)
    q_star = opt.class_posterior
    np.testing.assert_allclose(q_star.sum(axis=1), 1.0, atol=1e-12)
    value = lambda q: np.sum(q * (opt.elbo_star - np.log(q)), axis=1)  # noqa: E731
    np.testing.assert_allclose(value(q_star), opt.unlabelled_star, atol=1e-9)
    q = np.full_like(q_star, 0.5)
    kl = np.sum(q * (np.log(q) - np.log(q_star)), axis=1)
    np.testing.assert_allclose(opt.unlabelled_star - value(q), kl, atol=1e-9)
    assert np.all(opt.unlabelled_star <= opt.log_p + 1e-9)
    # semicircle's class posteriors are skewed (t^2 along the arc), not Gaussian: a gap, below log 2
    gap = opt.log_p - opt.unlabelled_star
    assert 0.0 < gap.mean() < np.log(2.0)


def test_class_vae_is_one_class_of_the_m2():
    bench = vaefail.get_benchmark("semicircle")
    model = make_m2(2, 2, 2, bench.sigma_eps, key=jax.random.PRNGKey(3), encoder="kingma")
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (5, 2)))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (2,)))
    for c in (0, 1):
        vae = class_vae(model, c)
        for zi in z:
            np.testing.assert_allclose(vae.decoder(zi), model.decode(c, zi), rtol=1e-6)
        for a, b in zip(vae.encoder(x), model.encode(x, c), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ConfigError, match="M2 or a labelled benchmark"):
        m2_optimal_bound(vaefail.get_benchmark("figure8"), x[None])


@pytest.mark.slow
def test_m2_bounds_split_adds_up_and_the_truth_ties_with_itself():
    """The true decoder as 'the model': U*(truth) - U*(model) is 0 within float32 quadrature, the three
    parts add up to -U exactly, and the amortisation gap is positive for an untrained encoder."""
    bench = vaefail.get_benchmark("semicircle")
    x = bench.sample(jax.random.PRNGKey(0), 100).x
    model = true_m2(bench, encoder="mean_field")
    out = m2_bounds(model, bench, x, jax.random.PRNGKey(2), truth_model=model, num_samples=200)
    assert abs(out["u_star_truth_minus_model"]["mean"]) < 1e-4 and out["n"] == 100
    for who in ("model", "truth"):
        part = out[who]
        total = sum(part[k]["mean"] for k in ("neg_log_p", "approximation_gap", "amortisation_gap"))
        assert part["neg_elbo"]["mean"] == pytest.approx(total, abs=1e-9)
        assert part["amortisation_gap"]["mean"] > 0.1  # an untrained classifier and encoder
    no_truth = m2_bounds(model, bench, x[:10], jax.random.PRNGKey(2), num_samples=10)
    assert no_truth["truth"]["amortisation_gap"] is None and no_truth["truth"]["neg_elbo_star"] is not None
