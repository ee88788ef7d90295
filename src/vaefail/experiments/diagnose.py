"""``vaefail diagnose``: the paper's guidelines for practitioners as checks with verdicts, on data without
ground truth.

Every family (MFG-VAE, IWAE) x latent dimension ``K`` x ``sigma_eps`` is fitted with the restart protocol
(random restarts only: :class:`vaefail.datafit.DataFamily`) into a resumable results store, and its selected
restart evaluated on the test split by :func:`vaefail.metrics.nogroundtruth.evaluate_data_run` (the same test
points for every fit, so comparisons are paired). Then :func:`analyse` runs the checks:

- ``sigma``: the ``sigma_eps`` the ELBO selects against the one held-out ``log p_theta(x)`` selects (MFG-VAE,
  at the ``K`` held-out likelihood selects);
- ``latent_dim``: the same two criteria over ``K`` (at the selected ``sigma_eps``);
- ``flexibility``: does the more flexible family change held-out ``log p_theta(x)``, the ``K`` or
  ``sigma_eps`` it selects, or the per-dimension mutual information, beyond their noise; when it finds a
  better p(x), controls (:class:`Controls`) tell the ELBO's preference for the worse model (the paper's p(x)
  failure) from MFG-VAE fits that merely fell short of the better one (see :func:`analyse`);
- ``posterior_shape``: the share of test points with Pareto k-hat > 0.7 and, for ``K <= 2``, with an
  optimal-Gaussian gap of the model's posterior above 0.1 nats (the paper's condition Cx1 on the model);
- ``unseen``: what no check without ground truth can see (the latent failure of the paper's Example 1).

"Beyond noise" is the paired standard error over the test points: a difference ``d`` of per-point means with
standard error ``se`` counts when ``d > 2 se`` and ``d > MIN_EFFECT`` nats per point. Verdicts are ``ok``,
``warning`` or ``failure suspected`` (``not checked`` where a check has nothing to compare).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure

from vaefail._io import write_atomic
from vaefail.config import FitConfig
from vaefail.datafit import DATA_FAMILY, data_config
from vaefail.errors import ConfigError, unknown_name
from vaefail.experiments.execute import check_executor, execute
from vaefail.experiments.figures import sample_model
from vaefail.experiments.store import ResultsStore, config_hash
from vaefail.metrics._stats import elbo_per_point
from vaefail.metrics.likelihood import log_likelihood
from vaefail.metrics.nogroundtruth import evaluate_data_run, model_gaussian_gap
from vaefail.protocol import fit_family, fit_inference, train_all
from vaefail.results import FitResult, family_from_path
from vaefail.stacking import take
from vaefail.userdata import DataSpec, UserData, load_data

#: Model families diagnose can fit: name -> the config changes that make it. A new family (e.g. a flow
#: posterior) is one more line here.
#: Each is ``(family as module:qualname, config changes)``; the family must read its data from a
#: :class:`~vaefail.datafit.DataFitConfig`-like config (``make_benchmark``), as :class:`DataFamily` does.
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "vae": ("vaefail.datafit:DataFamily", {"objective": "vae"}),
    "iwae": ("vaefail.datafit:DataFamily", {"objective": "iwae"}),
}
#: The reference family (the MFG-VAE) whose selections the other families are compared with.
REFERENCE = "vae"
#: ``--sigma auto``: a grid in standardised units (the data's columns have standard deviation 1).
AUTO_SIGMAS = (0.05, 0.1, 0.2, 0.4)
#: Smallest difference of mean held-out log-likelihoods (nats per point) that counts, besides 2 s.e.
MIN_EFFECT = 0.02
#: Shares of test points with k-hat > 0.7 (or a large Gaussian gap) for a warning / a suspected failure.
SHAPE_WARNING, SHAPE_FAILURE = 0.1, 0.3
VERDICTS = ("ok", "warning", "failure suspected", "not checked")


@dataclass(frozen=True)
class DiagnoseSettings:
    """The grid and budget of a diagnosis.

    Attributes
    ----------
    latent_dims, sigmas, families
        The grid: latent dimensions ``K``, ``sigma_eps`` values (standardised units when standardised) and
        model families (keys of :data:`FAMILIES`).
    restarts, steps, batch_size, learning_rate, eval_every, num_samples
        The restart protocol's budget per fit (random restarts only); ``num_samples`` is IWAE's ``S``.
    ll_samples, max_points, gap_points
        Importance samples per test point for ``log p_theta(x)`` and k-hat; test points evaluated; test
        points of the (costlier) Gaussian-gap computation.
    seed
        Seed of every fit (the data split uses it too, so every fit sees the same test points).
    """

    latent_dims: tuple[int, ...] = (1, 2, 3)
    sigmas: tuple[float, ...] = AUTO_SIGMAS
    families: tuple[str, ...] = ("vae", "iwae")
    restarts: int = 3
    steps: int = 5000
    batch_size: int = 256
    learning_rate: float = 1e-2
    eval_every: int = 500
    num_samples: int = 20
    ll_samples: int = 500
    max_points: int = 2000
    gap_points: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.latent_dims or not self.sigmas:
            raise ConfigError("--latent-dims and --sigma need at least one value each")
        for f in self.families:
            if f not in FAMILIES:
                raise unknown_name("family", f, FAMILIES)
        if REFERENCE not in self.families:
            raise ConfigError(
                f"--families must include {REFERENCE!r} (the reference every check compares with)"
            )
        # the protocol's own checks (K, sigma_eps, restarts, steps, ... in range), as every fit will meet them
        for k in self.latent_dims:
            for sigma in self.sigmas:
                FitConfig(latent_dim=k, sigma_eps=sigma, restarts=self.restarts, steps=self.steps,
                          learning_rate=self.learning_rate, eval_every=self.eval_every,
                          num_samples=self.num_samples, seed=self.seed)
        for name in ("ll_samples", "max_points", "gap_points"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.ll_samples < 25:
            raise ConfigError(f"--ll-samples must be >= 25 (k-hat needs them), got {self.ll_samples}")


def parse_list(text: str, kind: type, what: str) -> tuple[Any, ...]:
    """``"1,2,3"`` -> ``(1, 2, 3)`` with a clear error naming the option."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{what} is empty")
    try:
        values = tuple(kind(t) for t in items)
    except ValueError:
        raise ConfigError(f"{what} expects comma-separated {kind.__name__}s, got {text!r}") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"{what} repeats a value: {text!r}")
    return values


