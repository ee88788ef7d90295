"""The full configuration of one fit: benchmark, model, objective, restart protocol, optimiser, data."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Self

from vaefail.errors import ConfigError, require
from vaefail.flows import check_flow
from vaefail.models import get_activation
from vaefail.objectives import check_objective


class ConfigDict:
    """Dict round trip and copy-with-changes of a frozen config dataclass.

    ``from_dict`` rejects unknown keys with a message naming the config (the class attribute ``what``).
    """

    what = "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    @classmethod
    def check_keys(cls, data: dict[str, Any]) -> None:
        """Raise a :class:`ConfigError` naming every key of ``data`` that is not a field."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.what} keys {unknown}; valid keys: {sorted(names)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Rebuild a config, rejecting unknown keys with a clear message."""
        cls.check_keys(data)
        return cls(**data)


#: Largest accepted value of each size, so that a typo (``--restarts 100000000``) is one clear error instead
#: of an out-of-memory kill or a native XLA abort. Each is far above what the paper uses (10 restarts,
#: K <= 3, S = 20, 2 x 50 networks, 5,000 training points); all restarts' validation bounds are computed
#: in one vectorised call, so their memory grows with ``restarts x n_val x samples x hidden_width``.
LIMITS = {
    "restarts": 100, "latent_dim": 64, "num_samples": 10_000, "eval_samples": 10_000, "hidden_width": 4096,
    "hidden_depth": 32, "n_train": 10_000_000, "n_val": 1_000_000, "n_test": 1_000_000,
    "batch_size": 100_000, "steps": 100_000_000, "init_steps": 100_000_000,
}
#: Largest ``batch_size x S`` (the (point, sample) pairs of one training step, all in memory at once for
#: every restart of a group): the paper's 256 x 20 is 5,120.
MAX_PAIRS_PER_STEP = 1_000_000
#: Seeds are 32-bit (``jax.random.PRNGKey`` keeps only the low 32 bits: 2**32 + 5 would equal 5).
MAX_SEED = 2**31 - 1


def check_limits(config: object) -> None:
    """Raise :class:`ConfigError` for a field above :data:`LIMITS` or a seed outside ``[0, MAX_SEED]``."""
    for name, top in LIMITS.items():
        value = getattr(config, name, None)
        if isinstance(value, int) and value > top:
            raise ConfigError(f"{name} must be <= {top:,}, got {value:,}")
    for name in ("seed", "data_seed"):
        value = getattr(config, name, None)
        if value is not None and not (isinstance(value, int) and 0 <= value <= MAX_SEED):
            raise ConfigError(f"{name} must be an integer in [0, {MAX_SEED}], got {value!r}")


