"""The MFG-VAE / IWAE on a user's data: the same family and restart protocol, with no ground truth.

:class:`DataFitConfig` is a :class:`~vaefail.config.FitConfig` whose ``data`` field records the data
(:class:`vaefail.userdata.DataSpec`: file, content hash, columns, standardisation, split) and whose split
sizes are the file's. :class:`DataFamily` is :class:`~vaefail.mfg.MFGFamily` reading its "benchmark" from
that record (:meth:`DataFamily.make_benchmark`): every restart starts at random (there is no truth to start
from) and the summary has no truth section. :class:`vaefail.results.FitResult` saves and loads such a run
like any other (the family is recorded as ``module:qualname``, the data rebuilt from the record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaefail.config import FitConfig
from vaefail.errors import ConfigError, require
from vaefail.mfg import MFGFamily
from vaefail.protocol import fit_family
from vaefail.results import FitResult
from vaefail.userdata import DataSpec, UserData, array_spec, data_spec, load_data


@dataclass(frozen=True)
class DataFitConfig(FitConfig):
    """A :class:`FitConfig` on a user's data: ``data`` is a :class:`DataSpec` as a dict, ``benchmark`` the
    data's name (for titles), ``n_train``/``n_val``/``n_test`` the split's sizes, and no truth restarts.

    ``sigma_eps`` (in standardised units when the data are standardised) must be given, or learned with
    ``learn_sigma``: without a ground truth there is no true noise level to default to.
    """

    data: dict[str, Any] = field(default_factory=dict)
    benchmark: str = "data"
    truth_restarts: int | None = 0
    init_steps: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.data), "a data fit needs its data record (DataFitConfig.data)")
        require(self.n_truth == 0, "a data fit has no ground truth: truth_restarts must be 0")
        require(self.sigma_eps is not None or self.learn_sigma,
                "give sigma_eps (--sigma-eps VALUE) or learn it (--learn-sigma): without a ground truth "
                "there is no true noise level to default to")

    @property
    def spec(self) -> DataSpec:
        return DataSpec.from_dict(self.data)


class DataFamily(MFGFamily):
    """:class:`~vaefail.mfg.MFGFamily` on a :class:`~vaefail.userdata.UserData`: random restarts only,
    no truth summary."""

    config_type = DataFitConfig

    def make_benchmark(self, config: DataFitConfig) -> UserData:
        """The data of the run, re-read from its recorded file (refused if the file changed)."""
        return load_data(config.spec)

    def decoder_fit_loss(self, benchmark: Any, model: Any) -> Any:
        raise ConfigError("a data fit has no ground truth to start restarts from")

    def summary(self, columns: dict[str, np.ndarray], selected: int, benchmark: Any, data: Any,
                config: Any) -> dict[str, Any]:
        return {
            "val_bound": float(columns["val_bound"][selected]),
            "test_bound": float(columns["test_bound"][selected]),
            "test_elbo": float(columns["test_elbo"][selected]),
            "sigma_eps": float(columns["sigma_eps"][selected]),
        }

    def truth_summary(self, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], None]:
        return {}, None


DATA_FAMILY = DataFamily()


def data_config(spec: DataSpec, **options: Any) -> DataFitConfig:
    """A :class:`DataFitConfig` for the data of ``spec`` (read and validated now; the split sizes come from
    the file) and any other :class:`FitConfig` field in ``options``."""
    data = load_data(spec)
    n_train, n_val, n_test = data.check_split()
    return DataFitConfig(data=spec.to_dict(), benchmark=data.name, n_train=n_train, n_val=n_val,
                         n_test=n_test, **options)


def fit_data(
    data: Any,
    objective: str = "vae",
    latent_dim: int = 1,
    restarts: int = 10,
    seed: int = 0,
    *,
    columns: list[str] | None = None,
    standardise: bool = True,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    progress: bool = False,
    **options: Any,
) -> FitResult:
    """Fit a VAE or IWAE to a user's data with the restart protocol (every restart random).

    Parameters
    ----------
    data
        A file path (CSV/TSV, ``.npy``, ``.npz``, Parquet; see :func:`vaefail.userdata.read_table`), a 2-D
        array or a pandas DataFrame.
    objective, latent_dim, restarts, seed
        As for :func:`vaefail.fit`.
    columns
        Columns to use (names or 0-based indices); default all.
    standardise
        Fit on ``(x - mean) / std`` per column (recorded; undone in reported samples).
    val_fraction, test_fraction
        Shares of the rows held out (seeded by ``data_seed``, else ``seed``).
    **options
        Any other :class:`FitConfig` field; ``sigma_eps`` or ``learn_sigma=True`` is required.

    Returns
    -------
    FitResult
        As for :func:`vaefail.fit`, without truth sections; ``result.benchmark`` is the
        :class:`~vaefail.userdata.UserData`.
    """
    split = {"standardise": standardise, "val_fraction": val_fraction, "test_fraction": test_fraction}
    if isinstance(data, str) or hasattr(data, "__fspath__"):
        spec = data_spec(data, columns, **split)
    else:
        spec = array_spec(data, columns, **split)
    config = data_config(spec, objective=objective, latent_dim=latent_dim, restarts=restarts, seed=seed,
                         **options)
    return fit_family(DATA_FAMILY, config, load_data(spec), progress=progress)
