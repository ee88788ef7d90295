"""The paper's claims, each checked against the tables: the numbers, the comparison, reproduced or not.

Claims about a difference of means are marked reproduced only when it exceeds the noise,
``2 * sqrt(std_a^2 / n_a + std_b^2 / n_b)`` (two standard errors over repetitions; with a single repetition
no noise estimate exists, and the plain comparison is used and said so in the comparison text). Claims
that compare a ranking or a choice (which K gains more, which sigma_eps a criterion selects, which
posterior is closer to Gaussian) are plain comparisons of the means, stated as such.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def _se(row: pd.Series, col: str) -> float:
    std = row.get(f"{col}_std", float("nan"))
    n = row.get("repeats", 1)
    return float(std) / math.sqrt(n) if n > 1 and np.isfinite(std) else 0.0


def _less(a: pd.Series, b: pd.Series, col: str, col_b: str | None = None) -> tuple[bool, float, float]:
    """Is ``a[col]`` below ``b[col_b]`` (default ``col``) by more than two standard errors?"""
    col_b = col_b or col
    diff = float(a[col] - b[col_b])
    margin = 2.0 * math.hypot(_se(a, col), _se(b, col_b))
    return bool(diff < -margin), diff, margin


def _needs(margin: float) -> str:
    """The comparison made: against two standard errors, or plain when there is no noise estimate."""
    if margin > 0:
        return f"needs < -{margin:.3f} (two standard errors over repetitions)"
    return "needs < 0 (a single repetition: no noise estimate, plain comparison)"


def _pick(rows: dict[int, pd.Series], col: str = "val_neg_elbo") -> int:
    """The K (a key of ``rows``) with the lowest ``col`` (the validation -bound; test -bound if missing)."""
    def value(k: int) -> float:
        v = float(rows[k].get(col, np.nan))
        return v if np.isfinite(v) else float(rows[k].test_neg_elbo)
    return min(rows, key=value)


def _row(table: pd.DataFrame, **labels: Any) -> pd.Series | None:
    mask = np.ones(len(table), dtype=bool)
    for k, v in labels.items():
        if k not in table:
            return None
        mask &= (table[k] == v).to_numpy()
    hit = table[mask]
    return None if hit.empty else hit.iloc[0]


def _claim(cid: str, statement: str, reproduced: bool | None, comparison: str, numbers: dict[str, Any],
           note: str = "") -> dict[str, Any]:
    return {"id": cid, "statement": statement, "reproduced": reproduced, "comparison": comparison,
            "numbers": {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                        for k, v in numbers.items()}, "note": note}


def _fmt(x: float) -> str:
    return f"{x:.3f}" if np.isfinite(x) else "n/a"


def table1_claims(t: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for bench in sorted(t.benchmark.unique()):
        rows = {(o, k): _row(t, benchmark=bench, objective=o, latent_dim=k, sigma_mode="fixed")
                for o in ("vae", "iwae") for k in (1, 2, 3)}
        if any(r is None for r in rows.values()):
            continue
        v1 = rows[("vae", 1)]
        best_k = _pick({k: rows[("vae", k)] for k in (2, 3)})
        ok, diff, margin = _less(rows[("vae", best_k)], v1, "test_neg_elbo")
        out.append(_claim(
            f"table1.{bench}.vae_elbo_prefers_larger_k",
            f"{bench}: the VAE's test -ELBO (amortised encoder) improves when K grows past the truth (K=1).",
            ok, f"-ELBO(K={best_k}) - (-ELBO(K=1)) = {diff:+.3f} nats (K={best_k} chosen among 2, 3 by the "
            f"validation -ELBO), {_needs(margin)}",
            {f"vae_k{k}": float(rows[("vae", k)].test_neg_elbo) for k in (1, 2, 3)},
            note="" if ok else "The sweep experiment maps the benchmark settings (noise, separation) "
            "where the VAE does and does not prefer the larger K.",
        ))
        exact = _table1_exact(bench, rows, best_k)
        if exact is not None:
            out.append(exact)
        ok, diff, margin = _less(rows[("vae", 3)], v1, "avg_mi")
        out.append(_claim(
            f"table1.{bench}.vae_avg_mi_falls",
            f"{bench}: the VAE's average per-dimension mutual information avg_i I(x; z_i) falls as K grows.",
            ok, f"avg MI(K=3) - avg MI(K=1) = {diff:+.3f} nats, {_needs(margin)}",
            {f"vae_k{k}": float(rows[("vae", k)].avg_mi) for k in (1, 2, 3)},
        ))
        i1 = rows[("iwae", 1)]
        best_ki = _pick({k: rows[("iwae", k)] for k in (2, 3)})
        gain_iwae = float(i1.test_neg_elbo - rows[("iwae", best_ki)].test_neg_elbo)
        gain_vae = float(v1.test_neg_elbo - rows[("vae", best_k)].test_neg_elbo)
        out.append(_claim(
            f"table1.{bench}.iwae_no_preference",
            f"{bench}: the IWAE does not prefer larger K the way the VAE does (its bound gains less from "
            "extra dimensions).",
            gain_iwae < gain_vae,
            f"IWAE gain from K=1 to K={best_ki}: {gain_iwae:+.3f} nats vs VAE gain {gain_vae:+.3f}",
            {f"iwae_k{k}": float(rows[("iwae", k)].test_neg_elbo) for k in (1, 2, 3)},
        ))
        learned = {k: _row(t, benchmark=bench, objective="vae", latent_dim=k, sigma_mode="learned")
                   for k in (1, 2, 3)}
        if all(r is not None for r in learned.values()) and "sigma_eps" in t:
            truth_sigma = float(v1.sigma_eps)
            values = {f"vae_k{k}_learned_sigma": float(r.sigma_eps) for k, r in learned.items()}
            smaller = all(float(learned[k].sigma_eps) < truth_sigma for k in (2, 3))
            out.append(_claim(
                f"table1.{bench}.elbo_prefers_smaller_sigma",
                f"{bench}: with sigma_eps learned and K above the truth, the VAE's ELBO picks a smaller "
                "sigma_eps than the truth (the extra dimensions explain noise).",
                smaller,
                f"learned sigma_eps at K=2, 3: {_fmt(values['vae_k2_learned_sigma'])}, "
                f"{_fmt(values['vae_k3_learned_sigma'])} vs true {_fmt(truth_sigma)} (plain comparison); "
                f"at K=1 it is {_fmt(values['vae_k1_learned_sigma'])}",
                {"true_sigma": truth_sigma, **values},
            ))
    return out


def _table1_exact(
    bench: str, rows: dict[tuple[str, int], pd.Series], best_k: int
) -> dict[str, Any] | None:
    """Does K > 1 beat K = 1 at the optimal Gaussian encoders?

    Each row's ELBO* is measured against the truth's ELBO* *on the same test points* (ELBO* of K >= 2 is
    computed on a subset), ``r_K = ELBO*(truth) - ELBO*(K)`` paired per point; K = 1's optimum is the
    better of the learned K = 1 decoder and the truth itself, ``min(r_1, 0)``. Reproduced when
    ``r_K - min(r_1, 0)`` is below two standard errors (over repetitions, at least the within-run paired
    ones).
    """
    col = "elbo_star_truth_minus_model"
    if not all(np.isfinite(float(rows[("vae", k)].get(col, np.nan))) for k in (1, 2, 3)):
        return None
    v1, vk = rows[("vae", 1)], rows[("vae", best_k)]
    r1, rk = float(v1[col]), float(vk[col])
    base = min(r1, 0.0)
    diff = rk - base

    def se(row: pd.Series, with_row: bool) -> float:
        if not with_row:
            return 0.0
        n = max(1, int(row.get("repeats", 1)))
        within = float(row.get("elbo_star_diff_stderr", np.nan)) / math.sqrt(n)
        return max(_se(row, col), within if np.isfinite(within) else 0.0)

    margin = 2.0 * math.hypot(se(vk, True), se(v1, r1 < 0.0))
    ok = bool(diff < -margin)
    return _claim(
        f"table1.{bench}.vae_optimal_elbo_prefers_larger_k",
        f"{bench}: at the optimal Gaussian encoders (ELBO*, no amortisation), the ELBO prefers K = "
        f"{best_k} (chosen by the validation -ELBO) to the truth's K = 1.",
        ok, f"ELBO*(truth) - ELBO*(K={best_k}) = {rk:+.3f}, best K = 1 (learned {r1:+.3f}, the truth itself "
        f"0) {base:+.3f}: difference {diff:+.3f} nats, needs < -{margin:.3f} (two standard errors: over "
        "repetitions, and at least the paired ones over the test points)",
        {f"vae_k{k}_elbo_star_truth_minus_model": float(rows[("vae", k)][col]) for k in (1, 2, 3)}
        | {f"vae_k{k}_neg_elbo_star": float(rows[("vae", k)].get("neg_elbo_star", np.nan)) for k in (1, 2, 3)}
        | {f"vae_k{k}_amortisation_gap": float(rows[("vae", k)].get("amortisation_gap", np.nan))
           for k in (1, 2, 3)},
        note="ELBO* of K >= 2 is computed on the first test points only (500 at the quick and paper "
        "presets), so each K is compared with the truth on its own points. The amortised claim beside it "
        "mixes in each encoder's amortisation gap.",
    )


def px_claims(t: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for bench in sorted(t.benchmark.unique()):
        vae, iwae = _row(t, benchmark=bench, objective="vae"), _row(t, benchmark=bench, objective="iwae")
        if vae is None or iwae is None:
            continue
        if np.isfinite(vae.get("truth_test_neg_elbo", np.nan)):
            ok, diff, margin = _less(vae, vae, "test_neg_elbo", "truth_test_neg_elbo")
            out.append(_claim(
                f"px.{bench}.truth_not_elbo_optimum",
                f"{bench}: (amortised) the learned VAE has a better test ELBO than the ground truth's true "
                "decoder with its trained encoder.",
                ok, f"learned -ELBO {_fmt(vae.test_neg_elbo)} - truth -ELBO {_fmt(vae.truth_test_neg_elbo)} "
                f"= {diff:+.3f} nats, {_needs(margin)}",
                {"learned_neg_elbo": float(vae.test_neg_elbo),
                 "truth_neg_elbo": float(vae.truth_test_neg_elbo)},
                note="" if ok else "Training length decides what you see (docs/science.md): short runs with "
                "few "
                "restarts may not reach the ELBO's optimum; the paper preset trains 10 restarts to "
                "convergence (`vaefail fit --benchmark figure8` showed the learned model ahead there).",
            ))
        if np.isfinite(vae.get("elbo_star_truth_minus_model", np.nan)):
            diff = float(vae.elbo_star_truth_minus_model)
            over = _se(vae, "elbo_star_truth_minus_model")
            within = float(vae.get("elbo_star_diff_stderr", np.nan)) / math.sqrt(max(1, int(vae.repeats)))
            margin = 2.0 * max(over, within if np.isfinite(within) else 0.0)
            ok = bool(diff < -margin)
            out.append(_claim(
                f"px.{bench}.truth_not_elbo_optimum_exact",
                f"{bench}: at the optimal Gaussian encoders (ELBO*, no amortisation gap on either side) the "
                "learned VAE's decoder has a higher bound than the true decoder: the truth is not the "
                "ELBO's global optimum.",
                ok, f"ELBO*(truth) - ELBO*(learned) = {diff:+.3f} nats, needs < -{margin:.3f} (two standard "
                "errors: over repetitions, and at least the paired one over the test points)",
                {"learned_neg_elbo_star": float(vae.get("neg_elbo_star", np.nan)),
                 "truth_neg_elbo_star": float(vae.get("truth_neg_elbo_star", np.nan)),
                 "learned_amortisation_gap": float(vae.get("amortisation_gap", np.nan)),
                 "truth_amortisation_gap": float(vae.get("truth_amortisation_gap", np.nan)),
                 "learned_approximation_gap": float(vae.get("approximation_gap", np.nan)),
                 "truth_approximation_gap": float(vae.get("truth_approximation_gap", np.nan))},
                note="" if ok else "The amortised comparison (truth_not_elbo_optimum) measures the two "
                "encoders' amortisation gaps as well; here both decoders are judged by the best Gaussian per "
                "point. A learned decoder that is not better at ELBO* means this fit did not find a "
                "decoder the ELBO prefers to the truth.",
            ))
        ok, diff, margin = _less(iwae, vae, "mleo")
        out.append(_claim(
            f"px.{bench}.vae_misfits_px",
            f"{bench}: the VAE fits p(x) worse than the IWAE: larger MLEO = KL(p_gt(x) || p_theta(x)).",
            ok, f"MLEO(IWAE) - MLEO(VAE) = {diff:+.3f} nats, {_needs(margin)}",
            {"vae_mleo": float(vae.mleo), "iwae_mleo": float(iwae.mleo)},
        ))
    return out


def latent_claims(t: pd.DataFrame) -> list[dict[str, Any]]:
    vae = _row(t, objective="vae")
    if vae is None or "posterior_gap_model" not in t:
        return []
    model_gap, truth_gap = float(vae.posterior_gap_model), float(vae.posterior_gap_truth)
    return [_claim(
        "latent.quadratic.vae_prefers_gaussian_posterior",
        "quadratic: the VAE learns a decoder whose exact posterior is closer to Gaussian than the true "
        "posterior (bimodal: z and its mirror image explain x equally well), so its latent space is not the "
        "true one.",
        bool(model_gap < truth_gap),
        f"mean min-KL to a Gaussian: learned model {_fmt(model_gap)} vs truth {_fmt(truth_gap)} nats",
        {"model_gap": model_gap, "truth_gap": truth_gap,
         "latent_agreement": float(vae.get("latent_agreement", np.nan))},
    )]


def sigma_claims(t: pd.DataFrame) -> list[dict[str, Any]]:
    if "sigma_factor" not in t or t.empty:
        return []
    by_elbo = t.loc[(t.val_neg_elbo if "val_neg_elbo" in t and t.val_neg_elbo.notna().all()
                     else t.test_neg_elbo).idxmin()]
    by_ll = t.loc[t.test_neg_ll.idxmin()]
    out = []
    if "neg_elbo_star" in t and t.neg_elbo_star.notna().all():
        by_star = t.loc[t.neg_elbo_star.idxmin()]
        out.append(_claim(
            "sigma.figure8.optimal_elbo_prefers_smaller_sigma",
            "figure8: at the optimal Gaussian encoders (ELBO*), among fixed sigma_eps values the ELBO "
            "selects a smaller sigma_eps than the truth.",
            bool(by_star.sigma_factor < 1.0),
            f"ELBO* selects {by_star.sigma_factor:g} x truth (test points: ELBO* is not computed on the "
            f"validation split); the amortised ELBO (validation) selects {by_elbo.sigma_factor:g} x truth; "
            "plain comparison of means",
            {**{f"neg_elbo_star_at_{f:g}": float(v) for f, v in zip(t.sigma_factor, t.neg_elbo_star,
                                                                  strict=True)},
             **{f"amortisation_gap_at_{f:g}": float(v) for f, v in zip(t.sigma_factor,
                                                                      t.get("amortisation_gap", np.nan),
                                                                      strict=True)}},
        ))
    elbo_off, ll_off = abs(np.log(by_elbo.sigma_factor)), abs(np.log(by_ll.sigma_factor))
    return out + [_claim(
        "sigma.figure8.elbo_prefers_smaller_sigma",
        "figure8: among fixed sigma_eps values, the ELBO selects a smaller sigma_eps than the truth, while "
        "the held-out log-likelihood selects one closer to the truth.",
        bool(by_elbo.sigma_factor < 1.0 and ll_off < elbo_off),
        f"the ELBO (validation) selects {by_elbo.sigma_factor:g} x truth; held-out log-likelihood selects "
        f"{by_ll.sigma_factor:g} x truth",
        {"elbo_choice_factor": float(by_elbo.sigma_factor), "ll_choice_factor": float(by_ll.sigma_factor),
         "pmo_at_smallest": float(t.pmo.iloc[0]), "pmo_at_largest": float(t.pmo.iloc[-1])},
        note="Likely reason when not reproduced: with K = 1 the posterior-matching term PMO shrinks as "
        "sigma_eps grows (wider, more Gaussian posteriors) faster than the data fit worsens, so the ELBO "
        "moves to a larger sigma_eps; the paper's smaller-sigma preference comes with extra latent "
        "dimensions (see table1's learned sigma_eps at K = 2, 3).",
    )]


def sweep_claims(t: pd.DataFrame) -> list[dict[str, Any]]:
    """One claim per swept setting: does the VAE's -ELBO prefer K = 2 over the true K = 1 there?"""
    out = []
    for params in t.benchmark_params.unique():
        k1 = _row(t, benchmark_params=params, latent_dim=1)
        k2 = _row(t, benchmark_params=params, latent_dim=2)
        if k1 is None or k2 is None:
            continue
        ok, diff, margin = _less(k2, k1, "test_neg_elbo")
        out.append(_claim(
            f"sweep.clusters.{params.replace(' ', ',')}.vae_elbo_prefers_larger_k",
            f"clusters ({params}): the VAE's test -ELBO is better with K = 2 than with the true K = 1.",
            ok, f"-ELBO(K=2) - (-ELBO(K=1)) = {diff:+.3f} nats, {_needs(margin)}",
            {"k1": float(k1.test_neg_elbo), "k2": float(k2.test_neg_elbo)},
        ))
    return out


