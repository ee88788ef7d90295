"""Figures of the ``downstream`` experiment: one per task, from its table (and, for the patient example,
the stored ``K = 1`` fits on ``quadratic``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

#: Colour of each family (the truth black), as in the other experiments' figures.
COLOURS = {"truth": "black", "vae": "tab:red", "iwae": "tab:blue", "flow": "tab:green"}

#: Per task: figure stem, title, caption and the table columns drawn (one panel each).
TASKS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("compression", "Compression",
     "K selected by the family's own test bound and by held-out log-likelihood (the truth: K = 1), and "
     "I(x; z) of the selected model (the truth's by quadrature); mean ± std over repeats.",
     ("k_bound", "k_ll", "mi_total")),
    ("recovery", "Latent recovery and noise in the code",
     "Share of the true z's variance determined by the code (k-NN R^2), active code dimensions that carry "
     "mostly noise, and the share of the true noise the code predicts.",
     ("recovery", "noise_dims", "noise_kept")),
    ("signal_noise", "Signal and noise",
     "sigma_eps learned by the family's objective over the truth's (K = 1); distance of reconstructions "
     "f(E_q[z|x]) to the true manifold over the data's (0: perfect denoising).",
     ("sigma_ratio", "denoise_ratio")),
    ("robustness", "Adversarial robustness",
     "Median input perturbation moving the code by 0.1 prior std along / normal to the true manifold "
     "(log scale; a code that does not respond is not drawn), and the code's normal over along-manifold "
     "sensitivity.",
     ("eps_along", "eps_normal", "normal_over_along")),
    ("generation", "Generation",
     "Energy distance between model samples and fresh truth samples, its permutation p-value, and the "
     "share of samples farther than 3 sigma_eps from the true manifold.",
     ("energy", "energy_p", "off_manifold")),
    ("outliers", "Outlier detection",
     "AUROC of -log p(x) separating test points from off-manifold points (1: perfect).",
     ("auroc",)),
)


def bars_figure(table: pd.DataFrame, columns: Sequence[str], log: Sequence[str] = ()) -> Figure:
    """One panel per column: bars per benchmark, one per family (truth first), ± std over repeats."""
    fig = Figure(figsize=(4.2 * len(columns), 3.2))
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    benches = list(dict.fromkeys(table.benchmark))
    families = list(dict.fromkeys(table.family))
    width = 0.8 / max(len(families), 1)
    for ax, col in zip(axes, columns, strict=True):
        for j, fam in enumerate(families):
            sub = table[table.family == fam].set_index("benchmark").reindex(benches)
            vals = sub[col].to_numpy(np.float64)
            err = sub.get(f"{col}_std", pd.Series(np.nan, index=sub.index)).to_numpy(np.float64)
            ok = np.isfinite(vals) & ((vals > 0) if col in log else True)
            pos = np.arange(len(benches)) + (j - (len(families) - 1) / 2) * width
            ax.bar(pos[ok], vals[ok], width, yerr=np.where(np.isfinite(err), err, 0)[ok],
                   color=COLOURS.get(str(fam), "tab:purple"), capsize=2,
                   label=str(fam).upper() if fam != "truth" else "truth")
        ax.set_xticks(range(len(benches)), benches)
        ax.set_title(col)
        if col in log:
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def ambiguity_figure(bench: Any, models: Sequence[tuple[str, Any]], x0: float = 0.2) -> Figure:
    """The patient example: ``p_gt(z|x = x0)`` on ``quadratic`` in the true z, and each family's ``K = 1``
    model's exact posterior ``p_theta(z|x = x0)`` in its own z, with the mode masses of each."""
    from vaefail.metrics.downstream import POSTERIOR_GRID, from_truth, mode_masses

    x = np.array([[x0]])
    panels: list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]] = [
        ("truth: p_gt(z | x)", "truth", from_truth(bench).posterior)]
    panels += [(f"{name.upper()}: p_theta(z | x)", name, m.posterior) for name, m in models]
    fig = Figure(figsize=(4.0 * len(panels), 3.0))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, fam, post) in zip(axes, panels, strict=True):
        dens = post(x)[0]
        masses = mode_masses(dens[None])[0]
        ax.fill_between(POSTERIOR_GRID, dens, color=COLOURS.get(fam, "tab:purple"), alpha=0.6)
        keep = dens > 1e-3 * dens.max()
        lo, hi = POSTERIOR_GRID[keep].min(), POSTERIOR_GRID[keep].max()
        pad = 0.2 * (hi - lo) + 0.1
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_title(f"{label}\nmode masses " + ", ".join(f"{m:.2f}" for m in masses), fontsize=9)
        ax.set_xlabel("z (true)" if fam == "truth" else "z (model's own)")
    fig.suptitle(f"{bench.name}: posterior over the latent at x = {x0} (the patient example)", fontsize=10)
    fig.tight_layout()
    return fig
