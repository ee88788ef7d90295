"""Decoder curves of a fitted M2 against the truth: the picture of functional collapse."""

from __future__ import annotations

from typing import Any

import numpy as np

from vaefail.benchmarks.labelled import LabelledBenchmark, LabelledDataset
from vaefail.errors import require
from vaefail.semisupervised.metrics import decoder_curves
from vaefail.semisupervised.model import M2

CLASS_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def plot_decoder_curves(
    model: M2, benchmark: LabelledBenchmark, ax: Any = None, *, kind: str = "latent", coordinate: int = 0,
    data: LabelledDataset | None = None, max_points: int = 1000, title: str | None = None,
) -> Any:
    """Draw the learned decoder :math:`f_\\theta(y, \\cdot)` (solid) and :math:`f_{gt}(y, \\cdot)` (dashed)
    of every class.

    ``kind="latent"`` (default) plots data coordinate ``coordinate`` of :math:`f(y, z)` against z, on
    401 prior quantiles: functional collapse shows as the solid curves of the classes lying on top of
    each other, while the true curves differ (on ``semicircle`` they run in opposite directions). A
    per-class sign flip of z, which the data cannot identify, shows as a mirrored curve.
    ``kind="data"`` draws the curves in the plane of the first two data coordinates, optionally over
    ``data`` (first ``max_points`` points coloured by label), with a marker at :math:`z = 0` and an arrow
    towards increasing z; on benchmarks whose classes share one manifold the curves overlap there
    whatever the model does, so the latent view is the one that shows collapse.

    Parameters
    ----------
    model
        One M2 (``K = 1``; for ``K > 1`` the other latent coordinates are 0).
    benchmark
        The labelled benchmark it was fitted on.
    ax
        A matplotlib axis (default: a new figure's).
    kind
        ``"latent"`` or ``"data"``.
    coordinate
        The data coordinate plotted against z for ``kind="latent"``.
    data, max_points
        Optional labelled points to scatter (``kind="data"`` only).
    title
        Axis title.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    require(kind in ("latent", "data"), f"kind must be 'latent' or 'data', got {kind!r}")
    require(
        0 <= coordinate < benchmark.x_dim, f"coordinate must be in [0, {benchmark.x_dim}), got {coordinate}"
    )
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    z, learned = decoder_curves(model)
    if kind == "data" and data is not None:
        x, y = data.x[:max_points], np.asarray(data.y[:max_points])
        for c in range(benchmark.n_classes):
            ax.scatter(x[y == c, 0], x[y == c, 1], s=3, alpha=0.25, color=CLASS_COLOURS[c % 5])
    mid = z.size // 2
    for c in range(benchmark.n_classes):
        colour = CLASS_COLOURS[c % 5]
        truth = benchmark.f_gt_np(np.full(z.size, c), z[:, None])
        if kind == "latent":
            ax.plot(z, truth[:, coordinate], "--", color=colour, lw=1.2, label=f"true f(y={c}, z)")
            ax.plot(z, learned[c, :, coordinate], "-", color=colour, lw=2.0, label=f"learned f(y={c}, z)")
            continue
        ax.plot(truth[:, 0], truth[:, 1], "--", color=colour, lw=1.2, label=f"true f(y={c}, z)")
        ax.plot(learned[c, :, 0], learned[c, :, 1], "-", color=colour, lw=2.0, label=f"learned f(y={c}, z)")
        ax.plot(*learned[c, mid, :2], "o", color=colour, ms=5)
        ax.annotate("", xy=learned[c, mid + 20, :2], xytext=learned[c, mid, :2],
                    arrowprops={"arrowstyle": "->", "color": colour})
    if kind == "latent":
        ax.set_xlabel("z")
        ax.set_ylabel(f"x{coordinate}")
    else:
        ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    return ax
