"""Table and figures of the completion runs (Differentiable plasticity 4.1-4.2) in this folder.

    python results/completion/make_figure.py --task=patterns \
        --workdirs=runs/patterns_plastic,runs/patterns_rnn,runs/patterns_lstm   # refresh from runs
    python results/completion/make_figure.py --task=patterns                     # from the CSVs here

With `--workdirs` it first copies each run's metrics, downsampled to one row
per `--every` iterations (the mean of each seed's training loss and bit error
over those iterations, and the held-out evaluation made at the end of the
block), to `<task>_<network>.csv`, its config to `<task>_<network>.json`, and
redraws `<task>_completions.png` (one held-out episode per network, from the
runs' final checkpoints). Then it writes `<task>_curves.png` (median and range
over seeds) and prints the table: per network, the training bit error / loss
over the first and the last block, and the last held-out evaluation, per seed
and as the median over seeds.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
COLOURS = {"plastic": "tab:red", "rnn": "tab:blue", "lstm": "tab:green"}


def _read(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return [
      {k: float(v) if v != "" else np.nan for k, v in row.items()} for row in csv.DictReader(f)
    ]


def downsample(workdir: str, out: str, every: int) -> None:
  rows = _read(os.path.join(workdir, "metrics.csv"))
  seeds = sorted({int(k.rsplit("seed", 1)[1]) for k in rows[0] if "_seed" in k})
  names = [f"{p}{s}_seed{k}" for p in ("", "eval_") for s in ("loss", "bit_error") for k in seeds]
  with open(out, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["iteration", *names])
    for start in range(0, len(rows) - every + 1, every):
      block = rows[start : start + every]
      values = []
      for name in names:
        if name.startswith("eval_"):
          evals = [r[name] for r in block if not np.isnan(r[name])]
          values.append(f"{evals[-1]:.5f}" if evals else "")
        else:
          values.append(f"{np.mean([r[name] for r in block]):.5f}")
      writer.writerow([int(block[0]["iteration"])] + values)


def per_seed(row: dict, name: str) -> np.ndarray:
  return np.array([v for k, v in sorted(row.items()) if k.startswith(name + "_seed")])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--task", default="patterns", help="file prefix: patterns | images")
  parser.add_argument("--workdirs", default="", help="comma-separated runs to refresh from")
  parser.add_argument("--every", type=int, default=20, help="iterations per CSV row")
  args = parser.parse_args()
  workdirs = [w for w in args.workdirs.split(",") if w]
  for workdir in workdirs:
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
    stem = os.path.join(HERE, f"{args.task}_{config['network']}")
    downsample(workdir, stem + ".csv", args.every)
    with open(stem + ".json", "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
  if workdirs:
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    from train import episodic_plots  # pylint: disable=g-import-not-at-top

    episodic_plots.plot_completions(workdirs, os.path.join(HERE, f"{args.task}_completions.png"))

  runs = {}
  for path in sorted(glob.glob(os.path.join(HERE, f"{args.task}_*.csv"))):
    network = os.path.basename(path)[len(args.task) + 1 : -4]
    runs[network] = _read(path)
  scores = ("bit_error", "loss") if args.task == "patterns" else ("loss",)
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(6 * len(scores), 4))
  axes = fig.subplots(1, len(scores), squeeze=False)[0]
  print(
    f"{'network':8s} {'score':10s} {'first block':>12s} {'last block':>11s} {'held-out':>9s}  per seed"
  )
  for network, rows in runs.items():
    x = [r["iteration"] for r in rows]
    for ax, score in zip(axes, scores):
      values = np.stack([per_seed(r, score) for r in rows])  # [rows, S]
      colour = COLOURS.get(network)
      ax.plot(x, np.median(values, 1), color=colour, label=f"{network} ({values.shape[1]} seeds)")
      ax.fill_between(x, values.min(1), values.max(1), color=colour, alpha=0.2, lw=0)
      held = [r for r in rows if not np.isnan(per_seed(r, "eval_" + score)).any()]
      last = per_seed(held[-1], "eval_" + score) if held else np.array([np.nan])
      print(
        f"{network:8s} {score:10s} {np.median(values[0]):12.4f} {np.median(values[-1]):11.4f} "
        f"{np.median(last):9.4f}  " + " ".join(f"{v:.4f}" for v in last)
      )
  for ax, score in zip(axes, scores):
    ax.set_xlabel("iteration (episodes at batch size 1)")
    ax.set_ylabel(f"training {score.replace('_', ' ')} (mean per {args.every} iterations)")
    if score == "loss":
      ax.set_yscale("log")
    ax.legend(fontsize=8)
  fig.suptitle(f"{args.task} completion: median and range over seeds")
  fig.tight_layout()
  out = os.path.join(HERE, f"{args.task}_curves.png")
  fig.savefig(out, dpi=110)
  print(f"Wrote {out}")


if __name__ == "__main__":
  main()
