"""Timing helpers shared by the benchmark scripts (no flags here)."""

from __future__ import annotations

import time


def time_sequence(network: str, batch: int, size: int, steps: int, scale: float, repeats: int):
  """Best seconds of one forward and of one forward + backward call, and the
  fraction of Hebbian traces at the clip bound after the last step."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from bpm_jax import fused_step, plasticity, xla  # pylint: disable=g-import-not-at-top
  from bpm_jax.config import PlasticityConfig  # pylint: disable=g-import-not-at-top

  config = PlasticityConfig(network=network)
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(0, 1, shape), jnp.float32)
  x = normal(steps, batch, size)
  zeros = plasticity.init_traces(config, size, size, jnp.float32)
  state = plasticity.RNNState(
    h=jnp.zeros((batch, size)),
    traces=jax.tree.map(lambda z: jnp.zeros((batch,) + z.shape), zeros),
  )
  clip = jnp.float32(1.0)

  def outputs(params, x):
    return fused_step.rnn_sequence_fused(params, state, x, config, clip)

  forward = lambda params, x: jnp.sum(jnp.sin(outputs(params, x)[1][0]))
  both = jax.value_and_grad(forward)
  modulated = config.is_modulated
  params = plasticity.PlasticParams(
    w=0.1 * normal(size, size),
    alpha=0.1 * normal(size, size),
    eta=None if config.network == "modplast" else jnp.float32(0.1 * scale),
    mod_kernel=scale * normal(size, 1) if modulated else None,
    mod_bias=scale * normal(1) if modulated else None,
  )
  times = []
  for fn in (forward, both):
    compiled = xla.compile(jax.jit(fn), params, x)
    jax.block_until_ready(compiled(params, x))
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(params, x))
      best = min(best, time.perf_counter() - start)
    times.append(best)
  hebb = outputs(params, x)[0].traces.hebb
  return times[0], times[1], float(jnp.mean(jnp.abs(hebb) >= clip))
