"""Figure and table of the cue-reward runs in this folder, from their metrics.

    python results/cue_reward/make_figure.py --workdir=runs/cue_modplast_batch0   # refresh the CSV
    python results/cue_reward/make_figure.py                                      # from the CSV here

Reads `metrics_<name>.csv` (one row per 100 iterations: the mean over those
iterations of each seed's reward per episode and of mean |m(t)|), writes
`curves.png` (reward per episode and |m| vs iteration) and prints the table
of 1000-iteration window means.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def downsample(workdir: str, out: str, every: int = 100) -> None:
  """metrics.csv of a run -> one row per `every` iterations (means)."""
  with open(os.path.join(workdir, "metrics.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  seeds = sorted(k for k in rows[0] if k.startswith("reward_seed"))
  with open(out, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["iteration", *seeds, "modulation_abs"])
    for start in range(0, len(rows) - every + 1, every):
      block = rows[start : start + every]
      writer.writerow(
        [int(float(block[0]["iteration"]))]
        + [f"{np.mean([float(r[s]) for r in block]):.4f}" for s in seeds]
        + [f"{np.mean([float(r['modulation_abs']) for r in block]):.4f}"]
      )


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", help="a train.a2c workdir to (re)downsample first")
  parser.add_argument("--name", default="modplast_batch0")
  args = parser.parse_args()
  if args.workdir:
    downsample(args.workdir, os.path.join(HERE, f"metrics_{args.name}.csv"))
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(8, 5))
  ax, ax_m = fig.subplots(2, 1, sharex=True)
  for path in sorted(glob.glob(os.path.join(HERE, "metrics_*.csv"))):
    name = os.path.basename(path)[len("metrics_") : -len(".csv")]
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
    it = np.array([float(r["iteration"]) for r in rows])
    seeds = [k for k in rows[0] if k.startswith("reward_seed")]
    reward = np.array([[float(r[s]) for s in seeds] for r in rows])  # [N, S]
    m = np.array([float(r["modulation_abs"]) for r in rows])
    med = np.median(reward, axis=1)
    ax.plot(it, med, label=f"{name} ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
    if reward.shape[1] > 1:
      ax.fill_between(it, *np.percentile(reward, [25, 75], axis=1), alpha=0.3)
    ax_m.plot(it, m, label=name)
    print(f"{name}: window means of the reward per episode (median over seeds) and mean |m(t)|")
    print("  iterations     reward   |m|")
    for w in range(0, len(rows), 10):
      print(
        f"  {int(it[w]):>6}-{int(it[min(w + 9, len(it) - 1)]) + 99:<6} "
        f"{med[w : w + 10].mean():8.2f} {m[w : w + 10].mean():6.3f}"
      )
  ax.set_ylabel("reward per episode")
  ax.axhline(0, color="grey", lw=0.5)
  ax.legend(loc="upper left")
  ax_m.set_ylabel("mean |m(t)|")
  ax_m.set_xlabel("iteration")
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "curves.png"), dpi=100)
  print(f"Wrote {os.path.join(HERE, 'curves.png')}")


if __name__ == "__main__":
  main()
