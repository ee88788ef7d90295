"""Figures of ``vaefail reproduce``: one function per figure, and :func:`make_figures` to draw them all.

Every figure function takes loaded models (:class:`~vaefail.models.VAE`), a benchmark and data, or an
experiment table, and returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global
state, nothing to close). :func:`save_png` writes one atomically and returns its bytes.

Figures per experiment (only for experiments present in the tables):

- ``px`` and ``latent``, per benchmark: test data with samples from ``p_theta(x)`` and its density
  (:func:`data_figure`); the learned curves ``f_theta(z)`` coloured by ``z`` beside ``f_gt``
  (:func:`curves_figure`); true and learned posteriors at chosen points (:func:`posteriors_figure`).
- ``table1``: test -ELBO against ``K`` (:func:`elbo_vs_k_figure`) and per-dimension mutual information
  (:func:`mi_bars_figure`).
- ``sigma``: test -ELBO and held-out -log-likelihood against ``sigma_eps`` (:func:`sigma_figure`).
- ``semisupervised``, per labelled benchmark: each M2's decoder curves per class beside the truth (the
  paper's Figure 6, :func:`decoder_curves_figure`); ``digits``: accuracies (:func:`digits_figure`).

The learned latent ``z`` of a model is only identified up to reparameterisation, so model panels are
labelled "model's z" and compared with the model's own exact posterior, never with the true ``z``.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vaefail._io import write_atomic
from vaefail.benchmarks import Benchmark, get_benchmark
from vaefail.benchmarks.labelled import LabelledBenchmark, LabelledDataset
from vaefail.metrics.information import encode
from vaefail.metrics.likelihood import decode, exact_log_likelihood
from vaefail.models import LOG_2PI, VAE
from vaefail.quadrature import normalised_density_1d
from vaefail.results import FitResult
from vaefail.semisupervised.model import M2

#: Resolution of every saved PNG.
DPI = 100
#: Colour of each model family (the truth is black, data grey).
COLOURS = {"truth": "black", "vae": "tab:red", "iwae": "tab:blue", "flow": "tab:green"}
DATA_COLOUR = "0.7"
#: Colour map of the latent coordinate along a curve.
Z_CMAP = "viridis"
#: Latent range of the curve figures.
Z_RANGE = 3.0
#: At most this many test points and model samples are drawn per panel.
MAX_POINTS = 2000


@dataclass(frozen=True)
class Panel:
    """A model to draw: its label (e.g. ``"VAE"``), its objective (for the colour) and the model."""

    label: str
    objective: str
    model: VAE


@dataclass(frozen=True)
class FigureFile:
    """A saved figure: ``path`` (a PNG under the figures folder), its title, caption and bytes."""

    experiment: str
    path: Path
    title: str
    caption: str
    png: bytes


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def save_png(fig: Figure, path: str | os.PathLike[str]) -> bytes:
    """Render ``fig`` as PNG, write it atomically (temporary file + rename) and return the bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    fig.clear()
    data = buffer.getvalue()
    write_atomic(path, data)
    return data


def _colour(objective: str) -> str:
    return COLOURS.get(objective, "tab:purple")


def sample_model(model: VAE, n: int, key: jax.Array) -> np.ndarray:
    """``n`` draws from ``p_theta(x)``: ``z ~ N(0, I_K)``, ``x = f_theta(z) + sigma_eps eps``; ``(n, D)``."""
    kz, ke = jax.random.split(key)
    z = jax.random.normal(kz, (n, model.latent_dim))
    mean = np.asarray(decode(model, z), np.float64)
    eps = np.asarray(jax.random.normal(ke, (n, model.x_dim)), np.float64)
    return mean + float(model.sigma) * eps


def _decode_np(model: VAE, z: np.ndarray) -> np.ndarray:
    """``f_theta(z)`` for 1-D latents ``z`` of shape ``(m,)``, float64 ``(m, D)``."""
    return np.asarray(decode(model, jnp.asarray(np.asarray(z).reshape(-1, 1), jnp.float32)), np.float64)


def model_posterior(model: VAE, x: np.ndarray, z_grid: np.ndarray) -> np.ndarray:
    """The model's exact posterior ``p_theta(z|x)`` on a 1-D grid (``K = 1``), normalised by trapezoid."""
    f = _decode_np(model, z_grid)
    sigma = float(model.sigma)
    log_joint = (-0.5 * np.sum((np.asarray(x, np.float64)[None, :] - f) ** 2, axis=1) / sigma**2
                 - 0.5 * z_grid**2)
    return normalised_density_1d(log_joint, z_grid)


def encoder_density(model: VAE, x: np.ndarray, z_grid: np.ndarray) -> np.ndarray:
    """The encoder's ``q(z|x) = N(mu_phi(x), sigma_phi(x)^2)`` on a 1-D grid (``K = 1``)."""
    mu, log_std = encode(model, np.asarray(x, np.float64).reshape(1, -1))
    m, s = float(mu[0, 0]), float(np.exp(log_std[0, 0]))
    return np.exp(-0.5 * ((z_grid - m) / s) ** 2 - math.log(s) - 0.5 * LOG_2PI)


def _limits(x: np.ndarray, margin: float = 0.1) -> tuple[tuple[float, float], tuple[float, float]]:
    lo, hi = np.percentile(x, 0.5, axis=0), np.percentile(x, 99.5, axis=0)
    pad = margin * (hi - lo) + 1e-6
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


def _subsample(x: np.ndarray, n: int = MAX_POINTS) -> np.ndarray:
    return x if len(x) <= n else x[np.linspace(0, len(x) - 1, n).astype(int)]


def _log_density(source: Benchmark | VAE, points: np.ndarray, coarse: bool = False) -> np.ndarray:
    """``log p(x)`` of the truth (quadrature) or of a model with ``K <= 2`` (exact quadrature).

    ``coarse`` uses a cheaper grid for models (1001 nodes in z for ``K = 1``, 101^2 for ``K = 2``): plenty
    for contour lines of 2-D data, whose noise is far wider than the decoder moves between nodes.
    """
    if isinstance(source, VAE):
        if source.latent_dim == 1:
            grid = 1001 if coarse else None
        else:
            grid = 101 if coarse else 121
        return exact_log_likelihood(source, points, grid_size=grid).per_point
    nodes = 8001 if source.name == "clusters" else 2001
    return source.log_prob(points, np.linspace(-8.0, 8.0, nodes))


