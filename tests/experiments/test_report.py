"""The report of ``vaefail reproduce``: figures, a self-contained report.html and report.md.

One smoke-preset reproduction (every experiment, seconds of training) is built per module and every check
reads its outputs.
"""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vaefail.experiments import figures as F
from vaefail.experiments.report import format_table, render_html, reproduce_command
from vaefail.experiments.reproduce import reproduce

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every experiment at the smoke preset with one repeat (about 50 configurations; minutes, not seconds).

    Aggregation over several repeats (mean ± std, MI bars averaged over ``keys``) is checked on synthetic
    tables below, which cost nothing.
    """
    out = tmp_path_factory.mktemp("reproduce") / "results"
    return reproduce("all", "smoke", out, repeats=1, workers=2, progress=False)


class _Doc(HTMLParser):
    """Collects <img> sources, element ids, text and checks that tags balance."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.ids: list[str] = []
        self.external: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            if re.match(r"^(https?:)?//", value):
                self.external.append(value)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Doc:
    doc = _Doc()
    doc.feed(path.read_text(encoding="utf-8"))
    doc.close()
    return doc


@pytest.mark.slow
def test_expected_files_exist(smoke):
    root = smoke.out
    for experiment in smoke.experiments:
        for table in experiment.tables:
            assert (root / f"{table}.csv").is_file()
    for name in ("claims.json", "report.html", "report.md"):
        assert (root / name).stat().st_size > 0
    expected = ["table1_elbo_vs_k", "table1_mi_per_dim", "sigma_selection", "sweep_k2_minus_k1"]
    kinds = ("data", "curves", "posteriors")
    expected += [f"px_{b}_{kind}" for b in ("figure8", "clusters") for kind in kinds]
    expected += [f"latent_quadratic_{kind}" for kind in kinds]
    expected += ["semisupervised_semicircle_decoder_curves", "digits_accuracy"]
    expected += [f"downstream_{task}" for task in ("compression", "recovery", "signal_noise", "robustness",
                                                    "generation", "outliers", "ambiguity")]
    expected += ["flexible_linear_curves"]
    for stem in expected:
        png = root / "figures" / f"{stem}.png"
        assert png.is_file(), stem
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert not list(root.glob(".*.tmp")) and not list((root / "figures").glob(".*.tmp"))


@pytest.mark.slow
def test_html_is_self_contained(smoke):
    doc = _parse(smoke.out / "report.html")
    assert not doc.errors, doc.errors
    assert not doc.stack, doc.stack
    assert not doc.external, doc.external
    assert len(doc.images) == len(list((smoke.out / "figures").glob("*.png")))
    for src in doc.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix):], validate=True)
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    text = " ".join(doc.text)
    assert "could not be drawn" not in text
    assert "smoke" in text and "vaefail reproduce all --preset smoke" in text
    for experiment in smoke.experiments:  # descriptions and tables (no keys column)
        assert " ".join(experiment.description.split())[:60] in " ".join(text.split())
        assert f"exp-{experiment.name}" in doc.ids
    assert smoke.tables["px"]["keys"].iloc[0].split()[0] not in text


@pytest.mark.slow
def test_claims_in_report_match_claims_json(smoke):
    claims = json.loads((smoke.out / "claims.json").read_text())
    assert claims
    doc = _parse(smoke.out / "report.html")
    shown = sorted(i[len("claim-"):] for i in doc.ids if i.startswith("claim-"))
    assert shown == sorted(c["id"] for c in claims)
    text = " ".join(doc.text)
    md = (smoke.out / "report.md").read_text()
    for claim in claims:
        badge = {True: "REPRODUCED", False: "NOT REPRODUCED"}.get(claim["reproduced"], "NOT TESTED")
        assert f"{badge}: `{claim['id']}`" in md
        assert claim["comparison"] in text
    failed = [c for c in claims if c["reproduced"] is False]
    section = text.split("What did not reproduce")[-1]
    for claim in failed:
        assert claim["id"] in section
        if not claim["note"]:
            assert "see the numbers; the smoke preset trains briefly" in section


