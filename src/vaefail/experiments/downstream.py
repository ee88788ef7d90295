"""The ``downstream`` experiment: one table (benchmark x family, plus the truth) of the downstream measures
of :mod:`vaefail.metrics.downstream`, computed from fitted runs already in the store.

The experiment's grid (``grids/downstream.toml``) lists fits only; most are table1's and latent's, so a store
that ran those reuses them. The measures are computed here, after the fits, from the stored run folders,
and cached under ``<store>/downstream/<hash>.json`` (the hash covers the fits' keys and the settings), so a
rerun costs only the table.

Per benchmark, family and repetition: the *selected* model is the ``K`` (1, 2 or 3, sigma_eps fixed at the
truth) with the best test bound of the family's own objective; the ambiguity columns use the ``K = 1`` fit
(its exact posterior); ``sigma_ratio`` is the learned sigma_eps (``K = 1``) over the truth's. The truth's
row applies the same measures to the benchmark's exact model on the same test points.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import pandas as pd

from vaefail._io import write_atomic
from vaefail.errors import ConfigError
from vaefail.experiments.grid import Experiment, Task, load_grid
from vaefail.experiments.store import ResultsStore, config_hash

#: The model families are the values of ``objective`` in the grid's ``[common_grid]`` (in that order) and the
#: flow encoder's table (:func:`family_of`); a new family is one more entry or table, plus an entry of
#: :data:`ADAPTERS` if its fitted models are not :class:`vaefail.models.VAE`.
#: Version of the cached measures (bump when a measure changes meaning).
CACHE_VERSION = 3
#: Columns of the downstream table, in order (each the mean over repetitions; ``_std`` beside it).
MEASURES = (
    "k_bound", "k_ll", "mi_total", "active_dims",
    "recovery", "noise_dims", "noise_kept",
    "multimodal_share", "mode_overlap", "committed",
    "sigma_ratio", "denoise_ratio",
    "eps_along", "eps_normal", "normal_over_along",
    "energy", "energy_p", "off_manifold",
    "auroc",
)


def _model_adapter(result: Any, family: str, ll_samples: int) -> Any:
    """The :class:`~vaefail.metrics.downstream.LatentModel` of a fitted run's selected model."""
    from vaefail.metrics.downstream import from_vae

    return from_vae(result.model, name=family, ll_samples=ll_samples)


#: How a family's fitted model enters the measures (default: the MFG-VAE adapter).
ADAPTERS: dict[str, Any] = {}


def settings(preset: str) -> dict[str, int]:
    """The measures' settings (``n_points``, ``ll_samples``, ``permutations``) of a preset."""
    table = load_grid("downstream").get("settings", {})
    if preset not in table:
        raise ConfigError(f"the downstream experiment has no settings for preset {preset!r}")
    return {k: int(v) for k, v in table[preset].items()}


def family_of(labels: dict[str, Any]) -> str:
    """A task's model family: its ``objective`` (``"vae"``, ``"iwae"``), prefixed by its encoder when that is
    not the Gaussian one (``"flow"`` for a flow encoder trained on the ELBO, ``"iwae-flow"`` as the IWAE's
    proposal)."""
    encoder, objective = labels.get("encoder", "gaussian"), labels["objective"]
    if encoder == "gaussian":
        return objective
    return encoder if objective == "vae" else f"{objective}-{encoder}"


def _index(tasks: list[Task]) -> dict[tuple[Any, ...], Task]:
    """Tasks by (benchmark, family, latent_dim, sigma_mode, repeat)."""
    return {(t.labels["benchmark"], family_of(t.labels), int(t.labels["latent_dim"]),
             t.labels.get("sigma_mode", "fixed"), int(t.labels["repeat"])): t for t in tasks}