class RestartProtocol(ConfigDict):
    """What the unsupervised and the semi-supervised configs share: the restart protocol's fields
    (``restarts``, ``truth_restarts``, the optimiser's budget, the stopping rule, the networks, the splits and
    the seeds), their checks and the quantities derived from them."""

    def check_protocol(self) -> None:
        """Raise a :class:`ConfigError` for the first shared field out of its range."""
        require(self.latent_dim >= 1, f"latent dimension K must be >= 1, got {self.latent_dim}")
        require(self.restarts >= 1, f"restarts must be >= 1, got {self.restarts}")
        require(
            0 <= self.n_truth <= self.restarts,
            f"truth_restarts must be in [0, restarts={self.restarts}], got {self.truth_restarts}",
        )
        if self.sigma_eps is not None:
            require(
                math.isfinite(self.sigma_eps) and self.sigma_eps > 0,
                f"sigma_eps must be > 0, got {self.sigma_eps}",
            )
            # float32 training: 1 / sigma_eps^2 must stay far from overflow and sigma_eps from underflow
            require(1e-8 <= self.sigma_eps <= 1e8, f"sigma_eps must be in [1e-8, 1e8], got {self.sigma_eps}")
        get_activation(self.activation)
        for name in ("steps", "batch_size", "eval_every", "patience", "eval_samples", "hidden_width"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_train", "n_val", "n_test"):
            require(getattr(self, name) >= 2, f"{name} must be >= 2, got {getattr(self, name)}")
        require(self.hidden_depth >= 0, f"hidden_depth must be >= 0, got {self.hidden_depth}")
        require(self.init_steps >= 0, f"init_steps must be >= 0, got {self.init_steps}")
        require(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            f"learning_rate must be finite and > 0, got {self.learning_rate}",
        )
        require(0 < self.final_lr_factor <= 1,
                f"final_lr_factor must be in (0, 1], got {self.final_lr_factor}")
        require(self.tol >= 0, f"tol must be >= 0, got {self.tol}")
        check_limits(self)

    @property
    def n_truth(self) -> int:
        """Number of restarts initialised at the ground truth (default half of them)."""
        return self.restarts // 2 if self.truth_restarts is None else self.truth_restarts

    @property
    def split_seed(self) -> int:
        """Seed of the data splits: ``data_seed``, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def train_samples(self) -> int:
        """Samples per point (and class, for M2) in training: ``S`` for IWAE, 1 for the VAE."""
        return self.num_samples if self.objective == "iwae" else 1

    @property
    def eval_num_samples(self) -> int:
        """Samples per point (and class) of the validation/test bound: ``S`` for IWAE, ``eval_samples``
        for the VAE."""
        return self.num_samples if self.objective == "iwae" else self.eval_samples


@dataclass(frozen=True)
class FitConfig(RestartProtocol):
    """Everything that determines a fit; the same config and seed give the same numbers.

    Parameters
    ----------
    benchmark, benchmark_params
        Benchmark name and parameter overrides (see ``vaefail benchmarks``).
    objective
        ``"vae"`` (ELBO, analytic KL) or ``"iwae"`` (importance-weighted bound with ``num_samples``).
    latent_dim
        The model's latent dimension ``K``.
    num_samples
        IWAE samples ``S`` for training and for the IWAE validation/test bound.
    dreg
        Use the doubly-reparameterised gradient estimator (``iwae`` only).
    sigma_eps
        Observation noise std; ``None`` means the benchmark's true value.
    learn_sigma
        Train ``sigma_eps`` (starting from ``sigma_eps``) instead of fixing it.
    hidden_width, hidden_depth, activation
        Encoder and decoder MLPs. Default 2 x 50 leaky-ReLU, with ``learning_rate`` 1e-2: measured on figure8,
        K = 1, 4 random restarts, 10,000 steps, best test -ELBO: tanh at 1e-3 1.48, tanh at 1e-2 1.15,
        ReLU at 1e-2 1.06, leaky ReLU at 1e-2 1.07 (exact -E log p(x) 0.89). ReLU-type decoders also fit
        the steps of ``clusters`` far better when initialised at the truth (median error 0.03 sigma_eps
        against 0.29 for tanh).
    restarts, truth_restarts
        Number of restarts ``R``, and how many of them start at the ground truth (default ``R // 2``).
    steps, batch_size, learning_rate, final_lr_factor
        Maximum optimisation steps, mini-batch size, Adam learning rate, decayed exponentially to
        ``learning_rate * final_lr_factor`` at ``steps``.
    eval_every, patience, tol, converge
        The validation bound is computed every ``eval_every`` steps; with ``converge`` training stops once
        no restart has improved its best validation bound by more than ``tol`` nats for ``patience``
        evaluations in a row. ``steps`` is rounded up to a multiple of ``eval_every``.
    init_steps
        Steps of each ground-truth initialisation phase (decoder fitted to ``f_gt``, then the encoder
        fitted with the decoder frozen).
    eval_samples
        Monte-Carlo samples per point for the ELBO on validation and test data.
    n_train, n_val, n_test
        Split sizes.
    seed, data_seed
        Seed of initialisation and training; seed of the data splits (default: ``seed``).
    """

    benchmark: str = "figure8"
    benchmark_params: dict[str, Any] = field(default_factory=dict)
    objective: str = "vae"
    latent_dim: int = 1
    num_samples: int = 20
    dreg: bool = False
    sigma_eps: float | None = None
    learn_sigma: bool = False
    hidden_width: int = 50
    hidden_depth: int = 2
    activation: str = "leaky_relu"
    restarts: int = 10
    truth_restarts: int | None = None
    steps: int = 30000
    batch_size: int = 256
    learning_rate: float = 1e-2
    final_lr_factor: float = 0.1
    eval_every: int = 500
    patience: int = 6
    tol: float = 1e-3
    converge: bool = True
    init_steps: int = 3000
    eval_samples: int = 10
    n_train: int = 5000
    n_val: int = 1000
    n_test: int = 2000
    seed: int = 0
    data_seed: int | None = None

    def __post_init__(self) -> None:
        check_objective(self.objective, self.num_samples)
        require(not self.dreg or self.objective == "iwae", "--dreg needs the 'iwae' objective")
        self.check_protocol()
        # mini-batches are drawn with replacement: a batch larger than the data repeats points for nothing
        require(self.batch_size <= self.n_train,
                f"batch_size {self.batch_size} is larger than the {self.n_train} training points (n_train)")
        pairs = self.batch_size * self.train_samples
        require(pairs <= MAX_PAIRS_PER_STEP,
                f"batch_size x samples = {pairs:,} (point, sample) pairs per step is above "
                f"{MAX_PAIRS_PER_STEP:,}; use a smaller batch or fewer IWAE samples")


@dataclass(frozen=True)
class FlowConfig(FitConfig):
    """A fit whose encoder is a conditional normalising flow (:class:`vaefail.flows.FlowEncoder`).

    Every :class:`FitConfig` field keeps its meaning (``objective`` ``"vae"`` trains the ELBO with a
    Monte-Carlo KL, ``"iwae"`` the IWAE bound with the flow as proposal), plus:

    Parameters
    ----------
    flow_type
        ``"spline"`` (rational-quadratic spline coupling layers) or ``"affine"``.
    flow_layers
        Number of coupling layers (>= 1).
    flow_bins
        Spline bins per layer (>= 2; unused by ``"affine"``).
    decoder_l2
        Weight of the decoder's L2 penalty ``decoder_l2 * sum_j theta_j^2`` (over every decoder array)
        added to the training loss; 0 (the default) is no regularisation. The bounds reported are never
        penalised.
    """

    flow_type: str = "spline"
    flow_layers: int = 2
    flow_bins: int = 8
    decoder_l2: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_flow(self.flow_type, self.flow_layers, self.flow_bins)
        require(not self.dreg, "--dreg is not available with the flow encoder (its density has no "
                               "closed-form stop-gradient path here)")
        require(math.isfinite(self.decoder_l2) and self.decoder_l2 >= 0,
                f"decoder_l2 must be >= 0, got {self.decoder_l2}")
