"""Longer M2 runs: functional collapse of the mean-field family; digits against labelled-only baselines."""

from __future__ import annotations

import json

import pytest

from vaefail.errors import ConfigError
from vaefail.semisupervised import (
    DigitsConfig,
    SemiSupervisedConfig,
    SemiSupervisedResult,
    run_digits,
    run_semisupervised,
)
from vaefail.semisupervised.digits import choose_labelled, load_digits_data

SHORT = dict(objective="vae", restarts=2, steps=600, init_steps=200, eval_every=150, n_train=600, n_val=300,
             n_test=500, labelled_fraction=0.1, converge=False, seed=0)


@pytest.mark.slow
def test_mean_field_m2_collapses_where_kingma_keeps_classes_apart(tmp_path):
    """A short version of the reproduce run: 1 truth + 1 random restart, 600 steps, 60 labels.

    Measured (seed 0): the mean-field M2 selects a collapsed model (score 0.03, counterfactual error 0.99
    of the collapsed baseline); Kingma's truth-started restart keeps the classes apart (score 1.44).
    With seed 1 Kingma's random restart collapsed at this budget (0.08) and was selected, so the Kingma
    assertion is on the truth-started restart. The full run uses 5,000 points, 10 restarts and trains to
    convergence.
    """
    runs = {}
    for encoder in ("mean_field", "kingma"):
        config = SemiSupervisedConfig(encoder=encoder, **SHORT)
        result, metrics = run_semisupervised(config, collapse_samples=800)
        json.dumps(metrics)
        runs[encoder] = metrics
        assert "truth_test_objective" in metrics["summary"]
        if encoder == "mean_field":
            loaded = SemiSupervisedResult.load(result.save(tmp_path / "mf"))
            assert loaded.restarts.equals(result.restarts)
    mf, km = runs["mean_field"]["test"], runs["kingma"]
    assert mf["collapse"]["score"] < 0.4 and mf["counterfactual"]["ratio"] > 0.8
    truth_start = [r for r in km["restarts"] if r["start"] == "truth"][0]
    assert truth_start["collapse_score"] > 0.6, km["restarts"]


@pytest.mark.slow
def test_digits_small_budget():
    out = run_digits(DigitsConfig(seeds=(0,), steps=300))
    json.dumps(out)
    assert out["n_labelled"] == 100 and out["n_train"] + out["n_test"] == 1797
    for method in ("logistic", "mlp"):
        assert 0.5 < out["summary"][method]["mean"] <= 1.0
    # Kingma's alpha (0.1 N on the *mean* over labelled points: 1.35 per labelled point here) leaves M2's
    # classifier weak at 300 steps (measured 0.18); the default budget gives 0.69 (docs/optimal-bounds.md).
    # Above chance (0.1) is what this budget shows.
    assert 0.1 < out["summary"]["m2"]["mean"] <= 1.0
    assert out["m2_minus"]["logistic"]["seeds"] == 1


def test_digits_data_and_options():
    x_tr, y_tr, x_te, y_te = load_digits_data()
    assert x_tr.shape[1] == 64 and 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    assert abs(len(x_te) / (len(x_tr) + len(x_te)) - 0.25) < 0.01
    mask = choose_labelled(y_tr, 10, 0)
    assert mask.sum() == 100 and all(mask[y_tr == c].sum() == 10 for c in range(10))
    assert not (mask == choose_labelled(y_tr, 10, 1)).all()
    assert choose_labelled(y_tr, None, 0).all()
    with pytest.raises(ConfigError):
        DigitsConfig(baselines=("svm",))
    with pytest.raises(ConfigError):
        DigitsConfig(labels_per_class=0)
    with pytest.raises(ConfigError):
        DigitsConfig(sigma=-1.0)