def parse_sigma(text: str) -> tuple[float, ...]:
    """``auto`` -> :data:`AUTO_SIGMAS`; else one value or a comma-separated list."""
    return AUTO_SIGMAS if text.strip() == "auto" else parse_list(text, float, "--sigma")


# ------------------------------------------------------------------------------------------- jobs


def jobs(spec: DataSpec, settings: DiagnoseSettings) -> list[tuple[str, dict[str, Any]]]:
    """One task per family x K x sigma_eps: ``{"kind": "diagnose", "family", "fit": DataFitConfig dict,
    "eval": {...}}``, keyed by :func:`~vaefail.experiments.store.config_hash` (the data's content hash is in
    the config, so a changed file gets new keys)."""
    base = data_config(
        spec,
        restarts=settings.restarts,
        steps=settings.steps,
        seed=settings.seed,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        eval_every=settings.eval_every,
        num_samples=settings.num_samples,
        sigma_eps=1.0,
    )
    out = []
    for family in settings.families:
        for k in settings.latent_dims:
            for sigma in settings.sigmas:
                config = base.replace(latent_dim=k, sigma_eps=float(sigma), **FAMILIES[family][1])
                task = {
                    "kind": "diagnose",
                    "family": family,
                    "fit": config.to_dict(),
                    "eval": {
                        "ll_samples": settings.ll_samples,
                        "max_points": settings.max_points,
                        "gap_points": settings.gap_points,
                    },
                }
                out.append((config_hash(task), task))
    return out