#: A decoder "collapses" when its collapse score is below this, with two standard errors of room: the
#: learned class-conditionals are less than half as different as the truth's.
COLLAPSE_THRESHOLD = 0.5


def _spread(row: pd.Series, col: str) -> str:
    """``mean ± std (n repeats)`` of a table cell, for the comparison text."""
    std = row.get(f"{col}_std", float("nan"))
    n = int(row.get("repeats", 1))
    return f"{_fmt(float(row[col]))}" + (f" ± {_fmt(float(std))} (std over {n} repeats)"
                                         if n > 1 and np.isfinite(std) else " (1 repeat)")


def _m2_numbers(row: pd.Series) -> dict[str, Any]:
    cols = ("collapse_score", "best_restart_collapse", "counterfactual_error", "counterfactual_collapsed",
            "counterfactual_oracle", "test_accuracy", "bayes_accuracy", "kl_y0", "kl_y1", "test_j",
            "truth_test_j")
    out: dict[str, Any] = {}
    for col in cols:
        if col in row:
            out[col] = float(row[col])
            if col == "collapse_score":
                out["collapse_score_std"] = float(row.get("collapse_score_std", float("nan")))
    return out


def _collapse_note(row: pd.Series, score: float) -> str:
    """Why a functional-collapse claim did not reproduce: no collapse, or collapse in some repeats only."""
    best = _fmt(float(row.get("best_restart_collapse", np.nan)))
    if score < COLLAPSE_THRESHOLD:
        return (f"The mean score is below {COLLAPSE_THRESHOLD} but the spread over repeats is wide: some "
                "repeats selected a collapsed model and others not (see the per-repeat runs; the largest "
                f"score of any restart, averaged over repeats, is {best}). More repeats or longer training "
                "(the paper preset) narrow it.")
    return (f"The selected model keeps the classes apart (mean score {_fmt(score)}; best restart {best}). "
            "Short runs may stop before the decoder curves merge; the paper preset trains 10 restarts to "
            "convergence.")


