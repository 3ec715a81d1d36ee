"""Learning curves over seeds (Backpropamine Fig. 1/2 style).

    python -m train.plot --workdirs runs/cue_modplast runs/cue_rnn \
        --out runs/cue_reward_curves.png --smoothing=10

Each workdir holds a `metrics.csv` with one `reward_seed<s>` column per seed
and a `config.json`. Runs are grouped by label (the network type, read from
config.json; workdirs with the same label pool their seeds). Per group the
plot shows the median over seeds of the smoothed reward and the band between
the 25th and 75th percentiles, against iterations.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np

from train import metrics as metrics_lib


def run_label(workdir: str) -> str:
  """The network type from `config.json` (the directory name if absent)."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      config = json.load(f)
    return str(config.get("network", os.path.basename(os.path.normpath(workdir))))
  return os.path.basename(os.path.normpath(workdir))


def run_env(workdir: str) -> Optional[str]:
  """The environment id from `config.json`, or None."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("env")


def load_rewards(workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """(iterations [N], rewards [S, N]) from `<workdir>/metrics.csv`."""
  path = os.path.join(workdir, metrics_lib.METRICS_CSV)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No {metrics_lib.METRICS_CSV} in {workdir}.")
  rows = metrics_lib.read_csv(path)
  if not rows:
    return np.zeros((0,)), np.zeros((0, 0))
  seeds = sorted(
    (k for k in rows[0] if k.startswith("reward_seed")), key=lambda k: int(k[len("reward_seed") :])
  )
  iterations = np.array([row["iteration"] for row in rows])
  rewards = np.array([[row[k] for row in rows] for k in seeds])
  return iterations, rewards


def smooth(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average over the last axis (shorter windows at the start)."""
  values = np.asarray(values, dtype=np.float64)
  n = values.shape[-1]
  if window <= 1 or n == 0:
    return values
  total = np.cumsum(values, axis=-1)
  if n > window:
    total[..., window:] = total[..., window:] - total[..., : n - window].copy()
  return total / np.minimum(np.arange(n) + 1, window)


def median_iqr(rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Median, 25th and 75th percentile over seeds: rewards [S, N] -> three [N]."""
  return (
    np.median(rewards, axis=0),
    np.percentile(rewards, 25, axis=0),
    np.percentile(rewards, 75, axis=0),
  )


def group_runs(workdirs: Sequence[str]) -> "OrderedDict[str, tuple[np.ndarray, np.ndarray]]":
  """label -> (iterations [N], rewards [S_total, N]) pooling runs with one label.

  Runs of a group are cut to their common length.
  """
  groups: "OrderedDict[str, list[tuple[np.ndarray, np.ndarray]]]" = OrderedDict()
  for workdir in workdirs:
    groups.setdefault(run_label(workdir), []).append(load_rewards(workdir))
  pooled = OrderedDict()
  for label, runs in groups.items():
    n = min(len(it) for it, _ in runs)
    pooled[label] = (runs[0][0][:n], np.concatenate([r[:, :n] for _, r in runs], axis=0))
  return pooled


def final_median(rewards: np.ndarray, fraction: float = 0.1) -> float:
  """Median over seeds of each seed's mean reward over the last `fraction` of iterations."""
  n = rewards.shape[1]
  tail = max(1, int(round(n * fraction)))
  return float(np.median(rewards[:, n - tail :].mean(axis=1)))


def plot_workdirs(
  workdirs: Sequence[str], out: str, smoothing: int = 10, title: Optional[str] = None
) -> str:
  """Writes the median + IQR reward curves of `workdirs` to `out`; returns `out`."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(6, 4), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for label, (iterations, rewards) in group_runs(workdirs).items():
    if rewards.size == 0:
      continue
    median, low, high = median_iqr(smooth(rewards, smoothing))
    (line,) = ax.plot(iterations, median, label=f"{label} ({rewards.shape[0]} seeds)")
    ax.fill_between(iterations, low, high, color=line.get_color(), alpha=0.25, lw=0)
  ax.set_xlabel("iteration (batch of episodes)")
  ax.set_ylabel("reward per episode")
  env_ids = sorted({str(run_env(w)) for w in workdirs if run_env(w)})
  default_title = "median and inter-quartile range over seeds"
  if env_ids:
    default_title = f"{', '.join(env_ids)}: {default_title}"
  ax.set_title(title or default_title, fontsize=10)
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out)
  return out


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top

  fv = flags.FLAGS
  # `--workdirs A B C`: absl keeps A in the flag and leaves B C as arguments.
  workdirs = list(fv.workdirs) + list(argv[1:])
  out = plot_workdirs(workdirs, fv.out, fv.smoothing, fv.title)
  for label, (_, rewards) in group_runs(workdirs).items():
    if rewards.size:
      print(
        f"{label}: final median reward (mean over the last 10% of "
        f"{rewards.shape[1]} iterations, {rewards.shape[0]} seeds) = "
        f"{final_median(rewards):.3f}"
      )
  print(f"Wrote {out}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_multi_string("workdirs", None, "Run directories (repeat or space-separate).")
  flags.DEFINE_string("out", "curves.png", "Output image.")
  flags.DEFINE_integer("smoothing", 10, "Moving-average window (iterations).", lower_bound=1)
  flags.DEFINE_string("title", None, "Plot title.")
  flags.mark_flag_as_required("workdirs")
  app.run(main)