def run_diagnose_task(spec: dict[str, Any]) -> dict[str, bytes]:
    """Fit one configuration on the data (random restarts) and evaluate its selected restart on the test
    split: the run folder's files, ``metrics.json`` (summary, the truth-free metrics with the per-point
    ``log_p`` and ``elbo``, and ``timing``) and ``task.json``. The optimal-Gaussian gap is left to the
    analysis (:meth:`Controls.gaussian_gap`), which needs it for the selected model only."""
    wall, cpu = time.perf_counter(), time.process_time()
    model_family = family_from_path(FAMILIES[spec["family"]][0])
    config = model_family.config_type.from_dict(spec["fit"])
    data = load_data(config.spec)
    result = fit_family(model_family, config, data)
    fit_seconds = time.perf_counter() - wall
    ev = spec["eval"]
    metrics = evaluate_data_run(
        result,
        jax.random.PRNGKey(config.seed + 31337),
        num_samples=ev["ll_samples"],
        max_points=min(ev["max_points"], config.n_test),
        exact=False,
        gap=False,
        per_point=True,
    )
    timing = {
        "fit_seconds": round(fit_seconds, 2),
        "wall_seconds": round(time.perf_counter() - wall, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
    }
    files = result.to_files()
    files["metrics.json"] = json.dumps(
        {"summary": result.summary, "metrics": metrics, "timing": timing}
    ).encode()
    files["task.json"] = json.dumps(spec, indent=2).encode()
    return files


# --------------------------------------------------------------------------------------- analysis

Refit = Callable[["Fit"], np.ndarray]
Continued = Callable[["Fit"], tuple[np.ndarray, np.ndarray]]
Gap = Callable[["Fit"], "dict[str, Any] | None"]


@dataclass
class Fit:
    """One finished configuration of the grid, as the checks see it."""

    family: str
    latent_dim: int
    sigma: float
    key: str
    log_p: np.ndarray
    elbo: np.ndarray
    metrics: dict[str, Any]
    steps: int | None = None  # training steps the protocol ran (``None``: unknown)

    @property
    def ll(self) -> float:
        return float(np.mean(self.log_p))

    @property
    def elbo_mean(self) -> float:
        return float(np.mean(self.elbo))


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-point difference ``a - b`` (same test points)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(np.mean(d)), float(np.std(d, ddof=1) / math.sqrt(d.size))


def beyond_noise(diff: float, se: float) -> bool:
    """``diff > 2 se`` and ``diff > MIN_EFFECT``: a real improvement, not Monte-Carlo or data noise."""
    return diff > 2 * se and diff > MIN_EFFECT


def _check(
    cid: str, title: str, verdict: str, numbers: dict[str, Any], meaning: str, guideline: str
) -> dict[str, Any]:
    return {
        "id": cid,
        "title": title,
        "verdict": verdict,
        "numbers": numbers,
        "meaning": meaning,
        "guideline": guideline,
    }


def _select(fits: Sequence[Fit], attr: str) -> Fit:
    return max(fits, key=lambda f: getattr(f, attr))


def _criterion_check(cid: str, what: str, fits: Sequence[Fit], value: str, context: str) -> dict[str, Any]:
    """ELBO-selected against held-out-likelihood-selected value of ``value`` among ``fits``."""
    rows = [{value: getattr(f, value), "elbo": f.elbo_mean, "log_p": f.ll} for f in fits]
    guideline = (
        f"Choose {what} by held-out log-likelihood (an unbiased criterion), not by the ELBO: the ELBO "
        "is biased towards models whose posteriors are easy to approximate (paper, Sec. 7)."
    )
    if len(fits) < 2:
        return _check(
            cid,
            f"{what}: ELBO vs held-out log-likelihood",
            "not checked",
            {"grid": rows, "context": context},
            f"Only one {what} was fitted, so there is nothing to choose between; pass several.",
            guideline,
        )
    by_elbo, by_ll = _select(fits, "elbo_mean"), _select(fits, "ll")
    diff, se = paired(by_ll.log_p, by_elbo.log_p)
    numbers = {
        "grid": rows,
        "context": context,
        "selected_by_elbo": getattr(by_elbo, value),
        "selected_by_log_p": getattr(by_ll, value),
        "log_p_gain": diff,
        "log_p_gain_stderr": se,
    }
    if getattr(by_elbo, value) == getattr(by_ll, value):
        verdict = "ok"
        meaning = (
            f"The ELBO and held-out log-likelihood select the same {what} "
            f"({getattr(by_ll, value)}), so the ELBO's bias does not change this choice."
        )
    elif beyond_noise(diff, se):
        verdict = "failure suspected"
        meaning = (
            f"The ELBO selects {what} = {getattr(by_elbo, value)} but held-out log-likelihood prefers "
            f"{getattr(by_ll, value)}, by {diff:.3f} ± {se:.3f} nats/point: the ELBO is trading fit of "
            "p(x) for a simpler posterior, the paper's p(x) failure."
        )
    else:
        verdict = "warning"
        meaning = (
            f"The ELBO selects {what} = {getattr(by_elbo, value)} and held-out log-likelihood "
            f"{getattr(by_ll, value)}, but their held-out log-likelihoods differ by only "
            f"{diff:.3f} ± {se:.3f} nats/point, within noise."
        )
    floor = 1 if value == "latent_dim" else None
    edge = grid_edge([getattr(f, value) for f in fits], getattr(by_ll, value), floor=floor)
    if edge is not None:
        numbers["log_p_choice_at_grid_edge"] = edge
        flag = "--latent-dims" if value == "latent_dim" else "--sigma"
        meaning += (
            f" Held-out log-likelihood chooses the grid's {edge} {what}, so the best value may lie beyond "
            f"the grid: widen it ({flag}) before relying on this choice."
        )
    return _check(cid, f"{what}: ELBO vs held-out log-likelihood", verdict, numbers, meaning, guideline)


def grid_edge(values: Sequence[float], chosen: float, floor: float | None = None) -> str | None:
    """``"largest"`` or ``"smallest"`` when ``chosen`` is that end of a grid of at least two distinct
    ``values`` (and not the natural ``floor``, e.g. ``K = 1``, below which nothing can be tried); else
    ``None``."""
    grid = sorted(set(values))
    if len(grid) < 2:
        return None
    if chosen == grid[-1]:
        return "largest"
    if chosen == grid[0] and chosen != floor:
        return "smallest"
    return None


def _mi(f: Fit) -> list[dict[str, Any]]:
    mi = f.metrics.get("mutual_information") or {"per_dim": []}
    return mi["per_dim"]


def analyse(
    fits: Sequence[Fit],
    settings: DiagnoseSettings,
    data: UserData,
    refit: Refit | None = None,
    continued: Continued | None = None,
    gap: Gap | None = None,
) -> dict[str, Any]:
    """The checks of the module docstring on the finished grid; returns the ``diagnosis.json`` content.

    The flexibility check's controls (optional; :class:`Controls` computes them), for a flexible family's
    model that fits p(x) better than the MFG-VAE's selection:

    - ``refit(fit)``: per-point test ELBO of ``fit``'s model with its encoder refitted on the ELBO (decoder
      frozen). Not higher than the MFG-VAE's selection's ELBO beyond noise: the ELBO prefers the worse p(x),
      the paper's p(x) failure (failure suspected).
    - Higher: the MFG-VAE's restarts fell short of that model (under-trained). ``continued(fit)`` (per-point
      test ELBO and ``log p_theta``) then trains the refitted model further on the ELBO, decoder included:
      if that loses held-out log-likelihood beyond noise, the ELBO moves away from the better p(x) (failure
      suspected); if not, the objective does not prefer the worse model (ok, with the advice to raise the
      budget). Without ``continued``: a warning that the MFG-VAE's training fell short.

    ``gap(fit)`` gives the optimal-Gaussian gap summary of the selected MFG-VAE (``K <= 2``) for the
    posterior-shape check when the fit's metrics do not hold it.
    """
    ref = [f for f in fits if f.family == REFERENCE]
    best = _select(ref, "ll")
    checks = [
        _criterion_check(
            "sigma",
            "sigma_eps",
            [f for f in ref if f.latent_dim == best.latent_dim],
            "sigma",
            f"MFG-VAE at K = {best.latent_dim}",
        ),
        _criterion_check(
            "latent_dim",
            "K",
            [f for f in ref if f.sigma == best.sigma],
            "latent_dim",
            f"MFG-VAE at sigma_eps = {best.sigma:g}",
        ),
        _flexibility(fits, best, refit, continued),
        _posterior_shape(best, gap),
        _unseen(data),
    ]
    ranked = [c["verdict"] for c in checks]
    overall = (
        "failure suspected"
        if "failure suspected" in ranked
        else "warning"
        if "warning" in ranked
        else "no failure found"
    )
    grid = [
        {
            "family": f.family,
            "latent_dim": f.latent_dim,
            "sigma_eps": f.sigma,
            "elbo": f.elbo_mean,
            "log_p": f.ll,
            "log_p_stderr": float(np.std(f.log_p, ddof=1) / math.sqrt(f.log_p.size)),
            "khat_share_above": (f.metrics["posterior"]["khat"] or {}).get("share_above"),
            "active_units": (f.metrics.get("mutual_information") or {}).get("active_units"),
            "mi_per_dim": [d["mean"] for d in _mi(f)],
            "steps": f.steps,
            "key": f.key,
        }
        for f in fits
    ]
    capped = sum(f.steps is not None and f.steps >= settings.steps for f in fits)
    return {
        "format": "vaefail-diagnosis/1",
        "overall": overall,
        "checks": checks,
        "convergence": {
            "fits": len(fits),
            "at_step_cap": int(capped),
            "note": (
                f"{capped} of {len(fits)} fits ran all {settings.steps} steps without meeting the "
                "stopping rule (validation bound no longer improving); more --steps may change their numbers"
                if capped
                else "every fit met the stopping rule before the step cap"
            ),
        },
        "grid": grid,
        "data": {
            "path": data.spec.path,
            "rows": data.n,
            "columns": list(data.names),
            "standardised": data.spec.standardise,
            "split": list(data.split_sizes()),
        },
        "settings": {**asdict(settings), "min_effect": MIN_EFFECT},
    }


def _flexibility(
    fits: Sequence[Fit], best: Fit, refit: Refit | None = None, continued: Continued | None = None
) -> dict[str, Any]:
    guideline = (
        "Check whether a more flexible variational family changes the answer; if it does, the "
        "MFG-VAE's fit of p(x) and its latent codes are limited by its Gaussian posterior (paper, Sec. 7)."
    )
    others = sorted({f.family for f in fits} - {REFERENCE})
    if not others:
        return _check(
            "flexibility",
            "flexibility: does a more flexible family change the answer?",
            "not checked",
            {},
            "Only the MFG-VAE was fitted; add --families vae,iwae.",
            guideline,
        )
    numbers: dict[str, Any] = {
        "reference": {"latent_dim": best.latent_dim, "sigma_eps": best.sigma, "log_p": best.ll}
    }
    verdicts, notes = [], []
    for fam in others:
        mine = [f for f in fits if f.family == fam]
        top = _select(mine, "ll")
        diff, se = paired(top.log_p, best.log_p)
        same = next((f for f in mine if f.latent_dim == best.latent_dim and f.sigma == best.sigma), None)
        mi_changes = []
        if same is not None:
            for i, (a, b) in enumerate(zip(_mi(same), _mi(best), strict=False)):
                d = a["mean"] - b["mean"]
                s = math.hypot(a["stderr"] or 0.0, b["stderr"] or 0.0)
                if abs(d) > 2 * s and abs(d) > 0.05:
                    mi_changes.append({"dim": i + 1, "reference": b["mean"], "flexible": a["mean"]})
        numbers[fam] = {
            "latent_dim": top.latent_dim,
            "sigma_eps": top.sigma,
            "log_p": top.ll,
            "log_p_gain": diff,
            "log_p_gain_stderr": se,
            "mi_changes": mi_changes,
        }
        # a changed selection counts when the family's own choice beats its fit at the MFG-VAE's choice
        # beyond noise (paired); without that fit, any change counts
        moved = (top.latent_dim, top.sigma) != (best.latent_dim, best.sigma)
        if moved and same is not None:
            numbers[fam]["selection_gain"], numbers[fam]["selection_gain_stderr"] = paired(
                top.log_p, same.log_p
            )
            moved = beyond_noise(*paired(top.log_p, same.log_p))
        better = beyond_noise(diff, se)
        if better or (moved and diff > -2 * se):
            change = (
                f"{fam.upper()} raises held-out log-likelihood by {diff:.3f} ± {se:.3f} nats/point"
                if better
                else f"{fam.upper()} selects K = {top.latent_dim}, sigma_eps = {top.sigma:g} where the "
                f"MFG-VAE selects K = {best.latent_dim}, sigma_eps = {best.sigma:g}"
            )
            control = None if refit is None else paired(refit(top), best.elbo)
            if control is not None:
                numbers[fam]["refit_elbo_gain"], numbers[fam]["refit_elbo_gain_stderr"] = control
            if control is not None and beyond_noise(*control):
                shortfall = (
                    f"{change}; with its best Gaussian encoder (refitted on the ELBO) that model also has "
                    f"a higher ELBO than the MFG-VAE's selection (+{control[0]:.3f} ± {control[1]:.3f}), "
                    "so the MFG-VAE's random restarts fell short of it (under-trained: raise --steps or "
                    "--restarts)"
                )
                if continued is None:
                    verdicts.append("warning")
                    notes.append(f"{shortfall}: the MFG-VAE's training fell short, not its objective")
                    continue
                c_elbo, c_log_p = continued(top)
                loss, loss_se = paired(top.log_p, c_log_p)
                numbers[fam]["continued_log_p_loss"], numbers[fam]["continued_log_p_loss_stderr"] = (
                    loss,
                    loss_se,
                )
                numbers[fam]["continued_elbo_gain"], numbers[fam]["continued_elbo_gain_stderr"] = paired(
                    c_elbo, best.elbo
                )
                numbers[fam]["undertrained"] = True
                if beyond_noise(loss, loss_se):
                    verdicts.append("failure suspected")
                    notes.append(
                        f"{shortfall}; but trained further on the ELBO from that model (decoder included) "
                        f"the MFG-VAE loses {loss:.3f} ± {loss_se:.3f} nats/point of held-out "
                        "log-likelihood: the ELBO moves away from the better p(x)"
                    )
                else:
                    verdicts.append("ok")
                    notes.append(
                        f"{shortfall}. Trained further on the ELBO from that model (decoder included), the "
                        f"MFG-VAE keeps its held-out log-likelihood (change {-loss:+.3f} ± {loss_se:.3f} "
                        f"nats/point, {'no loss beyond noise' if loss > 0 else 'no loss'}): the objective "
                        "does not prefer a worse p(x)"
                    )
            else:
                verdicts.append("failure suspected")
                tail_ = (
                    ""
                    if control is None
                    else f"; with its best Gaussian encoder that model's ELBO is not higher than the "
                    f"MFG-VAE's ({control[0]:+.3f} ± {control[1]:.3f}): the ELBO prefers the model with "
                    "the worse p(x)"
                )
                notes.append(change + tail_)
        elif mi_changes:
            verdicts.append("warning")
            notes.append(
                f"{fam.upper()} changes the mutual information of latent dimension(s) "
                f"{', '.join(str(c['dim']) for c in mi_changes)} beyond noise"
            )
        elif diff < -max(2 * se, MIN_EFFECT):
            verdicts.append("warning")
            notes.append(
                f"{fam.upper()} fits worse ({diff:.3f} ± {se:.3f} nats/point): its training may not "
                "have converged at this budget, so it cannot vouch for the MFG-VAE"
            )
        else:
            verdicts.append("ok")
            notes.append(
                f"{fam.upper()} agrees with the MFG-VAE (held-out log-likelihood {diff:+.3f} ± {se:.3f}, "
                "same K and sigma_eps, same mutual information)"
            )
    verdict = (
        "failure suspected"
        if "failure suspected" in verdicts
        else ("warning" if "warning" in verdicts else "ok")
    )
    tail = (
        " The MFG-VAE's answer is not to be trusted."
        if verdict == "failure suspected"
        else " Nothing here says the Gaussian posterior limits the model."
        if verdict == "ok"
        else ""
    )
    return _check(
        "flexibility",
        "flexibility: does a more flexible family change the answer?",
        verdict,
        numbers,
        "; ".join(notes) + "." + tail,
        guideline,
    )


def _posterior_shape(best: Fit, gap_of: Gap | None = None) -> dict[str, Any]:
    post = best.metrics["posterior"]
    kh = post.get("khat") or {}
    gap = post.get("model_gaussian_gap")
    if gap is None and gap_of is not None:
        gap = gap_of(best)
    shares = {"khat_share_above_0.7": kh.get("share_above")}
    if gap is not None:
        shares["gaussian_gap_share_above"] = gap["share_above"]
        shares["gaussian_gap_threshold"] = gap["threshold"]
    # Where the optimal-Gaussian gap is known (K <= 2) it measures the shape itself and decides; k-hat
    # then measures the amortised encoder. Above K = 2 k-hat is the only evidence.
    khat_share = kh.get("share_above") or 0.0
    decisive = gap["share_above"] if gap is not None else khat_share
    verdict = (
        "failure suspected"
        if decisive >= SHAPE_FAILURE
        else ("warning" if decisive >= SHAPE_WARNING else "ok")
    )
    gap_text = (
        f" and {gap['share_above']:.0%} have a posterior more than {gap['threshold']} nats from the "
        f"closest Gaussian"
        if gap is not None
        else f" (the optimal-Gaussian gap needs quadrature over z, K <= 2; K = {best.latent_dim} here)"
    )
    amortisation = gap is not None and gap["share_above"] < SHAPE_WARNING <= khat_share
    if amortisation:
        explain = (
            "Many points have heavy-tailed importance weights (k-hat > 0.7), but the closest Gaussian is "
            "near the model's posterior at most of them: the amortised encoder falls short there (the "
            "amortisation gap), not the posterior's shape, so the shape check passes."
        )
    elif verdict != "ok":
        explain = (
            "Many points have posteriors a Gaussian cannot match (the paper's condition Cx1 on the model): "
            "the ELBO pays for them, so it pushes the model towards simpler posteriors."
        )
    else:
        explain = "The Gaussian encoder matches the model's posteriors well."
    meaning = (
        f"At the selected MFG-VAE (K = {best.latent_dim}, sigma_eps = {best.sigma:g}), "
        f"{kh.get('share_above', float('nan')):.0%} of test points have Pareto k-hat > 0.7{gap_text}. "
        + explain
    )
    guideline = (
        "A non-Gaussian posterior is the condition under which the ELBO's bias changes the learned "
        "model (paper, Sec. 5, Cx1); use a more flexible family where it is common."
    )
    return _check(
        "posterior_shape",
        "posterior shape: k-hat and optimal-Gaussian gap",
        verdict,
        {**shares, "latent_dim": best.latent_dim, "sigma_eps": best.sigma},
        meaning,
        guideline,
    )


def _unseen(data: UserData) -> dict[str, Any]:
    meaning = (
        "Without ground truth nothing here can tell whether the latent codes mean what the process that "
        "made the data meant. A model can fit p(x) as well as the truth and still have a different "
        "latent space (the paper's Example 1: quadratic data where the ELBO prefers a model whose "
        "posteriors are simpler but whose codes are not the true ones); no check on x alone sees it. "
        "Before using z downstream, check it against known labels or domain knowledge."
    )
    guideline = (
        "The latent failure is invisible in p(x); only side information (labels, known factors) can "
        "reveal it (paper, Sec. 5-6)."
    )
    return _check(
        "unseen",
        "what cannot be seen without ground truth",
        "not checked",
        {"columns": data.x_dim},
        meaning,
        guideline,
    )


# --------------------------------------------------------------------------------------- driver


def collect(store: ResultsStore, job_list: Sequence[tuple[str, dict[str, Any]]]) -> list[Fit]:
    """The finished grid as :class:`Fit` values, in job order."""
    fits = []
    for key, task in job_list:
        rec = store.metrics(key)
        m = rec["metrics"]
        fits.append(
            Fit(
                family=task["family"],
                latent_dim=int(task["fit"]["latent_dim"]),
                sigma=float(task["fit"]["sigma_eps"]),
                key=key,
                log_p=np.asarray(m["per_point"]["log_p"]),
                elbo=np.asarray(m["per_point"]["elbo"]),
                metrics=m,
                steps=rec.get("summary", {}).get("steps"),
            )
        )
    return fits


#: Key offsets (from the fit's seed) of the controls: the encoder refit, the continued training's batches
#: and validation, and the evaluation (the same as the fits' own: :func:`run_diagnose_task`).
_REFIT_SEED, _CONTINUE_SEED, _EVAL_SEED = 5, 6, 31337


class Controls:
    """The analysis's extra computations on fits of a finished grid in ``store``, each cached under
    ``runs/<key>/`` (so a rerun of the diagnosis reuses them) and computed only when a check asks.

    - :meth:`refit_elbo`: the fit's selected model with its encoder refitted on the ELBO, decoder frozen
      (:func:`vaefail.protocol.fit_inference`, the fit's ``steps``, key ``PRNGKey(seed + 5)``): its per-point
      test ELBO. The ELBO this decoder reaches with its best Gaussian encoder.
    - :meth:`continued`: that refitted model trained further on the ELBO, every parameter
      (:func:`vaefail.protocol.train_all`, the fit's budget and stopping rule, key ``PRNGKey(seed + 6)``):
      its per-point test ELBO and ``log p_theta(x)``. Where the ELBO takes the model from there.
    - :meth:`gaussian_gap`: the optimal-Gaussian gap of the selected model's posterior on the first
      ``gap_points`` test points (``K <= 2``; :func:`vaefail.metrics.nogroundtruth.model_gaussian_gap`).

    Every per-point quantity is on the fits' own test points with the fits' evaluation keys and samples,
    so it is paired with theirs.
    """

    def __init__(self, store: ResultsStore, settings: DiagnoseSettings) -> None:
        self.store, self.settings = store, settings
        self._refitted: dict[str, Any] = {}

    def _cached(self, fit: Fit, name: str, compute: Callable[[], Any]) -> Any:
        cache = self.store.path(fit.key) / name
        if cache.is_file():
            return json.loads(cache.read_text())
        value = compute()
        write_atomic(cache, json.dumps(value).encode())
        return value

    def _test_points(self, result: FitResult) -> np.ndarray:
        return result.data().test.x[: min(self.settings.max_points, result.config.n_test)]

    def _evaluate(self, model: Any, result: FitResult, log_p: bool = True) -> dict[str, list[float]]:
        x = self._test_points(result)
        key = jax.random.PRNGKey(result.config.seed + _EVAL_SEED)  # evaluate_data_run's keys
        out = {"elbo": [float(v) for v in elbo_per_point(model, x, jax.random.fold_in(key, 1), 100)]}
        if log_p:
            ll = log_likelihood(model, x, jax.random.fold_in(key, 0), self.settings.ll_samples)
            out["log_p"] = [float(v) for v in ll.per_point]
        return out

    def _refit(self, fit: Fit) -> tuple[Any, FitResult]:
        if fit.key not in self._refitted:
            result = FitResult.load(self.store.path(fit.key))
            config = result.config.replace(objective="vae")
            single = take(result.models, slice(result.selected, result.selected + 1))
            model = fit_inference(DATA_FAMILY, single, result.data(), config,
                                  jax.random.PRNGKey(config.seed + _REFIT_SEED), steps=config.steps,
                                  converge=config.converge).model
            self._refitted[fit.key] = (model, result)
        return self._refitted[fit.key]

    def refit_elbo(self, fit: Fit) -> np.ndarray:
        """Per-point test ELBO of ``fit``'s model with its best Gaussian encoder (decoder frozen)."""

        def compute() -> list[float]:
            model, result = self._refit(fit)
            return self._evaluate(take(model, 0), result, log_p=False)["elbo"]

        return np.asarray(self._cached(fit, "refit_elbo.json", compute), np.float64)

    def continued(self, fit: Fit) -> tuple[np.ndarray, np.ndarray]:
        """Per-point test ``(ELBO, log p_theta(x))`` after ELBO training of every parameter from ``fit``'s
        model with its refitted encoder."""

        def compute() -> dict[str, list[float]]:
            model, result = self._refit(fit)
            config = result.config.replace(objective="vae")
            k_train, k_score = jax.random.split(jax.random.PRNGKey(config.seed + _CONTINUE_SEED))
            trained = train_all(DATA_FAMILY, model, result.data(), config, k_train, k_score).model
            return self._evaluate(take(trained, 0), result)

        out = self._cached(fit, "continued.json", compute)
        return np.asarray(out["elbo"], np.float64), np.asarray(out["log_p"], np.float64)

    def gaussian_gap(self, fit: Fit) -> dict[str, Any] | None:
        """The optimal-Gaussian gap summary of ``fit``'s model on the first ``gap_points`` test points, or
        ``None`` for ``K > 2`` (no quadrature over z)."""
        if fit.latent_dim > 2:
            return None

        def compute() -> dict[str, Any]:
            result = FitResult.load(self.store.path(fit.key))
            x = result.data().test.x[: min(self.settings.gap_points, result.config.n_test)]
            return model_gaussian_gap(result.model, x)

        return self._cached(fit, "gaussian_gap.json", compute)


@dataclass
class Diagnosis:
    """The outcome of :func:`diagnose`: the ``diagnosis.json`` content, the output folder, how many fits
    were computed now (the rest came from the store) and the wall time."""

    report: dict[str, Any]
    out: Path
    computed: int
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)


