"""The configs' shared behaviour: dict round trip, unknown keys named, the restart protocol's checks."""

from __future__ import annotations

import pytest

from vaefail.config import FitConfig
from vaefail.errors import ConfigError
from vaefail.semisupervised import DigitsConfig, SemiSupervisedConfig

BAD = (({"restarts": 0}, "restarts must be >= 1"), ({"n_val": 1}, "n_val must be >= 2"),
       ({"sigma_eps": -1.0}, "sigma_eps must be > 0"), ({"latent_dim": 0}, "K must be >= 1"),
       ({"truth_restarts": 3, "restarts": 2}, r"truth_restarts must be in \[0, restarts=2\]"),
       ({"activation": "swish"}, "activation"), ({"final_lr_factor": 0.0}, "final_lr_factor"))


@pytest.mark.parametrize("cls", [FitConfig, SemiSupervisedConfig])
def test_protocol_configs_round_trip_derive_and_check_alike(cls):
    config = cls(restarts=4, truth_restarts=1, seed=3)
    assert cls.from_dict(config.to_dict()) == config
    assert "what" not in config.to_dict()  # a class attribute, not a field
    assert (config.n_truth, cls(restarts=5).n_truth) == (1, 2)
    assert (config.split_seed, config.replace(data_seed=7).split_seed) == (3, 7)
    iwae, vae = cls(objective="iwae", num_samples=7, eval_samples=4), cls(objective="vae", eval_samples=4)
    assert (iwae.train_samples, iwae.eval_num_samples) == (7, 7)
    assert (vae.train_samples, vae.eval_num_samples) == (1, 4)
    for bad, message in BAD:
        with pytest.raises(ConfigError, match=message):
            cls(**bad)


@pytest.mark.parametrize("cls,what", [(FitConfig, "config"), (SemiSupervisedConfig, "semi-supervised config"),
                                      (DigitsConfig, "digits config")])
def test_unknown_keys_are_named_with_the_config(cls, what):
    with pytest.raises(ConfigError, match=rf"unknown {what} keys \['K'\]"):
        cls.from_dict({"K": 2})
    assert cls.from_dict(cls().to_dict()) == cls()
