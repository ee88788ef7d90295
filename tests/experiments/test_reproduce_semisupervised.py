"""`vaefail reproduce semisupervised`: grid, task dispatch, tables, claims, figures, report and CLI.

One smoke-preset reproduction (4 configurations: semicircle VAE/IWAE and digits with 10 / all labels, one
repeat) is built per module; the CLI test reruns the command on a copy of its store, which recomputes
nothing and only rebuilds the outputs.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vaefail.benchmarks import get_benchmark
from vaefail.cli import app
from vaefail.errors import UnknownNameError
from vaefail.experiments import figures as F
from vaefail.experiments.claims import COLLAPSE_THRESHOLD, evaluate_claims
from vaefail.experiments.grid import EXPERIMENTS, load_experiment, load_experiments
from vaefail.experiments.reproduce import reproduce
from vaefail.experiments.tasks import run_task
from vaefail.semisupervised import DigitsConfig, make_m2

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
README = Path(__file__).resolve().parents[2] / "README.md"
runner = CliRunner()


# ------------------------------------------------------------------------------------------------
# Grid and dispatch (fast)
# ------------------------------------------------------------------------------------------------


def test_grid_has_both_tables_at_every_preset():
    assert "semisupervised" in EXPERIMENTS
    for preset in ("quick", "paper", "smoke"):
        exp = load_experiment("semisupervised", preset)
        assert exp.tables == ["semisupervised", "digits"] and exp.table_descriptions["digits"]
        kinds = {t.table_name: t.kind for t in exp.tasks}
        assert kinds == {"semisupervised": "semisupervised", "digits": "digits"}
        semi = [t for t in exp.tasks if t.kind == "semisupervised"]
        assert {t.labels["objective"] for t in semi} == {"vae", "iwae"}
        assert {t.labels["benchmark"] for t in semi} == {"semicircle"}
        assert all(t.spec()["kind"] == "semisupervised" and t.fit["seed"] == t.labels["repeat"] for t in semi)
        digits = [t for t in exp.tasks if t.kind == "digits"]
        assert {t.labels["labels_per_class"] for t in digits} == {10, "all"}
        assert all(t.fit["seeds"] == [t.labels["repeat"]] for t in digits)
        assert {t.fit["labels_per_class"] for t in digits} == {10, None}
    paper = load_experiment("semisupervised", "paper")
    semi = [t for t in paper.tasks if t.kind == "semisupervised"]
    assert {t.fit["restarts"] for t in semi} == {10} and {t.fit["steps"] for t in semi} == {30000}
    assert {t.labels["encoder"] for t in semi} == {"mean_field", "kingma"}  # a preset's own grid axes
    quick = load_experiment("semisupervised", "quick")
    assert {t.labels["encoder"] for t in quick.tasks if t.kind == "semisupervised"} == {"mean_field"}
    smoke = load_experiment("semisupervised", "smoke")
    assert {t.eval["collapse_samples"] for t in smoke.tasks if t.kind == "semisupervised"} == {200}
    assert [e.name for e in load_experiments("all")] == list(EXPERIMENTS)


def test_unsupervised_specs_keep_their_form():
    """Store keys of existing results do not change: an unsupervised spec is still just fit + eval."""
    for name in ("table1", "px", "latent", "sigma", "sweep"):
        exp = load_experiment(name, "smoke")
        assert exp.tables == [name]
        assert all(set(t.spec()) == {"fit", "eval"} and t.kind == "fit" for t in exp.tasks)


def test_bad_names_are_clear():
    with pytest.raises(UnknownNameError, match="unknown experiment 'semisupervized'.*semisupervised"):
        load_experiments("semisupervized")
    with pytest.raises(UnknownNameError, match="unknown preset 'fast'"):
        load_experiment("semisupervised", "fast")
    with pytest.raises(UnknownNameError, match="unknown task kind 'magic'"):
        run_task({"kind": "magic", "fit": {}, "eval": {}})
    with pytest.raises(Exception, match="unknown digits config keys"):
        DigitsConfig.from_dict({"labels": 3})
    assert DigitsConfig.from_dict({"labels_per_class": "all"}).labels_per_class is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reproduce", "semisupervized"], "unknown experiment 'semisupervized'"),
        (["reproduce", "semisupervised", "--preset", "fast"], "unknown preset 'fast'"),
        (["reproduce", "semisupervised", "--repeats", "0"], "repeats must be >= 1"),
    ],
)
def test_cli_bad_input_one_message(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1


# ------------------------------------------------------------------------------------------------
# Claims and figures on synthetic inputs (fast)
# ------------------------------------------------------------------------------------------------


def semi_table(vae=0.05, iwae=0.06, std=0.02, repeats=2, cf=0.95):
    rows = []
    for objective, score in (("vae", vae), ("iwae", iwae)):
        rows.append(dict(benchmark="semicircle", objective=objective, encoder="mean_field", repeats=repeats,
                         test_accuracy=0.6, bayes_accuracy=0.707, kl_y0=0.2, kl_y1=0.3, collapse_score=score,
                         collapse_score_std=std, best_restart_collapse=2.0, counterfactual_error=cf,
                         counterfactual_error_std=0.01, counterfactual_collapsed=0.96,
                         counterfactual_oracle=0.04, test_j=0.3, test_j_std=0.02, truth_test_j=-4.0,
                         truth_test_j_std=2.0))
    return pd.DataFrame(rows)


def by_id(claims):
    return {c["id"]: c for c in claims}


def test_exact_j_claim_follows_the_optimal_bounds_and_their_noise():
    """truth_not_j_optimum_exact: U*(truth) - U*(learned) below two paired standard errors (VAE rows only)."""
    prefix = "semisupervised.semicircle.vae.mean_field."
    t = semi_table(repeats=1)
    assert prefix + "truth_not_j_optimum_exact" not in by_id(evaluate_claims({"semisupervised": t}))
    t["u_star_truth_minus_model"], t["u_star_diff_stderr"], t["neg_u_star"] = -0.05, 0.01, 1.0
    claims = by_id(evaluate_claims({"semisupervised": t}))
    claim = claims[prefix + "truth_not_j_optimum_exact"]
    assert claim["reproduced"] is True and "needs < -0.020" in claim["comparison"]
    assert claim["numbers"]["neg_u_star"] == 1.0
    assert "semisupervised.semicircle.iwae.mean_field.truth_not_j_optimum_exact" not in claims
    t["u_star_diff_stderr"] = 0.03  # within noise: not reproduced
    claim = by_id(evaluate_claims({"semisupervised": t}))[prefix + "truth_not_j_optimum_exact"]
    assert claim["reproduced"] is False


def test_semisupervised_claims_follow_the_numbers_and_the_noise():
    claims = by_id(evaluate_claims({"semisupervised": semi_table()}))
    prefix = "semisupervised.semicircle."
    assert claims[prefix + "vae.mean_field.functional_collapse"]["reproduced"] is True
    assert claims[prefix + "vae.mean_field.counterfactuals_wrong"]["reproduced"] is True
    assert claims[prefix + "vae.mean_field.truth_not_j_optimum"]["reproduced"] is True
    reduces = claims[prefix + "mean_field.iwae_reduces_collapse"]
    assert reduces["reproduced"] is False and "collapses as well" in reduces["note"]
    # IWAE clearly less collapsed: the remedy reproduces, and IWAE's own collapse claim does not
    claims = by_id(evaluate_claims({"semisupervised": semi_table(iwae=0.9, std=0.05)}))
    assert claims[prefix + "mean_field.iwae_reduces_collapse"]["reproduced"] is True
    iwae = claims[prefix + "iwae.mean_field.functional_collapse"]
    assert iwae["reproduced"] is False and "keeps the classes apart" in iwae["note"]
    # a mean below the threshold with a wide spread over repeats is not enough
    noisy = by_id(evaluate_claims({"semisupervised": semi_table(vae=0.4, std=0.5)}))
    claim = noisy[prefix + "vae.mean_field.functional_collapse"]
    assert claim["reproduced"] is False and "spread over repeats" in claim["note"]
    assert f"< {COLLAPSE_THRESHOLD}" in claim["comparison"]
    good_cf = by_id(evaluate_claims({"semisupervised": semi_table(cf=0.1)}))
    assert good_cf[prefix + "vae.mean_field.counterfactuals_wrong"]["reproduced"] is False
    kingma = semi_table(vae=1.1, iwae=1.0).assign(encoder="kingma")
    kept = by_id(evaluate_claims({"semisupervised": kingma}))
    assert kept[prefix + "vae.kingma.classes_kept_apart"]["reproduced"] is True
    json.dumps(list(kept.values()))


def digits_table(diff_std):
    return pd.DataFrame([
        dict(labels_per_class=10, repeats=3, m2_accuracy=0.93, m2_accuracy_std=0.01, logistic_accuracy=0.91,
             logistic_accuracy_std=0.01, mlp_accuracy=0.92, mlp_accuracy_std=0.01, m2_minus_logistic=0.02,
             m2_minus_logistic_std=diff_std, m2_minus_mlp=0.01, m2_minus_mlp_std=diff_std),
        dict(labels_per_class="all", repeats=3, m2_accuracy=0.97, m2_accuracy_std=0.01,
             logistic_accuracy=0.96, logistic_accuracy_std=0.0, mlp_accuracy=0.97, mlp_accuracy_std=0.01,
             m2_minus_logistic=0.01, m2_minus_logistic_std=0.001, m2_minus_mlp=0.0, m2_minus_mlp_std=0.001),
    ])


def test_digits_claims_use_the_paired_difference_and_its_noise():
    clear = by_id(evaluate_claims({"digits": digits_table(0.005)}))
    assert set(clear) == {"digits.labels10.m2_beats_logistic", "digits.labels10.m2_beats_mlp"}
    assert clear["digits.labels10.m2_beats_logistic"]["reproduced"] is True
    assert "all training labels" in clear["digits.labels10.m2_beats_logistic"]["note"]
    noisy = by_id(evaluate_claims({"digits": digits_table(0.03)}))
    assert noisy["digits.labels10.m2_beats_logistic"]["reproduced"] is False
    comparison = noisy["digits.labels10.m2_beats_mlp"]["comparison"]
    assert "two standard errors of the paired difference" in comparison


def test_semisupervised_figures_on_synthetic_inputs(tmp_path):
    bench = get_benchmark("semicircle")
    data = bench.splits(10, 10, 60, seed=0).test
    models = [make_m2(2, 1, 2, bench.sigma_eps, key=jax.random.PRNGKey(i), width=8) for i in range(2)]
    fig = F.decoder_curves_figure(bench, data, [("VAE", models[0]), ("IWAE", models[1])])
    assert len(fig.axes) == 4
    assert F.save_png(fig, tmp_path / "curves.png")[:8] == PNG_MAGIC
    fig = F.digits_figure(digits_table(0.01))
    assert len(fig.axes[0].patches) == 6  # 3 methods x 2 label budgets
    assert F.save_png(fig, tmp_path / "digits.png")[:8] == PNG_MAGIC


# ------------------------------------------------------------------------------------------------
# End to end at the smoke preset
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("semi") / "results"
    return reproduce("semisupervised", "smoke", out, repeats=1, workers=2, progress=False)


@pytest.mark.slow
def test_smoke_reproduction_writes_tables_claims_figures_report(smoke):
    root = smoke.out
    assert smoke.computed == 4 and set(smoke.tables) == {"semisupervised", "digits"}
    semi = pd.read_csv(root / "semisupervised.csv")
    assert list(semi.objective) == ["vae", "iwae"] and set(semi.encoder) == {"mean_field"}
    for col in ("test_accuracy", "bayes_accuracy", "kl_y0", "kl_y1", "collapse_score", "counterfactual_error",
                "test_j"):
        assert np.isfinite(semi[col]).all(), col
    assert np.allclose(semi.bayes_accuracy, get_benchmark("semicircle").bayes_accuracy())
    digits = pd.read_csv(root / "digits.csv")
    assert list(digits.labels_per_class.astype(str)) == ["10", "all"]
    assert ((digits.m2_accuracy >= 0) & (digits.logistic_accuracy <= 1)).all()
    for key in semi["keys"].str.split().sum():  # the run folder, metrics.json and task.json
        folder = root / "runs" / key
        names = {p.name for p in folder.iterdir()}
        assert {"metrics.json", "task.json", "timing.json", "config.json", "models.eqx"} <= names
    claims = json.loads((root / "claims.json").read_text())
    ids = {c["id"] for c in claims}
    assert "semisupervised.semicircle.vae.mean_field.functional_collapse" in ids
    assert "semisupervised.semicircle.mean_field.iwae_reduces_collapse" in ids
    assert "digits.labels10.m2_beats_logistic" in ids
    for stem in ("semisupervised_semicircle_decoder_curves", "digits_accuracy"):
        assert (root / "figures" / f"{stem}.png").read_bytes()[:8] == PNG_MAGIC
    md = (root / "report.md").read_text()
    assert "## Experiment: semisupervised" in md and "### Table: digits" in md
    assert "figures/semisupervised_semicircle_decoder_curves.png" in md and "`collapse_score`" in md
    html = (root / "report.html").read_text()
    assert 'id="exp-semisupervised"' in html and 'id="table-digits"' in html
    assert html.count("data:image/png;base64,") == 2 and "could not be drawn" not in html


def _readme_commands() -> list[str]:
    """The README's `vaefail reproduce semisupervised ...` lines (comments stripped)."""
    lines = re.findall(r"^(vaefail reproduce semisupervised[^#\n]*)", README.read_text(), flags=re.M)
    return [line.strip() for line in lines]


@pytest.mark.slow
def test_cli_and_readme_commands_on_the_finished_store(smoke, tmp_path):
    """The CLI (and every README line running it) on a copy of the smoke store: nothing is recomputed,
    the tables are printed and the outputs rebuilt."""
    commands = _readme_commands()
    assert commands, "the README shows how to run the semi-supervised experiment"
    for i, command in enumerate(commands):
        store = tmp_path / f"copy{i}"
        shutil.copytree(smoke.out, store)
        (store / "report.html").unlink()
        args = command.split()[1:]
        for flag, value in (("--preset", "smoke"), ("--out", str(store))):
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        result = runner.invoke(app, [*args, "--repeats", "1", "--quiet"])
        assert result.exit_code == 0, result.output
        assert "computed 0 new configurations" in result.output
        assert "semisupervised" in result.output and "digits" in result.output
        assert "functional_collapse" in result.output and (store / "report.html").is_file()
