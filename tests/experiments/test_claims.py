"""Claims are marked reproduced only when their numbers show it, noise included."""

from __future__ import annotations

import pandas as pd

from vaefail.experiments.claims import evaluate_claims


def table1(vae_elbo, std, sigma_learned=(0.2, 0.1, 0.1)):
    rows = []
    for obj, elbos in (("vae", vae_elbo), ("iwae", (0.9, 0.9, 0.9))):
        for k, e in zip((1, 2, 3), elbos, strict=True):
            for mode in ("fixed", "learned"):
                rows.append(dict(benchmark="figure8", objective=obj, latent_dim=k, sigma_mode=mode, repeats=2,
                                 test_neg_elbo=e, test_neg_elbo_std=std, avg_mi=2.0 / k, avg_mi_std=0.01,
                                 sigma_eps=sigma_learned[k - 1] if mode == "learned" else 0.141))
    return pd.DataFrame(rows)


def by_id(claims):
    return {c["id"].split(".", 2)[2]: c for c in claims}


def test_table1_claims_follow_the_numbers_and_the_noise():
    clear = by_id(evaluate_claims({"table1": table1((1.13, 1.01, 1.00), std=0.01)}))
    assert clear["vae_elbo_prefers_larger_k"]["reproduced"] is True
    assert clear["vae_avg_mi_falls"]["reproduced"] is True
    assert clear["iwae_no_preference"]["reproduced"] is True
    assert clear["elbo_prefers_smaller_sigma"]["reproduced"] is True
    # the same means with a large spread over repetitions: the K claim is within noise
    noisy = by_id(evaluate_claims({"table1": table1((1.13, 1.01, 1.00), std=0.2)}))
    assert noisy["vae_elbo_prefers_larger_k"]["reproduced"] is False
    assert "two standard errors" in noisy["vae_elbo_prefers_larger_k"]["comparison"]
    worse_table = table1((1.0, 1.1, 1.2), std=0.01, sigma_learned=(0.2, 0.2, 0.1))
    worse = by_id(evaluate_claims({"table1": worse_table}))
    assert worse["vae_elbo_prefers_larger_k"]["reproduced"] is False
    assert worse["vae_elbo_prefers_larger_k"]["note"]
    assert worse["elbo_prefers_smaller_sigma"]["reproduced"] is False


def test_sigma_claim_compares_the_two_criteria():
    t = pd.DataFrame(dict(sigma_factor=[0.5, 1.0, 2.0], test_neg_elbo=[1.2, 1.1, 1.3],
                          test_neg_ll=[1.0, 0.9, 1.1], pmo=[0.8, 0.2, 0.05]))
    (claim,) = evaluate_claims({"sigma": t})
    assert claim["reproduced"] is False and "1 x truth" in claim["comparison"]
    t.loc[0, "test_neg_elbo"] = 1.0
    (claim,) = evaluate_claims({"sigma": t})
    assert claim["reproduced"] is True


