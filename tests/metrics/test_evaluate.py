"""evaluate_run on saved runs: every section present, JSON-serialisable, inapplicable metrics explained."""

from __future__ import annotations

import json

import jax
import numpy as np
import pandas as pd
import pytest
from rich.console import Console

import vaefail
from vaefail.errors import ConfigError, StoreError
from vaefail.metrics import evaluate_run, evaluation_table
from vaefail.metrics.evaluate import _truth_section
from vaefail.mfg import init_models
from vaefail.models import TrueDecoder, make_vae
from vaefail.results import FitResult

SMALL = {"steps": 500, "n_train": 500, "n_val": 200, "n_test": 300, "converge": False}


@pytest.fixture(scope="module")
def figure8_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "figure8"
    vaefail.fit("figure8", latent_dim=1, restarts=1, seed=0, **SMALL).save(path)
    return FitResult.load(path)


@pytest.fixture(scope="module")
def linear_k2_run(tmp_path_factory):
    """An untrained K = 2 run written and read back as a run folder (no training: the metrics do not care
    how the parameters came about, and this keeps the test fast)."""
    config = vaefail.FitConfig(benchmark="linear", latent_dim=2, restarts=1, **SMALL)
    models = init_models(config, config_benchmark(config), [jax.random.PRNGKey(0)])
    restarts = pd.DataFrame({"restart": [0], "start": ["random"], "status": ["ok"], "selected": [True]})
    path = tmp_path_factory.mktemp("runs") / "linear_k2"
    FitResult(config, models, restarts, 0, {"selected": 0, "start": "random"}).save(path)
    return FitResult.load(path)


def config_benchmark(config):
    return vaefail.get_benchmark(config.benchmark, **config.benchmark_params)


def render(report) -> str:
    console = Console(record=True, width=220)
    console.print(evaluation_table(report))
    return console.export_text()


def test_evaluate_a_k1_run_from_disk(figure8_run):
    bench = figure8_run.benchmark
    truth = make_vae(2, 1, bench.sigma_eps, key=jax.random.PRNGKey(1),
                     decoder=TrueDecoder(f_gt=bench.f_gt, true_latent_dim=1))
    report = evaluate_run(figure8_run, jax.random.PRNGKey(0), num_samples=200, max_points=150,
                          truth_model=truth)
    json.loads(json.dumps(report, allow_nan=False))  # strict JSON: no NaN/inf anywhere
    assert report["run"]["n"] == 150 and report["run"]["latent_dim"] == 1
    lik = report["likelihood"]
    assert lik["log_p_exact"] is not None and lik["is_minus_exact"]["mean"] <= 1e-3
    # the split is an identity: MLEO + PMO = mean log p_gt - mean ELBO
    sp = report["split"]
    total = lik["log_p_true"]["mean"] - lik["elbo"]["mean"]
    assert sp["mleo"]["mean"] + sp["pmo"]["mean"] == pytest.approx(total, abs=1e-9)
    assert sp["method"] == "quadrature"
    # the exact posterior KL is the PMO without Monte-Carlo noise in log p
    assert report["posterior"]["kl_q_to_posterior"]["mean"] == pytest.approx(sp["pmo"]["mean"], abs=0.05)
    fail = report["failure"]
    assert fail["true_posterior_gap"]["share_above"] > 0.05  # figure8's crossing: non-Gaussian posteriors
    assert fail["model_posterior_gap"] is not None and fail["curve"] is not None
    assert fail["crossing"]["truth"]["passes"] is True
    assert fail["truth_comparison"]["source"] == "truth_model"
    assert report["not_applicable"] == {}
    bounds = report["bounds"]
    assert bounds["n"] == 150
    for who in ("model", "truth"):
        part = bounds[who]
        total = sum(part[t]["mean"] for t in ("neg_log_p", "approximation_gap", "amortisation_gap"))
        assert total == pytest.approx(part["neg_elbo"]["mean"], abs=1e-9)
        assert part["approximation_gap"]["mean"] >= 0 and part["neg_elbo_star"]["stderr"] > 0
    # the truth's -log p is the exact -log p_gt; its ELBO* beats its untrained encoder's ELBO
    assert bounds["truth"]["neg_log_p"]["mean"] == pytest.approx(-lik["log_p_true"]["mean"], abs=1e-6)
    assert bounds["truth"]["amortisation_gap"]["mean"] > 0.1
    assert bounds["truth_is_better"] in (True, False, None)
    text = render(report)
    for label in ("MLEO", "PMO", "I(x; z_1)", "active units", "k-hat", "Gaussian gap", "curve distance",
                  "passes the crossing", "ELBO truth - learned", "model: -ELBO*", "truth: amortisation gap",
                  "ELBO* truth - model"):
        assert label in text, label


