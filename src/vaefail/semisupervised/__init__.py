"""Semi-supervised M2 on labelled benchmarks and on real data: functional collapse (docs/science.md).

- :mod:`~vaefail.semisupervised.model` - the M2 model; encoder families ``"mean_field"`` (q(y|x) q(z|x))
  and ``"kingma"`` (q(y|x) q(z|x,y)).
- :mod:`~vaefail.semisupervised.objectives` - J = sum_u U(x) + gamma sum_l L(x, y) + alpha sum_l log q(y|x),
  y enumerated exactly, VAE and IWAE versions.
- :mod:`~vaefail.semisupervised.data` - the splits and the balanced labelled subsets.
- :mod:`~vaefail.semisupervised.family` - M2 as a model family of the restart protocol
  (:mod:`vaefail.protocol`: truth and random starts, selection by validation J).
- :mod:`~vaefail.semisupervised.metrics` - accuracy against the Bayes accuracy, KL(p_gt(x|y) || p_theta(x|y)),
  the functional-collapse score, counterfactual error.
- :mod:`~vaefail.semisupervised.digits` - M2 against a labelled-only classifier on scikit-learn's digits.
- :mod:`~vaefail.semisupervised.figures` - the decoder curves of every class against the truth.
- :func:`fit_semisupervised` - fit with the restart protocol; :func:`run_semisupervised` - fit and evaluate in
  one call (what a reproduce task runs).
"""

from vaefail.results import FitResult
from vaefail.semisupervised.api import fit_semisupervised, run_semisupervised
from vaefail.semisupervised.config import SemiSupervisedConfig
from vaefail.semisupervised.data import labelled_mask, make_data
from vaefail.semisupervised.digits import DigitsConfig, run_digits
from vaefail.semisupervised.family import M2_FAMILY, M2Family
from vaefail.semisupervised.figures import plot_decoder_curves
from vaefail.semisupervised.metrics import (
    class_conditional_kl,
    collapse_score,
    counterfactual_error,
    decoder_curves,
    evaluate_semisupervised,
    model_class_log_prob,
)
from vaefail.semisupervised.model import ENCODERS, M2, TrueLabelledDecoder, make_m2
from vaefail.semisupervised.objectives import (
    M2MeanObjective,
    M2Objective,
    M2Record,
    m2_loss_fn,
    m2_terms,
    pack,
    unpack,
)

#: The result of an M2 fit is the one result type of every family.
SemiSupervisedResult = FitResult

__all__ = [
    "ENCODERS",
    "M2",
    "M2_FAMILY",
    "M2Family",
    "DigitsConfig",
    "M2MeanObjective",
    "M2Objective",
    "M2Record",
    "SemiSupervisedConfig",
    "SemiSupervisedResult",
    "TrueLabelledDecoder",
    "class_conditional_kl",
    "collapse_score",
    "counterfactual_error",
    "decoder_curves",
    "evaluate_semisupervised",
    "fit_semisupervised",
    "labelled_mask",
    "m2_loss_fn",
    "m2_terms",
    "make_data",
    "make_m2",
    "model_class_log_prob",
    "pack",
    "plot_decoder_curves",
    "run_digits",
    "run_semisupervised",
    "unpack",
]
