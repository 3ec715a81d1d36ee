"""Episodic training throughput at the paper's sizes (what this run measures, only).

    flock /tmp/bench.lock python -m benchmarks.episodic_throughput
    python -m benchmarks.episodic_throughput --tasks=PatternCompletion-v0 \
        --networks=plastic --batch_sizes=1,4 --backward=hand_written,autodiff

For each (task, network, batch size, backward) this compiles one jitted chunk
of `--iterations` optimiser steps of `train.episodic_learner` (sample the
episodes, forward, backward, Adam; patterns N=1001 T=106, images N=1025
T=201), runs it once to warm up and once timed, and prints seconds per
iteration, episodes/s and XLA's temporary-buffer size. `backward`:
`hand_written` (`bpm_jax.completion.decay_sequence`, the default) or
`autodiff` (JAX autodiff of the segmented scan); the rnn and lstm networks
always use autodiff. Figures are printed, never asserted; nothing else (the
authors' code included) is run here.
"""

from __future__ import annotations

import itertools

import jax
from absl import app, flags

from benchmarks.episodic_timing import training_figures
from train import episodic_learner
from train.episodic_config import episodic_defaults

FLAGS = flags.FLAGS
flags.DEFINE_list("tasks", ["PatternCompletion-v0", "ImageCompletion-v0"], "Task ids.")
flags.DEFINE_list("networks", ["plastic", "rnn", "lstm"], "Networks.")
flags.DEFINE_list("batch_sizes", ["1", "4"], "Episodes per optimiser step.")
flags.DEFINE_list("backward", ["hand_written"], "Plastic backward: hand_written and/or autodiff.")
flags.DEFINE_integer("iterations", 3, "Timed optimiser steps (one jitted chunk).", lower_bound=1)
flags.DEFINE_integer("remat_every", 10, "Steps per recomputed segment.", lower_bound=0)


def measure(config, hand_written: bool) -> dict:
  """`training_figures` of one config, with the chosen plastic backward pass."""
  spec = episodic_learner.make_spec(config)
  if config.network != "lstm":
    spec = spec.__class__(
      **dict(vars(spec), network=spec.network.clone(hand_written_backward=hand_written))
    )
  _, task_params, _ = config.make_task()
  return training_figures(spec, config, task_params)


def main(argv):
  del argv
  print(f"devices: {jax.devices()}; iterations timed: {FLAGS.iterations}")
  print(
    f"{'task':22s} {'network':8s} {'B':>3s} {'backward':12s} {'compile s':>9s} "
    f"{'s/it':>7s} {'episodes/s':>10s} {'temp MiB':>9s}"
  )
  for task, network, batch, backward in itertools.product(
    FLAGS.tasks, FLAGS.networks, FLAGS.batch_sizes, FLAGS.backward
  ):
    if network != "plastic" and backward != FLAGS.backward[0]:
      continue  # Only the plastic network has two backward passes.
    config = episodic_defaults(
      task,
      network=network,
      batch_size=int(batch),
      iterations=FLAGS.iterations,
      remat_every=FLAGS.remat_every,
    )
    label = backward if network == "plastic" else "autodiff"
    r = measure(config, hand_written=backward == "hand_written")
    print(
      f"{task:22s} {network:8s} {int(batch):3d} {label:12s} {r['compile_s']:9.1f} "
      f"{r['s_per_it']:7.3f} {r['episodes_per_s']:10.2f} {r['temp_mib']:9.0f}",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