def _curve_collection(points: np.ndarray, z: np.ndarray, norm: Normalize,
                      width: float = 2.5) -> LineCollection:
    segments = np.stack([points[:-1], points[1:]], axis=1)
    lines = LineCollection(segments, cmap=Z_CMAP, norm=norm, linewidths=width)
    lines.set_array(0.5 * (z[:-1] + z[1:]))
    return lines


def posterior_points(bench: Benchmark) -> list[tuple[str, np.ndarray]]:
    """The data points at which posteriors are shown, with a label each.

    - ``figure8``: the crossing (0, 0) and a point on the curve away from it (``f_gt(z = -1)``);
    - ``clusters``: the midpoint between two neighbouring centres and a centre;
    - ``quadratic``: the symptom values x = 0.01 and x = 0.1 (each explained by two mirror-image t);
    - otherwise: ``f_gt`` at ``z = -1`` and ``z = 0.5``.
    """
    if bench.name == "figure8":
        on = bench.f_gt_np(np.array([[-1.0]]))[0]
        return [("crossing (0, 0)", np.zeros(2)),
                (f"on the curve ({on[0]:.2f}, {on[1]:.2f})", np.round(on, 2))]
    if bench.name == "clusters":
        c = bench.centres()
        mid = 0.5 * (c[1] + c[2])
        return [(f"between centres ({mid[0]:.2f}, {mid[1]:.2f})", mid),
                (f"at a centre ({c[2][0]:.2f}, {c[2][1]:.2f})", c[2])]
    if bench.name == "quadratic":
        out = []
        for x in (0.01, 0.1):
            t = 0.5 - math.sqrt(x)
            out.append((f"x = {x:g} (t = {t:.2f} or {1 - t:.2f})", np.array([x])))
        return out
    return [(f"f_gt(z = {z:g})", bench.f_gt_np(np.array([[z]]))[0]) for z in (-1.0, 0.5)]


# ------------------------------------------------------------------------------------------------
# Figures for px / latent: data, curves, posteriors
# ------------------------------------------------------------------------------------------------