def _u_star_claim(row: pd.Series, cid: str, bench: str, name: str) -> dict[str, Any] | None:
    """``truth_not_j_optimum_exact``: the truth's optimal unlabelled bound ``U*`` below the learned
    decoder's by two standard errors (over repetitions, at least the paired one over the test points)."""
    diff = float(row.get("u_star_truth_minus_model", np.nan))
    if not np.isfinite(diff):
        return None
    within = float(row.get("u_star_diff_stderr", np.nan)) / math.sqrt(max(1, int(row.get("repeats", 1))))
    margin = 2.0 * max(_se(row, "u_star_truth_minus_model"), within if np.isfinite(within) else 0.0)
    ok = bool(diff < -margin)
    cols = ("neg_u", "neg_u_star", "u_approximation_gap", "u_amortisation_gap", "truth_neg_u",
            "truth_neg_u_star", "truth_u_approximation_gap", "truth_u_amortisation_gap")
    return _claim(
        f"{cid}.truth_not_j_optimum_exact",
        f"{bench}: at the optimal encoders (q(y|x) and a Gaussian q(z|x,y) per point and class, no "
        f"amortisation gap on either side) the {name}'s learned decoder has a higher unlabelled bound "
        "U* = log sum_y exp ELBO*(x, y) than the true decoder: the truth is not the optimum of J.",
        ok, f"U*(truth) - U*(learned) = {diff:+.3f} nats per point, needs < -{margin:.3f} (two standard "
        "errors: over repetitions, and at least the paired one over the test points)",
        {c: float(row.get(c, np.nan)) for c in cols},
        note="U* judges the decoder alone: J's labelled terms have the same optimum in the decoder plus a "
        "classifier term no decoder changes. For the mean-field encoder U* is the optimum of the larger "
        "family q(y|x) q(z|x,y), so its amortisation gap includes that restriction. The amortised claim "
        "(truth_not_j_optimum) also compares the two models' trained encoders.",
    )


