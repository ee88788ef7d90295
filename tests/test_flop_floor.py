"""benchmarks/flop_floor.py counts the FLOPs a training step must do: checked against the hand count of the
networks' matrix products, which are nearly all of them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import flop_floor  # noqa: E402


def dot_flops(samples: int, latent_dim: int, batch: int, width: int = 50, x_dim: int = 2) -> float:
    """Forward and backward matrix products of one step: the decoder on batch x S latents and the encoder
    (outputs mean and log-variance) on the batch; each forward product of ``m x n`` weights on ``r`` rows
    is ``2 r m n`` FLOPs and its backward two more products of the same size (inputs' and weights'
    gradients; the first layer's inputs need none)."""
    decoder = [(latent_dim, width), (width, width), (width, x_dim)]
    encoder = [(x_dim, width), (width, width), (width, 2 * latent_dim)]

    def net(layers, rows):
        forward = sum(2 * rows * m * n for m, n in layers)
        return 3 * forward - 2 * rows * layers[0][0] * layers[0][1]

    return net(decoder, batch * samples) + net(encoder, batch)


@pytest.mark.parametrize("objective,samples,latent_dim", [("iwae", 20, 1), ("iwae", 10, 3), ("vae", 1, 2)])
def test_step_flops_are_the_matrix_products_plus_a_little(objective, samples, latent_dim):
    counted = flop_floor.step_flops(objective, samples, latent_dim, 100)
    expected = dot_flops(samples, latent_dim, 100)
    assert expected < counted < 1.2 * expected  # measured: 1.08-1.12


def test_step_flops_grow_with_the_importance_samples():
    ratio = flop_floor.step_flops("iwae", 20, 2, 100) / flop_floor.step_flops("iwae", 10, 2, 100)
    assert ratio == pytest.approx(2.0, rel=0.05)
