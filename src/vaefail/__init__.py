"""vaefail: failure modes of variational autoencoders, with ground truth you can compute exactly.

Implements Yacoby, Pan & Doshi-Velez (2020), "Failure Modes of Variational Autoencoders and Their
Effects on Downstream Tasks" (arXiv:2007.07124).
"""

from vaefail._jax import configure
from vaefail.api import fit, fit_config
from vaefail.benchmarks import get_benchmark, list_benchmarks
from vaefail.config import FitConfig
from vaefail.errors import VaefailError
from vaefail.results import FitResult

__version__ = "0.1.0"

load = FitResult.load

__all__ = [
    "FitConfig",
    "FitResult",
    "VaefailError",
    "configure",
    "fit",
    "fit_config",
    "get_benchmark",
    "list_benchmarks",
    "load",
]
