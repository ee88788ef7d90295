"""The restart protocol serves any model family: a new family is a few methods, with no change to the
protocol, the result type or the run folder."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
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