def semisupervised_claims(t: pd.DataFrame) -> list[dict[str, Any]]:
    """Functional collapse of M2 per (benchmark, objective, encoder) row, the truth against J's choice, and
    whether the IWAE collapses less than the VAE."""
    out = []
    for _, row in t.iterrows():
        bench, objective, encoder = row.benchmark, row.objective, row.encoder
        name = f"M2 {objective.upper()} ({encoder.replace('_', '-')} encoder)"
        cid = f"semisupervised.{bench}.{objective}.{encoder}"
        score, margin = float(row.collapse_score), 2.0 * _se(row, "collapse_score")
        noise = "" if margin > 0 else "; a single repetition: no noise estimate over repeats"
        if encoder == "mean_field":
            ok = bool(score + margin < COLLAPSE_THRESHOLD)
            out.append(_claim(
                f"{cid}.functional_collapse",
                f"{bench}: the {name}'s decoder curves for the two classes collapse into one: its "
                "class-conditionals p_theta(x|y) are far less different than the truth's (collapse score "
                "well below 1).",
                ok,
                f"collapse score {_spread(row, 'collapse_score')}; needs mean + two standard errors "
                f"({score + margin:.3f}) < {COLLAPSE_THRESHOLD} (0 = full collapse, 1 = the truth's "
                f"separation){noise}",
                _m2_numbers(row),
                note="" if ok else _collapse_note(row, score),
            ))
        else:  # Kingma's q(z|x,y) can follow each class's direction (docs/science.md: kept apart)
            ok = bool(score - margin > COLLAPSE_THRESHOLD)
            out.append(_claim(
                f"{cid}.classes_kept_apart",
                f"{bench}: with an encoder that sees the label, the {name} keeps the class-conditionals "
                "apart (no functional collapse: collapse score not far below 1).",
                ok,
                f"collapse score {_spread(row, 'collapse_score')}; needs mean - two standard errors "
                f"({score - margin:.3f}) > {COLLAPSE_THRESHOLD}{noise}",
                _m2_numbers(row),
            ))
        cf, collapsed, oracle = (float(row[c]) for c in (
            "counterfactual_error", "counterfactual_collapsed", "counterfactual_oracle"))
        midpoint = 0.5 * (collapsed + oracle)
        out.append(_claim(
            f"{cid}.counterfactuals_wrong",
            f"{bench}: the {name}'s counterfactuals (infer z, decode with the other label) are wrong: their "
            "error is nearer that of a fully collapsed model (which answers x itself) than the noise floor "
            "(the true decoder with the exact posterior mean).",
            bool(cf > midpoint),
            f"counterfactual error {_spread(row, 'counterfactual_error')} vs collapsed-model error "
            f"{_fmt(collapsed)} and noise floor {_fmt(oracle)}; needs > {midpoint:.3f} (their midpoint; "
            "plain comparison of means, data units)",
            {"counterfactual_error": cf, "collapsed_model_error": collapsed, "noise_floor_error": oracle},
        ))
        truth = float(row.get("truth_test_j", np.nan))
        if np.isfinite(truth):
            ok, diff, margin = _less(row, row, "truth_test_j", "test_j")
            out.append(_claim(
                f"{cid}.truth_not_j_optimum",
                f"{bench}: the ground truth (true decoder f_gt(y, z) with its best encoders) is not the "
                f"optimum of the {name}'s objective J: the learned model has a higher test J.",
                ok, f"truth J {_fmt(truth)} - learned J {_fmt(float(row.test_j))} = {diff:+.3f} nats per "
                f"point, {_needs(margin)}",
                {"learned_test_j": float(row.test_j), "truth_test_j": truth},
            ))
        exact = _u_star_claim(row, cid, bench, name) if objective == "vae" else None
        if exact is not None:
            out.append(exact)
    for bench, encoder in dict.fromkeys(zip(t.benchmark, t.encoder, strict=True)):
        sub = t[(t.benchmark == bench) & (t.encoder == encoder)]
        vae, iwae = _row(sub, objective="vae"), _row(sub, objective="iwae")
        if vae is None or iwae is None:
            continue
        ok, diff, margin = _less(vae, iwae, "collapse_score")
        iwae_collapses = float(iwae.collapse_score) < COLLAPSE_THRESHOLD
        out.append(_claim(
            f"semisupervised.{bench}.{encoder}.iwae_reduces_collapse",
            f"{bench}: a more flexible objective reduces the failure (the paper's remedy): M2 trained with "
            f"the IWAE bound ({encoder.replace('_', '-')} encoder) collapses less than with the ELBO (a "
            "higher collapse score).",
            ok, f"collapse score VAE {_spread(vae, 'collapse_score')}, IWAE "
            f"{_spread(iwae, 'collapse_score')}; VAE - IWAE = {diff:+.3f}, {_needs(margin)}",
            {"vae_collapse_score": float(vae.collapse_score),
             "iwae_collapse_score": float(iwae.collapse_score),
             "vae_counterfactual_error": float(vae.counterfactual_error),
             "iwae_counterfactual_error": float(iwae.counterfactual_error)},
            note=(f"The IWAE's own collapse score is {_fmt(float(iwae.collapse_score))}: it "
                  + ("collapses as well (below " if iwae_collapses else "stays at or above ")
                  + f"{COLLAPSE_THRESHOLD}). docs/science.md's prototype (S = 20, 15,000 steps) found the "
                  "mean-field IWAE collapsed too: with q(z|x) unable to depend on y, importance weighting "
                  "over a unimodal proposal does not recover the two directions."),
        ))
    return out


