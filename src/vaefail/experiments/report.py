"""The report of ``vaefail reproduce``: figures, a self-contained ``report.html`` and ``report.md``.

:func:`write_outputs` draws the figures (:mod:`vaefail.experiments.figures`) into ``OUT/figures/`` and writes

- ``OUT/report.html``: one file with inline CSS and the figures embedded as base64 ``data:`` URIs, readable
  in a browser without a server or any external resource;
- ``OUT/report.md``: the same content in Markdown, figures referenced by relative path ``figures/...``.

Both list, per experiment, its description, its tables (mean ± std over repeats), their figures; then every
claim with a REPRODUCED / NOT REPRODUCED badge, and what did not reproduce with the likely reason. Files are
written atomically (temporary file + rename); all text is escaped into HTML.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vaefail._io import write_atomic
from vaefail.experiments.downstream import COLUMN_HELP as _DOWNSTREAM_HELP
from vaefail.experiments.downstream import reading as _downstream_reading
from vaefail.experiments.figures import FigureFile, make_figures

#: What each table column means (shown under each table, for the columns it has).
COLUMN_HELP: dict[str, str] = {
    "repeats": "independent repetitions (data and initialisation); cells are mean ± std over them",
    "test_neg_elbo": "test -ELBO: the objective's own bound (the IWAE bound for IWAE), negated; nats/point",
    "test_neg_plain_elbo": "test -ELBO of the plain ELBO, whatever the training objective",
    "test_neg_ll": "held-out -log p_theta(x) (exact quadrature for K <= 2, else importance sampling)",
    "mleo": "MLEO = KL(p_gt(x) || p_theta(x)): how badly the model fits the data distribution",
    "pmo": "PMO = E[KL(q(z|x) || p_theta(z|x))]: how far the encoder is from the model's posterior",
    "avg_mi": "average over latent dimensions of I(x; z_i) (the paper's Table 1 quantity)",
    "mi_total": "I(x; z) with the joint q(z|x)",
    "active_units": "latent dimensions whose encoder mean varies with x",
    "sigma_eps": "the model's observation noise sigma_eps (learned or fixed)",
    "truth_test_neg_elbo": "the ground truth (true decoder, its best encoder): test -bound",
    "curve_distance": "distance between the learned curve f_theta and the true curve f_gt (data units)",
    "crossing_distance": "distance from the learned curve to the Figure-8 crossing (0, 0)",
    "posterior_gap_model": "mean KL from the model's exact posterior to its closest Gaussian",
    "posterior_gap_truth": "mean KL from the true posterior to its closest Gaussian",
    "latent_agreement": "|Spearman correlation| of the learned z with the true z",
    "test_neg_log_prob_true": "true -E log p_gt(x) on the test data (the floor any model can reach)",
    "val_neg_elbo": "validation -bound of the selected restart (what claims choose K and sigma_eps by)",
    "neg_log_p": "-log p_theta(x) on the test points of the bounds section (exact for K <= 2)",
    "neg_elbo": "the model's own encoder's -ELBO (plain ELBO) = -log p + approximation gap + "
                "amortisation gap",
    "neg_elbo_star": "-ELBO*: the optimal-Gaussian bound of the model's decoder (the best any Gaussian q "
                     "reaches per point: no amortisation)",
    "approximation_gap": "log p_theta(x) - ELBO*(x) = min over Gaussians q of KL(q || p_theta(z|x))",
    "amortisation_gap": "ELBO*(x) - ELBO(x): what the encoder network loses against the best Gaussian "
                        "per point",
    "truth_neg_log_p": "the truth's -log p_gt(x) on the same points",
    "truth_neg_elbo": "the truth's -ELBO with its trained encoder",
    "truth_neg_elbo_star": "the truth's -ELBO* (exact posterior, best Gaussian per point)",
    "truth_approximation_gap": "the truth's min over Gaussians of KL(q || p_gt(z|x))",
    "truth_amortisation_gap": "the truth's ELBO* - ELBO of its trained encoder",
    "elbo_star_truth_minus_model": "ELBO*(truth) - ELBO*(model), paired per point; negative: the learned "
                                   "decoder's optimal bound is higher (the truth is not the ELBO's optimum)",
    "elbo_star_diff_stderr": "its standard error within a run (over test points, Monte-Carlo error added)",
    "neg_elbo_star_stderr": "-ELBO*'s standard error within a run",
    # semi-supervised M2 (table semisupervised)
    "encoder": "M2's encoder family: mean_field q(y|x) q(z|x) (the paper's MFG setting) or kingma "
               "q(y|x) q(z|x,y)",
    "test_accuracy": "test accuracy of argmax_y q(y|x), M2's classifier",
    "bayes_accuracy": "the Bayes-optimal accuracy (exact, from the true p(y|x)): the best any classifier "
                      "can do",
    "kl_y0": "KL(p_gt(x|y=0) || p_theta(x|y=0)), nats (exact densities by quadrature, test points of "
             "class 0)",
    "kl_y1": "KL(p_gt(x|y=1) || p_theta(x|y=1)), nats",
    "collapse_score": "Jensen-Shannon divergence between the learned p_theta(x|y=0) and p_theta(x|y=1) "
                      "over the truth's: 0 = full functional collapse, 1 = the truth's separation",
    "best_restart_collapse": "the largest collapse score among all restarts (whether a less collapsed "
                             "solution was found but not selected by validation J)",
    "counterfactual_error": "mean distance of f_theta(y', E_q[z|x]) from the true counterfactual "
                            "f_gt(y', z_true), best relative sign of z (data units)",
    "counterfactual_collapsed": "the same error for a fully collapsed model that answers x's own noise-free "
                                "position",
    "counterfactual_oracle": "the same error for the true decoder with the exact posterior mean "
                             "(the noise floor)",
    "test_j": "M2's objective J on the test split, mean per point (higher is better)",
    "truth_test_j": "J of the ground truth (true decoder, fixed) with its best classifier and encoder",
    "neg_u": "-U: minus the unlabelled ELBO of the trained classifier and encoder (bounds points)",
    "neg_u_star": "-U* = -log sum_y exp ELBO*(x, y): the unlabelled bound at the optimal q(y|x) q(z|x,y)",
    "u_approximation_gap": "log p_theta(x) - U*(x) (non-Gaussian class posteriors)",
    "u_amortisation_gap": "U*(x) - U(x): what the classifier and encoder networks lose",
    "truth_neg_u": "the truth's -U with its trained classifier and encoder",
    "truth_neg_u_star": "the truth's -U* (exact class posteriors, best Gaussian per point and class)",
    "truth_u_approximation_gap": "the truth's log p_gt(x) - U*(x)",
    "truth_u_amortisation_gap": "the truth's U*(x) - U(x)",
    "u_star_truth_minus_model": "U*(truth) - U*(model), paired per point; negative: M2's objective at the "
                                "optimal encoders prefers the learned decoder",
    "u_star_diff_stderr": "its standard error within a run (over the bounds points)",
    # digits
    "labels_per_class": "labels revealed per class in the training split (all: every training label)",
    "m2_accuracy": "test accuracy of M2's classifier q(y|x)",
    "logistic_accuracy": "logistic regression trained on the labelled points alone",
    "mlp_accuracy": "M2's classifier network trained on the labelled points alone (cross-entropy)",
    "m2_minus_logistic": "paired difference M2 - logistic per seed (same labelled subset)",
    "m2_minus_mlp": "paired difference M2 - MLP per seed",
}

COLUMN_HELP |= {k: v for k, v in _DOWNSTREAM_HELP.items() if k not in COLUMN_HELP}
#: Per table, sentences on what its numbers mean (shown under the table).
READINGS = {"downstream": _downstream_reading}

LABEL_ORDER = ("benchmark", "benchmark_params", "objective", "encoder", "latent_dim", "sigma_mode",
               "sigma_factor", "labels_per_class")

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1150px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
code, pre { background: #f3f3f3; border-radius: 3px; }
pre { padding: .6em; overflow-x: auto; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.86em; }
th, td { border: 1px solid #aaa; padding: .25em .5em; text-align: right; vertical-align: top;
         white-space: nowrap; }
td .sd { color: #666; font-size: 0.9em; }
th { background: #eee; }
td.label, th.label { text-align: left; }
.wide { overflow-x: auto; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figure { margin: 1.2em 0; }
figcaption { font-size: 0.9em; color: #444; }
.badge { display: inline-block; padding: .1em .5em; border-radius: 3px; font-weight: bold;
         font-size: 0.8em; color: #fff; letter-spacing: .03em; }
.yes { background: #2e7d32; } .no { background: #c62828; } .na { background: #757575; }
.claim { border: 1px solid #ccc; border-radius: 4px; padding: .5em .8em; margin: .8em 0; }
.claim .id { font-family: monospace; color: #555; }
.warn { background: #fff3cd; border: 1px solid #e0c36c; padding: .5em .8em; border-radius: 4px; }
dl.help dt { font-family: monospace; float: left; clear: left; width: 14em; }
dl.help dd { margin-left: 15em; font-size: 0.9em; }
"""


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_outputs` wrote."""

    html: Path
    markdown: Path
    figures: list[Path]
    errors: list[str]


def write_outputs(store: Any, experiments: list[Any], tables: dict[str, pd.DataFrame],
                  claims: list[dict[str, Any]], *, preset: str,
                  only: Mapping[str, Collection[str]] | None = None,
                  stale: Collection[str] = ()) -> ReportFiles:
    """Draw the figures and write ``report.html`` and ``report.md`` into the store's root folder.

    Parameters
    ----------
    store
        The :class:`~vaefail.experiments.store.ResultsStore` holding the runs.
    experiments
        The :class:`~vaefail.experiments.grid.Experiment` objects that were run (name, description, tasks).
    tables
        The experiments' tables by name (from ``build_tables``: one per experiment, or several).
    claims
        The evaluated claims (``claims.evaluate_claims``).
    preset
        The preset the experiments ran at (shown in the report and the command to reproduce it).
    only
        The part of the grids that was run (``vaefail reproduce --only``), if not all of it.
    stale
        Store keys of configurations computed by other code and kept (``--reuse-stale``): the report
        warns about them and lists them.
    """
    root = Path(store.root)
    figures, errors = make_figures(store, tables, root / "figures")
    context = _Context(
        title="vaefail: reproducing “Failure Modes of Variational Autoencoders”",
        date=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        preset=preset,
        command=reproduce_command(experiments, tables, preset, root, only),
        experiments=experiments,
        tables=tables,
        figures=figures,
        claims=claims,
        errors=errors,
        root=root,
        stale=sorted(stale),
    )
    html_path, md_path = root / "report.html", root / "report.md"
    write_atomic(html_path, render_html(context).encode("utf-8"))
    write_atomic(md_path, render_markdown(context).encode("utf-8"))
    return ReportFiles(html_path, md_path, [f.path for fs in figures.values() for f in fs], errors)


@dataclass(frozen=True)
class _Context:
    title: str
    date: str
    preset: str
    command: str
    experiments: list[Any]
    tables: dict[str, pd.DataFrame]
    figures: dict[str, list[FigureFile]]
    claims: list[dict[str, Any]]
    errors: list[str]
    root: Path
    stale: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Content shared by both formats
# ------------------------------------------------------------------------------------------------


def reproduce_command(experiments: list[Any], tables: dict[str, pd.DataFrame], preset: str,
                      root: Path, only: Mapping[str, Collection[str]] | None = None) -> str:
    """The ``vaefail reproduce`` command line(s) that recreate these results."""
    from vaefail.experiments.grid import EXPERIMENTS, load_grid

    names = [e.name for e in experiments]
    targets = ["all"] if sorted(names) == sorted(EXPERIMENTS) else names
    repeats = set()
    for name in names:
        table = tables.get(name)
        if table is not None and "repeats" in table and len(table):
            repeats.add(int(table["repeats"].max()))
    extra = ""
    if len(repeats) == 1:
        n = repeats.pop()
        try:
            default = int(load_grid(names[0])["presets"][preset].get("repeats", 1))
        except Exception:  # noqa: BLE001 - a custom preset: just state the repeats
            default = -1
        if n != default:
            extra = f" --repeats {n}"
    for key, values in (only or {}).items():
        extra += f" --only {_shell_quote(key + '=' + ','.join(sorted(values)))}"
    return "\n".join(f"vaefail reproduce {t} --preset {preset} --out {_shell_quote(str(root))}{extra}"
                     for t in targets)


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


def _fixed(v: float, digits: int) -> bool:
    """Whether ``v`` is shown in fixed-point notation (not too large, not too small)."""
    v = abs(float(v))
    return v == 0 or 10**-digits <= v < 1e5


def _fmt_number(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if _is_number(v):
        v = float(v)
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.{digits}f}" if _fixed(v, digits) else f"{v:.{digits}g}"
    return str(v)


def format_table(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool]]:
    """Headers, string rows ("mean ± std" per metric) and which columns are labels (left-aligned).

    The ``keys`` column and the ``_std`` companions (folded into their metric) are dropped.
    """
    columns = [c for c in table.columns if not c.endswith("keys") and not c.endswith("_std")]
    n_labels = columns.index("repeats") if "repeats" in columns else 0  # label columns come first
    labels = [i < n_labels or c in LABEL_ORDER for i, c in enumerate(columns)]
    rows = []
    for _, row in table.iterrows():
        cells = []
        for col, is_label in zip(columns, labels, strict=True):
            value = row[col]
            if is_label:
                cells.append(f"{value:g}" if isinstance(value, float) else str(value))
            elif col == "repeats":
                cells.append(str(int(value)))
            else:
                cell = _fmt_number(value)
                std = row.get(f"{col}_std")
                if cell != "n/a" and std is not None and _is_number(std) and math.isfinite(float(std)):
                    cell += f" ± {float(std):.3f}" if _fixed(value, 3) else f" ± {_fmt_number(std)}"
                cells.append(cell)
        rows.append(cells)
    return columns, rows, labels


def _badge(reproduced: bool | None) -> tuple[str, str]:
    """(text, css class) of a claim's verdict."""
    if reproduced is True:
        return "REPRODUCED", "yes"
    if reproduced is False:
        return "NOT REPRODUCED", "no"
    return "NOT TESTED", "na"


def _numbers(numbers: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), _fmt_number(v, 4)) for k, v in (numbers or {}).items()]


def _reason(claim: dict[str, Any], preset: str) -> str:
    note = str(claim.get("note") or "").strip()
    if note:
        return note
    if preset in ("quick", "smoke"):
        return f"see the numbers; the {preset} preset trains briefly"
    return "see the numbers"


def _summary_counts(claims: list[dict[str, Any]]) -> str:
    yes = sum(c.get("reproduced") is True for c in claims)
    no = sum(c.get("reproduced") is False for c in claims)
    na = len(claims) - yes - no
    text = f"{yes} of {len(claims)} claims reproduced, {no} not reproduced"
    return text + (f", {na} not tested" if na else "")


def _preset_warning(preset: str) -> str | None:
    if preset == "smoke":
        return ("This is the smoke preset (100 training steps): it checks the pipeline end to end; its "
                "numbers are meaningless and no verdict below means anything.")
    if preset == "quick":
        return ("This is the quick preset: short training and few repeats. Verdicts that depend on "
                "convergence (the paper trains for 30,000 steps) may differ at --preset paper.")
    return None


def _stale_warning(ctx: _Context) -> str | None:
    if not ctx.stale:
        return None
    return (f"{len(ctx.stale)} configuration(s) were computed by another version of the code (a different "
            "code fingerprint) and kept with --reuse-stale; their numbers may differ from what this "
            "version computes. Rerun without --reuse-stale to recompute them. Store keys: "
            + ", ".join(ctx.stale) + ".")


def _experiment_list(ctx: _Context) -> list[Any]:
    return [e for e in ctx.experiments if _tables_of(e, ctx)]


def _tables_of(experiment: Any, ctx: _Context) -> list[str]:
    """The names of the experiment's tables that are in the report, in order."""
    names = getattr(experiment, "tables", None) or [experiment.name]
    return [n for n in names if n in ctx.tables]


def _table_note(experiment: Any, table: str) -> str:
    """The description of one of the experiment's further tables ("" for its own)."""
    notes = getattr(experiment, "table_descriptions", None) or {}
    return " ".join(str(notes.get(table, "")).split())


def _description(experiment: Any) -> str:
    return " ".join(str(experiment.description or "").split())


# ------------------------------------------------------------------------------------------------
# HTML
# ------------------------------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(headers: list[str], rows: list[list[str]], labels: list[bool] | None = None) -> str:
    labels = labels or [False] * len(headers)
    cls = [' class="label"' if is_label else "" for is_label in labels]
    out = ['<div class="wide"><table>', "<thead><tr>"]
    out += [f"<th{c}>{_e(h)}</th>" for h, c in zip(headers, cls, strict=True)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td{c}>{_html_cell(v)}</td>" for v, c in zip(row, cls, strict=True))
                   + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _html_cell(value: str) -> str:
    """A table cell; the "± std" part of "mean ± std" is set smaller and grey."""
    mean, sep, std = str(value).partition(" ± ")
    return _e(mean) + (f'<span class="sd"> ± {_e(std)}</span>' if sep else "")


def _html_figure(fig: FigureFile) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure id="{_e(fig.path.stem)}"><img src="data:image/png;base64,{data}" alt="{_e(fig.title)}">'
            f"<figcaption><b>{_e(fig.title)}.</b> {_e(fig.caption)} "
            f"(<code>figures/{_e(fig.path.name)}</code>)</figcaption></figure>")


def _html_claim(claim: dict[str, Any]) -> str:
    text, cls = _badge(claim.get("reproduced"))
    numbers = _numbers(claim.get("numbers") or {})
    parts = [
        f'<div class="claim" id="claim-{_e(claim.get("id", ""))}">',
        f'<span class="badge {cls}">{_e(text)}</span> <span class="id">{_e(claim.get("id", ""))}</span>',
        f"<p>{_e(claim.get('statement', ''))}</p>",
        f"<p><b>Comparison:</b> {_e(claim.get('comparison', ''))}</p>",
    ]
    if numbers:
        parts.append(_html_table([k for k, _ in numbers], [[v for _, v in numbers]]))
    if claim.get("note"):
        parts.append(f"<p><b>Note:</b> {_e(claim['note'])}</p>")
    parts.append("</div>")
    return "\n".join(parts)


def render_html(ctx: _Context) -> str:
    """The whole report as one self-contained HTML document."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(ctx.title)}</title>",
        f"<style>{CSS}</style>",
        "</head><body>",
        f"<h1>{_e(ctx.title)}</h1>",
        f"<p>Generated {_e(ctx.date)} &middot; preset <b>{_e(ctx.preset)}</b> &middot; "
        f"{_e(_summary_counts(ctx.claims))}.</p>",
    ]
    for warning in (_preset_warning(ctx.preset), _stale_warning(ctx)):
        if warning:
            out.append(f'<p class="warn">{_e(warning)}</p>')
    out += [
        "<p>Reproduce with:</p>",
        f"<pre><code>{_e(ctx.command)}</code></pre>",
        "<p>Yacoby, Pan and Doshi-Velez (2020), <i>Failure Modes of Variational Autoencoders and Their "
        "Effects on Downstream Tasks</i>, arXiv:2007.07124.</p>",
        "<h2>Contents</h2><ul>",
    ]
    for e in _experiment_list(ctx):
        out.append(f'<li><a href="#exp-{_e(e.name)}">{_e(e.name)}</a></li>')
    out.append('<li><a href="#claims">Claims</a></li><li><a href="#not-reproduced">What did not reproduce'
               "</a></li></ul>")
    for e in _experiment_list(ctx):
        out += [f'<h2 id="exp-{_e(e.name)}">Experiment: {_e(e.name)}</h2>', f"<p>{_e(_description(e))}</p>"]
        for name in _tables_of(e, ctx):
            headers, rows, labels = format_table(ctx.tables[name])
            if name != e.name:
                out.append(f'<h3 id="table-{_e(name)}">Table: {_e(name)}</h3>')
                if _table_note(e, name):
                    out.append(f"<p>{_e(_table_note(e, name))}</p>")
            out += [
                _html_table(headers, rows, labels),
                f'<p>Raw numbers: <a href="{_e(name)}.csv"><code>{_e(name)}.csv</code></a>.</p>',
            ]
            if name in READINGS:
                out.append("<ul>" + "".join(f"<li>{_e(t)}</li>" for t in READINGS[name](ctx.tables[name]))
                           + "</ul>")
            helps = [(c, COLUMN_HELP[c]) for c in headers if c in COLUMN_HELP]
            if helps:
                out.append('<details><summary>Columns</summary><dl class="help">')
                out += [f"<dt>{_e(c)}</dt><dd>{_e(h)}</dd>" for c, h in helps]
                out.append("</dl></details>")
            out += [_html_figure(f) for f in ctx.figures.get(name, [])]
    if ctx.errors:
        out.append('<p class="warn"><b>Figures that could not be drawn:</b></p><ul>')
        out += [f"<li><code>{_e(err)}</code></li>" for err in ctx.errors]
        out.append("</ul>")
    out += ['<h2 id="claims">Claims</h2>', f"<p>{_e(_summary_counts(ctx.claims))}.</p>"]
    if not ctx.claims:
        out.append("<p>No claim can be tested from these experiments.</p>")
    out += [_html_claim(c) for c in ctx.claims]
    out.append('<h2 id="not-reproduced">What did not reproduce</h2>')
    failed = [c for c in ctx.claims if c.get("reproduced") is False]
    untested = [c for c in ctx.claims if c.get("reproduced") is None]
    if not failed:
        out.append("<p>Every tested claim reproduced.</p>" if ctx.claims else "<p>No claims were tested.</p>")
    else:
        out.append("<ul>")
        for c in failed:
            out.append(f"<li><b>{_e(c.get('id', ''))}</b>: {_e(c.get('statement', ''))}<br>"
                       f"Numbers: {_e(c.get('comparison', ''))}.<br>"
                       f"Likely reason: {_e(_reason(c, ctx.preset))}.</li>")
        out.append("</ul>")
    if untested:
        out.append("<p>Not tested (the comparison could not be made):</p><ul>")
        out += [f"<li><b>{_e(c.get('id', ''))}</b>: {_e(c.get('note') or c.get('comparison', ''))}</li>"
                for c in untested]
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------


def _md_cell(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]], labels: list[bool] | None = None) -> str:
    labels = labels or [False] * len(headers)
    align = [":---" if is_label else "---:" for is_label in labels]
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(ctx: _Context) -> str:
    """The report in Markdown; figures referenced by relative path ``figures/<name>.png``."""
    out = [f"# {ctx.title}", "",
           f"Generated {ctx.date} · preset **{ctx.preset}** · {_summary_counts(ctx.claims)}.", ""]
    for warning in (_preset_warning(ctx.preset), _stale_warning(ctx)):
        if warning:
            out += [f"> **Note.** {warning}", ""]
    out += ["Reproduce with:", "", "```bash", ctx.command, "```", "",
            "Yacoby, Pan and Doshi-Velez (2020), *Failure Modes of Variational Autoencoders and Their "
            "Effects on Downstream Tasks*, arXiv:2007.07124.", ""]
    for e in _experiment_list(ctx):
        out += [f"## Experiment: {e.name}", "", _description(e), ""]
        for name in _tables_of(e, ctx):
            headers, rows, labels = format_table(ctx.tables[name])
            if name != e.name:
                note = _table_note(e, name)
                out += [f"### Table: {name}", ""] + ([note, ""] if note else [])
            out += [_md_table(headers, rows, labels), "", f"Raw numbers: [`{name}.csv`]({name}.csv).", ""]
            if name in READINGS:
                out += [f"- {t}" for t in READINGS[name](ctx.tables[name])] + [""]
            helps = [(c, COLUMN_HELP[c]) for c in headers if c in COLUMN_HELP]
            if helps:
                out += [f"- `{c}`: {h}" for c, h in helps] + [""]
            for f in ctx.figures.get(name, []):
                rel = f"figures/{f.path.name}"
                out += [f"![{f.title}]({rel})", "", f"*{f.title}.* {f.caption}", ""]
    if ctx.errors:
        out += ["**Figures that could not be drawn:**", ""] + [f"- `{err}`" for err in ctx.errors] + [""]
    out += ["## Claims", "", f"{_summary_counts(ctx.claims)}.", ""]
    if not ctx.claims:
        out += ["No claim can be tested from these experiments.", ""]
    for c in ctx.claims:
        text, _ = _badge(c.get("reproduced"))
        out += [f"### {text}: `{c.get('id', '')}`", "", str(c.get("statement", "")), "",
                f"**Comparison:** {c.get('comparison', '')}", ""]
        numbers = _numbers(c.get("numbers") or {})
        if numbers:
            out += [_md_table([k for k, _ in numbers], [[v for _, v in numbers]]), ""]
        if c.get("note"):
            out += [f"**Note:** {c['note']}", ""]
    out += ["## What did not reproduce", ""]
    failed = [c for c in ctx.claims if c.get("reproduced") is False]
    untested = [c for c in ctx.claims if c.get("reproduced") is None]
    if not failed:
        out += ["Every tested claim reproduced." if ctx.claims else "No claims were tested.", ""]
    for c in failed:
        out += [f"- **{c.get('id', '')}**: {c.get('statement', '')} Numbers: {c.get('comparison', '')}. "
                f"Likely reason: {_reason(c, ctx.preset)}."]
    if failed:
        out.append("")
    if untested:
        out += ["Not tested (the comparison could not be made):", ""]
        out += [f"- **{c.get('id', '')}**: {c.get('note') or c.get('comparison', '')}" for c in untested]
        out.append("")
    return "\n".join(out)
