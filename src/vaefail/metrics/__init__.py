"""Metrics: a trained model and data in, numbers out."""

from vaefail.metrics.likelihood import LogLikelihood, exact_log_likelihood, log_likelihood

__all__ = ["LogLikelihood", "exact_log_likelihood", "log_likelihood"]
