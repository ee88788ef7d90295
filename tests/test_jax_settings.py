"""JAX settings of :func:`vaefail.configure` (never applied on import): the unrolled Threefry lowering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.random import threefry2x32 as threefry

import vaefail

vaefail.configure()


def test_threefry_is_unrolled_on_cpu():
    """The hash behind every draw is emitted without JAX's CPU loop (faster to compile and to run)."""
    hlo = jax.jit(lambda k: jax.random.bits(k, (64,))).lower(jax.random.PRNGKey(0)).as_text()
    assert "while" not in hlo and "threefry" in hlo.lower()


def test_unrolled_threefry_gives_the_same_numbers():
    # Random123's known answer for Threefry-2x32 with 20 rounds (kat_vectors: key, counter -> output)
    out = jax.jit(threefry.threefry_2x32)(
        jnp.array([0x13198A2E, 0x03707344], jnp.uint32), jnp.array([0x243F6A88, 0x85A308D3], jnp.uint32)
    )
    assert [int(v) for v in out] == [0xC4923A9C, 0x483DF7A0]
    # and bit for bit what JAX's own rolled CPU lowering computes, on many counters and keys
    rng = np.random.default_rng(0)
    k1, k2, x1, x2 = (jnp.asarray(rng.integers(0, 2**32, size=4096, dtype=np.uint32)) for _ in range(4))
    rolled = jax.jit(partial(threefry._threefry2x32_lowering, use_rolled_loops=True))(k1, k2, x1, x2)
    ours = jax.jit(lambda *a: threefry.threefry2x32_p.bind(*a))(k1, k2, x1, x2)
    for a, b in zip(rolled, ours, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


_DRAWS = """
import json, sys, jax
if sys.argv[1] == "vaefail":
    import vaefail
    vaefail.configure()
key = jax.random.PRNGKey(20200714)
k1, k2 = jax.random.split(key)
rolled = "while" in jax.jit(lambda k: jax.random.bits(k, (8,))).lower(key).as_text()
print(json.dumps([rolled, jax.random.normal(k1, (500,)).tolist(), jax.random.uniform(k2, (7, 9)).tolist(),
                  jax.random.key_data(jax.random.split(key, 5)).tolist()]))
"""


def test_draws_are_those_of_plain_jax():
    """Normals, uniforms and key splits in a process with vaefail equal those of a plain JAX process."""
    plain, ours = (json.loads(subprocess.run([sys.executable, "-c", _DRAWS, which], capture_output=True,
                                             text=True, check=True).stdout) for which in ("plain", "vaefail"))
    assert plain[0] and not ours[0]  # JAX's rolled CPU loop there, the unrolled hash here
    assert plain[1:] == ours[1:]


def test_import_changes_no_jax_setting():
    """``import vaefail`` leaves JAX's defaults (no cache, one device); ``vaefail.configure`` sets them."""
    env = {**os.environ, "VAEFAIL_JAX_CACHE": str(Path.home() / ".cache" / "vaefail" / "jax")}
    env.pop("XLA_FLAGS", None)

    def run(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=env).stdout.strip()

    plain = run("import jax, vaefail; print(jax.config.jax_compilation_cache_dir, jax.device_count())")
    assert plain == "None 1"
    assert run("import jax, vaefail; vaefail.configure(cpu_devices=2); "
               "print(jax.config.jax_compilation_cache_dir is not None, jax.device_count())") == "True 2"
