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
