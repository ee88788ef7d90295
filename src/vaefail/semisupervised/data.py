"""The data of a semi-supervised fit: splits of a labelled benchmark and the balanced labelled subsets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from vaefail.benchmarks import LabelledBenchmark
from vaefail.benchmarks.labelled import LabelledDataset
from vaefail.errors import ConfigError
from vaefail.semisupervised.config import SemiSupervisedConfig
from vaefail.semisupervised.objectives import pack


def require_labelled(benchmark: Any) -> LabelledBenchmark:
    """Return ``benchmark`` if it is a labelled benchmark, else raise a clear :class:`ConfigError`."""
    if not isinstance(benchmark, LabelledBenchmark):
        name = getattr(benchmark, "name", benchmark)
        raise ConfigError(
            f"benchmark {name!r} is not labelled; semi-supervised M2 needs a labelled benchmark "
            "(semicircle, shared_line)"
        )
    return benchmark


def labelled_mask(y: np.ndarray, fraction: float, n_classes: int, seed: int | list[int]) -> np.ndarray:
    """A boolean mask selecting ``round(fraction * n)`` points, as balanced over classes as possible.

    Each class ``c`` contributes ``n_l // C`` points (the first ``n_l % C`` classes one more), or all its
    points if it has fewer, and the shortfall is filled from the remaining points; chosen uniformly at
    random with ``numpy.random.default_rng(seed)``.
    """
    y = np.asarray(y)
    n = y.size
    n_l = int(round(fraction * n))
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        want = n_l // n_classes + (1 if c < n_l % n_classes else 0)
        mask[rng.permutation(idx)[: min(want, idx.size)]] = True
    short = n_l - int(mask.sum())
    if short > 0:
        mask[rng.permutation(np.flatnonzero(~mask))[:short]] = True
    return mask


@dataclass(frozen=True)
class SemiSupervisedData:
    """The splits of a labelled benchmark and which labels the objective may see.

    Attributes
    ----------
    train, val, test
        :class:`~vaefail.benchmarks.labelled.LabelledDataset` splits (true x, z, y).
    train_labelled, val_labelled, test_labelled
        Boolean masks of the points whose labels enter J, each a balanced subset of the configured
        fraction (the test mask only matters for the test J; test metrics use every true label).
    """

    train: LabelledDataset
    val: LabelledDataset
    test: LabelledDataset
    train_labelled: np.ndarray
    val_labelled: np.ndarray
    test_labelled: np.ndarray

    def packed(self, part: str) -> jax.Array:
        """``[x, y, labelled]`` of the split ``part`` (``"train"``, ``"val"`` or ``"test"``)."""
        data = getattr(self, part)
        return pack(data.x, data.y, getattr(self, f"{part}_labelled"))


def make_data(benchmark: LabelledBenchmark, config: SemiSupervisedConfig) -> SemiSupervisedData:
    """Splits from ``config.split_seed`` and balanced labelled subsets of ``labelled_fraction``."""
    splits = benchmark.splits(config.n_train, config.n_val, config.n_test, seed=config.split_seed)
    c = benchmark.n_classes
    return SemiSupervisedData(
        train=splits.train, val=splits.val, test=splits.test,
        train_labelled=labelled_mask(splits.train.y, config.labelled_fraction, c, [config.split_seed, 1]),
        val_labelled=labelled_mask(splits.val.y, config.labelled_fraction, c, [config.split_seed, 2]),
        test_labelled=labelled_mask(splits.test.y, config.labelled_fraction, c, [config.split_seed, 3]),
    )