def data_figure(bench: Benchmark, x_test: np.ndarray, panels: Sequence[Panel], key: jax.Array) -> Figure:
    """Test data (grey) with samples from ``p(x)`` of the truth and of each model, and the density.

    2-D data: contour lines of ``log p(x)`` (quadrature; models with ``K <= 2``). 1-D data: histograms of
    the data and of the samples, with the density curve.
    """
    n = min(len(x_test), MAX_POINTS if bench.x_dim == 1 else MAX_POINTS // 2)
    x_test = _subsample(x_test, n)
    sources: list[tuple[str, str, Benchmark | VAE]] = [("truth", "truth", bench)]
    sources += [(p.label, p.objective, p.model) for p in panels]
    fig = Figure(figsize=(4.0 * len(sources), 3.9), layout="constrained")
    axes = fig.subplots(1, len(sources), sharex=True, sharey=True, squeeze=False)[0]
    keys = jax.random.split(key, len(sources))
    if bench.x_dim == 2:
        (x0, x1), (y0, y1) = _limits(x_test, 0.15)
        gx, gy = np.meshgrid(np.linspace(x0, x1, 70), np.linspace(y0, y1, 70))
        grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    else:
        lo, hi = float(np.min(x_test)), float(np.max(x_test))
        pad = 0.1 * (hi - lo) + 1e-6
        xs = np.linspace(lo - pad, hi + pad, 400)
        bins = np.linspace(lo - pad, hi + pad, 60)
    for ax, (label, objective, source), k in zip(axes, sources, keys, strict=True):
        colour = _colour(objective)
        if isinstance(source, VAE):
            samples = sample_model(source, n, k)
            can_density = source.latent_dim <= 2
        else:
            samples = source.sample(k, n).x
            can_density = True
        if bench.x_dim == 2:
            if can_density:
                logp = _log_density(source, grid, coarse=True).reshape(gx.shape)
                top = float(np.nanmax(logp))
                levels = np.linspace(top - 8.0, top, 9)
                ax.contour(gx, gy, np.maximum(logp, top - 8.5), levels=levels, cmap="copper_r",
                           linewidths=0.8)
            ax.scatter(x_test[:, 0], x_test[:, 1], s=4, c=DATA_COLOUR, alpha=0.6, lw=0)
            ax.scatter(samples[:, 0], samples[:, 1], s=3, c=colour, alpha=0.7, lw=0)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel("x1")
            if ax is axes[0]:
                ax.set_ylabel("x2")
        else:
            ax.hist(x_test[:, 0], bins=bins, density=True, color=DATA_COLOUR, alpha=0.6)
            ax.hist(samples[:, 0], bins=bins, density=True, histtype="step", color=colour, lw=1.5)
            if can_density:
                dens = np.exp(_log_density(source, xs.reshape(-1, 1)))
                ax.plot(xs, dens, color=colour, lw=1.0, ls="--")
            ax.set_xlabel("x")
            if ax is axes[0]:
                ax.set_ylabel("density")
        title = "truth p(x)" if label == "truth" else f"{label}: p_theta(x)"
        ax.set_title(title, fontsize=10)
    handles = [Line2D([], [], ls="none", marker="o", color=DATA_COLOUR, label="test data")]
    handles += [Line2D([], [], ls="none", marker="o", ms=4, color=_colour(obj), label=f"samples ({label})")
                for label, obj, _ in sources]
    if bench.x_dim == 2:
        handles.append(Line2D([], [], color="sienna", lw=0.8, label="log p(x), 1-nat levels"))
    else:
        handles.append(Line2D([], [], color="0.3", lw=1.0, ls="--", label="density p(x)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{bench.name}: test data (grey), samples from p(x) (colour)"
                 + (", contours of log p(x) (8 nats)" if bench.x_dim == 2 else ""), fontsize=11)
    return fig


def curves_figure(bench: Benchmark, x_test: np.ndarray, z_test: np.ndarray | None, panels: Sequence[Panel],
                  marks: Sequence[tuple[str, np.ndarray]] = ()) -> Figure:
    """The true curve ``f_gt(z)`` and each learned ``f_theta(z)`` for z in [-3, 3], coloured by z.

    2-D data: the curves over the test data (grey); ``marks`` (e.g. the posterior points) are drawn as
    crosses. 1-D data: ``x`` against ``z``; the data are placed at the true ``z`` (truth panel) or at the
    encoder mean ``mu_phi(x)`` (model panels), since each model has its own ``z``.
    """
    panels = [p for p in panels if p.model.latent_dim == 1]
    z = np.linspace(-Z_RANGE, Z_RANGE, 601)
    norm = Normalize(-Z_RANGE, Z_RANGE)
    x_test = _subsample(x_test)
    n_cols = 1 + len(panels)
    fig = Figure(figsize=(4.0 * n_cols + 0.6, 3.9), layout="constrained")
    axes = fig.subplots(1, n_cols, sharex=bench.x_dim == 2, sharey=True, squeeze=False)[0]
    curves = [("truth", "true z", bench.f_gt_np(z.reshape(-1, 1)), None)]
    for p in panels:
        mu = encode(p.model, x_test)[0][:, 0] if bench.x_dim == 1 else None
        curves.append((p.label, "model's z", _decode_np(p.model, z), mu))
    lines = None
    for ax, (label, zname, f, mu) in zip(axes, curves, strict=True):
        if bench.x_dim == 2:
            (x0, x1), (y0, y1) = _limits(x_test, 0.15)
            ax.scatter(x_test[:, 0], x_test[:, 1], s=3, c=DATA_COLOUR, alpha=0.4, lw=0)
            lines = ax.add_collection(_curve_collection(f, z, norm))
            for name, point in marks:
                ax.plot(point[0], point[1], "x", color="crimson", ms=8, mew=2)
                if label == "truth":
                    ax.annotate(name.split(" (")[0], point, textcoords="offset points", xytext=(5, 5),
                                fontsize=7, color="crimson")
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel("x1")
            if ax is axes[0]:
                ax.set_ylabel("x2")
        else:
            zs = z_test[: len(x_test), 0] if (label == "truth" and z_test is not None) else mu
            if zs is not None:
                ax.scatter(zs, x_test[: len(zs), 0], s=3, c=DATA_COLOUR, alpha=0.4, lw=0,
                           label="test data at " + ("true z" if label == "truth" else "mu_phi(x)"))
            points = np.stack([z, f[:, 0]], axis=1)
            lines = ax.add_collection(_curve_collection(points, z, norm))
            ax.set_xlim(-Z_RANGE - 0.2, Z_RANGE + 0.2)
            lo, hi = float(np.min(x_test)), float(np.max(x_test))
            ax.set_ylim(lo - 0.3 * (hi - lo) - 1e-6, hi + 0.3 * (hi - lo) + 1e-6)
            ax.set_xlabel(zname)
            if ax is axes[0]:
                ax.set_ylabel("x")
            ax.legend(loc="upper center", fontsize=7, markerscale=3)
        ax.set_title("truth f_gt(z)" if label == "truth" else f"{label}: f_theta(z)", fontsize=10)
    if lines is not None:
        fig.colorbar(lines, ax=list(axes), shrink=0.8, label="z (each panel's own latent)")
    fig.suptitle(f"{bench.name}: decoder curves for z in [-{Z_RANGE:g}, {Z_RANGE:g}], coloured by z",
                 fontsize=11)
    return fig


def posteriors_figure(bench: Benchmark, panels: Sequence[Panel],
                      points: Sequence[tuple[str, np.ndarray]]) -> Figure:
    """True posterior ``p_gt(z|x)`` (in true z) and, per model, its exact posterior ``p_theta(z|x)`` with
    its encoder ``q(z|x)`` (in the model's own z), one row per chosen point."""
    panels = [p for p in panels if p.model.latent_dim == 1]
    n_cols = 1 + len(panels)
    fig = Figure(figsize=(3.8 * n_cols, 2.7 * len(points)), layout="constrained")
    axes = fig.subplots(len(points), n_cols, squeeze=False)
    z_true = np.linspace(-4.0, 4.0, 8001)
    z_model = np.linspace(-5.0, 5.0, 4001)
    for r, (name, x) in enumerate(points):
        ax = axes[r, 0]
        _, dens = bench.posterior(np.asarray(x).reshape(1, -1), z_true)
        ax.fill_between(z_true, dens[0], color="0.3", alpha=0.25, lw=0)
        ax.plot(z_true, dens[0], color="black", lw=1.2, label="p_gt(z|x)")
        ax.set_xlim(*_support(z_true, dens[0], 4.0))
        ax.set_title(f"truth, {name}", fontsize=9)
        ax.set_xlabel("true z")
        ax.set_ylabel("density")
        ax.legend(fontsize=7, loc="upper right")
        for c, p in enumerate(panels, start=1):
            ax = axes[r, c]
            post = model_posterior(p.model, x, z_model)
            q = encoder_density(p.model, x, z_model)
            colour = _colour(p.objective)
            ax.fill_between(z_model, post, color=colour, alpha=0.2, lw=0)
            ax.plot(z_model, post, color=colour, lw=1.2, label="p_theta(z|x) (exact)")
            ax.plot(z_model, q, color="black", lw=1.2, ls="--", label="q(z|x) (encoder)")
            ax.set_xlim(*_support(z_model, np.maximum(post, q), 5.0))
            ax.set_title(f"{p.label}, {name}", fontsize=9)
            ax.set_xlabel("model's z")
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{bench.name}: posteriors at chosen points (each model in its own latent coordinate)",
                 fontsize=11)
    return fig


def _support(z: np.ndarray, density: np.ndarray, cap: float) -> tuple[float, float]:
    """An x-range holding the visible mass of ``density`` on ``z`` (at least 1 wide, within +-cap)."""
    keep = density > 1e-3 * np.max(density) if np.max(density) > 0 else np.ones_like(z, bool)
    lo, hi = float(z[keep].min()), float(z[keep].max())
    pad = max(0.15 * (hi - lo), 0.3)
    lo, hi = lo - pad, hi + pad
    if hi - lo < 1.0:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - 0.5, mid + 0.5
    return max(lo, -cap), min(hi, cap)


# ------------------------------------------------------------------------------------------------
# Figures from tables: table1, sigma
# ------------------------------------------------------------------------------------------------


def _std(row: pd.Series, col: str) -> float:
    value = row.get(f"{col}_std", np.nan)
    return float(value) if value is not None and np.isfinite(value) else 0.0


#: The three parts of -ELBO (column of the learned model, of the truth, label, colour).
ELBO_PARTS = (
    ("neg_log_p", "truth_neg_log_p", "-log p(x)", "0.55"),
    ("approximation_gap", "truth_approximation_gap", "approximation gap (Gaussian family)", "tab:orange"),
    ("amortisation_gap", "truth_amortisation_gap", "amortisation gap (encoder network)", "tab:purple"),
)


def elbo_parts_figure(table: pd.DataFrame) -> Figure:
    """Per benchmark, stacked bars of ``-ELBO = -log p + approximation gap + amortisation gap`` for the truth
    (its trained encoder) and for every learned configuration of ``table`` (mean over repeats); a tick
    marks each bar's ``-ELBO*`` (``-log p`` + approximation gap: the bound without amortisation)."""
    t = table[table.neg_elbo_star.notna()] if "neg_elbo_star" in table else table.iloc[0:0]
    if t.empty:
        raise ValueError("the table has no optimal-bound columns (evaluate with the 'bounds' section)")
    if "sigma_mode" in t:
        t = t[t.sigma_mode == "fixed"]
    benches = list(dict.fromkeys(t.benchmark))
    label_cols = [c for c in ("objective", "latent_dim", "sigma_factor") if c in t and t[c].nunique() > 0]
    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * (len(t) / max(1, len(benches)) + 1)) * len(benches), 3.9),
                 layout="constrained")
    axes = fig.subplots(1, len(benches), squeeze=False)[0]
    for ax, bench in zip(axes, benches, strict=True):
        sub = t[t.benchmark == bench]
        bars: list[tuple[str, list[float]]] = []
        first = sub.iloc[0]
        bars.append(("truth", [float(first.get(tc, np.nan)) for _, tc, _, _ in ELBO_PARTS]))
        for _, row in sub.iterrows():
            label = " ".join(
                (str(row[c]).upper() if c == "objective" else f"K={int(row[c])}" if c == "latent_dim"
                 else f"{row[c]:g}x sigma") for c in label_cols)
            bars.append((label, [float(row.get(mc, np.nan)) for mc, _, _, _ in ELBO_PARTS]))
        for i, (_, parts) in enumerate(bars):
            bottom = 0.0
            for j, ((_, _, name, colour), value) in enumerate(zip(ELBO_PARTS, parts, strict=True)):
                if not np.isfinite(value):
                    continue
                ax.bar(i, value, bottom=bottom, color=colour, edgecolor="black", lw=0.5,
                       label=name if i == 0 or (i == 1 and j == 2) else None)
                bottom += value
                if j == 1:
                    ax.plot([i - 0.4, i + 0.4], [bottom, bottom], color="black", lw=1.5)
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=30, ha="right", fontsize=8)
        lo = np.nanmin([p[0] for _, p in bars])
        totals = np.array([np.nansum(p) for _, p in bars])
        star = np.array([np.nansum(p[:2]) for _, p in bars])
        # an IWAE encoder's plain-ELBO amortisation gap can be 10x the rest: clip it, print its total
        top = float(min(np.max(totals), 1.5 * np.max(star)))
        floor = max(0.0, lo - 0.3 * (top - lo + 0.05)) if lo > 0 else min(0.0, lo * 1.1)
        ax.set_ylim(floor, top * 1.02 + 0.01)
        for i, total in enumerate(totals):
            if total > top * 1.02:
                ax.text(i, top, f"-ELBO {total:.2f}", ha="center", va="top", fontsize=7, color="white")
        ax.set_ylabel("nats per test point (lower is better)")
        ax.set_title(bench, fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=True))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    fig.suptitle("-ELBO = -log p + approximation gap + amortisation gap (black tick: -ELBO*)", fontsize=11)
    return fig


