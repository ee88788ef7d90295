"""Known-answer tests of the learned-vs-true curve distance and the crossing check."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaefail.benchmarks import get_benchmark
from vaefail.errors import ConfigError, DataError
from vaefail.metrics.curves import curve_distance, distance_to_polyline, passes_through, quantile_nodes
from vaefail.models import TrueDecoder, make_vae


def decoder_model(f, x_dim=2, latent_dim=1, sigma=0.1):
    return make_vae(x_dim, latent_dim, sigma, key=jax.random.PRNGKey(0),
                    decoder=TrueDecoder(f_gt=f, true_latent_dim=1))


def test_distance_is_parameterisation_free():
    """Running along the figure-8 backwards (z -> -z) traces the same curve: distance 0."""
    bench = get_benchmark("figure8")
    flipped = decoder_model(lambda z: bench.f_gt(-z))
    d = curve_distance(flipped, bench)
    assert d.symmetric < 1e-6 and d.hausdorff < 1e-5


def test_parallel_lines_are_their_offset_apart():
    """linear with b moved by delta along the normal of w: every point is delta from the other line."""
    w = np.array([1.0, 0.5])
    normal = np.array([-w[1], w[0]]) / np.linalg.norm(w)
    delta = 0.2
    truth = get_benchmark("linear")
    shifted = get_benchmark("linear", b=tuple(delta * normal))
    d = curve_distance(shifted, truth, size=501)
    assert d.learned_to_true == pytest.approx(delta, rel=1e-9)
    assert d.true_to_learned == pytest.approx(delta, rel=1e-9)
    assert d.to_dict()["symmetric_over_sigma"] == pytest.approx(delta / truth.sigma_eps, rel=1e-9)
    json.dumps(d.to_dict(), allow_nan=False)


def test_a_curve_covering_half_the_truth_is_asymmetric():
    """A model tracing only the t > 1/2 half of the line: learned->true is 0, true->learned is not."""
    truth = get_benchmark("linear")
    half = decoder_model(lambda z: truth.f_gt(jnp.abs(z)))
    d = curve_distance(half, truth)
    assert d.learned_to_true < 1e-6
    # the z < 0 half of the true line is at distance |z| |w| from the learned half-line's end f(0)
    expected = 0.5 * np.mean(np.abs(quantile_nodes(4001))) * np.linalg.norm(truth.w)
    assert d.true_to_learned == pytest.approx(expected, rel=1e-3)


def test_figure8_passes_through_its_crossing_and_a_line_does_not():
    bench = get_benchmark("figure8")
    c = passes_through(bench, (0.0, 0.0), radius=0.01)
    assert c.passes and c.distance < 1e-8 and abs(c.z) < 1e-6
    line = get_benchmark("linear")  # x = z (1, 0.5): distance from (1, -1) is |det| / |w|
    point = np.array([1.0, -1.0])
    expected = abs(point[0] * 0.5 - point[1] * 1.0) / np.linalg.norm([1.0, 0.5])
    c = passes_through(line, point, radius=0.5)
    assert not c.passes and c.distance == pytest.approx(expected, rel=1e-9)
    assert c.z == pytest.approx(point @ np.array([1.0, 0.5]) / 1.25, abs=1e-6)
    json.dumps(c.to_dict(), allow_nan=False)


def test_polyline_distance_to_segments_and_ends():
    vertices = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    d, seg = distance_to_polyline(np.array([[0.5, 0.3], [2.0, 0.5], [-1.0, 0.0], [1.0, 2.0]]), vertices)
    np.testing.assert_allclose(d, [0.3, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(seg, [0, 1, 0, 1])


def test_bad_input_rejected():
    bench = get_benchmark("figure8")
    with pytest.raises(ConfigError):
        curve_distance(make_vae(2, 2, 0.1, key=jax.random.PRNGKey(0)), bench)
    with pytest.raises(ConfigError):
        curve_distance(get_benchmark("quadratic"), bench)
    with pytest.raises(DataError):
        passes_through(bench, (0.0, 0.0, 0.0), radius=0.1)
    with pytest.raises(DataError):
        passes_through(bench, (np.nan, 0.0), radius=0.1)
    with pytest.raises(ConfigError):
        passes_through(bench, (0.0, 0.0), radius=0.0)


def test_pruned_polyline_distance_equals_brute_force():
    """The KD-tree pruning is exact: same distances and segments as checking every segment."""
    from vaefail.metrics.curves import _distance_all_segments

    rng = np.random.default_rng(3)
    steps = rng.normal(size=(400, 2)) * rng.choice([0.01, 1.0], size=(400, 1), p=[0.95, 0.05])
    vertices = np.cumsum(steps, axis=0)
    for scale in (0.01, 0.5, 5.0):
        points = vertices[rng.integers(0, 400, 2000)] + scale * rng.normal(size=(2000, 2))
        d, seg = distance_to_polyline(points, vertices)
        d_all, seg_all = _distance_all_segments(points, vertices)
        np.testing.assert_array_equal(d, d_all)
        np.testing.assert_array_equal(seg, seg_all)