def test_evaluate_a_k2_run_reports_what_does_not_apply(linear_k2_run):
    report = evaluate_run(linear_k2_run, jax.random.PRNGKey(0), num_samples=100, max_points=100,
                          bound_points=30)
    json.dumps(report, allow_nan=False)
    bounds = report["bounds"]
    assert bounds["n"] == 30 and "K = 2" in bounds["model"]["method"]
    assert bounds["truth"]["amortisation_gap"] is None  # no truth model given: only what needs no encoder
    assert bounds["truth"]["approximation_gap"]["mean"] < 1e-6  # linear: Gaussian true posterior
    assert len(report["mutual_information"]["per_dim"]) == 2
    assert report["likelihood"]["log_p_exact"] is not None  # K = 2 is still exact
    assert report["posterior"]["kl_q_to_posterior"] is None
    assert report["failure"]["curve"] is None and report["failure"]["crossing"] is None
    na = report["not_applicable"]
    for key in ("posterior.kl_q_to_posterior", "failure.model_posterior_gap", "failure.curve",
                "failure.crossing", "failure.truth_comparison", "bounds.truth.amortisation_gap"):
        assert key in na, key
    assert "K = 1" in na["posterior.kl_q_to_posterior"]
    assert "n/a" in render(report)


def test_the_truths_gap_is_computed_once_per_test_set_and_the_numbers_do_not_change(figure8_run):
    from vaefail.metrics import evaluate as ev
    from vaefail.metrics.posterior import gaussian_gap

    ev._TRUTH_GAPS.clear()
    opts = {"num_samples": 100, "max_points": 60, "sections": ("bounds",)}
    first = evaluate_run(figure8_run, jax.random.PRNGKey(0), **opts)
    assert len(ev._TRUTH_GAPS) == 1
    again = evaluate_run(figure8_run, jax.random.PRNGKey(0), **opts)
    assert len(ev._TRUTH_GAPS) == 1 and again["bounds"] == first["bounds"]
    x = np.asarray(figure8_run.splits().test.x[:60])
    fresh = gaussian_gap(figure8_run.benchmark, x)
    assert np.array_equal(next(iter(ev._TRUTH_GAPS.values())).per_point, fresh.per_point)


def test_truth_comparison_falls_back_to_the_run_summary():
    """A run fitted with the truth stores both test ELBOs; without a truth model they are reported as is."""
    na = {}
    out = _truth_section(None, None, None, None, None, None, 10, 10,
                         {"test_elbo": -1.10, "truth_test_elbo": -1.23}, "test", na)
    assert out["truth_beats_learned"] is False
    assert out["elbo_truth_minus_learned"]["mean"] == pytest.approx(-0.13)
    assert na == {}
    assert _truth_section(None, None, None, None, None, None, 10, 10, {}, "test", na) is None
    assert "truth" in na["failure.truth_comparison"]


def test_bad_options_and_non_run_folders(figure8_run, tmp_path):
    with pytest.raises(ConfigError):
        evaluate_run(figure8_run, jax.random.PRNGKey(0), split="holdout")
    with pytest.raises(ConfigError):
        evaluate_run(figure8_run, jax.random.PRNGKey(0), max_points=1)
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(StoreError, match="not a vaefail run folder"):
        FitResult.load(tmp_path)
