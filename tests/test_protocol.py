"""The restart protocol serves any model family: a new family is a few methods, with no change to the
protocol, the result type or the run folder."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import vaefail
from vaefail.config import FitConfig
from vaefail.mfg import MFGFamily
from vaefail.protocol import fit_family
from vaefail.results import FitResult


class BlindEncoder(eqx.Module):
    """q(z|x) = N(mean, diag exp(log_std)^2), the same for every x."""

    mean: jax.Array
    log_std: jax.Array

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.mean, self.log_std


class BlindEncoderFamily(MFGFamily):
    """The MFG-VAE with an encoder that ignores x: everything else (truth starts, objectives, evaluation,
    selection, saving) is the protocol's and the MFG family's."""

    name = "blind"

    def init(self, config, benchmark, keys):
        models = super().init(config, benchmark, keys)
        shape = (len(keys), config.latent_dim)
        return eqx.tree_at(lambda m: m.encoder, models, BlindEncoder(jnp.zeros(shape), jnp.zeros(shape)))


def test_a_new_family_trains_saves_and_loads_through_the_public_api(tmp_path, linear_bench):
    config = FitConfig(benchmark="linear", restarts=2, truth_restarts=1, steps=600, init_steps=200,
                       eval_every=200, n_train=600, n_val=200, n_test=200, converge=False)
    result = fit_family(BlindEncoderFamily(), config, linear_bench)
    model = result.model
    x = result.data().test.x[:50]
    mu, log_std = jax.vmap(model.encoder)(jnp.asarray(x, jnp.float32))
    assert np.ptp(np.asarray(mu)) == 0 and np.ptp(np.asarray(log_std)) == 0  # q ignores x
    assert np.all(np.asarray(result.models.encoder.mean) != 0)  # and was trained
    assert list(result.restarts.columns) == ["restart", "start", "status", "steps", "train_bound",
                                              "val_bound", "test_bound", "test_elbo", "sigma_eps", "selected"]
    assert result.restarts.selected.sum() == 1 and np.isfinite(result.summary["test_bound"])
    # a blind encoder cannot be better than the exact log-likelihood, and the truth's K = 1 posterior
    # depends on x, so its bound is clearly below log p_gt
    assert result.summary["test_bound"] < result.summary["test_log_prob_true"] - 0.1

    loaded = vaefail.load(result.save(tmp_path / "blind"))
    assert isinstance(loaded.family, BlindEncoderFamily)
    np.testing.assert_array_equal(np.asarray(loaded.models.encoder.mean),
                                  np.asarray(result.models.encoder.mean))
    assert loaded.restarts.equals(result.restarts)


def test_vae_and_m2_results_are_one_type(tmp_path):
    from vaefail.semisupervised import M2Family, SemiSupervisedConfig, fit_semisupervised

    config = SemiSupervisedConfig(restarts=2, steps=100, init_steps=50, eval_every=50, n_train=300, n_val=100,
                                  n_test=100, converge=False, truth=False)
    result = fit_semisupervised(config)
    assert type(result) is FitResult and isinstance(result.family, M2Family)
    loaded = FitResult.load(result.save(tmp_path / "m2"))
    assert isinstance(loaded.family, M2Family) and loaded.config == config
    assert loaded.restarts.equals(result.restarts)


def test_an_unknown_family_in_a_run_folder_is_a_clear_error(tmp_path, linear_bench):
    import json

    from vaefail.errors import StoreError

    config = FitConfig(benchmark="linear", restarts=1, truth_restarts=0, steps=50, eval_every=50, n_train=300,
                       n_val=50, n_test=50, converge=False)
    path = vaefail.fit_config(config, linear_bench).save(tmp_path / "run")
    meta = json.loads((path / "config.json").read_text())
    meta["family"] = "no.such.module:Family"
    del meta["checksums"]  # a run written without them (or by hand): the family is what is wrong
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="unknown model family"):
        FitResult.load(path)


class CountingCache:
    """A :class:`vaefail.protocol.StartCache` in memory that records what was saved."""

    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.saved: list[str] = []

    def load(self, key):
        return self.data.get(key)

    def save(self, key, data):
        self.saved.append(key)
        self.data.setdefault(key, data)


def _leaves(models):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(models, eqx.is_array))]


@pytest.mark.slow
def test_truth_starts_are_computed_once_and_equal_unshared_ones(linear_bench, monkeypatch):
    """The VAE with sigma_eps fixed and learned and the IWAE share one decoder stage; the two VAEs share
    one encoder stage; every result is bit for bit the unshared one."""
    import vaefail.protocol as protocol

    calls = {"decoder": 0, "inference": 0}
    for name, stage in (("fit_decoder_to_truth", "decoder"), ("fit_inference", "inference")):
        original = getattr(protocol, name)

        def counted(*args, _original=original, _stage=stage, **kwargs):
            calls[_stage] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(protocol, name, counted)
    base = FitConfig(benchmark="linear", restarts=2, truth_restarts=1, steps=50, init_steps=50,
                     eval_every=25, n_train=300, n_val=100, n_test=100, converge=False, num_samples=5)
    configs = [base, base.replace(learn_sigma=True), base.replace(objective="iwae")]
    cache = CountingCache()
    shared = [fit_family(MFGFamily(), c, linear_bench, starts=cache) for c in configs]
    assert calls == {"decoder": 1, "inference": 2}
    assert sorted(k.split("-")[2] for k in cache.saved) == ["decoder", "inference", "inference"]
    for config, result in zip(configs[1:], shared[1:], strict=True):  # the first computed its own
        alone = fit_family(MFGFamily(), config, linear_bench)
        for a, b in zip(_leaves(alone.models), _leaves(result.models), strict=True):
            np.testing.assert_array_equal(a, b)
        pd.testing.assert_frame_equal(alone.restarts, result.restarts)
    assert calls == {"decoder": 3, "inference": 4}  # the unshared fits computed their own