def digits_claims(t: pd.DataFrame) -> list[dict[str, Any]]:
    """On digits with few labels, does M2 beat each classifier trained on the labelled points alone?

    The comparison is the paired difference M2 - baseline over seeds (same labelled subset per seed),
    reproduced when its mean exceeds two standard errors.
    """
    out = []
    all_labels = _row(t, labels_per_class="all")
    for _, row in t.iterrows():
        n = row.labels_per_class
        if n == "all":
            continue
        for base, label in (("logistic", "logistic regression"), ("mlp", "M2's classifier network")):
            col = f"m2_minus_{base}"
            if col not in row or not np.isfinite(row[col]):
                continue
            diff, margin = float(row[col]), 2.0 * _se(row, col)
            ok = bool(diff > margin)
            numbers = {"m2_accuracy": float(row.m2_accuracy),
                       f"{base}_accuracy": float(row[f"{base}_accuracy"]), "m2_minus_baseline": diff,
                       "m2_minus_baseline_std": float(row.get(f"{col}_std", np.nan))}
            note = ""
            if all_labels is not None and col in all_labels:
                numbers["all_labels_m2_minus_baseline"] = float(all_labels[col])
                note = (f"With all training labels (nothing left unlabelled) the difference is "
                        f"{float(all_labels[col]):+.3f}: what remains there is the classifiers' own "
                        "difference, not the unlabelled data.")
            needs = (f"needs > {margin:.3f} (two standard errors of the paired difference over "
                     f"{int(row.repeats)} seeds)" if margin > 0 else
                     "needs > 0 (a single seed: no noise estimate, plain comparison)")
            out.append(_claim(
                f"digits.labels{n}.m2_beats_{base}",
                f"digits with {n} labels per class: M2 (using the unlabelled images too) is more accurate "
                f"than a {label} trained on the labelled points alone.",
                ok, f"test accuracy M2 {_spread(row, 'm2_accuracy')} vs {label} "
                f"{_spread(row, f'{base}_accuracy')}; paired difference {diff:+.3f}, {needs}",
                numbers, note=note,
            ))
    return out