@pytest.mark.slow
def test_optimal_bound_claims_are_formed_and_reported(smoke):
    """The sigma experiment's ELBO* choice and M2's exact J claim are formed from the smoke tables (with
    their per-factor / per-part numbers) and shown in the report."""
    claims = {c["id"]: c for c in json.loads((smoke.out / "claims.json").read_text())}
    sigma = claims["sigma.figure8.optimal_elbo_prefers_smaller_sigma"]
    factors = sorted(float(f) for f in smoke.tables["sigma"].sigma_factor)
    assert sorted(float(k.rsplit("_", 1)[1]) for k in sigma["numbers"] if k.startswith("neg_elbo_star_at_")) \
        == factors
    assert sigma["reproduced"] in (True, False) and "ELBO* selects" in sigma["comparison"]
    assert "sigma.figure8.elbo_prefers_smaller_sigma" in claims
    exact = [c for c in claims.values() if c["id"].endswith(".vae.mean_field.truth_not_j_optimum_exact")]
    assert len(exact) == 1 and np.isfinite(exact[0]["numbers"]["neg_u_star"])
    semi = smoke.tables["semisupervised"]
    assert semi["u_star_truth_minus_model"].notna().all()
    md = (smoke.out / "report.md").read_text()
    assert sigma["id"] in md and exact[0]["id"] in md


