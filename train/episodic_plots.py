"""Figures of episodic runs: learning curves, and the completions the networks produce.

    python -m train.episodic_plots --workdirs=runs/patterns_plastic,runs/patterns_rnn \
        --out_dir=runs/patterns_figures

writes `curves.png` (training loss and bit error per iteration, median and
range over seeds, held-out evaluations as points) and `completions.png`: per
run, one held-out episode (the same for every run) as the paper's figure: the
stored items, the degraded probe, the network's output y_T and the truth.
Patterns are drawn as 25 x 40 images of their 1000 bits, images as 32 x 32.
For one-shot classification (Omniglot-v0, SyntheticGlyphs-v0) the curves are
loss and accuracy, and `episodes.png` shows one held-out episode per run: the
labelled drawings, the test drawing and the network's y_T per label.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import jax
import numpy as np

from train import metrics as metrics_lib

# One colour per network, the order of the papers' figures.
COLOURS = {"plastic": "tab:red", "rnn": "tab:blue", "lstm": "tab:green"}


def _pyplot():
  """matplotlib.pyplot on the Agg backend (no screen)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def _save(plt, fig, out_path: str) -> str:
  """Lays out, writes (creating its folder) and closes `fig`; returns `out_path`."""
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


def _label(config, configs) -> str:
  """The network, plus every setting that differs between the runs plotted together."""
  label = config.network
  varying = sorted(
    name
    for name, value in config.to_dict().items()
    if name not in ("network", "iterations", "resume", "progress", "seed", "num_seeds")
    and any(other.to_dict().get(name) != value for other in configs)
  )
  extra = ", ".join(f"{name}={getattr(config, name)}" for name in varying)
  return f"{label} ({extra})" if extra else label


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
  if width <= 1 or len(values) < width:
    return values
  kernel = np.ones(width) / width
  return np.convolve(values, kernel, mode="valid")