def _greater(a: pd.Series, b: pd.Series, col: str) -> tuple[bool, float, float]:
    """Is ``a[col]`` above ``b[col]`` by more than two standard errors?"""
    ok, diff, margin = _less(b, a, col)
    return ok, -diff, margin


def _v(row: pd.Series | None, col: str) -> float:
    """``row[col]`` as a float, NaN without the row."""
    return float("nan") if row is None else float(row[col])


def _needs_above(margin: float) -> str:
    return _needs(margin).replace("needs < -", "needs > ").replace("needs < 0", "needs > 0")


def downstream_claims(t: pd.DataFrame) -> list[dict[str, Any]]:
    """The paper's downstream consequences, per benchmark, from the downstream table (rows: benchmark x
    family, with the truth)."""
    out: list[dict[str, Any]] = []
    if t.empty or "family" not in t:
        return out
    for bench in dict.fromkeys(t.benchmark):
        truth, vae, iwae, flow = (
            _row(t, benchmark=bench, family=f) for f in ("truth", "vae", "iwae", "flow"))
        if truth is None or vae is None:
            continue
        start = len(out)
        kb = float(vae.k_bound)
        out.append(_claim(
            f"downstream.{bench}.compression",
            f"{bench}: the VAE's own bound selects more latent dimensions than the true K = 1 "
            "(no compression to the true latent).", bool(kb > 1.0),
            f"mean K selected by the VAE's test bound {kb:.2f} (IWAE {_fmt(_v(iwae, 'k_bound'))}, "
            f"held-out log-likelihood {float(vae.k_ll):.2f}), needs > 1 (plain comparison of the mean "
            "choice)",
            {"vae_k_bound": kb, "vae_k_ll": float(vae.k_ll),
             "iwae_k_bound": _v(iwae, "k_bound"), "flow_k_bound": _v(flow, "k_bound")}))
        ok, diff, margin = _less(vae, truth, "recovery")
        out.append(_claim(
            f"downstream.{bench}.recovery",
            f"{bench}: the VAE's code determines the true latent less well than the truth's posterior "
            "mean (latent recovery / disentanglement).", ok,
            f"recovery VAE - truth = {diff:+.3f}, {_needs(margin)}",
            {"vae": float(vae.recovery), "truth": float(truth.recovery),
             "iwae": _v(iwae, "recovery"), "flow": _v(flow, "recovery")}))
        if float(truth.multimodal_share) > 0.05 and np.isfinite(float(vae.mode_overlap)):
            ok, diff, margin = _less(vae, truth, "mode_overlap")
            out.append(_claim(
                f"downstream.{bench}.ambiguity",
                f"{bench}: where the true posterior has two modes (the patient with two possible "
                "diseases), the VAE's posterior commits to one: its mode overlap with the truth is below "
                "the truth's (1).", ok,
                f"mode overlap VAE - truth = {diff:+.3f}, {_needs(margin)}",
                {"vae": float(vae.mode_overlap), "truth": float(truth.mode_overlap),
                 "iwae": _v(iwae, "mode_overlap"), "flow": _v(flow, "mode_overlap"),
                 "multimodal_share": float(truth.multimodal_share)}))
        if np.isfinite(float(vae.sigma_ratio)):
            ok, diff, margin = _less(vae, truth, "sigma_ratio")
            out.append(_claim(
                f"downstream.{bench}.sigma",
                f"{bench}: the VAE's objective learns a smaller observation noise than the truth's (it "
                "explains noise as signal).", ok,
                f"learned sigma_eps / true sigma_eps - 1 = {diff:+.3f}, {_needs(margin)}",
                {"vae": float(vae.sigma_ratio),
                 "iwae": _v(iwae, "sigma_ratio"), "flow": _v(flow, "sigma_ratio")}))
        ok, diff, margin = _greater(vae, truth, "noise_kept")
        out.append(_claim(
            f"downstream.{bench}.noise_in_code",
            f"{bench}: the VAE's code keeps more of the true noise than the truth's (signal/noise "
            "separation).",
            ok, f"noise kept VAE - truth = {diff:+.3f}, {_needs_above(margin)}",
            {"vae": float(vae.noise_kept), "truth": float(truth.noise_kept),
             "iwae": _v(iwae, "noise_kept"), "flow": _v(flow, "noise_kept")}))
        if np.isfinite(float(truth.normal_over_along)) and np.isfinite(float(vae.normal_over_along)):
            ok, diff, margin = _greater(vae, truth, "normal_over_along")
            out.append(_claim(
                f"downstream.{bench}.robustness",
                f"{bench}: the VAE's code is more sensitive to perturbations normal to the data manifold, "
                "relative to along it, than the truth's (adversarial robustness).", ok,
                f"normal/along sensitivity VAE - truth = {diff:+.3f}, {_needs_above(margin)}",
                {"vae": float(vae.normal_over_along), "truth": float(truth.normal_over_along),
                 "iwae": _v(iwae, "normal_over_along"), "flow": _v(flow, "normal_over_along")}))
        p = float(vae.energy_p)
        out.append(_claim(
            f"downstream.{bench}.generation",
            f"{bench}: the VAE's samples are distinguishable from the truth's (energy-distance test).",
            bool(p < 0.05), f"mean permutation p-value {p:.3f} (truth against fresh truth "
            f"{float(truth.energy_p):.3f}), needs < 0.05",
            {"vae_p": p, "vae_energy": float(vae.energy), "truth_p": float(truth.energy_p),
             "iwae_p": _v(iwae, "energy_p"), "flow_p": _v(flow, "energy_p"),
             "vae_off_manifold": float(vae.off_manifold), "truth_off_manifold": float(truth.off_manifold)}))
        ok, diff, margin = _less(vae, truth, "auroc")
        ok_iwae, diff_iwae, margin_iwae = _less(vae, iwae, "auroc") if iwae is not None else (
            False, float("nan"), 0.0)
        out.append(_claim(
            f"downstream.{bench}.outliers",
            f"{bench}: the VAE's outlier AUROC (-log p(x)) is below the truth's and the IWAE's beyond "
            "noise.",
            bool(ok and ok_iwae),
            f"AUROC VAE - truth = {diff:+.3f}, {_needs(margin)}; VAE - IWAE = {diff_iwae:+.3f}, "
            f"{_needs(margin_iwae)}",
            {"vae": float(vae.auroc), "truth": float(truth.auroc),
             "iwae": _v(iwae, "auroc"), "flow": _v(flow, "auroc")}))
        if bench == "linear":  # the control: the paper predicts no failure where the posterior is Gaussian
            for claim in out[start:]:
                claim["note"] = ("linear is the control (exactly Gaussian posterior): the paper predicts no "
                                 "failure here, so a reproduced verdict is an effect it does not predict.")
    return out


