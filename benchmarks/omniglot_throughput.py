"""Omniglot 5-way 1-shot training throughput at the paper's sizes (what this run measures, only).

    flock /tmp/bench.lock python -m benchmarks.omniglot_throughput
    python -m benchmarks.omniglot_throughput --networks=plastic --batch_sizes=1,32 --iterations=20
    python -m benchmarks.omniglot_throughput --data_dir=/path/to/omniglot   # the real characters

For each (network, batch size) this compiles one jitted chunk of
`--iterations` optimiser steps of `train.episodic_learner` (sample the
episodes, 4-layer conv embedding of the 6 drawings, Oja-plastic or plain
output layer, BCE, backward, Adam), runs it once to warm up and once timed,
and prints seconds per iteration, episodes/s, held-out evaluation episodes/s
(forward only, 100 episodes) and XLA's temporary-buffer size. The characters
are the generated glyphs of SyntheticGlyphs-v0 (not Omniglot; the same
shapes) unless `--data_dir` is given. Figures are printed, never asserted.
"""

from __future__ import annotations

import itertools
import time

import jax
from absl import app, flags

from benchmarks.episodic_timing import training_figures
from bpm_jax import xla
from train import episodic_learner
from train.episodic_config import episodic_defaults

FLAGS = flags.FLAGS
flags.DEFINE_list("networks", ["plastic", "rnn"], "Networks: plastic (Oja output layer), rnn.")
flags.DEFINE_list("batch_sizes", ["1", "16", "64"], "Episodes per optimiser step.")
flags.DEFINE_integer("iterations", 10, "Timed optimiser steps (one jitted chunk).", lower_bound=1)
flags.DEFINE_integer("eval_episodes", 100, "Held-out episodes of the timed evaluation.")
flags.DEFINE_string("data_dir", "", "The Omniglot python release (default: synthetic glyphs).")


def _timed(compiled, *args) -> float:
  jax.block_until_ready(compiled(*args))  # Warm-up.
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  return time.perf_counter() - start


def measure(config) -> dict:
  """Compile time, s/iteration, episodes/s, eval episodes/s and temp MiB of one config."""
  spec = episodic_learner.make_spec(config)
  _, task_params, held_out = config.make_task()
  figures = training_figures(spec, config, task_params)
  state = figures.pop("state")
  evaluate = jax.jit(
    lambda p, params: episodic_learner.evaluate(
      spec, p, params, episodic_learner.eval_key(), FLAGS.eval_episodes
    )
  )
  eval_s = _timed(xla.compile(evaluate, held_out, state.params), held_out, state.params)
  return dict(figures, eval_episodes_per_s=FLAGS.eval_episodes / eval_s)


def main(argv):
  del argv
  task = "Omniglot-v0" if FLAGS.data_dir else "SyntheticGlyphs-v0"
  print(
    f"devices: {jax.devices()}; {task} (5-way 1-shot, 6 steps, 31x31, 64 channels); "
    f"iterations timed: {FLAGS.iterations}"
  )
  print(
    f"{'network':8s} {'B':>4s} {'compile s':>9s} {'s/it':>8s} {'episodes/s':>10s} "
    f"{'eval ep/s':>9s} {'temp MiB':>9s}"
  )
  for network, batch in itertools.product(FLAGS.networks, FLAGS.batch_sizes):
    config = episodic_defaults(
      task,
      network=network,
      batch_size=int(batch),
      iterations=FLAGS.iterations,
      data_dir=FLAGS.data_dir,
      progress=False,
    )
    r = measure(config)
    print(
      f"{network:8s} {int(batch):4d} {r['compile_s']:9.1f} {r['s_per_it']:8.4f} "
      f"{r['episodes_per_s']:10.1f} {r['eval_episodes_per_s']:9.1f} {r['temp_mib']:9.1f}",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