def elbo_vs_k_figure(table: pd.DataFrame, sigma_mode: str = "fixed") -> Figure:
    """Test -ELBO (the objective's own bound, negated) against K, one line per objective, per benchmark.

    Error bars are the standard deviation over repeats; the dotted line is the true ``-E log p_gt(x)``
    on the test data (the best any model can reach in expectation) and hollow markers the ground truth's
    own bound with its best encoder, when the table has them.
    """
    t = table
    if "sigma_mode" in t:
        t = t[t.sigma_mode == sigma_mode]
    benches = list(dict.fromkeys(t.benchmark))
    fig = Figure(figsize=(4.6 * len(benches), 3.6), layout="constrained")
    axes = fig.subplots(1, len(benches), squeeze=False)[0]
    for ax, bench in zip(axes, benches, strict=True):
        sub = t[t.benchmark == bench]
        for objective in dict.fromkeys(sub.objective):
            rows = sub[sub.objective == objective].sort_values("latent_dim")
            colour = _colour(objective)
            ax.errorbar(rows.latent_dim, rows.test_neg_elbo,
                        yerr=[_std(r, "test_neg_elbo") for _, r in rows.iterrows()],
                        color=colour, marker="o", capsize=3, label=f"{objective.upper()}")
            if "truth_test_neg_elbo" in rows:
                truth = rows.dropna(subset=["truth_test_neg_elbo"])
                ax.plot(truth.latent_dim, truth.truth_test_neg_elbo, ls="none", marker="s", ms=8,
                        mfc="none", mec=colour, mew=1.5, label=f"truth + best encoder ({objective.upper()})")
        if "test_neg_log_prob_true" in sub and np.isfinite(sub.test_neg_log_prob_true).any():
            ax.axhline(float(np.nanmean(sub.test_neg_log_prob_true)), color="black", ls=":", lw=1,
                       label="true -E log p(x)")
        ks = sorted(set(int(k) for k in sub.latent_dim))
        ax.set_xticks(ks)
        ax.set_xlabel("latent dimension K (truth: K = 1)")
        ax.set_ylabel("test -ELBO / -bound (nats, lower is better)")
        ax.set_title(f"{bench} (sigma_eps {sigma_mode})", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("Table 1: test -ELBO against K (mean ± std over repeats)", fontsize=11)
    return fig


def mi_bars_figure(table: pd.DataFrame, per_dim: Callable[[str], list[float]], sigma_mode: str = "fixed",
                   cap: float | None = None) -> Figure:
    """Per-dimension mutual information ``I(x; z_i)`` for each K, one panel per (benchmark, objective).

    ``per_dim(key)`` returns the per-dimension values of one stored configuration; bars are the mean over
    the row's repeats (``keys``), error bars their std. ``cap`` (``log M`` of the estimator) is drawn as a
    dotted line: no estimate can exceed it.
    """
    t = table
    if "sigma_mode" in t:
        t = t[t.sigma_mode == sigma_mode]
    benches = list(dict.fromkeys(t.benchmark))
    objectives = list(dict.fromkeys(t.objective))
    fig = Figure(figsize=(3.8 * len(objectives), 3.0 * len(benches)), layout="constrained")
    axes = fig.subplots(len(benches), len(objectives), squeeze=False, sharey=True)
    for r, bench in enumerate(benches):
        for c, objective in enumerate(objectives):
            ax = axes[r, c]
            rows = t[(t.benchmark == bench) & (t.objective == objective)].sort_values("latent_dim")
            colour = _colour(objective)
            for _, row in rows.iterrows():
                k = int(row.latent_dim)
                values = np.array([per_dim(key) for key in str(row["keys"]).split()], dtype=float)
                if values.ndim != 2 or values.shape[1] != k:
                    continue
                mean = np.nanmean(values, axis=0)
                std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else None
                width = 0.8 / k
                xs = k - 0.4 + width * (np.arange(k) + 0.5)
                ax.bar(xs, mean, width=width * 0.9, yerr=std, color=colour, alpha=0.75, capsize=2,
                       edgecolor="black", lw=0.5)
                for i, (x, m) in enumerate(zip(xs, mean, strict=True)):
                    ax.annotate(f"z{i + 1}", (x, 0), textcoords="offset points", xytext=(0, 2),
                                ha="center", fontsize=6, color="white" if m > 0.3 else "black")
                ax.plot([k - 0.42, k + 0.42], [np.mean(mean)] * 2, color="black", lw=1.2,
                        label="average over i" if k == 1 else None)
            if cap is not None:
                ax.axhline(cap, color="0.4", ls=":", lw=1, label="log M (estimator cap)")
            ax.set_xticks(sorted(set(int(k) for k in rows.latent_dim)))
            ax.set_xlabel("latent dimension K")
            if c == 0:
                ax.set_ylabel("I(x; z_i) (nats)")
            ax.set_title(f"{bench}, {objective.upper()}", fontsize=10)
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Table 1: per-dimension mutual information I(x; z_i) (sigma_eps {sigma_mode}; "
                 "mean ± std over repeats)", fontsize=11)
    return fig


def sigma_figure(table: pd.DataFrame) -> Figure:
    """Test -ELBO and held-out -log p_theta(x) against sigma_eps (log scale), per configuration group.

    The true sigma_eps is a dashed vertical line; each criterion's selected value (its minimum) a star.
    """
    groups = [c for c in ("benchmark", "objective", "latent_dim") if c in table]
    grouped = list(table.groupby(groups, sort=False)) if groups else [((), table)]
    fig = Figure(figsize=(5.2 * len(grouped), 3.8), layout="constrained")
    axes = fig.subplots(1, len(grouped), squeeze=False)[0]
    for ax, (labels, sub) in zip(axes, grouped, strict=True):
        labels = labels if isinstance(labels, tuple) else (labels,)
        info = dict(zip(groups, labels, strict=True))
        bench = get_benchmark(info["benchmark"]) if "benchmark" in info else None
        true_sigma = bench.sigma_eps if bench is not None else 1.0
        sub = sub.sort_values("sigma_factor")
        sigma = sub.sigma_factor.to_numpy(float) * true_sigma
        for col, label, colour, marker in (("test_neg_elbo", "test -ELBO", "tab:red", "o"),
                                           ("test_neg_ll", "held-out -log p_theta(x)", "tab:green", "s")):
            if col not in sub:
                continue
            values = sub[col].to_numpy(float)
            ax.errorbar(sigma, values, yerr=[_std(r, col) for _, r in sub.iterrows()], color=colour,
                        marker=marker, capsize=3, label=label)
            if np.isfinite(values).any():
                best = int(np.nanargmin(values))
                who = "ELBO" if col == "test_neg_elbo" else "log-likelihood"
                ax.plot(sigma[best], values[best], marker="*", ms=16, color=colour, mec="black",
                        ls="none", label=f"{who} selects {sub.sigma_factor.iloc[best]:g} x truth")
        if "test_neg_log_prob_true" in sub and np.isfinite(sub.test_neg_log_prob_true).any():
            ax.axhline(float(np.nanmean(sub.test_neg_log_prob_true)), color="black", ls=":", lw=1,
                       label="true -E log p(x)")
        ax.axvline(true_sigma, color="black", ls="--", lw=1, label=f"true sigma_eps = {true_sigma:.3g}")
        ax.set_xscale("log")
        ax.set_xticks(sigma, [f"{s:.3g}" for s in sigma])
        ax.minorticks_off()
        ax.set_xlabel("fixed sigma_eps (log scale)")
        ax.set_ylabel("nats per point (lower is better)")
        ax.set_title(", ".join(f"{v}" if k != "latent_dim" else f"K = {v}" for k, v in info.items()),
                     fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("Choosing sigma_eps: test -ELBO vs held-out -log-likelihood\n(mean ± std over repeats)",
                 fontsize=10)
    return fig


def parse_params(label: Any) -> dict[str, float | str]:
    """A ``benchmark_params`` table label (``"sigma_eps=0.1 radius=2"``) back to a dict (numbers as float)."""
    out: dict[str, float | str] = {}
    if not isinstance(label, str):
        return out
    for part in label.split():
        name, sep, value = part.partition("=")
        if not sep:
            continue
        try:
            out[name] = float(value)
        except ValueError:
            out[name] = value
    return out


def sweep_figure(table: pd.DataFrame, low: int = 1, high: int = 2) -> Figure:
    """Where the ELBO prefers more latent dimensions: ``-ELBO(K=high) - (-ELBO(K=low))`` per swept setting.

    Negative (blue) means the larger K has the better test ELBO. When the settings form a grid over two
    numeric benchmark parameters, a heat map annotated with the difference and two standard errors;
    otherwise a bar chart with two-standard-error bars.
    """
    rows = []
    for params, sub in table.groupby("benchmark_params", sort=False):
        a, b = sub[sub.latent_dim == low], sub[sub.latent_dim == high]
        if a.empty or b.empty:
            continue
        a, b = a.iloc[0], b.iloc[0]
        se = math.hypot(_std(a, "test_neg_elbo") / math.sqrt(max(int(a.get("repeats", 1)), 1)),
                        _std(b, "test_neg_elbo") / math.sqrt(max(int(b.get("repeats", 1)), 1)))
        rows.append((str(params), parse_params(params), float(b.test_neg_elbo - a.test_neg_elbo), 2 * se))
    if not rows:
        raise ValueError(f"the sweep table has no setting with both K = {low} and K = {high}")
    names = list(rows[0][1])
    numeric = len(names) == 2 and all(
        set(r[1]) == set(names) and all(isinstance(r[1][n], float) for n in names) for r in rows)
    title = f"-ELBO(K={high}) - (-ELBO(K={low})) in nats: negative = the ELBO prefers K = {high}"
    bench = str(table.benchmark.iloc[0]) if "benchmark" in table else ""
    if numeric:
        xs = sorted({r[1][names[0]] for r in rows})
        ys = sorted({r[1][names[1]] for r in rows})
        grid = np.full((len(ys), len(xs)), np.nan)
        for _, p, diff, _ in rows:
            grid[ys.index(p[names[1]]), xs.index(p[names[0]])] = diff
        fig = Figure(figsize=(1.6 * len(xs) + 2.6, 1.1 * len(ys) + 1.8), layout="constrained")
        ax = fig.subplots()
        scale = float(np.nanmax(np.abs(grid))) or 1.0
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-scale, vmax=scale, origin="lower", aspect="auto")
        for _, p, diff, margin in rows:
            i, j = ys.index(p[names[1]]), xs.index(p[names[0]])
            ax.text(j, i, f"{diff:+.3f}" + (f"\n± {margin:.3f}" if margin > 0 else ""), ha="center",
                    va="center", fontsize=8, color="white" if abs(diff) > 0.6 * scale else "black")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        fig.colorbar(image, ax=ax, label="nats per point")
    else:
        fig = Figure(figsize=(max(5.0, 1.1 * len(rows) + 1.5), 3.8), layout="constrained")
        ax = fig.subplots()
        diffs = [r[2] for r in rows]
        ax.bar(range(len(rows)), diffs, yerr=[r[3] for r in rows], capsize=3,
               color=["tab:blue" if d < 0 else "tab:red" for d in diffs])
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(range(len(rows)), [r[0].replace(" ", "\n") for r in rows], fontsize=7)
        ax.set_ylabel("nats per point")
    ax.set_title(f"{bench}: {title}", fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------------
# Semi-supervised: decoder curves per class (the paper's Figure 6) and digits accuracies
# ------------------------------------------------------------------------------------------------


def decoder_curves_figure(bench: LabelledBenchmark, data: LabelledDataset,
                          panels: Sequence[tuple[str, M2]]) -> Figure:
    """The paper's Figure 6: each M2's decoder curves :math:`f_\\theta(y, \\cdot)` per class beside the
    truth's :math:`f_{gt}(y, \\cdot)`, one column per model.

    Top row: the curves in the data plane over the test data (coloured by label), a dot at ``z = 0`` and
    an arrow towards increasing z; on ``semicircle`` both classes share one arc, so the curves overlap
    there whatever the model does, and the arrows show whether the classes still run in opposite
    directions. Bottom row: data coordinate ``x0`` against z, where functional collapse shows as the
    solid curves of the two classes lying on top of each other while the dashed true ones differ.
    Drawn by :func:`vaefail.semisupervised.plot_decoder_curves`.
    """
    from vaefail.semisupervised import plot_decoder_curves

    fig = Figure(figsize=(4.3 * max(1, len(panels)), 8.0), layout="constrained")
    axes = fig.subplots(2, max(1, len(panels)), squeeze=False)
    for j, (label, model) in enumerate(panels):
        plot_decoder_curves(model, bench, axes[0, j], kind="data", data=data, max_points=MAX_POINTS // 2,
                            title=f"{label}: curves over the data")
        plot_decoder_curves(model, bench, axes[1, j], kind="latent", coordinate=0,
                            title=f"{label}: x0 against z")
    fig.suptitle(f"{bench.name}: decoder curves per class, learned (solid) and true (dashed)", fontsize=10)
    return fig


def digits_figure(table: pd.DataFrame) -> Figure:
    """Test accuracy on digits per labelled budget: M2 and the labelled-only classifiers, mean ± std over
    seeds."""
    methods = [(c, label) for c, label in (("m2_accuracy", "M2"), ("logistic_accuracy", "logistic (labelled "
               "only)"), ("mlp_accuracy", "MLP (labelled only)")) if c in table]
    fig = Figure(figsize=(2.2 + 1.6 * len(table), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(table))
    for i, (col, label) in enumerate(methods):
        values = table[col].to_numpy(float)
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, values, width,
               yerr=[_std(r, col) for _, r in table.iterrows()], capsize=3, label=label,
               color=("tab:red", "tab:gray", "tab:blue")[i % 3])
    ax.set_xticks(x, [f"{v} labels per class" if v != "all" else "all labels"
                      for v in table.labels_per_class])
    low = float(np.nanmin(table[[c for c, _ in methods]].to_numpy(float))) if methods else 0.0
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("digits: M2 against classifiers trained on the labelled points alone\n"
                 "(mean ± std over seeds)", fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------------
# All figures of a reproduction
# ------------------------------------------------------------------------------------------------


class _Runs:
    """Loads fitted runs and metrics from a store, each once."""

    def __init__(self, store: Any):
        self.store = store
        self._results: dict[str, Any] = {}
        self._metrics: dict[str, dict[str, Any]] = {}

    def result(self, key: str) -> Any:
        """The stored run of configuration ``key`` (any family), loaded once."""
        if key not in self._results:
            self._results[key] = FitResult.load(self.store.path(key))
        return self._results[key]

    m2_result = result

    def metrics(self, key: str) -> dict[str, Any]:
        if key not in self._metrics:
            self._metrics[key] = self.store.metrics(key)
        return self._metrics[key]

    def per_dim_mi(self, key: str) -> list[float]:
        mi = self.metrics(key).get("metrics", {}).get("mutual_information") or {}
        return [float("nan") if d.get("mean") is None else float(d["mean"]) for d in mi.get("per_dim", [])]

    def mi_cap(self, keys: Sequence[str]) -> float | None:
        caps = [(self.metrics(k).get("metrics", {}).get("mutual_information") or {}).get("log_mixture_size")
                for k in keys]
        caps = [float(c) for c in caps if c is not None]
        return min(caps) if caps else None


def _first_key(row: pd.Series) -> str:
    return str(row["keys"]).split()[0]


def _benchmark_groups(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The table's rows per benchmark (and per ``benchmark_params`` setting, if swept), with a file stem."""
    cols = ["benchmark"] + (["benchmark_params"] if "benchmark_params" in table else [])
    groups = list(table.groupby(cols, sort=False, dropna=False))
    out = []
    for labels, sub in groups:
        labels = labels if isinstance(labels, tuple) else (labels,)
        stem = str(labels[0])
        if len(labels) > 1 and table["benchmark_params"].nunique(dropna=False) > 1:
            stem += "_" + "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in str(labels[1]))
        out.append((stem, sub))
    return out


def _benchmark_panels(sub: pd.DataFrame, runs: _Runs) -> tuple[list[Panel], Any]:
    """One panel per objective (repeat 0 of the first K = 1 row), and the first panel's fitted result."""
    if "latent_dim" in sub:
        sub = sub[sub.latent_dim == 1]
    panels, first = [], None
    for objective in dict.fromkeys(sub.objective):
        row = sub[sub.objective == objective].iloc[0]
        result = runs.result(_first_key(row))
        first = first or result
        panels.append(Panel(str(objective).upper(), str(objective), result.model))
    return panels, first


def _family_panels(sub: pd.DataFrame, runs: _Runs) -> tuple[list[Panel], Any]:
    """One panel per (objective, encoder) of the K = 1 rows (repeat 0), and the first panel's result."""
    if "latent_dim" in sub:
        sub = sub[sub.latent_dim == 1]
    panels, first = [], None
    for _, row in sub.iterrows():
        result = runs.result(_first_key(row))
        first = first or result
        encoder = str(row.get("encoder", "gaussian"))
        label = str(row.objective).upper() + (" + flow" if encoder == "flow" else "")
        panels.append(Panel(label, str(row.objective), result.model))
    return panels, first


def _m2_panels(sub: pd.DataFrame, runs: _Runs) -> tuple[list[tuple[str, M2]], Any]:
    """One panel per (objective, encoder) row (its repeat 0), labelled with that run's collapse score."""
    panels, first = [], None
    several = "encoder" in sub and sub.encoder.nunique() > 1
    for _, row in sub.iterrows():
        key = _first_key(row)
        result = runs.m2_result(key)
        first = first or result
        score = ((runs.metrics(key).get("test") or {}).get("collapse") or {}).get("score")
        label = str(row.objective).upper() + (f", {row.encoder}" if several else "")
        label += f" (collapse score {score:.2f})" if score is not None else ""
        panels.append((label, result.model))
    return panels, first


def make_figures(store: Any, tables: dict[str, pd.DataFrame], out_dir: str | os.PathLike[str], *,
                 seed: int = 0) -> tuple[dict[str, list[FigureFile]], list[str]]:
    """Draw every figure for the experiments in ``tables`` into ``out_dir``.

    Returns the saved figures per experiment and a list of errors: a figure that fails is reported (and
    warned about) rather than stopping the others, so hours of computed results still get a report.
    """
    out_dir = Path(out_dir)
    runs = _Runs(store)
    figures: dict[str, list[FigureFile]] = {name: [] for name in tables}
    errors: list[str] = []
    key = jax.random.PRNGKey(seed)

    def emit(experiment: str, stem: str, title: str, caption: str, build: Callable[[], Figure]) -> None:
        try:
            fig = build()
            path = out_dir / f"{stem}.png"
            figures[experiment].append(FigureFile(experiment, path, title, caption, save_png(fig, path)))
        except Exception as err:  # noqa: BLE001 - one broken figure must not lose the report
            message = f"{stem}: {type(err).__name__}: {err}"
            warnings.warn(f"figure not drawn: {message}", stacklevel=2)
            errors.append(message)

    for name in ("px", "latent"):
        table = tables.get(name)
        if table is None or table.empty:
            continue
        for bench_name, sub in _benchmark_groups(table):
            try:
                panels, result = _benchmark_panels(sub, runs)
            except Exception as err:  # noqa: BLE001
                errors.append(f"{name}_{bench_name}: cannot load models: {type(err).__name__}: {err}")
                continue
            if result is None:
                continue
            bench = result.benchmark
            test = result.splits().test
            points = posterior_points(bench)
            emit(name, f"{name}_{bench_name}_data", f"{bench_name}: data and samples from p(x)",
                 "Test data (grey) and samples from p(x) of the truth and of each model (repeat 0)"
                 + (", with contours of log p(x) (exact quadrature)." if bench.x_dim == 2 else
                    ", as histograms, with the density (dashed)."),
                 lambda b=bench, t=test, p=panels: data_figure(b, t.x, p, key))
            emit(name, f"{name}_{bench_name}_curves", f"{bench_name}: decoder curves",
                 "The true decoder f_gt(z) and each model's f_theta(z) for z in [-3, 3], coloured by z. "
                 + ("Crosses: the points where posteriors are shown." if bench.x_dim == 2 else
                    "Data are placed at the true z (truth) or at the encoder mean mu_phi(x) (models)."),
                 lambda b=bench, t=test, p=panels, m=points: curves_figure(b, t.x, t.z, p, m))
            emit(name, f"{name}_{bench_name}_posteriors", f"{bench_name}: posteriors",
                 "Left: the true posterior p_gt(z|x) in the true z. Other columns: each model's exact "
                 "posterior p_theta(z|x) (filled) and its encoder q(z|x) (dashed), in the model's own z "
                 "(a model's z is only identified up to reparameterisation).",
                 lambda b=bench, p=panels, m=points: posteriors_figure(b, p, m))

    for name in ("px", "latent", "table1", "sigma"):
        table = tables.get(name)
        if table is not None and not table.empty and "neg_elbo_star" in table:
            emit(name, f"{name}_elbo_parts", "The three parts of -ELBO",
                 "Stacked: -log p_theta(x) (the model's fit of the data), the approximation gap (min over "
                 "Gaussians q of KL(q || p_theta(z|x)): what the Gaussian family costs) and the amortisation "
                 "gap (what the encoder network loses against the best Gaussian per point), for the truth "
                 "(true decoder with its trained encoder) and each learned model (sigma_eps fixed), test "
                 "points, mean over repeats. The black tick is -ELBO*, the bound without amortisation: the "
                 "comparison that says which decoder the ELBO's optimum prefers.",
                 lambda t=table: elbo_parts_figure(t))
    table = tables.get("flexible")
    if table is not None and not table.empty:
        for bench_name, sub in _benchmark_groups(table):
            try:
                panels, result = _family_panels(sub, runs)
            except Exception as err:  # noqa: BLE001
                errors.append(f"flexible_{bench_name}: cannot load models: {type(err).__name__}: {err}")
                continue
            if result is None:
                continue
            test = result.splits().test
            emit("flexible", f"flexible_{bench_name}_curves", f"{bench_name}: decoder curves per family",
                 "The true decoder f_gt(z) and the f_theta(z) of each family (MFG-VAE, IWAE, and both with a "
                 "normalising-flow encoder), K = 1, repeat 0, for z in [-3, 3], coloured by z. For flow "
                 "encoders the data are placed at the flow's base mean, not at E_q[z|x].",
                 lambda b=result.benchmark, t=test, p=panels: curves_figure(b, t.x, t.z, p,
                                                                            posterior_points(b)))

    table = tables.get("table1")
    if table is not None and not table.empty:
        emit("table1", "table1_elbo_vs_k", "Test -ELBO against K",
             "Test -ELBO (each objective's own bound, negated) against the latent dimension K, sigma_eps "
             "fixed at the truth; error bars: std over repeats. Dotted: the true -E log p(x); hollow "
             "squares: the ground truth with its best encoder.",
             lambda: elbo_vs_k_figure(table))
        keys = [k for s in table["keys"] for k in str(s).split()]
        emit("table1", "table1_mi_per_dim", "Mutual information per latent dimension",
             "I(x; z_i) per latent dimension for each K (sigma_eps fixed; mean ± std over repeats); "
             "the black bar is the average over dimensions (the paper's Table 1 quantity).",
             lambda: mi_bars_figure(table, runs.per_dim_mi, cap=runs.mi_cap(keys)))

    table = tables.get("sweep")
    if table is not None and not table.empty and "benchmark_params" in table:
        emit("sweep", "sweep_k2_minus_k1", "Where the ELBO prefers K = 2",
             "Test -ELBO with K = 2 minus test -ELBO with the true K = 1, per swept benchmark setting "
             "(± two standard errors over repeats when there are several); negative: the ELBO prefers the "
             "extra latent dimension.",
             lambda: sweep_figure(table))

    table = tables.get("sigma")
    if table is not None and not table.empty and "sigma_factor" in table:
        emit("sigma", "sigma_selection", "Choosing sigma_eps",
             "Test -ELBO and held-out -log p_theta(x) (exact quadrature) for models with sigma_eps fixed at "
             "multiples of the truth (dashed line); stars mark each criterion's choice.",
             lambda: sigma_figure(table))

    table = tables.get("semisupervised")
    if table is not None and not table.empty:
        for bench_name, sub in _benchmark_groups(table):
            try:
                m2_panels, result = _m2_panels(sub, runs)
            except Exception as err:  # noqa: BLE001
                errors.append(f"semisupervised_{bench_name}: cannot load models: {type(err).__name__}: {err}")
                continue
            emit("semisupervised", f"semisupervised_{bench_name}_decoder_curves",
                 f"{bench_name}: M2 decoder curves per class (the paper's Figure 6)",
                 "Each model's decoder f_theta(y, z) per class (solid) beside the true f_gt(y, z) (dashed), "
                 "repeat 0 of each configuration. Top: in the data plane over the test data, a dot at z = 0 "
                 "and an arrow towards increasing z. Bottom: x0 against z; functional collapse shows as the "
                 "solid curves of the two classes lying on top of each other while the true ones differ. "
                 "A per-class flip of z's sign is not identified by the data and shows as a mirrored curve.",
                 lambda r=result, p=m2_panels: decoder_curves_figure(r.benchmark, r.data().test, p))

    table = tables.get("digits")
    if table is not None and not table.empty and "labels_per_class" in table:
        emit("digits", "digits_accuracy", "Digits: M2 against labelled-only classifiers",
             "Test accuracy (450 held-out images) of M2 and of classifiers trained on the labelled points "
             "alone, with 10 labels per class and with every training label; mean ± std over seeds.",
             lambda: digits_figure(table))
    table = tables.get("downstream")
    if table is not None and not table.empty and "family" in table:
        from vaefail.experiments.downstream_figures import TASKS, ambiguity_figure, bars_figure

        for stem, title, caption, cols in TASKS:
            emit("downstream", f"downstream_{stem}", title, caption,
                 lambda c=cols: bars_figure(table, c, log=("eps_along", "eps_normal")))
        quad = table[(table.benchmark == "quadratic") & (table.family != "truth")]
        if not quad.empty:
            from vaefail.metrics.downstream import from_vae

            def patient() -> Figure:
                fits = [(str(r.family), runs.result(str(r.k1_keys).split()[0]))
                        for _, r in quad.iterrows()]
                return ambiguity_figure(fits[0][1].benchmark,
                                        [(f, from_vae(r.model, name=f)) for f, r in fits])

            emit("downstream", "downstream_ambiguity", "Ambiguity: the patient example",
                 "p_gt(z|x = 0.2) on quadratic (two diseases explain the symptoms) against each family's "
                 "K = 1 model's exact posterior p_theta(z|x = 0.2) in its own latent (repeat 0), with the "
                 "mass of each mode.", patient)
    return figures, errors