def _within(a: pd.Series, b: pd.Series, col: str, tol: float) -> tuple[bool, float, float]:
    """Do ``a[col]`` and ``b[col]`` agree: ``|a - b|`` below two standard errors, or below ``tol`` nats when
    there is no noise estimate (a single repetition)?"""
    diff = float(a[col] - b[col])
    margin = 2.0 * math.hypot(_se(a, col), _se(b, col))
    return bool(abs(diff) <= (margin if margin > 0 else tol)), diff, margin


#: Benchmarks whose true posterior is far from Gaussian (conditions Cx1 and Cx2 hold), and the one where it
#: is exactly Gaussian (Cx1 fails).
FLEXIBLE_NON_GAUSSIAN = ("figure8", "clusters")
FLEXIBLE_GAUSSIAN = ("linear",)
#: Agreement tolerance (nats) of the linear benchmark's families with a single repetition.
AGREE_TOL = 0.02


def flexible_claims(t: pd.DataFrame) -> list[dict[str, Any]]:
    """The paper's guideline on flexible posteriors, checked per benchmark at K = 1 (ELBO-trained models):
    where Cx1 and Cx2 hold, the flow's MLEO is below the MFG-VAE's beyond noise; where Cx1 fails (linear),
    the two agree within noise; and whether the flow's bound still prefers K > 1 (when K = 2 was run)."""
    out = []
    for bench in sorted(t.benchmark.unique()):
        vae = _row(t, benchmark=bench, objective="vae", encoder="gaussian", latent_dim=1)
        flow = _row(t, benchmark=bench, objective="vae", encoder="flow", latent_dim=1)
        if vae is None or flow is None:
            continue
        if bench in FLEXIBLE_NON_GAUSSIAN:
            ok, diff, margin = _less(flow, vae, "mleo")
            out.append(_claim(
                f"flexible.{bench}.flow_fits_px_better",
                f"{bench}: the true posterior is far from Gaussian (Cx1, Cx2), so a flexible posterior fixes "
                "part of the failure: the flow-encoder VAE fits p(x) better than the MFG-VAE (smaller MLEO).",
                ok, f"MLEO(flow) - MLEO(MFG-VAE) = {diff:+.3f} nats, {_needs(margin)}",
                {"vae_mleo": float(vae.mleo), "flow_mleo": float(flow.mleo), "vae_pmo": float(vae.pmo),
                 "flow_pmo": float(flow.pmo)},
                note="" if ok else "Short quick-preset runs (2 restarts, 3,000 steps) may not separate the "
                "families; the paper preset trains 10 restarts to convergence over 3 repeats.",
            ))
        elif bench in FLEXIBLE_GAUSSIAN:
            ok, diff, margin = _within(flow, vae, "test_neg_ll", AGREE_TOL)
            out.append(_claim(
                f"flexible.{bench}.families_agree",
                f"{bench}: the true posterior is Gaussian (Cx1 fails), so flexibility changes nothing: the "
                "flow-encoder VAE and the MFG-VAE reach the same held-out log-likelihood.",
                ok, f"-log p(flow) - (-log p(MFG-VAE)) = {diff:+.3f} nats, needs |.| <= "
                + (f"{margin:.3f} (two standard errors)" if margin > 0 else
                   f"{AGREE_TOL} (a single repetition: no noise estimate)"),
                {"vae_neg_ll": float(vae.test_neg_ll), "flow_neg_ll": float(flow.test_neg_ll)},
            ))
        flow2 = _row(t, benchmark=bench, objective="vae", encoder="flow", latent_dim=2)
        if flow2 is not None:
            ok, diff, margin = _less(flow2, flow, "test_neg_elbo")
            out.append(_claim(
                f"flexible.{bench}.flow_bound_prefers_k2",
                f"{bench}: even with the flow encoder the ELBO prefers K = 2 over the true K = 1.",
                ok, f"-ELBO(K=2) - (-ELBO(K=1)) = {diff:+.3f} nats, {_needs(margin)}",
                {"k1_neg_elbo": float(flow.test_neg_elbo), "k2_neg_elbo": float(flow2.test_neg_elbo)},
            ))
    return out


