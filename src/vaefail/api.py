"""The one-call Python API: :func:`fit` (the MFG-VAE / IWAE family with the restart protocol)."""

from __future__ import annotations

from typing import Any

from vaefail.benchmarks import Benchmark, get_benchmark
from vaefail.config import FitConfig, FlowConfig
from vaefail.errors import unknown_name
from vaefail.flowvae import FLOW
from vaefail.mfg import MFG, require_unlabelled
from vaefail.protocol import StartCache, fit_family
from vaefail.results import FitResult


def fit(
    benchmark: str | Benchmark = "figure8",
    objective: str = "vae",
    latent_dim: int = 1,
    restarts: int = 10,
    seed: int = 0,
    *,
    truth: bool = False,
    progress: bool = False,
    **options: Any,
) -> FitResult:
    """Fit a VAE or IWAE to a benchmark with the paper's restart protocol.

    Parameters
    ----------
    benchmark
        A benchmark name (``vaefail benchmarks`` lists them) or a :class:`Benchmark` instance.
    objective
        ``"vae"`` (ELBO) or ``"iwae"`` (importance-weighted bound, ``num_samples`` samples).
    latent_dim
        Latent dimension ``K`` of the model.
    restarts
        Number of restarts ``R``; half start at the ground truth, half at random.
    seed
        Seed of initialisation, training and (unless ``data_seed`` is given) the data.
    truth
        Also fit the ground-truth model's best encoder and report its bounds (the evidence for or
        against the truth being the objective's global optimum).
    progress
        Show Rich progress bars.
    **options
        Any other :class:`FitConfig` field (``steps``, ``num_samples``, ``sigma_eps``, ...); with
        ``encoder="flow"`` also the :class:`FlowConfig` fields (``flow_type``, ``flow_layers``,
        ``flow_bins``, ``decoder_l2``) and the encoder is a normalising flow.

    Returns
    -------
    FitResult
        The selected model (best mean validation bound among restarts that did not diverge), every
        restart's record and a summary of mean test bounds (nats per point, higher is better) and the
        exact mean test ``log p_gt(x)``.
    """
    if isinstance(benchmark, Benchmark):
        options["benchmark_params"] = benchmark.params()
        bench, name = benchmark, benchmark.name
    else:
        bench, name = get_benchmark(benchmark, **options.get("benchmark_params", {})), benchmark
    encoder = options.pop("encoder", "gaussian")
    config_type = encoder_config(encoder)
    config = config_type(
        benchmark=name, objective=objective, latent_dim=latent_dim, restarts=restarts, seed=seed,
        **options,
    )
    return fit_config(config, bench, truth=truth, progress=progress)


def fit_benchmark(config: FitConfig, benchmark: Benchmark | None = None) -> Benchmark:
    """The benchmark ``config`` fits (built from its name and parameters unless given), checked: raises
    :class:`~vaefail.errors.ConfigError` for an unknown name, bad parameters or a labelled benchmark."""
    if benchmark is None:
        benchmark = get_benchmark(config.benchmark, **config.benchmark_params)
    return require_unlabelled(benchmark)


def fit_config(
    config: FitConfig, benchmark: Benchmark | None = None, *, truth: bool = False,
    progress: bool = False, starts: StartCache | None = None,
) -> FitResult:
    """:func:`fit` from a :class:`FitConfig` (:func:`vaefail.protocol.fit_family` of the MFG family), or from
    a :class:`FlowConfig` (the flow family, :mod:`vaefail.flowvae`); ``starts`` shares truth starts between
    configurations (:func:`vaefail.protocol.truth_start`)."""
    family = FLOW if isinstance(config, FlowConfig) else MFG
    return fit_family(family, config, fit_benchmark(config, benchmark), truth=truth, progress=progress,
                      starts=starts)


ENCODERS = {"gaussian": FitConfig, "flow": FlowConfig}


def encoder_config(encoder: str) -> type[FitConfig]:
    """The config type of an encoder name: ``"gaussian"`` (the MFG family) or ``"flow"``."""
    if encoder not in ENCODERS:
        raise unknown_name("encoder", encoder, ENCODERS)
    return ENCODERS[encoder]
