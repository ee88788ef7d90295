"""Known answers of the downstream measures (vaefail.metrics.downstream)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from conftest import exact_linear_vae
from vaefail.benchmarks import get_benchmark
from vaefail.metrics import downstream as ds

KEY = jax.random.PRNGKey(7)


def _data(name: str, n: int = 800, seed: int = 1):
    bench = get_benchmark(name)
    return bench, bench.sample(jax.random.PRNGKey(seed), n)


def _ignore_z(bench, x) -> ds.LatentModel:
    """The best model whose decoder ignores z: f(z) = mean(x), sigma_eps = the data's std, posterior = prior
    (so the code E[z|x] is 0 for every x)."""
    mean, sd = x.mean(0), float(x.std())
    zero = lambda x: np.zeros((len(x), 1))  # noqa: E731
    return ds.LatentModel(
        "ignore_z", bench.x_dim, 1, sd, lambda z: np.broadcast_to(mean, (len(z), bench.x_dim)).copy(), zero,
        lambda x: np.zeros((len(x), 1, bench.x_dim)), lambda x, _k: np.zeros(len(x)),
        lambda x: np.broadcast_to(np.exp(-0.5 * ds.POSTERIOR_GRID**2) / math.sqrt(2 * math.pi),
                                  (len(x), ds.POSTERIOR_GRID.size)).copy(),
    )


def test_knn_r2_known_answer():
    rng = np.random.default_rng(0)
    f = rng.normal(size=4000)
    t = np.sin(2 * f) + 0.5 * rng.normal(size=4000)  # Var(E[t|f]) / Var(t) = v / (v + 0.25)
    v = 0.5 * (1 - math.exp(-8))  # Var(sin 2f) for f ~ N(0, 1)
    assert ds.knn_r2(f, t) == pytest.approx(v / (v + 0.25), abs=0.03)
    assert abs(ds.knn_r2(f, rng.normal(size=4000))) < 0.03  # independent: 0
    assert ds.knn_r2(np.exp(f), t) == pytest.approx(ds.knn_r2(f, t), abs=1e-12)  # monotone map: same


def test_linear_truth_and_exact_model_full_recovery_no_ambiguity():
    bench, d = _data("linear", 2000)
    precision = 1 + np.dot(bench.w, bench.w) / bench.sigma_eps**2  # Var(E[z|x]) / Var(z) = 1 - 1/precision
    truth = ds.from_truth(bench)
    exact = ds.from_vae(exact_linear_vae(bench), name="exact")
    for model in (truth, exact):
        rec = ds.latent_recovery(d.z, model.code(d.x))
        assert rec["recovery"] == pytest.approx(1 - 1 / precision, abs=0.01)
        assert rec["noise_dims"] == 0 and rec["active_dims"] == 1
        amb = ds.ambiguity(truth, model, d.x[:300])
        assert amb["multimodal_share"] == 0.0
        assert ds.denoising(bench, model, d.x[:300])["ratio"] < 0.01  # reconstructions on the true line
        assert ds.robustness(bench, model, d.x[:200])["normal_over_along"] < 1e-3  # code ignores normal noise
    # the exact model's code is the truth's posterior mean
    np.testing.assert_allclose(exact.code(d.x[:50]), truth.code(d.x[:50]), atol=2e-3)


def test_truth_scores_as_the_truth():
    bench, d = _data("quadratic", 600)
    truth = ds.from_truth(bench)
    m = ds.downstream_measures(bench, truth, truth, d.x, d.z, KEY, permutations=100)
    assert m["mode_overlap"] == pytest.approx(1.0) and m["multimodal_share"] > 0.3
    assert m["committed"] == 0.0
    assert m["energy_p"] > 0.05  # truth samples against fresh truth samples
    assert m["denoise_ratio"] < 1e-3
    assert m["auroc"] > 0.99
    # E_gt[z|x] = 0 on quadratic (symmetric posterior): the truth's code carries nothing about z
    assert m["recovery"] == 0.0


def test_decoder_ignoring_z_recovers_nothing_and_fails_two_sample_test():
    bench, d = _data("figure8", 600)
    model = _ignore_z(bench, d.x)
    rec = ds.latent_recovery(d.z, model.code(d.x))
    assert rec["recovery"] == 0.0 and rec["active_dims"] == 0
    stat, p = ds.energy_test(model.sample(KEY, 600), bench.sample(jax.random.PRNGKey(9), 600).x, KEY, 100)
    assert stat > 0 and p < 0.02
    truth_share = ds.off_manifold_share(bench, bench.sample(jax.random.PRNGKey(10), 600).x)
    assert ds.off_manifold_share(bench, model.sample(KEY, 600)) > max(5 * truth_share, 0.02)


def test_patient_example_committing_model_has_half_overlap():
    bench = get_benchmark("quadratic")
    truth = ds.from_truth(bench)
    x = np.array([[0.2]])
    masses = ds.mode_masses(truth.posterior(x))[0]
    assert len(masses) == 2 and masses[0] == pytest.approx(0.5, abs=0.01)  # z = Phi^-1(0.053), Phi^-1(0.947)

    def one_side(xs):
        dens = truth.posterior(xs) * (ds.POSTERIOR_GRID > 0)
        return dens / np.trapezoid(dens, ds.POSTERIOR_GRID, axis=1)[:, None]

    committed = ds.LatentModel("one_side", 1, 1, bench.sigma_eps, truth.decode, truth.code,
                               truth.code_jacobian, truth.log_prob, one_side)
    amb = ds.ambiguity(truth, committed, x)
    assert amb["multimodal_share"] == 1.0
    assert amb["overlap"] == pytest.approx(0.5, abs=0.01) and amb["committed"] == 1.0


def test_mode_masses_of_a_mixture():
    g = ds.POSTERIOR_GRID
    dens = 0.3 * np.exp(-0.5 * ((g + 3) / 0.3) ** 2) / 0.3 + 0.7 * np.exp(-0.5 * ((g - 2) / 0.5) ** 2) / 0.5
    np.testing.assert_allclose(ds.mode_masses(dens[None])[0], [0.7, 0.3], atol=1e-3)
    assert ds.mode_overlap(np.array([0.7, 0.3]), np.array([1.0])) == pytest.approx(0.7)


def test_auroc_exact_density_on_separable_outliers_is_one():
    assert ds.auroc(np.arange(5.0), np.arange(5.0) + 10) == 1.0
    assert ds.auroc(np.arange(5.0) + 10, np.arange(5.0)) == 0.0
    assert ds.auroc(np.ones(4), np.ones(6)) == 0.5
    bench, d = _data("clusters", 500)
    out = ds.outlier_points(bench, d.x, KEY, 500, near=3.0, far=math.inf)
    assert ds.manifold_projection(bench, out)[0].min() > 3 * bench.sigma_eps
    assert ds.auroc(-bench.log_prob(d.x), -bench.log_prob(out)) > 0.99


def test_energy_test_same_distribution_not_rejected():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 2)), rng.normal(size=(400, 2))
    stat, p = ds.energy_test(a, b, KEY, 200)
    assert p > 0.05
    stat2, p2 = ds.energy_test(a, b + 0.5, KEY, 200)
    assert stat2 > stat and p2 < 0.01


def test_robustness_code_reading_normal_noise():
    """A code that reads the off-manifold coordinate: infinitely robust along, sensitive normal."""
    bench, d = _data("linear", 300)
    normal = np.array([-bench.w[1], bench.w[0]]) / np.linalg.norm(bench.w)
    truth = ds.from_truth(bench)
    model = ds.LatentModel("normal", 2, 1, bench.sigma_eps, truth.decode, lambda x: (x @ normal)[:, None],
                           lambda x: np.broadcast_to(normal, (len(x), 1, 2)).copy(), truth.log_prob)
    r = ds.robustness(bench, model, d.x)
    assert math.isinf(r["eps_along"]) and r["eps_normal"] == pytest.approx(0.1)


@pytest.mark.slow
def test_flow_adapter_code_is_the_flow_posterior_mean_and_its_jacobian_is_exact():
    """A flow encoder's code is a Monte-Carlo E_q[z|x] with normals fixed per point: deterministic, equal to
    an independent estimate of the same mean within Monte-Carlo error, and its Jacobian is the derivative of
    that same function (central differences, float32)."""
    from vaefail.flowvae import make_flow_vae
    from vaefail.metrics.flow import posterior_mean

    bench, data = _data("figure8", 40)
    x = np.asarray(data.x, np.float64)
    model = make_flow_vae(2, 2, bench.sigma_eps, key=jax.random.PRNGKey(3), flow_layers=2)
    lm = ds.from_vae(model, name="flow", code_samples=512)
    code = lm.code(x)
    assert code.shape == (40, 2) and np.array_equal(code, lm.code(x))
    other = posterior_mean(model, x, jax.random.PRNGKey(11), samples=4096)
    draws = [posterior_mean(model, x[:1], jax.random.PRNGKey(s), samples=1)[0] for s in range(200)]
    sd = np.std(draws, axis=0)
    assert np.all(np.abs(code - other) < 5 * sd * math.sqrt(1 / 512 + 1 / 4096))
    jac, h, base = lm.code_jacobian(x[:5]), 2e-3, lm.code(x[:5])
    for d in range(2):
        step = np.zeros(2)
        step[d] = h
        up, down = (lm.code(x[:5] + step) - base) / h, (base - lm.code(x[:5] - step)) / h
        # the conditioners' leaky ReLUs make the code piecewise smooth: one side of a kink matches
        err = np.minimum(np.abs(jac[:, :, d] - up), np.abs(jac[:, :, d] - down))
        assert np.all(err < 2e-3 + 0.02 * np.abs(up).max()), err


def test_reproduce_downstream_smoke(tmp_path):
    """The experiment end to end on linear at the smoke preset: one row per family plus the truth, claims,
    figures, and a cache that a rebuild reuses (same numbers)."""
    from vaefail.experiments.downstream import build_downstream_table
    from vaefail.experiments.reproduce import reproduce
    from vaefail.experiments.store import ResultsStore

    out = tmp_path / "results"
    result = reproduce("downstream", "smoke", out, repeats=1, workers=1, progress=False,
                       only={"benchmark": ["linear"]})
    table = result.tables["downstream"]
    assert list(table.family) == ["truth", "vae", "iwae", "flow"] and set(table.benchmark) == {"linear"}
    truth = table[table.family == "truth"].iloc[0]
    assert truth.recovery > 0.8  # 60 points: a rough k-NN estimate of 1 - 1/126
    assert truth.multimodal_share == 0.0 and truth.k_bound == 1.0
    assert set(table.k_bound) <= {1.0, 2.0, 3.0}
    ids = {c["id"] for c in result.claims}
    assert {"downstream.linear.compression", "downstream.linear.outliers"} <= ids
    assert (out / "downstream.csv").is_file() and (out / "figures" / "downstream_outliers.png").is_file()
    assert len(list((out / "downstream").glob("*.json"))) == 4
    again = build_downstream_table(result.experiments[0], ResultsStore(out), "smoke")
    assert again.drop(columns=["keys", "k1_keys"]).equals(table.drop(columns=["keys", "k1_keys"]))


def test_downstream_claims_on_a_synthetic_table():
    import pandas as pd

    from vaefail.experiments.claims import downstream_claims

    assert downstream_claims(pd.DataFrame()) == []
    base = {c: 0.5 for c in ("k_bound", "k_ll", "recovery", "noise_kept", "multimodal_share",
                             "mode_overlap", "sigma_ratio", "normal_over_along", "energy", "energy_p",
                             "off_manifold", "auroc")}
    rows = [{**base, "benchmark": "quadratic", "family": f, "repeats": 3, **extra} for f, extra in (
        ("truth", {"mode_overlap": 1.0, "mode_overlap_std": 0.0, "auroc": 0.99, "auroc_std": 0.001}),
        ("vae", {"mode_overlap": 0.5, "mode_overlap_std": 0.01, "auroc": 0.90, "auroc_std": 0.001,
                 "k_bound": 2.0, "energy_p": 0.01}),
        ("iwae", {"mode_overlap": 0.9, "mode_overlap_std": 0.01, "auroc": 0.98, "auroc_std": 0.001}))]
    claims = {c["id"]: c for c in downstream_claims(pd.DataFrame(rows))}
    assert claims["downstream.quadratic.ambiguity"]["reproduced"] is True
    assert claims["downstream.quadratic.outliers"]["reproduced"] is True
    assert claims["downstream.quadratic.compression"]["reproduced"] is True
    assert claims["downstream.quadratic.generation"]["reproduced"] is True
    rows[1]["mode_overlap"] = 0.999  # within noise of the truth: not reproduced
    claims = {c["id"]: c for c in downstream_claims(pd.DataFrame(rows))}
    assert claims["downstream.quadratic.ambiguity"]["reproduced"] is False


@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_downstream_reuses_the_table1_latent_and_flexible_configurations_it_shares(preset):
    """Every downstream fit that is also a table1, latent or flexible fit has the same store key (fit *and*
    evaluation settings), so a store that ran those experiments is not asked to fit it again; every flow fit
    is the flexible experiment's."""
    from vaefail.experiments.downstream import family_of
    from vaefail.experiments.grid import load_experiment
    from vaefail.experiments.store import config_hash

    others = [t for name in ("table1", "latent", "flexible") for t in load_experiment(name, preset).tasks]
    stored = {config_hash(t.spec()) for t in others}
    fits = {config_hash({"fit": t.fit}) for t in others}
    tasks = load_experiment("downstream", preset).tasks
    same_fit = [t for t in tasks if config_hash({"fit": t.fit}) in fits]
    assert len(same_fit) >= len(tasks) // 2  # figure8, clusters and quadratic K = 1
    assert [t for t in same_fit if config_hash(t.spec()) not in stored] == []
    flows = [t for t in tasks if family_of(t.labels).endswith("flow")]
    assert flows and all(config_hash(t.spec()) in stored for t in flows)