def diagnose(
    spec: DataSpec,
    settings: DiagnoseSettings,
    out: str | Path,
    *,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Diagnosis:
    """Fit the grid into the store under ``out`` (resumable: finished fits are skipped), run the checks and
    write ``out/diagnosis.json`` and the self-contained ``out/diagnosis.html``.

    Everything is validated (the data, the options, the executor) before anything is written.
    """
    t0 = time.perf_counter()
    data = load_data(spec)
    check_executor(executor, address)
    job_list = jobs(spec, settings)
    store = ResultsStore(out)
    computed = execute(
        job_list,
        store,
        run_diagnose_task,
        executor=executor,
        address=address,
        workers=workers,
        progress=progress,
    )
    fits = collect(store, job_list)
    controls = Controls(store, settings)
    report = analyse(fits, settings, data, controls.refit_elbo, controls.continued, controls.gaussian_gap)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["computed"] = computed
    out = Path(out)
    write_atomic(out / "diagnosis.json", json.dumps(report, indent=2).encode())
    write_atomic(out / "diagnosis.html", render_html(report, figures(report, fits, store, data)).encode())
    return Diagnosis(report, out, computed, report["seconds"], ["diagnosis.json", "diagnosis.html"])


# --------------------------------------------------------------------------------------- figures, html


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _project(x: np.ndarray, basis: np.ndarray | None, centre: np.ndarray) -> np.ndarray:
    return x if basis is None else (x - centre) @ basis


def figures(
    report: dict[str, Any], fits: Sequence[Fit], store: ResultsStore, data: UserData
) -> list[tuple[str, str]]:
    """``(caption, base64 PNG)`` pairs: data against model samples (the file's units; first two principal
    components when D > 2), both criteria against sigma_eps and against K, and MI per latent dimension."""
    out = []
    test = data.splits(*data.split_sizes(), seed=report["settings"]["seed"]).test.x
    raw = data.unstandardise(test)
    basis, centre = None, raw.mean(axis=0)
    if data.x_dim > 2:
        _, _, vt = np.linalg.svd(raw - centre, full_matrices=False)
        basis = vt[:2].T
    ref = [f for f in fits if f.family == REFERENCE]
    best = {fam: _select([f for f in fits if f.family == fam], "ll") for fam in {f.family for f in fits}}
    fams = sorted(best, key=lambda f: (f != REFERENCE, f))
    fig = Figure(figsize=(4 * (len(fams) + 1), 3.8))
    axes = fig.subplots(1, len(fams) + 1, sharex=True, sharey=True)
    pd_ = _project(raw, basis, centre)
    labels = (
        ("PC 1", "PC 2") if basis is not None else (data.names[0], data.names[1] if data.x_dim > 1 else "")
    )
    axes[0].set_title(f"data (test, n={len(raw)})")
    for ax, fam in zip(axes, [None, *fams], strict=True):
        if fam is None:
            pts = pd_
        else:
            f = best[fam]
            model = FitResult.load(store.path(f.key)).model
            samples = data.unstandardise(sample_model(model, len(raw), jax.random.PRNGKey(0)))
            pts = _project(samples, basis, centre)
            ax.set_title(f"{fam} K={f.latent_dim} sigma={f.sigma:g}: samples")
        if pts.shape[1] == 1:
            ax.hist(pts[:, 0], bins=60, color="tab:blue" if fam is None else "tab:orange")
        else:
            ax.scatter(
                pts[:, 0], pts[:, 1], s=3, alpha=0.5, color="tab:blue" if fam is None else "tab:orange"
            )
        ax.set_xlabel(labels[0])
    axes[0].set_ylabel(labels[1] if pd_.shape[1] > 1 else "count")
    out.append(
        (
            "Test data against samples of each family's selected model (file units"
            + ("; first two principal components of the test data)" if basis is not None else ")"),
            _png(fig),
        )
    )

    sigmas = sorted({f.sigma for f in ref})
    dims = sorted({f.latent_dim for f in ref})
    fig = Figure(figsize=(10, 3.8))
    a1, a2 = fig.subplots(1, 2)
    for fam in fams:
        mine = [f for f in fits if f.family == fam]
        for k in dims:
            row = sorted((f for f in mine if f.latent_dim == k), key=lambda f: f.sigma)
            if len(row) > 1 or len(sigmas) == 1:
                a1.plot([f.sigma for f in row], [f.ll for f in row], "o-", label=f"{fam} K={k} log p")
                if fam == REFERENCE:
                    a1.plot(
                        [f.sigma for f in row], [f.elbo_mean for f in row], "x--", label=f"{fam} K={k} ELBO"
                    )
        s_best = best[fam].sigma
        row = sorted((f for f in mine if f.sigma == s_best), key=lambda f: f.latent_dim)
        a2.plot(
            [f.latent_dim for f in row], [f.ll for f in row], "o-", label=f"{fam} log p (sigma={s_best:g})"
        )
        if fam == REFERENCE:
            a2.plot([f.latent_dim for f in row], [f.elbo_mean for f in row], "x--", label=f"{fam} ELBO")
    a1.set_xscale("log")
    a1.set_xlabel("sigma_eps")
    a1.set_ylabel("nats / point (test)")
    a1.legend(fontsize=6)
    a2.set_xlabel("K")
    a2.set_xticks(dims)
    a2.legend(fontsize=7)
    out.append(("Held-out log-likelihood (IS) and ELBO against sigma_eps and against K", _png(fig)))

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    k_ref = best[REFERENCE].latent_dim
    width = 0.8 / len(fams)
    for i, fam in enumerate(fams):
        f = next(
            (
                g
                for g in fits
                if g.family == fam and g.latent_dim == k_ref and g.sigma == best[REFERENCE].sigma
            ),
            None,
        )
        if f is None:
            continue
        per = _mi(f)
        ax.bar(
            np.arange(len(per)) + i * width,
            [d["mean"] for d in per],
            width,
            yerr=[2 * (d["stderr"] or 0) for d in per],
            label=fam,
        )
    ax.set_xticks(np.arange(k_ref) + width * (len(fams) - 1) / 2, [f"z{i + 1}" for i in range(k_ref)])
    ax.set_ylabel("I(x; z_i), nats")
    ax.legend()
    out.append(
        (
            f"Mutual information per latent dimension at the MFG-VAE's selection (K={k_ref}, "
            f"sigma_eps={best[REFERENCE].sigma:g}); bars ± 2 s.e.",
            _png(fig),
        )
    )
    return out


_BADGE = {
    "ok": "#2e7d32",
    "warning": "#ef6c00",
    "failure suspected": "#c62828",
    "not checked": "#616161",
    "no failure found": "#2e7d32",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and v and isinstance(v[0], dict):
        return "; ".join(", ".join(f"{k}={_fmt(x)}" for k, x in d.items()) for d in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def render_html(report: dict[str, Any], figs: Sequence[tuple[str, str]]) -> str:
    """A self-contained page (figures inlined as PNG data URIs): verdicts, numbers, figures, the grid."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>vaefail diagnosis</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:0.9em;vertical-align:top}"
        "table{border-collapse:collapse}.b{color:#fff;padding:2px 8px;border-radius:4px}"
        "</style></head><body>",
        f"<h1>vaefail diagnosis: {e(Path(report['data']['path']).name)}</h1>",
        f"<p>{report['data']['rows']} rows x {len(report['data']['columns'])} columns"
        f"{' (standardised)' if report['data']['standardised'] else ''}; split train/val/test "
        f"{'/'.join(map(str, report['data']['split']))}. Overall: <span class='b' style='background:"
        f"{_BADGE[report['overall']]}'>{e(report['overall'])}</span></p>",
        "<h2>Checks</h2>",
    ]
    for c in report["checks"]:
        nums = "".join(f"<tr><th>{e(k)}</th><td>{e(_fmt(v))}</td></tr>" for k, v in c["numbers"].items())
        parts.append(
            f"<h3>{e(c['title'])} <span class='b' style='background:{_BADGE[c['verdict']]}'>"
            f"{e(c['verdict'])}</span></h3><p>{e(c['meaning'])}</p><p><i>Guideline:</i> "
            f"{e(c['guideline'])}</p><table>{nums}</table>"
        )
    if "convergence" in report:
        parts.append(f"<p><i>Convergence:</i> {e(report['convergence']['note'])}.</p>")
    parts.append("<h2>Figures</h2>")
    for caption, png in figs:
        parts.append(
            f"<figure><img src='data:image/png;base64,{png}' style='max-width:100%'>"
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )
    cols = [
        "family",
        "latent_dim",
        "sigma_eps",
        "elbo",
        "log_p",
        "log_p_stderr",
        "khat_share_above",
        "active_units",
    ]
    parts.append(
        "<h2>Every fit (test split, nats/point)</h2><table><tr>"
        + "".join(f"<th>{c}</th>" for c in cols)
        + "</tr>"
    )
    for g in report["grid"]:
        parts.append("<tr>" + "".join(f"<td>{e(_fmt(g[c]))}</td>" for c in cols) + "</tr>")
    s = report["settings"]
    parts.append(
        f"</table><p>Budget: {s['restarts']} random restarts x up to {s['steps']} steps per fit; "
        f"log-likelihood by importance sampling with {s['ll_samples']} samples on up to "
        f"{s['max_points']} test points; a difference counts when above 2 s.e. and {MIN_EFFECT} "
        f"nats/point. Took {report.get('seconds', 0):.0f} s ({report.get('computed', 0)} fits "
        "computed, the rest from the store).</p></body></html>"
    )
    return "\n".join(parts)