@pytest.mark.slow
def test_markdown_references_existing_figures(smoke):
    md = (smoke.out / "report.md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == len(list((smoke.out / "figures").glob("*.png")))
    for ref in refs:
        assert ref.startswith("figures/")
        assert (smoke.out / ref).is_file()
    assert "| benchmark |" in md and "keys" not in md.split("## Claims")[0].replace("`keys`", "")


@pytest.mark.slow
def test_rewrite_replaces_outputs(smoke, tmp_path):
    """Writing the outputs again (a resumed run, here with one experiment) replaces the files in place."""
    import shutil

    from vaefail.experiments.report import write_outputs
    from vaefail.experiments.store import ResultsStore

    copy = tmp_path / "copy"
    shutil.copytree(smoke.out, copy)
    store = ResultsStore(copy)
    files = write_outputs(store, smoke.experiments, {"sigma": smoke.tables["sigma"]}, [], preset="smoke")
    assert files.errors == []
    assert [p.name for p in files.figures] == ["sigma_elbo_parts.png", "sigma_selection.png"]
    html = files.html.read_text()
    assert html.count("<img ") == len(files.figures) and "No claim can be tested" in html
    assert not list(copy.glob(".*.tmp"))


def test_format_table_and_escaping():
    table = pd.DataFrame({
        "benchmark": ["<b>x</b>"], "objective": ["vae"], "sigma_factor": [0.71], "repeats": [2],
        "test_neg_elbo": [1.23456], "test_neg_elbo_std": [0.01], "mleo": [np.nan], "mleo_std": [np.nan],
        "avg_mi": [0.5], "avg_mi_std": [np.nan], "keys": ["abc def"],
    })
    headers, rows, labels = format_table(table)
    assert headers == ["benchmark", "objective", "sigma_factor", "repeats", "test_neg_elbo", "mleo", "avg_mi"]
    assert rows == [["<b>x</b>", "vae", "0.71", "2", "1.235 ± 0.010", "n/a", "0.500"]]
    assert labels[:3] == [True, True, True] and not any(labels[3:])

    from vaefail.experiments.grid import Experiment
    from vaefail.experiments.report import _Context

    claim = {"id": "a<b", "statement": "s & <t>", "reproduced": False, "comparison": "1 < 2",
             "numbers": {"x": 1.0, "y": None}, "note": ""}
    ctx = _Context("T", "today", "paper", "cmd", [Experiment("sigma", "d <i>", [])], {"sigma": table},
                   {"sigma": []}, [claim], [], Path("."))
    html = render_html(ctx)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "d &lt;i&gt;" in html and "a&lt;b" in html and "1 &lt; 2" in html
    assert "Likely reason: see the numbers." in html  # no "trains briefly" at the paper preset
    assert "abc def" not in html


def test_reproduce_command_mentions_repeats(tmp_path):
    from vaefail.experiments.grid import load_experiments

    experiments = load_experiments("sigma", "smoke", repeats=1)
    tables = {"sigma": pd.DataFrame({"repeats": [1]})}
    assert reproduce_command(experiments, tables, "smoke", tmp_path) == (
        f"vaefail reproduce sigma --preset smoke --out {tmp_path} --repeats 1")


def test_posterior_points_and_model_posterior():
    from vaefail.benchmarks import get_benchmark

    quad = get_benchmark("quadratic")
    points = F.posterior_points(quad)
    assert [float(p[0]) for _, p in points] == [0.01, 0.1]
    assert "0.40 or 0.60" in points[0][0]
    clusters = get_benchmark("clusters")
    (_, between), (_, centre) = F.posterior_points(clusters)
    assert np.allclose(centre, clusters.centres()[2])
    assert np.allclose(np.linalg.norm(between), 2 * np.cos(np.pi / 5))
    assert np.allclose(F.posterior_points(get_benchmark("figure8"))[0][1], 0.0)


def test_model_posterior_matches_linear_gaussian():
    """A model whose decoder is the linear benchmark's f_gt has the closed-form Gaussian posterior."""
    import jax

    from vaefail.benchmarks import get_benchmark
    from vaefail.models import TrueDecoder, make_vae

    bench = get_benchmark("linear")
    model = make_vae(2, 1, bench.sigma_eps, key=jax.random.PRNGKey(0),
                     decoder=TrueDecoder(f_gt=bench.f_gt, true_latent_dim=1))
    x = np.array([0.3, 0.1])
    z = np.linspace(-3, 3, 3001)
    mean, std = bench.posterior_moments(x[None])
    expected = np.exp(-0.5 * ((z - mean[0, 0]) / std[0, 0]) ** 2) / (std[0, 0] * np.sqrt(2 * np.pi))
    assert np.allclose(F.model_posterior(model, x, z), expected, atol=1e-3 * expected.max())
    wide = np.linspace(-30, 30, 60001)
    assert np.isclose(np.trapezoid(F.encoder_density(model, x, wide), wide), 1.0, atol=1e-3)


def _synthetic_table1() -> pd.DataFrame:
    rows = []
    for bench in ("figure8", "clusters"):
        for objective in ("vae", "iwae"):
            for k in (1, 2, 3):
                key = f"{bench}{objective}{k}"
                rows.append({"benchmark": bench, "objective": objective, "latent_dim": k,
                             "sigma_mode": "fixed", "repeats": 2, "test_neg_elbo": 1.0 + 0.1 * k,
                             "test_neg_elbo_std": 0.05,
                             "truth_test_neg_elbo": 1.2 if (k == 1 and objective == "vae") else np.nan,
                             "test_neg_log_prob_true": 0.9, "keys": f"{key}a {key}b"})
    return pd.DataFrame(rows)


def test_table_figures_on_synthetic_tables(tmp_path):
    table = _synthetic_table1()
    seen = []

    def per_dim(key):
        seen.append(key)
        k = int(key[-2])
        return [1.0 / k + (0.1 if key.endswith("b") else 0.0)] * k

    for fig, name in ((F.elbo_vs_k_figure(table), "elbo"), (F.mi_bars_figure(table, per_dim, cap=4.6), "mi")):
        data = F.save_png(fig, tmp_path / f"{name}.png")
        assert data[:8] == PNG_MAGIC and (tmp_path / f"{name}.png").read_bytes() == data
    assert sorted(seen) == sorted(k for s in table["keys"] for k in s.split())  # every repeat is read

    sigma = pd.DataFrame({"benchmark": "figure8", "objective": "vae", "latent_dim": 1,
                          "sigma_factor": [0.5, 1.0, 2.0], "repeats": 1, "test_neg_elbo": [1.0, 1.1, 1.3],
                          "test_neg_ll": [1.2, 0.9, 1.0], "keys": ["a", "b", "c"]})
    fig = F.sigma_figure(sigma)
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert "ELBO selects 0.5 x truth" in labels and "log-likelihood selects 1 x truth" in labels
    assert F.save_png(fig, tmp_path / "sigma.png")[:8] == PNG_MAGIC


def test_sweep_figure_heat_map_and_bars(tmp_path):
    rows = [{"benchmark": "clusters", "benchmark_params": f"sigma_eps={s:g} radius={r:g}", "latent_dim": k,
             "repeats": 2, "test_neg_elbo": 1.0 + s - 0.1 * r * (k - 1), "test_neg_elbo_std": 0.01}
            for s in (0.1, 0.25) for r in (2.0, 4.0) for k in (1, 2)]
    assert F.parse_params(rows[0]["benchmark_params"]) == {"sigma_eps": 0.1, "radius": 2.0}
    fig = F.sweep_figure(pd.DataFrame(rows))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 4 and any(t.startswith("-0.400") for t in texts)  # radius 4: K=2 better by 0.4
    assert F.save_png(fig, tmp_path / "sweep.png")[:8] == PNG_MAGIC
    odd = pd.DataFrame(rows[:4]).assign(benchmark_params=lambda t: t.benchmark_params + " x=a")
    bars = F.sweep_figure(odd)  # not a 2-D numeric grid: bars
    assert F.save_png(bars, tmp_path / "bars.png")[:8] == PNG_MAGIC