def plot_curves(workdirs: Sequence[str], out_path: str) -> str:
  """Training loss / bit error (and held-out points) of each run; returns `out_path`."""
  plt = _pyplot()

  from train.episodic_train import load_config  # pylint: disable=g-import-not-at-top

  runs = []
  for workdir in workdirs:
    path = os.path.join(workdir, metrics_lib.METRICS_CSV)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{workdir} has no {metrics_lib.METRICS_CSV}: is it an episodic run?")
    runs.append((load_config(workdir), metrics_lib.read_csv(path)))
  configs = [config for config, _ in runs]
  columns = set(runs[0][1][0]) if runs[0][1] else set()
  if configs[0].task == "PatternCompletion-v0":
    scores = ("loss", "bit_error")
  elif "accuracy_median" in columns:  # One-shot classification.
    scores = ("loss", "accuracy")
  else:
    scores = ("loss",)
  fig, axes = plt.subplots(1, len(scores), figsize=(6 * len(scores), 4), squeeze=False)
  for config, rows in runs:
    if not rows:
      continue
    iterations = np.array([row["iteration"] for row in rows])
    colour = COLOURS.get(config.network)
    label = f"{_label(config, configs)}, {config.num_seeds} seed(s)"
    for ax, score in zip(axes[0], scores):
      per_seed = np.array(
        [[row[f"{score}_seed{s}"] for s in range(config.num_seeds)] for row in rows]
      )
      width = max(1, len(rows) // 100)
      smooth = np.stack([_smooth(per_seed[:, s], width) for s in range(config.num_seeds)], 1)
      x = iterations[width - 1 :] if width > 1 and len(rows) >= width else iterations
      ax.plot(x, np.median(smooth, 1), color=colour, label=label)
      ax.fill_between(x, smooth.min(1), smooth.max(1), color=colour, alpha=0.2, lw=0)
      evals = [row for row in rows if not math.isnan(row.get(f"eval_{score}_median", math.nan))]
      if evals:
        ax.plot(
          [row["iteration"] + 1 for row in evals],
          [row[f"eval_{score}_median"] for row in evals],
          "o",
          color=colour,
          ms=3,
        )
  for ax, score in zip(axes[0], scores):
    ax.set_xlabel("iteration (episodes x batch size)")
    ax.set_ylabel(score.replace("_", " ") + " (train: line, held-out: dots)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if score == "loss":
      ax.set_yscale("log")
    if score == "accuracy":
      ways = configs[0].n_items or 5
      ax.axhline(1.0 / ways, color="grey", lw=0.8, ls=":", label=f"chance (1/{ways})")
      ax.set_ylim(0, 1)
      ax.legend(fontsize=8)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(configs[0].task)
  return _save(plt, fig, out_path)


def completions(workdir: str, seed_index: int = 0) -> dict[str, np.ndarray]:
  """One held-out episode and the run's output on it (model `seed_index`, latest checkpoint).

  Returns: dict of items [n, P], probe [P], output [P], target [P] (NumPy).
  """
  from train import episodic_learner as learner_lib  # pylint: disable=g-import-not-at-top
  from train.episodic_train import restore_state  # pylint: disable=g-import-not-at-top

  config, state, _ = restore_state(workdir)
  spec = learner_lib.make_spec(config)
  _, _, held_out = config.make_task()
  params = jax.tree.map(lambda x: x[seed_index], state.params)
  episode = spec.task.sample_episode(jax.random.fold_in(learner_lib.eval_key(), 1), held_out)
  output = jax.jit(spec.network.apply)(params, episode.inputs)
  return dict(
    items=np.asarray(episode.items),
    probe=np.asarray(episode.probe),
    output=np.asarray(output),
    target=np.asarray(episode.target),
    network=config.network,
    task=config.task,
  )


def _as_image(values: np.ndarray) -> np.ndarray:
  size = values.shape[-1]
  side = int(math.isqrt(size))
  if side * side == size:
    return values.reshape(side, side)
  rows = max(d for d in range(1, side + 1) if size % d == 0)
  return values.reshape(rows, size // rows)


def plot_completions(workdirs: Sequence[str], out_path: str) -> str:
  """One row per run: stored items | probe | output | truth, on the same held-out episode."""
  plt = _pyplot()

  results = [completions(workdir) for workdir in workdirs]
  n_items = results[0]["items"].shape[0]
  columns = n_items + 3
  fig, axes = plt.subplots(
    len(results), columns, figsize=(1.6 * columns, 2.1 * len(results) + 0.4), squeeze=False
  )
  for row, result in zip(axes, results):
    panels = list(result["items"]) + [result["probe"], result["output"], result["target"]]
    titles = [f"item {k + 1}" for k in range(n_items)] + ["probe", "output y_T", "truth"]
    for ax, values, title in zip(row, panels, titles):
      ax.imshow(_as_image(values), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
      ax.set_title(title, fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
    row[0].set_ylabel(result["network"], fontsize=9)
  fig.suptitle(f"{results[0]['task']}: one held-out episode", fontsize=10)
  return _save(plt, fig, out_path)


def one_shot_episode(workdir: str, seed_index: int = 0) -> dict[str, np.ndarray]:
  """One held-out classification episode and the run's y_T on it (latest checkpoint).

  Returns: dict of images [T, 31, 31], labels [T, n], probabilities y_T [n],
  target [n] (NumPy), network, task.
  """
  from train import episodic_learner as learner_lib  # pylint: disable=g-import-not-at-top
  from train.episodic_train import restore_state  # pylint: disable=g-import-not-at-top

  config, state, _ = restore_state(workdir)
  spec = learner_lib.make_spec(config)
  _, _, held_out = config.make_task()
  params = jax.tree.map(lambda x: x[seed_index], state.params)
  episode = spec.task.sample_episode(jax.random.fold_in(learner_lib.eval_key(), 1), held_out)
  logits = jax.jit(spec.network.apply)(params, episode.images, episode.labels)[-1]
  return dict(
    images=np.asarray(episode.images),
    labels=np.asarray(episode.labels),
    probabilities=np.asarray(jax.nn.softmax(logits)),
    target=np.asarray(episode.target),
    network=config.network,
    task=config.task,
  )


def plot_one_shot(workdirs: Sequence[str], out_path: str) -> str:
  """One row per run: the labelled drawings | the test drawing | y_T per label."""
  plt = _pyplot()

  results = [one_shot_episode(workdir) for workdir in workdirs]
  steps = results[0]["images"].shape[0]
  fig, axes = plt.subplots(
    len(results), steps + 1, figsize=(1.5 * (steps + 1), 1.9 * len(results) + 0.4), squeeze=False
  )
  for row, result in zip(axes, results):
    for t, ax in enumerate(row[:steps]):
      ax.imshow(result["images"][t], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
      labelled = result["labels"][t].any()
      title = f"label {int(np.argmax(result['labels'][t]))}" if labelled else "test"
      ax.set_title(title, fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
    ways = len(result["target"])
    colours = ["tab:green" if result["target"][k] else "tab:grey" for k in range(ways)]
    row[-1].bar(range(ways), result["probabilities"], color=colours)
    row[-1].set_ylim(0, 1)
    row[-1].set_xticks(range(ways))
    row[-1].set_title("y_T (green: truth)", fontsize=8)
    row[0].set_ylabel(result["network"], fontsize=9)
  fig.suptitle(f"{results[0]['task']}: one held-out episode", fontsize=10)
  return _save(plt, fig, out_path)


def main(argv):
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  from train.episodic_adapters import ONE_SHOT, adapter_for  # pylint: disable=g-import-not-at-top
  from train.episodic_train import load_config  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdirs = [w for w in flags.FLAGS.workdirs.split(",") if w]
  missing = [w for w in workdirs if not os.path.isdir(w)]
  if not workdirs or missing:
    raise app.UsageError(f"--workdirs: missing or not a directory: {missing or '(none given)'}")
  out_dir = flags.FLAGS.out_dir or workdirs[0]
  print(plot_curves(workdirs, os.path.join(out_dir, "curves.png")))
  if adapter_for(load_config(workdirs[0]).task) is ONE_SHOT:
    print(plot_one_shot(workdirs, os.path.join(out_dir, "episodes.png")))
  else:
    print(plot_completions(workdirs, os.path.join(out_dir, "completions.png")))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdirs", "", "Comma-separated episodic workdirs.")
  flags.DEFINE_string("out_dir", "", "Where the figures go (default: the first workdir).")
  app.run(main)
