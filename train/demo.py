"""`python -m train.demo`: plasticity at work in about a minute (the README's main job).

Trains the same recurrent network with and without Hebbian plasticity on a
small pattern-completion task (Differentiable plasticity 4.1, SPEC §5.4, at
100-bit patterns, 3 per episode, batches of 4 episodes, Adam 1e-3), then
prints what each learned (the fraction of wrong bits at the start and the end
of training, and on held-out episodes) and where the figures are:

    python -m train.demo --workdir=runs/demo

Run again on the same workdir, it reports the finished runs (or continues
interrupted ones) instead of training afresh.

Copying the probe gets 25% of the bits wrong (the erased half is a guess);
the plastic network memorises each episode's patterns in its Hebbian traces
and completes the probe, the plain network cannot. The paper-size run is
`python -m train.episodic --task=PatternCompletion-v0` (1000-bit patterns).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags, logging

from train import episodic_plots, episodic_train
from train import metrics as metrics_lib
from train import run as run_lib
from train.episodic_config import episodic_defaults

DEMO = dict(
  pattern_size=100,
  n_items=3,
  batch_size=4,
  learning_rate=1e-3,
  iterations=300,
  eval_every=100,
  eval_episodes=50,
  checkpoint_every=100,
)
NETWORKS = ("plastic", "rnn")


def summary(rows: list[dict], fraction: float = 0.1) -> tuple[float, float, float]:
  """(median bit error over the first and the last `fraction` of iterations, last held-out)."""
  errors = np.array([row["bit_error_median"] for row in rows])
  n = max(1, int(len(errors) * fraction))
  held_out = [row["eval_bit_error_median"] for row in rows]
  held_out = [e for e in held_out if not np.isnan(e)]
  return float(errors[:n].mean()), float(errors[-n:].mean()), held_out[-1] if held_out else np.nan


def run_demo(workdir: str, progress: bool = True) -> dict[str, tuple]:
  """Trains both networks under `workdir`; returns {network: summary}; writes the figures.

  Run again on the same workdir, it continues (or, finished, just reports) the runs there.
  """
  results = {}
  for network in NETWORKS:
    run_dir = os.path.join(workdir, network)
    config = episodic_defaults(
      "PatternCompletion-v0",
      network=network,
      resume=run_lib.has_checkpoint(run_dir),
      progress=progress,
      **DEMO,
    )
    try:
      episodic_train.train_and_evaluate(config, run_dir)
    except run_lib.NothingToDo as done:
      print(done)
    rows = metrics_lib.read_csv(os.path.join(run_dir, metrics_lib.METRICS_CSV))
    results[network] = summary(rows)
  dirs = [os.path.join(workdir, n) for n in NETWORKS]
  curves = episodic_plots.plot_curves(dirs, os.path.join(workdir, "curves.png"))
  pictures = episodic_plots.plot_completions(dirs, os.path.join(workdir, "completions.png"))
  print("\nWrong bits in the completed probe (copying the probe: 25%):")
  print(f"  {'network':8s} {'start':>7s} {'end':>7s} {'held-out':>9s}")
  for network, (start, end, held_out) in results.items():
    print(f"  {network:8s} {start:7.1%} {end:7.1%} {held_out:9.1%}")
  print(f"Figures: {curves}\n         {pictures}")
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  try:
    run_demo(flags.FLAGS.workdir, progress=flags.FLAGS.progress)
  except run_lib.RUN_ERRORS + (OSError,) as e:
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", "runs/demo", "Output directory (one run per network inside).")
  flags.DEFINE_bool("progress", True, "Show progress bars.")
  app.run(main)