def overfit_claims(t: pd.DataFrame) -> list[dict[str, Any]]:
    """The guideline "regularise the decoder" on the over-fitting table (a flexible posterior, a small
    training set; rows: ``decoder_l2`` 0 and > 0): without the penalty the train bound exceeds the held-out
    bound by more than with it (``train_minus_test_bound``, nats per point), and the held-out
    ``log p_theta(x)`` is worse without it (``test_neg_ll`` higher)."""
    out: list[dict[str, Any]] = []
    if t.empty or "decoder_l2" not in t:
        return out
    for bench in dict.fromkeys(t.benchmark):
        sub = t[t.benchmark == bench]
        free = _row(sub, decoder_l2=0.0)
        weights = sorted(float(w) for w in sub.decoder_l2.unique() if float(w) > 0)
        if free is None or not weights:
            continue
        reg = _row(sub, decoder_l2=weights[0])
        ok, diff, margin = _less(reg, free, "train_minus_test_bound")
        out.append(_claim(
            f"flexible.{bench}.decoder_l2_closes_gap",
            f"{bench}, flow encoder, small training set: without a decoder penalty the train bound rises "
            f"above the held-out bound (over-fitting); decoder_l2 = {weights[0]:g} shrinks that gap.",
            ok, f"gap(L2) - gap(no L2) = {diff:+.3f} nats, {_needs(margin)}",
            {"gap_no_l2": float(free.train_minus_test_bound), "gap_l2": float(reg.train_minus_test_bound),
             "train_neg_elbo_no_l2": float(free.train_neg_elbo),
             "test_neg_elbo_no_l2": float(free.test_neg_elbo),
             "train_neg_elbo_l2": float(reg.train_neg_elbo), "test_neg_elbo_l2": float(reg.test_neg_elbo)},
        ))
        ok, diff, margin = _less(reg, free, "test_neg_ll")
        out.append(_claim(
            f"flexible.{bench}.decoder_l2_improves_heldout_ll",
            f"{bench}, flow encoder, small training set: the over-fitted decoder has a worse held-out "
            f"log-likelihood; with decoder_l2 = {weights[0]:g} it is better.",
            ok, f"-log p(L2) - (-log p(no L2)) = {diff:+.3f} nats, {_needs(margin)}",
            {"neg_ll_no_l2": float(free.test_neg_ll), "neg_ll_l2": float(reg.test_neg_ll),
             "neg_log_p_true": float(free.get("test_neg_log_prob_true", float("nan")))},
        ))
    return out


#: The flexible-posterior M2 rows and the Gaussian encoder each is compared with.
FLOW_M2_REFERENCE = {"flow": "mean_field", "flow_kingma": "kingma"}


def flexible_m2_claims(t: pd.DataFrame) -> list[dict[str, Any]]:
    """Does a flow ``q(z|x)`` alone remove M2's functional collapse, or only a flow ``q(z|x, y)``? Per flow
    row of the flexible M2 table: the classes are kept apart (collapse score minus two standard errors above
    :data:`COLLAPSE_THRESHOLD`), with the Gaussian encoder of the same factorisation for reference."""
    out: list[dict[str, Any]] = []
    if t.empty or "encoder" not in t:
        return out
    for _, row in t.iterrows():
        if row.encoder not in FLOW_M2_REFERENCE:
            continue
        bench, objective = row.benchmark, row.objective
        ref = _row(t, benchmark=bench, objective=objective, encoder=FLOW_M2_REFERENCE[row.encoder])
        score, margin = float(row.collapse_score), 2.0 * _se(row, "collapse_score")
        noise = "" if margin > 0 else "; a single repetition: no noise estimate over repeats"
        sees = "q(z|x, y) (it sees the label)" if row.encoder == "flow_kingma" else "q(z|x) alone"
        numbers = _m2_numbers(row)
        if ref is not None:
            numbers |= {"gaussian_collapse_score": float(ref.collapse_score),
                        "gaussian_counterfactual_error": float(ref.counterfactual_error)}
        out.append(_claim(
            f"flexible.{bench}.{objective}.{row.encoder}.classes_kept_apart",
            f"{bench}: M2 {objective.upper()} with a normalising-flow {sees} keeps the class-conditionals "
            "apart (no functional collapse: collapse score not far below 1).",
            bool(score - margin > COLLAPSE_THRESHOLD),
            f"collapse score {_spread(row, 'collapse_score')} (Gaussian "
            f"{FLOW_M2_REFERENCE[row.encoder].replace('_', '-')} encoder: "
            f"{_fmt(float(ref.collapse_score)) if ref is not None else 'n/a'}); needs mean - two standard "
            f"errors ({score - margin:.3f}) > {COLLAPSE_THRESHOLD}{noise}",
            numbers,
        ))
    return out


CLAIMS = {"table1": table1_claims, "px": px_claims, "latent": latent_claims, "sigma": sigma_claims,
          "sweep": sweep_claims, "semisupervised": semisupervised_claims, "digits": digits_claims,
          "downstream": downstream_claims,
          "flexible": flexible_claims, "flexible_overfit": overfit_claims,
          "flexible_m2": flexible_m2_claims}


def evaluate_claims(tables: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """Every claim that the given experiment tables (keyed by table name) can test."""
    return [c for name, table in tables.items() if name in CLAIMS for c in CLAIMS[name](table)]