def build_downstream_table(experiment: Experiment, store: ResultsStore, preset: str,
                           progress: bool = False) -> pd.DataFrame:
    """The downstream table: one row per benchmark and family (and the truth), mean and ``_std`` over
    repetitions of every column of :data:`MEASURES`, ``repeats``, and ``keys`` (the selected fits) and
    ``k1_keys`` (the ``K = 1`` fits)."""
    conf = settings(preset)
    index = _index(experiment.tasks)
    families = list(dict.fromkeys(k[1] for k in index))
    rows: list[dict[str, Any]] = []
    benches = list(dict.fromkeys(k[0] for k in index))
    repeats = sorted({k[4] for k in index})
    for bench in benches:
        for family in ("truth", *[f for f in families if any(k[:2] == (bench, f) for k in index)]):
            per_rep, keys, k1_keys = [], [], []
            for rep in repeats:
                anchor = next((f for f in families if (bench, f, 1, "fixed", rep) in index), None)
                if anchor is None:
                    continue
                source = anchor if family == "truth" else family
                fits = {kk: task_key(index[(bench, source, kk, "fixed", rep)])
                        for kk in (1, 2, 3) if (bench, source, kk, "fixed", rep) in index}
                if 1 not in fits:
                    continue
                learned = index.get((bench, family, 1, "learned", rep))
                record = _measure(store, bench, family, fits, learned and task_key(learned), conf, rep)
                per_rep.append(record)
                keys.append(record["key"])
                k1_keys.append(fits[1])
            if not per_rep:
                continue
            frame = pd.DataFrame([{m: r.get(m, float("nan")) for m in MEASURES} for r in per_rep])
            row: dict[str, Any] = {"benchmark": bench, "family": family, "repeats": len(per_rep)}
            for m in MEASURES:
                values = frame[m].to_numpy(np.float64)
                row[m] = float(np.mean(values))
                row[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            row["keys"], row["k1_keys"] = " ".join(keys), " ".join(k1_keys)
            rows.append(row)
    return pd.DataFrame(rows)


def _measure(store: ResultsStore, bench_name: str, family: str, fits: dict[int, str], learned: str | None,
             conf: dict[str, int], rep: int) -> dict[str, Any]:
    """The measures of one (benchmark, family, repetition), from the cache or computed and cached."""
    spec = {"downstream": CACHE_VERSION, "family": family, "fits": fits, "learned": learned, "settings": conf}
    cache = store.root / "downstream" / f"{config_hash(spec)}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    record = _compute(store, family, fits, learned, conf, rep)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, json.dumps(record, indent=2).encode())
    return record


def _compute(store: ResultsStore, family: str, fits: dict[int, str], learned: str | None,
             conf: dict[str, int], rep: int) -> dict[str, Any]:
    from vaefail.metrics import downstream as ds
    from vaefail.results import FitResult

    def column(key: str, *path: str) -> float:
        value: Any = store.metrics(key)
        for part in path:
            value = (value or {}).get(part)
        if isinstance(value, dict):
            value = value.get("mean")
        return float("nan") if value is None else float(value)

    first = FitResult.load(store.path(fits[1]))
    bench = first.benchmark
    test = first.data().test
    x, z = test.x[: conf["n_points"]], test.z[: conf["n_points"]]
    truth = ds.from_truth(bench)
    key = jax.random.fold_in(jax.random.PRNGKey(20230), rep)
    if family == "truth":
        out = ds.downstream_measures(bench, truth, truth, x, z, key, permutations=conf["permutations"])
        return out | {"key": fits[1], "k_bound": float(bench.latent_dim), "k_ll": float(bench.latent_dim),
                      "mi_total": ds.truth_mutual_information(truth, x), "sigma_ratio": 1.0}
    bound = {k: -column(v, "summary", "test_bound") for k, v in fits.items()}
    ll = {k: -_best_log_p(store.metrics(v)) for k, v in fits.items()}
    k_bound = min(bound, key=lambda k: bound[k])
    k_ll = min(ll, key=lambda k: ll[k] if np.isfinite(ll[k]) else np.inf)
    adapter = ADAPTERS.get(family, _model_adapter)
    selected = FitResult.load(store.path(fits[k_bound])) if k_bound != 1 else first
    model = adapter(selected, family, conf["ll_samples"])
    k1 = model if k_bound == 1 else adapter(first, family, conf["ll_samples"])
    out = ds.downstream_measures(bench, model, truth, x, z, key, posterior_model=k1,
                                 permutations=conf["permutations"])
    sigma = column(learned, "metrics", "run", "sigma_eps") if learned else float("nan")
    return out | {"key": fits[k_bound], "k_bound": float(k_bound), "k_ll": float(k_ll),
                  "mi_total": column(fits[k_bound], "metrics", "mutual_information", "total"),
                  "sigma_ratio": sigma / bench.sigma_eps}


def task_key(task: Task) -> str:
    """The store key of a task (as :func:`vaefail.experiments.reproduce.task_key`)."""
    return config_hash(task.spec())


def _best_log_p(record: dict[str, Any]) -> float:
    """Held-out mean log p_theta(x): exact (quadrature, K <= 2) when stored, else importance-sampled."""
    ll = (record.get("metrics") or {}).get("likelihood") or {}
    for name in ("log_p_exact", "log_p_is"):
        value = ll.get(name)
        value = value.get("mean") if isinstance(value, dict) else value
        if value is not None and np.isfinite(float(value)):
            return float(value)
    return float("nan")


#: What each column of the downstream table means (shown under the table in the report).
COLUMN_HELP: dict[str, str] = {
    "family": "the model family (vae, iwae, flow: a flow encoder on the ELBO), or the benchmark's exact "
    "model (truth)",
    "k_bound": "K (1-3, sigma_eps fixed) with the best test bound of the family's own objective: the "
               "selected model of every other column",
    "k_ll": "K with the best held-out log p(x)",
    "active_dims": "code dimensions with Var_x E[z_k|x] > 0.01",
    "recovery": "Var(E[z_true|code]) / Var(z_true), leave-one-out k-NN R^2 on ranks (1: the code "
                "determines z)",
    "noise_dims": "active code dimensions of which z_true explains less than half the variance",
    "noise_kept": "share of the true noise x - f_gt(z_true) that the code predicts (k-NN R^2)",
    "multimodal_share": "share of test points whose true posterior has a second mode of mass >= 0.1",
    "mode_overlap": "on those points, sum_j min(model, truth) over sorted posterior mode masses of the K = 1 "
                    "model (1: same split; 0.5: commits to one of two equal modes)",
    "committed": "on those points, share where the K = 1 model puts > 90% of its mass in one mode",
    "sigma_ratio": "sigma_eps learned by the family's objective (K = 1) over the true sigma_eps",
    "denoise_ratio": "rms distance of reconstructions f(E_q[z|x]) to the true manifold over the data's",
    "eps_along": "median input step along the true manifold that moves the code by 0.1 prior std "
                 "(n/a: infinite, the code does not respond)",
    "eps_normal": "the same step in the worst direction normal to the true manifold",
    "normal_over_along": "median of the code's sensitivity normal over along the true manifold",
    "energy": "energy distance between model samples and fresh truth samples",
    "energy_p": "permutation-test p-value of that energy distance",
    "off_manifold": "share of model samples farther than 3 sigma_eps from the true manifold",
    "auroc": "AUROC of -log p(x) for test points against near-miss off-manifold points (2-4 sigma_eps)",
}

#: One sentence per task: its name, what the columns answer, and the columns quoted.
READING: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Compression", "does the selection criterion recover the true K = 1", ("k_bound", "k_ll")),
    ("Latent recovery", "how much of the true z the selected model's code determines", ("recovery",)),
    ("Ambiguity", "on two-mode points, does the K = 1 model split its posterior like the truth (overlap 1) "
                  "or commit to one mode (0.5)", ("mode_overlap",)),
    ("Signal/noise", "is the learned noise level right (ratio 1), are reconstructions denoised (0), and how "
                     "much true noise the code keeps", ("sigma_ratio", "denoise_ratio", "noise_kept")),
    ("Robustness", "how much more the code reacts to off-manifold than to on-manifold perturbations",
     ("normal_over_along",)),
    ("Generation", "can a two-sample test tell model samples from truth samples (p < 0.05)", ("energy_p",)),
    ("Outliers", "how well -log p(x) separates near-miss outliers (truth: exact density)", ("auroc",)),
)


def reading(table: pd.DataFrame) -> list[str]:
    """One sentence per downstream task: the question and the numbers that answer it, per benchmark and
    family (mean over repetitions)."""
    if table.empty or "family" not in table:
        return []
    out = []
    for task, question, cols in READING:
        parts = []
        for bench, sub in table.groupby("benchmark", sort=False):
            cells = []
            for col in cols:
                vals = [f"{fam} {row[col]:.2f}" for fam, row in sub.set_index("family").iterrows()
                        if np.isfinite(row[col])]
                if vals:
                    cells.append(f"{col} " + ", ".join(vals))
            if cells:
                parts.append(f"{bench}: " + "; ".join(cells))
        out.append(f"{task} ({question}): " + (" | ".join(parts) if parts else "not applicable") + ".")
    return out
