"""What sharing the truth starts saves: CPU seconds of each stage against how often a preset computes it.

Usage: ``python benchmarks/truth_starts.py [--experiment table1] [--preset paper] [--latent-dims 1,2,3]``.

The truth-started restarts of a configuration begin with two stages (:func:`vaefail.protocol.truth_start`):
``decoder`` (the decoder regressed onto ``f_gt``, then the encoder onto the exact posterior's moments) and
``inference`` (the encoder trained on the objective with the decoder frozen). Reproduce runs share each
stage between the configurations whose :func:`vaefail.protocol.start_key` is equal. The script counts, over
the experiment's ``fit`` configurations, the stages computed without sharing (one of each per
configuration) and with it (one per distinct key), and measures the process CPU seconds of each stage on
figure8, one core in a reproduce worker's setting (one XLA device, one thread): the second of two runs with
different seeds (the first compiles); every benchmark of the grid is costed as figure8 (same data
dimension and networks). The saving is the stages not computed times their measured cost.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import jax
from rich.console import Console
from rich.table import Table

import vaefail
from vaefail.api import encoder_config
from vaefail.benchmarks import get_benchmark
from vaefail.experiments.grid import EXPERIMENTS, PRESETS, load_experiments
from vaefail.mfg import MFG
from vaefail.protocol import fit_decoder_to_truth, fit_inference, start_key
from vaefail.stacking import take


def stage_cpu_seconds(config, seed: int) -> tuple[float, float]:
    """Process CPU seconds of the decoder stage and of the inference stage of ``config``'s truth start
    (figure8, with ``seed``), as :func:`vaefail.protocol.truth_start` runs them."""
    config = config.replace(benchmark="figure8", benchmark_params={}, seed=seed, data_seed=seed)
    bench = get_benchmark("figure8")
    data = MFG.make_data(bench, config)
    _, k_dec, k_enc, _, _ = jax.random.split(jax.random.PRNGKey(seed), 5)
    keys = [jax.random.fold_in(jax.random.PRNGKey(seed), r) for r in range(config.n_truth)]
    models = take(MFG.init(config, bench, keys), slice(0, config.n_truth))
    t = time.process_time()
    models = fit_decoder_to_truth(MFG, models, bench, k_dec, steps=config.init_steps)
    models = MFG.warm_start(models, bench, data, jax.random.fold_in(k_enc, 1), config)
    jax.block_until_ready(models)
    decoder = time.process_time() - t
    t = time.process_time()
    jax.block_until_ready(fit_inference(MFG, models, data, config, k_enc, steps=config.init_steps).model)
    return decoder, time.process_time() - t


def main() -> None:
    vaefail.configure(cpu_devices=1, xla_threads=1)  # one device with one thread, as a reproduce worker
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="table1", choices=(*EXPERIMENTS, "all"))
    parser.add_argument("--preset", default="paper", choices=PRESETS)
    parser.add_argument("--latent-dims", default="1,2,3", help="the K to measure (others are skipped)")
    args = parser.parse_args()
    wanted = {int(k) for k in args.latent_dims.split(",")}
    configs = []
    for experiment in load_experiments(args.experiment, args.preset):
        for task in experiment.tasks:
            fit = dict(task.fit)
            if task.kind != "fit" or fit.pop("encoder", "gaussian") != "gaussian":
                continue
            config = encoder_config("gaussian").from_dict(fit)
            if config.n_truth > 0 and config.init_steps > 0 and config.latent_dim in wanted:
                configs.append(config)
    if not configs:
        raise SystemExit("no configuration with truth starts in that experiment, preset and K")

    costs: dict[tuple, tuple[float, float]] = {}  # (K, objective) -> seconds of (decoder, inference)
    shapes = Counter((c.latent_dim, c.objective) for c in configs)
    for shape in sorted(shapes):
        example = next(c for c in configs if (c.latent_dim, c.objective) == shape)
        stage_cpu_seconds(example, 101)  # compiles
        costs[shape] = stage_cpu_seconds(example, 102)

    table = Table(title=f"truth starts of {args.experiment} --preset {args.preset} (K in {sorted(wanted)}; "
                        f"CPU seconds on one core; load average at start {os.getloadavg()[0]:.2f})")
    for col in ("K", "objective", "configurations", "decoder stage s", "inference stage s",
                "decoder stages shared", "inference stages shared", "CPU s unshared", "CPU s shared"):
        table.add_column(col, justify="right")
    totals = [0.0, 0.0]
    for shape in sorted(shapes):
        mine = [c for c in configs if (c.latent_dim, c.objective) == shape]
        dec_keys = {start_key(MFG, c, "decoder") for c in mine}
        inf_keys = {start_key(MFG, c, "inference") for c in mine}
        # a decoder stage shared with another objective is counted once, with the first objective
        earlier = {start_key(MFG, c, "decoder") for c in configs
                   if c.latent_dim == shape[0] and c.objective < shape[1]}
        dec_new = len(dec_keys - earlier)
        dec, inf = costs[shape]
        unshared = len(mine) * (dec + inf)
        shared = dec_new * dec + len(inf_keys) * inf
        totals[0] += unshared
        totals[1] += shared
        table.add_row(str(shape[0]), shape[1], str(len(mine)), f"{dec:.1f}", f"{inf:.1f}",
                      str(dec_new), str(len(inf_keys)), f"{unshared:,.0f}", f"{shared:,.0f}")
    table.add_row("all", "", str(len(configs)), "", "", "", "", f"{totals[0]:,.0f}", f"{totals[1]:,.0f}")
    Console(width=160).print(table)
    saved = totals[0] - totals[1]
    print(f"saved: {saved:,.0f} CPU seconds ({saved / 60:,.1f} CPU minutes)")


if __name__ == "__main__":
    main()
