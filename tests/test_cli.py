"""Every CLI command, its output, and one clear message + non-zero exit for each kind of bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import vaefail
from vaefail.cli import app

runner = CliRunner()
TINY = ["--restarts", "2", "--steps", "200", "--init-steps", "100", "--quiet"]


def run(*args):
    return runner.invoke(app, list(args))


def test_benchmarks_lists_all():
    result = run("benchmarks")
    assert result.exit_code == 0
    for name in vaefail.list_benchmarks():
        assert name in result.output


def test_sample_writes_csv(tmp_path):
    out = tmp_path / "s.csv"
    result = run("sample", "--benchmark", "clusters", "-n", "50", "--out", str(out), "--param", "beta=100")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["x0", "x1", "z0"] and len(frame) == 50


def test_sample_labelled_benchmark_writes_labels(tmp_path):
    out = tmp_path / "s.csv"
    assert run("sample", "--benchmark", "semicircle", "-n", "40", "--out", str(out)).exit_code == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["x0", "x1", "z0", "y"] and set(frame.y) <= {0, 1}


def test_fit_prints_table_and_saves_run(tmp_path):
    out = tmp_path / "run"
    result = run("fit", "--benchmark", "quadratic", "--out", str(out), *TINY)
    assert result.exit_code == 0, result.output
    assert "selected restart" in result.output and "ground truth with its best encoder" in result.output
    assert "exact test -E[log p_gt(x)]" in result.output
    loaded = vaefail.load(out)
    assert loaded.config.benchmark == "quadratic" and len(loaded.restarts) == 2


def test_evaluate_a_fitted_run_prints_and_writes_json(tmp_path):
    out = tmp_path / "run"
    assert run("fit", "--benchmark", "figure8", "--out", str(out), *TINY).exit_code == 0
    result = run("evaluate", str(out), "--samples", "50", "--json", str(tmp_path / "m.json"), "--no-truth")
    assert result.exit_code == 0, result.output
    assert "MLEO" in result.output and "I(x; z_1)" in result.output and "-ELBO*" in result.output
    assert "Var_x E[z_i|x]" in result.stdout and "E\\[" not in result.stdout  # markup escaped, not shown
    report = json.loads((tmp_path / "m.json").read_text())
    for who in ("model", "truth"):
        for term in ("neg_log_p", "neg_elbo_star", "approximation_gap"):
            assert report["bounds"][who][term]["stderr"] is not None, (who, term)
    assert report["bounds"]["model"]["amortisation_gap"]["stderr"] is not None
    assert report["run"]["benchmark"] == "figure8" and report["run"]["num_samples"] == 50
    bad = run("evaluate", str(tmp_path))
    assert bad.exit_code == 2 and "not a vaefail run folder" in bad.output


def test_fit_iwae_dreg(tmp_path):
    result = run("fit", "-b", "linear", "--objective", "iwae", "-s", "4", "--dreg", "-k", "2",
                 "--no-truth", *TINY)
    assert result.exit_code == 0, result.output
    assert "IWAE_4" in result.output


# Bad input of every command: tests/test_bad_input.py (the matrix and the property tests).


def test_load_rejects_non_run(tmp_path):
    with pytest.raises(vaefail.VaefailError, match="not a vaefail run folder"):
        vaefail.load(tmp_path)


def test_reproduce_only_runs_part_of_a_grid(tmp_path):
    out = tmp_path / "part"
    result = run("reproduce", "table1", "--preset", "smoke", "--repeats", "1", "--workers", "1", "--quiet",
                 "--out", str(out), "--only", "benchmark=figure8", "--only", "objective=vae",
                 "--only", "latent_dim=1,2", "--only", "sigma_mode=fixed")
    assert result.exit_code == 0, result.output
    assert "computed 2 new configurations" in result.output
    table = pd.read_csv(out / "table1.csv")
    assert sorted(table["latent_dim"]) == [1, 2] and set(table["objective"]) == {"vae"}
    assert json.loads((out / "claims.json").read_text()) == []  # table1's claims need rows not run
    assert ("--only benchmark=figure8 --only objective=vae --only latent_dim=1,2 --only sigma_mode=fixed"
            in (out / "report.md").read_text())
