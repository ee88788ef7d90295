"""The training-loop throughput measurement shared by the benchmark scripts (``run.py``,
``torch_baseline.py``, ``flop_floor.py``, ``restart_groups.py``): each imports this module, none another."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from vaefail.benchmarks import get_benchmark
from vaefail.config import FitConfig, FlowConfig
from vaefail.flowvae import FLOW
from vaefail.mfg import init_models
from vaefail.objectives import loss_fn
from vaefail.training import optimise


def restart_steps_per_second(objective: str, samples: int, latent_dim: int, restarts: int = 10,
                             batch: int = 100, steps: int = 2000, group: int | None = None,
                             encoder: str = "gaussian") -> float:
    """Throughput of the fused training loop alone: the second of two identical runs of ``steps`` steps
    (the first compiles). The restarts are split across the process's CPU devices (one per core by
    default, ``$VAEFAIL_CPU_DEVICES``), as in ``vaefail.fit``; on one device ``group`` of them are vmapped
    at a time (``optimise``'s default when ``None``). ``encoder="flow"``: the flow family's models
    (``FlowFamily.init`` with the ``FlowConfig`` defaults: 2 spline coupling layers of 8 bins) trained on
    the loss ``vaefail fit --encoder flow`` trains, ``FlowFamily.loss`` (for ``objective="vae"`` the ELBO with
    the path-derivative gradient, :class:`vaefail.flowvae.PathwiseELBO`)."""
    bench = get_benchmark("figure8")
    keys = list(jax.random.split(jax.random.PRNGKey(0), restarts))
    if encoder == "flow":
        config = FlowConfig(restarts=restarts, latent_dim=latent_dim, objective=objective,
                            num_samples=samples)
        models, loss = FLOW.init(config, bench, keys), FLOW.loss(config)
    else:
        models = init_models(FitConfig(restarts=restarts, latent_dim=latent_dim), bench, keys)
        loss = loss_fn(objective, samples)
    x = jnp.asarray(bench.sample(jax.random.PRNGKey(1), 5000).x, jnp.float32)

    def go(n):
        t = time.perf_counter()
        out = optimise(models, loss, x, jax.random.PRNGKey(2), steps=n,
                       batch_size=batch, learning_rate=1e-3, eval_every=n, group=group, progress=False)
        jax.block_until_ready(out.model)
        return time.perf_counter() - t

    go(steps)
    return restarts * steps / go(steps)
