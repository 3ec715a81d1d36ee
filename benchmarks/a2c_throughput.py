"""A2C training throughput at the paper's settings (what this run measures, only).

    flock /tmp/bench.lock python -m benchmarks.a2c_throughput
    python -m benchmarks.a2c_throughput --envs=CueReward-v0 --networks=modplast \
        --step_impls=reference,fast --remat=false,true --iterations=3
    python -m benchmarks.a2c_throughput --step_impls=fused   # the default on CPU
    python -m benchmarks.a2c_throughput --step_impls=fused --fused_segments=1,auto

For each (env, network, step_impl, remat) this compiles one jitted chunk of
`--iterations` A2C iterations (batch 30; maze H=100 T=200; cue-reward H=200
T=120), runs it once to warm up and once timed, and prints seconds per
iteration, env-steps/s and XLA's temporary-buffer size (the BPTT memory).
With `fused`, column k is the segment length of the sequence kernels: they
keep the traces of every k-th step and recompute the rest in the backward
pass (`fused_step.rnn_sequence_fused`); k=1 keeps every step's traces.
Figures are printed, never asserted. The authors' PyTorch code is not run
here: its figures, with the machine and date they were measured on, are in
the README's speed section.
"""

from __future__ import annotations

import itertools
import time

import jax
from absl import app, flags

from bpm_jax import fused_step, xla
from train import a2c_learner
from train import run as run_lib
from train.a2c_config import a2c_defaults

FLAGS = flags.FLAGS
flags.DEFINE_list("envs", ["GridMaze-v0", "CueReward-v0"], "Environments.")
flags.DEFINE_list("networks", ["rnn", "plastic", "modplast", "retromod"], "Network types.")
flags.DEFINE_list(
  "step_impls",
  ["reference", "fast", "fused"],
  "Plastic step implementations (fused: C++ CPU kernels, see "
  "bpm_jax/fused_step.py; it needs a C++ compiler).",
)
flags.DEFINE_list("remat", ["false"], "jax.checkpoint the rollout step: false and/or true.")
flags.DEFINE_integer("iterations", 3, "Timed iterations (one jitted chunk).", lower_bound=1)
flags.DEFINE_integer("batch_size", 30, "B.", lower_bound=1)
flags.DEFINE_list("batch_groups", ["1"], "G values: B episodes as G sequential groups.")
flags.DEFINE_integer("num_seeds", 1, "Agents trained side by side (vmapped).", lower_bound=1)
flags.DEFINE_list(
  "fused_segments",
  ["auto"],
  "With step_impl=fused: segment lengths k of the sequence kernels (integers >= 1; "
  "auto: fused_step.default_segment; 1: keep every step's traces).",
)


def _segment(value: str) -> int | None:
  return None if value == "auto" else int(value)


def measure(config) -> dict:
  """Compile time, s/iteration, env-steps/s and temp MiB of one config."""
  spec = a2c_learner.make_spec(config)
  keys = run_lib.seed_keys(config.seed, config.num_seeds)
  hparams = config.hparams()
  state = jax.jit(jax.vmap(lambda k, h: a2c_learner.init(spec, k, h), in_axes=(0, None)))(
    keys, hparams
  )
  fn = jax.jit(
    jax.vmap(lambda s, h: a2c_learner.run(spec, s, h, config.iterations), in_axes=(0, None))
  )
  start = time.perf_counter()
  compiled = xla.compile(fn, state, hparams, fast=config.fast_compile)
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  temp_mib = getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory else float("nan")
  state, _ = jax.block_until_ready(compiled(state, hparams))  # Warm-up.
  start = time.perf_counter()
  jax.block_until_ready(compiled(state, hparams))
  s_per_it = (time.perf_counter() - start) / config.iterations
  steps = config.num_seeds * config.batch_size * config.episode_length
  return dict(
    compile_s=compile_s, s_per_it=s_per_it, steps_per_s=steps / s_per_it, temp_mib=temp_mib
  )


def main(argv):
  del argv
  print(
    f"JAX {jax.__version__} on {jax.devices()[0].platform}; batch {FLAGS.batch_size}, "
    f"{FLAGS.num_seeds} seed(s), {FLAGS.iterations} timed iterations per config."
  )
  header = (
    f"{'env':<13} {'network':<9} {'step':<9} {'remat':<5} {'G':>3} {'k':>4} {'H':>4} "
    f"{'T':>4} {'compile s':>9} {'s/iter':>8} {'env-steps/s':>11} "
    f"{'temp MiB':>8}"
  )
  print(header)
  print("-" * len(header))
  runs = itertools.product(
    FLAGS.envs, FLAGS.networks, FLAGS.step_impls, FLAGS.remat, FLAGS.batch_groups
  )
  for env, network, step_impl, remat, groups in runs:
    for segment in FLAGS.fused_segments if step_impl == "fused" else ["-"]:
      run_one(env, network, step_impl, remat, groups, segment)


def run_one(env, network, step_impl, remat, groups, segment):
  """Measures and prints one row (or why it failed)."""
  remat = remat.lower() in ("1", "true", "yes")
  label = f"{env:<13} {network:<9} {step_impl:<9} {str(remat):<5} {groups:>3}"
  try:
    config = a2c_defaults(
      env,
      network=network,
      step_impl=step_impl,
      remat=remat,
      batch_size=FLAGS.batch_size,
      num_seeds=FLAGS.num_seeds,
      iterations=FLAGS.iterations,
      batch_groups=int(groups),
    )
    k = "-"
    if step_impl == "fused" and config.plasticity.is_plastic:
      k = _segment(segment) or fused_step.default_segment(
        config.episode_length, config.hidden_size, network
      )
      k = min(k, config.episode_length)
    with fused_step.segment_length(None if k == "-" else k):
      r = measure(config)
  except Exception as e:  # pylint: disable=broad-except
    print(f"{label} failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}", flush=True)
    return
  print(
    f"{label} {k:>4} {config.hidden_size:>4} {config.episode_length:>4} "
    f"{r['compile_s']:>9.1f} {r['s_per_it']:>8.3f} {r['steps_per_s']:>11,.0f} "
    f"{r['temp_mib']:>8.0f}",
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
