"""Timing one jitted chunk of episodic training (shared by the episodic and Omniglot benchmarks)."""

from __future__ import annotations

import time

import jax

from bpm_jax import xla
from train import episodic_learner


def training_figures(spec, config, task_params) -> dict:
  """Compile s, s/iteration, episodes/s and temp MiB of one chunk of `config.iterations`
  optimiser steps of `spec` (compiled, run once to warm up, then timed); also the state."""
  state = episodic_learner.init(spec, jax.random.key(0))
  fn = jax.jit(lambda p, s: episodic_learner.run(spec, p, s, config.iterations))
  start = time.perf_counter()
  compiled = xla.compile(fn, task_params, state)
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(task_params, state))  # Warm-up.
  start = time.perf_counter()
  jax.block_until_ready(compiled(task_params, state))
  seconds = (time.perf_counter() - start) / config.iterations
  memory = compiled.memory_analysis()
  temp_mib = (
    getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory is not None else float("nan")
  )
  return dict(
    compile_s=compile_s,
    s_per_it=seconds,
    episodes_per_s=config.batch_size / seconds,
    temp_mib=temp_mib,
    state=state,
  )
