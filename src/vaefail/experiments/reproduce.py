"""``vaefail reproduce``: run experiment grids into a store, then write tables, figures, claims, a report."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vaefail._io import write_atomic
from vaefail.errors import StoreError
from vaefail.experiments.execute import check_executor, execute
from vaefail.experiments.grid import Experiment, Task, load_experiments, select
from vaefail.experiments.provenance import code_fingerprint
from vaefail.experiments.store import ResultsStore, config_hash
from vaefail.experiments.tasks import run_task


@dataclass
class Reproduction:
    """What a reproduce run produced."""

    out: Path
    experiments: list[Experiment]
    tables: dict[str, pd.DataFrame]
    claims: list[dict[str, Any]]
    computed: int
    #: Configurations found computed by other code (another fingerprint) and computed again.
    stale_recomputed: int = 0
    #: Store keys of configurations computed by other code and kept (``reuse_stale``).
    stale_kept: list[str] = field(default_factory=list)


def task_key(task: Task) -> str:
    return config_hash(task.spec())


def reproduce(
    experiment: str = "all",
    preset: str = "quick",
    out: str | os.PathLike[str] = "results",
    *,
    executor: str = "local",
    address: str | None = None,
    repeats: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    outputs: bool = True,
    only: Mapping[str, Collection[str]] | None = None,
    reuse_stale: bool = False,
) -> Reproduction:
    """Run ``experiment`` (or ``"all"``) at ``preset`` into the store at ``out`` and write its outputs.

    Finished configurations already in the store are not recomputed, so an interrupted run resumes.
    With ``outputs`` false, only the tables are built (no figures, claims or report). ``only`` runs part
    of the grid (:func:`vaefail.experiments.grid.select`, e.g. ``{"sigma_mode": ["fixed"]}``); the tables,
    figures and claims then cover that part (a claim that needs rows not run is left out).

    A stored configuration computed by other code (its ``provenance.json`` fingerprint differs from
    :func:`~vaefail.experiments.provenance.code_fingerprint`, or is missing) is *stale*: it is computed
    again, or with ``reuse_stale`` kept and listed in the report.
    """
    experiments = select(load_experiments(experiment, preset, repeats), only or {})
    check_executor(executor, address)
    store = ResultsStore(out)
    jobs = [(task_key(t), t.spec()) for e in experiments for t in e.tasks]
    current = code_fingerprint()
    stale = sorted({k for k, _ in jobs if store.has(k) and store.fingerprint(k) != current})
    run = functools.partial(run_task, shared=str(store.root.resolve()))  # workers share truth starts
    computed = execute(jobs, store, run, executor=executor, address=address, workers=workers,
                       progress=progress, redo=() if reuse_stale else stale)
    tables = {name: table for e in experiments for name, table in build_tables(e, store, preset).items()}
    for name, table in tables.items():
        write_atomic(store.root / f"{name}.csv", table.to_csv(index=False).encode())
    claims: list[dict[str, Any]] = []
    if outputs:
        from vaefail.experiments.claims import evaluate_claims
        from vaefail.experiments.report import write_outputs

        claims = evaluate_claims(tables)
        write_atomic(store.root / "claims.json", json.dumps(claims, indent=2).encode())
        write_outputs(store, experiments, tables, claims, preset=preset, only=only,
                      stale=stale if reuse_stale else [])
    return Reproduction(store.root, experiments, tables, claims, computed,
                        stale_recomputed=0 if reuse_stale else len(stale),
                        stale_kept=stale if reuse_stale else [])


# ------------------------------------------------------------------------------------------------
# Tables: one row per configuration (labels), mean and std over repetitions; columns per task kind
# ------------------------------------------------------------------------------------------------


def _get(record: dict[str, Any], *path: str) -> float:
    value: Any = record
    for part in path:
        if not isinstance(value, dict) or part not in value or value[part] is None:
            return float("nan")
        value = value[part]
    if isinstance(value, dict) and "mean" in value:
        value = value["mean"]
    return float(value) if value is not None else float("nan")


#: Table columns computed from a task's metrics.json (``summary`` from the fit, ``metrics`` from evaluation).
COLUMNS: dict[str, Callable[[dict[str, Any]], float]] = {
    "test_neg_elbo": lambda r: -_get(r, "summary", "test_bound"),
    "test_neg_plain_elbo": lambda r: -_get(r, "summary", "test_elbo"),
    "test_neg_ll": lambda r: -_best_log_p(r),
    "mleo": lambda r: _get(r, "metrics", "split", "mleo"),
    "pmo": lambda r: _get(r, "metrics", "split", "pmo"),
    "avg_mi": lambda r: _get(r, "metrics", "mutual_information", "average"),
    "mi_total": lambda r: _get(r, "metrics", "mutual_information", "total"),
    "active_units": lambda r: _get(r, "metrics", "mutual_information", "active_units"),
    "sigma_eps": lambda r: _get(r, "metrics", "run", "sigma_eps"),
    "truth_test_neg_elbo": lambda r: -_get(r, "summary", "truth_test_bound"),
    "curve_distance": lambda r: _get(r, "metrics", "failure", "curve", "symmetric"),
    "crossing_distance": lambda r: _get(r, "metrics", "failure", "crossing", "learned", "distance"),
    "posterior_gap_model": lambda r: _get(r, "metrics", "failure", "model_posterior_gap", "gap"),
    "posterior_gap_truth": lambda r: _get(r, "metrics", "failure", "true_posterior_gap", "gap"),
    "latent_agreement": lambda r: _get(r, "metrics", "failure", "latent_agreement", "spearman_abs"),
    "test_neg_log_prob_true": lambda r: -_get(r, "summary", "test_log_prob_true"),
    "val_neg_elbo": lambda r: -_get(r, "summary", "val_bound"),
    "train_neg_elbo": lambda r: -_get(r, "summary", "train_bound"),
    "train_minus_test_bound": lambda r: _get(r, "summary", "train_bound") - _get(r, "summary", "test_bound"),
    # the three-way split of -ELBO (metrics "bounds"; the model's own -ELBO is the plain ELBO)
    "neg_log_p": lambda r: _get(r, "metrics", "bounds", "model", "neg_log_p"),
    "neg_elbo": lambda r: _get(r, "metrics", "bounds", "model", "neg_elbo"),
    "neg_elbo_star": lambda r: _get(r, "metrics", "bounds", "model", "neg_elbo_star"),
    "approximation_gap": lambda r: _get(r, "metrics", "bounds", "model", "approximation_gap"),
    "amortisation_gap": lambda r: _get(r, "metrics", "bounds", "model", "amortisation_gap"),
    "truth_neg_log_p": lambda r: _get(r, "metrics", "bounds", "truth", "neg_log_p"),
    "truth_neg_elbo": lambda r: _get(r, "metrics", "bounds", "truth", "neg_elbo"),
    "truth_neg_elbo_star": lambda r: _get(r, "metrics", "bounds", "truth", "neg_elbo_star"),
    "truth_approximation_gap": lambda r: _get(r, "metrics", "bounds", "truth", "approximation_gap"),
    "truth_amortisation_gap": lambda r: _get(r, "metrics", "bounds", "truth", "amortisation_gap"),
    "elbo_star_truth_minus_model": lambda r: _get(r, "metrics", "bounds", "elbo_star_truth_minus_model"),
    "elbo_star_diff_stderr": lambda r: _stderr(r, "metrics", "bounds", "elbo_star_truth_minus_model"),
    "neg_elbo_star_stderr": lambda r: _stderr(r, "metrics", "bounds", "model", "neg_elbo_star"),
}


def _stderr(record: dict[str, Any], *path: str) -> float:
    """The within-run standard error of an estimate (over the test points, Monte-Carlo error added)."""
    se = _get(record, *path, "stderr")
    mc = _get(record, *path, "mc_stderr")
    return float(np.hypot(se, mc)) if np.isfinite(mc) else se


def _best_log_p(record: dict[str, Any]) -> float:
    """Exact log p_theta (quadrature, K <= 2) when available, else the importance-sampled estimate."""
    exact = _get(record, "metrics", "likelihood", "log_p_exact")
    return exact if np.isfinite(exact) else _get(record, "metrics", "likelihood", "log_p_is")


def _class_kl(record: dict[str, Any], c: int) -> float:
    """KL(p_gt(x|y=c) || p_theta(x|y=c)) of the selected M2 (NaN if the benchmark has no class c)."""
    rows = (record.get("test") or {}).get("class_conditional_kl") or []
    return _get(rows[c], "kl") if c < len(rows) else float("nan")


def _best_restart_collapse(record: dict[str, Any]) -> float:
    """The largest collapse score among the restarts that did not diverge (NaN without per-restart
    scores): whether a less collapsed solution was found but not selected by validation J."""
    scores = [r.get("collapse_score") for r in record.get("restarts") or [] if r.get("status") == "ok"]
    scores = [float(v) for v in scores if v is not None and np.isfinite(v)]
    return max(scores) if scores else float("nan")


#: Table columns of semi-supervised M2 tasks (``metrics.json`` of
#: :func:`~vaefail.experiments.tasks.run_semisupervised_task`). J is the mean per-point share of M2's
#: objective on the test split (higher is better).
SEMISUPERVISED_COLUMNS: dict[str, Callable[[dict[str, Any]], float]] = {
    "test_accuracy": lambda r: _get(r, "test", "classification", "accuracy"),
    "bayes_accuracy": lambda r: _get(r, "test", "classification", "bayes_accuracy"),
    "kl_y0": lambda r: _class_kl(r, 0),
    "kl_y1": lambda r: _class_kl(r, 1),
    "collapse_score": lambda r: _get(r, "test", "collapse", "score"),
    "best_restart_collapse": _best_restart_collapse,
    "counterfactual_error": lambda r: _get(r, "test", "counterfactual", "error"),
    "counterfactual_collapsed": lambda r: _get(r, "test", "counterfactual", "error_collapsed"),
    "counterfactual_oracle": lambda r: _get(r, "test", "counterfactual", "error_oracle"),
    "test_j": lambda r: _get(r, "summary", "test_objective"),
    "truth_test_j": lambda r: _get(r, "summary", "truth_test_objective"),
    # the unlabelled bound at the optimal Gaussian encoders (metrics "bounds", vaefail.semisupervised.optimal)
    "neg_u": lambda r: _get(r, "bounds", "model", "neg_elbo"),
    "neg_u_star": lambda r: _get(r, "bounds", "model", "neg_elbo_star"),
    "u_approximation_gap": lambda r: _get(r, "bounds", "model", "approximation_gap"),
    "u_amortisation_gap": lambda r: _get(r, "bounds", "model", "amortisation_gap"),
    "truth_neg_u": lambda r: _get(r, "bounds", "truth", "neg_elbo"),
    "truth_neg_u_star": lambda r: _get(r, "bounds", "truth", "neg_elbo_star"),
    "truth_u_approximation_gap": lambda r: _get(r, "bounds", "truth", "approximation_gap"),
    "truth_u_amortisation_gap": lambda r: _get(r, "bounds", "truth", "amortisation_gap"),
    "u_star_truth_minus_model": lambda r: _get(r, "bounds", "u_star_truth_minus_model"),
    "u_star_diff_stderr": lambda r: _get(r, "bounds", "u_star_truth_minus_model", "stderr"),
}

#: Table columns of digits tasks (``metrics.json`` of :func:`~vaefail.semisupervised.run_digits`, one
#: seed each, so the mean and std over repetitions are over seeds).
DIGITS_COLUMNS: dict[str, Callable[[dict[str, Any]], float]] = {
    "m2_accuracy": lambda r: _get(r, "summary", "m2"),
    "logistic_accuracy": lambda r: _get(r, "summary", "logistic"),
    "mlp_accuracy": lambda r: _get(r, "summary", "mlp"),
    "m2_minus_logistic": lambda r: _get(r, "m2_minus", "logistic"),
    "m2_minus_mlp": lambda r: _get(r, "m2_minus", "mlp"),
}

#: The columns of each task kind's tables.
KIND_COLUMNS: dict[str, dict[str, Callable[[dict[str, Any]], float]]] = {
    "fit": COLUMNS, "semisupervised": SEMISUPERVISED_COLUMNS, "digits": DIGITS_COLUMNS,
}


def build_tables(experiment: Experiment, store: ResultsStore,
                 preset: str = "quick") -> dict[str, pd.DataFrame]:
    """Every table of an experiment (:attr:`Experiment.tables`), each from :func:`build_table`; the
    ``downstream`` experiment has one table of measures computed from its fits
    (:func:`vaefail.experiments.downstream.build_downstream_table`, with the ``preset``'s settings)."""
    if experiment.name == "downstream":
        from vaefail.experiments.downstream import build_downstream_table

        return {"downstream": build_downstream_table(experiment, store, preset)}
    return {name: build_table(experiment, store, name) for name in experiment.tables}


def build_table(experiment: Experiment, store: ResultsStore, table_name: str | None = None) -> pd.DataFrame:
    """Aggregate one table of an experiment's finished configurations: mean and ``_std`` (over repeats)
    per column.

    ``table_name`` defaults to the experiment's own table; the columns are those of its tasks' kind
    (:data:`KIND_COLUMNS`). Columns that are NaN for every row (not applicable to this experiment) are
    dropped.
    """
    table_name = table_name or experiment.name
    tasks = [t for t in experiment.tasks if t.table_name == table_name]
    columns = KIND_COLUMNS[tasks[0].kind] if tasks else COLUMNS
    rows = []
    for task in tasks:
        key = task_key(task)
        if not store.has(key):
            raise StoreError(f"configuration {key} of {experiment.name} is missing from {store.root}")
        record = store.metrics(key)
        labels = {k: v for k, v in task.labels.items() if k != "repeat"}
        rows.append({**labels, "repeat": task.labels["repeat"], "key": key,
                     **{name: f(record) for name, f in columns.items()}})
    frame = pd.DataFrame(rows)
    label_cols = [c for c in frame.columns if c not in columns and c not in ("repeat", "key")]
    grouped = frame.groupby(label_cols, sort=False, dropna=False)
    table = grouped[list(columns)].mean()
    std = grouped[list(columns)].std(ddof=1).add_suffix("_std")
    table = pd.concat([table, std], axis=1)
    table.insert(0, "repeats", grouped.size())
    table["keys"] = grouped["key"].agg(" ".join)
    table = table.reset_index()
    keep = [c for c in table.columns if not (c in columns and table[c].isna().all())]
    keep = [c for c in keep if not (c.endswith("_std") and c[:-4] not in keep)]
    ordered = label_cols + ["repeats"] + [
        c for name in columns for c in (name, f"{name}_std") if c in keep
    ] + ["keys"]
    return table[ordered]