def test_exact_claims_use_the_optimal_bounds_and_their_standard_errors():
    """px: the truth is the ELBO's optimum unless the learned decoder's ELBO* is higher beyond noise,
    whatever the amortised comparison says; table1: K > 1 must beat the better of the learned K = 1 and
    the truth at ELBO*, and K is chosen on the validation -ELBO."""
    base = dict(benchmark="figure8", latent_dim=1, sigma_mode="fixed", repeats=2, mleo=0.1, mleo_std=0.01,
                test_neg_elbo=1.02, test_neg_elbo_std=0.01, truth_test_neg_elbo=1.18, neg_elbo_star=0.967,
                truth_neg_elbo_star=0.971, elbo_star_truth_minus_model=-0.004,
                elbo_star_truth_minus_model_std=0.002, elbo_star_diff_stderr=0.006)
    px = pd.DataFrame([{**base, "objective": "vae"}, {**base, "objective": "iwae"}])
    claims = by_id(evaluate_claims({"px": px}))
    assert claims["truth_not_elbo_optimum"]["reproduced"] is True  # amortised: 1.02 < 1.18
    exact = claims["truth_not_elbo_optimum_exact"]
    assert exact["reproduced"] is False and "-0.004" in exact["comparison"]
    px.loc[:, "elbo_star_truth_minus_model"] = -0.05
    assert by_id(evaluate_claims({"px": px}))["truth_not_elbo_optimum_exact"]["reproduced"] is True

    t = table1((1.13, 1.01, 1.00), std=0.01)
    # ELBO*(truth) - ELBO*(K) on each row's points: K = 1 +0.02, K = 2 +0.01, K = 3 -0.05
    t["elbo_star_truth_minus_model"] = t.latent_dim.map({1: 0.02, 2: 0.01, 3: -0.05})
    t["elbo_star_diff_stderr"] = 0.004
    t["val_neg_elbo"] = t.latent_dim.map({1: 1.1, 2: 1.0, 3: 1.05})  # validation picks K = 2, not 3
    claims = by_id(evaluate_claims({"table1": t}))
    exact = claims["vae_optimal_elbo_prefers_larger_k"]
    assert "K = 2" in exact["statement"]
    assert exact["reproduced"] is False  # K = 2 is below the truth itself (+0.01)
    t["val_neg_elbo"] = t.latent_dim.map({1: 1.1, 2: 1.05, 3: 1.0})
    assert by_id(evaluate_claims({"table1": t}))["vae_optimal_elbo_prefers_larger_k"]["reproduced"] is True


def overfit_table(gap_free, gap_l2, ll_free, ll_l2, std=0.01):
    return pd.DataFrame([
        dict(benchmark="figure8", objective="vae", encoder="flow", latent_dim=1, decoder_l2=w, repeats=2,
             train_minus_test_bound=g, train_minus_test_bound_std=std, test_neg_ll=ll, test_neg_ll_std=std,
             train_neg_elbo=1.0 - g, test_neg_elbo=1.0, test_neg_log_prob_true=0.88)
        for w, g, ll in ((0.0, gap_free, ll_free), (1e-3, gap_l2, ll_l2))
    ])


def test_overfit_claims_follow_the_gap_and_the_heldout_likelihood():
    claims = {c["id"]: c for c in evaluate_claims({"flexible_overfit": overfit_table(0.9, 0.1, 0.98, 1.0)})}
    assert claims["flexible.figure8.decoder_l2_closes_gap"]["reproduced"] is True
    # the penalty closed the gap but did not improve held-out log p: reported as not reproduced
    assert claims["flexible.figure8.decoder_l2_improves_heldout_ll"]["reproduced"] is False
    noisy = {c["id"]: c for c in evaluate_claims(
        {"flexible_overfit": overfit_table(0.9, 0.1, 1.2, 0.95, std=1.0)})}
    assert noisy["flexible.figure8.decoder_l2_closes_gap"]["reproduced"] is False  # within noise
    assert noisy["flexible.figure8.decoder_l2_improves_heldout_ll"]["reproduced"] is False


def test_flexible_m2_claims_compare_each_flow_with_its_gaussian_encoder():
    rows = []
    for encoder, score in (("mean_field", 0.05), ("flow", 0.3), ("kingma", 0.9), ("flow_kingma", 0.95)):
        rows.append(dict(benchmark="semicircle", objective="vae", encoder=encoder, repeats=2,
                         collapse_score=score, collapse_score_std=0.02, counterfactual_error=1.0,
                         counterfactual_collapsed=1.4, counterfactual_oracle=0.1, test_accuracy=0.9,
                         bayes_accuracy=0.95, kl_y0=0.1, kl_y1=0.1, test_j=0.3))
    claims = {c["id"]: c for c in evaluate_claims({"flexible_m2": pd.DataFrame(rows)})}
    assert set(claims) == {"flexible.semicircle.vae.flow.classes_kept_apart",
                           "flexible.semicircle.vae.flow_kingma.classes_kept_apart"}
    assert claims["flexible.semicircle.vae.flow.classes_kept_apart"]["reproduced"] is False
    flow = claims["flexible.semicircle.vae.flow.classes_kept_apart"]
    assert flow["numbers"]["gaussian_collapse_score"] == 0.05
    assert claims["flexible.semicircle.vae.flow_kingma.classes_kept_apart"]["reproduced"] is True
