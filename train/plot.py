"""Learning curves over seeds (Backpropamine Fig. 1/2 style).

    python -m train.plot --workdirs runs/cue_modplast runs/cue_rnn \
        --out runs/cue_reward_curves.png --smoothing=10

Reads the workdirs of the trainers:
- `train.a2c`: `metrics.csv` with one `reward_seed<s>` column per seed, the
  run's config in `config.json`; plotted: reward per episode vs iteration.
- `train.sweep`: the same, plus `sweep.json` (the grid and S seeds per
  setting): each setting g (agents g*S .. g*S + S - 1) is a run of its own.
- `train.lm`: `config.json` ({"train": the LMTrainConfig, "model": the
  LMConfig, ...}) and `metrics.csv`, whose last row of each epoch holds
  `valid_ppl_seed<s>` (without the CSV: `results.json`'s
  `valid_ppl_per_epoch`); plotted: validation perplexity vs epoch.

Runs are grouped by (environment, every setting that differs between them);
the fields that only steer a run (seed, number of seeds, its length, logging,
checkpoints, step implementation) do not split groups. The runs of one group
pool their seeds, cut to their common length (with a warning). Each curve is
labelled by the settings that differ between the curves (`modplast`,
`rnn, learning_rate=0.001`). Per group the plot shows the median over seeds of
the smoothed curve and the band between the 25th and 75th percentiles.
Mixing environments warns; mixing A2C and language-model runs is an error.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import warnings
from collections import OrderedDict
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from train import metrics as metrics_lib

CONFIG_JSON = "config.json"  # train.run's.
SWEEP_JSON = "sweep.json"  # train.sweep's (not imported: that module imports this one).
RESULTS_JSON = "results.json"  # train.lm_train's.

A2C = "a2c"  # Reward per episode vs iteration.
LM = "lm"  # Validation perplexity vs epoch.
LM_ENV = "PTB"

_REWARD_PREFIX = "reward_seed"
_VALID_PREFIX = "valid_ppl_seed"
# Config fields that never split curves, besides each trainer's run-control fields.
_NOT_SETTINGS = ("seed", "num_seeds")
_MISSING = "?"  # A setting absent from a run's config.json.


@dataclasses.dataclass(frozen=True, eq=False)
class Curves:
  """The per-seed curves of one run: a workdir, or one setting of a sweep.

  Attributes:
    workdir: where they were read from.
    kind: `A2C` (reward per episode vs iteration) or `LM` (validation
      perplexity vs epoch).
    env: the environment id (`LM_ENV` for language models; None without a
      config.json).
    settings: the run's config fields (a sweep setting's values applied).
    seeds: the seed of each curve (`jax.random.key(seed)`), [S].
    steps: [N] iterations (A2C) or epochs (LM).
    values: [S, N] per seed.
    setting: the index of the sweep setting, or None.
  """

  workdir: str
  kind: str
  env: Optional[str]
  settings: Mapping[str, Any]
  seeds: tuple[int, ...]
  steps: np.ndarray
  values: np.ndarray
  setting: Optional[int] = None


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
  """Runs with the same environment and settings, their seeds pooled.

  Attributes:
    label: the settings that differ between the groups of a plot.
    kind: `A2C` or `LM`.
    env: the environment id.
    settings: the settings that split groups (values of this group).
    runs: the pooled runs.
    steps: [N] the common steps.
    values: [S_total, N] every seed of every run, cut to N.
  """

  label: str
  kind: str
  env: Optional[str]
  settings: Mapping[str, Any]
  runs: tuple[Curves, ...]
  steps: np.ndarray
  values: np.ndarray


# --------------------------------------------------------------------------
# Reading workdirs.


def _read_json(path: str) -> Optional[Any]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _is_lm_payload(payload: Mapping[str, Any]) -> bool:
  return isinstance(payload.get("train"), dict) and isinstance(payload.get("model"), dict)


def _check_workdir(workdir: str) -> None:
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"No run directory {workdir!r} (give a train.a2c/sweep/lm --workdir).")


def run_label(workdir: str) -> str:
  """The network type from `config.json` (the directory name if absent)."""
  payload = _read_json(os.path.join(workdir, CONFIG_JSON)) or {}
  return str(payload.get("network", os.path.basename(os.path.normpath(workdir))))


def run_env(workdir: str) -> Optional[str]:
  """The environment id from `config.json` (`LM_ENV` for a language model), or None."""
  payload = _read_json(os.path.join(workdir, CONFIG_JSON))
  if payload is None:
    return None
  return LM_ENV if _is_lm_payload(payload) else payload.get("env")


def _run_settings(payload: Optional[Mapping[str, Any]]) -> dict[str, Any]:
  """The config fields of a config.json's contents, older files completed."""
  from train import a2c_config, lm_config  # pylint: disable=g-import-not-at-top

  if payload is None:
    return {}
  if _is_lm_payload(payload):
    settings = lm_config.LMTrainConfig.saved_settings(payload["train"])
    # H as used (the "train" entry holds None when it was matched to target_params).
    settings["hidden_size"] = payload["model"].get("hidden_size", settings.get("hidden_size"))
    return settings
  return a2c_config.A2CConfig.saved_settings(payload)


def _ignored_fields() -> frozenset[str]:
  """Config fields that do not split curves: seeds and run control."""
  from train import a2c_config, lm_config  # pylint: disable=g-import-not-at-top

  return frozenset(_NOT_SETTINGS + a2c_config.RUN_CONTROL_FIELDS + lm_config.RUN_CONTROL_FIELDS)


def _read_metrics(workdir: str) -> tuple[list[str], list[dict[str, float]]]:
  """(column names, rows) of `<workdir>/metrics.csv`."""
  path = os.path.join(workdir, metrics_lib.METRICS_CSV)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"No {metrics_lib.METRICS_CSV} in {workdir} (not a run directory, or the run "
      "has not logged its first step yet)."
    )
  with open(path, newline="") as f:
    fieldnames = next(csv.reader(f), [])
  return fieldnames, metrics_lib.read_csv(path)


def _seed_columns(fieldnames: Sequence[str], prefix: str) -> list[str]:
  names = (k for k in fieldnames if k.startswith(prefix) and k[len(prefix) :].isdigit())
  return sorted(names, key=lambda k: int(k[len(prefix) :]))


def load_rewards(workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """(iterations [N], rewards [S, N]) from `<workdir>/metrics.csv` (every agent of a sweep)."""
  fieldnames, rows = _read_metrics(workdir)
  if not rows:
    return np.zeros((0,)), np.zeros((0, 0))
  seeds = _seed_columns(fieldnames, _REWARD_PREFIX)
  iterations = np.array([row["iteration"] for row in rows])
  rewards = np.array([[row[k] for row in rows] for k in seeds]).reshape(len(seeds), len(rows))
  return iterations, rewards


def load_valid_ppl(workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """(epochs [E], validation perplexities [S, E]) of a `train.lm` workdir.

  From the rows of metrics.csv that hold `valid_ppl` (the last of each epoch),
  or, without a metrics.csv, from results.json's `valid_ppl_per_epoch`.
  """
  _check_workdir(workdir)
  if not os.path.exists(os.path.join(workdir, metrics_lib.METRICS_CSV)):
    results = _read_json(os.path.join(workdir, RESULTS_JSON))
    if results is not None and "valid_ppl_per_epoch" in results:
      history = np.asarray(results["valid_ppl_per_epoch"], np.float64)  # [E, S]
      history = history.reshape(len(history), -1)
      return np.arange(1, len(history) + 1, dtype=np.float64), history.T
  fieldnames, rows = _read_metrics(workdir)
  rows = [row for row in rows if not math.isnan(row.get("valid_ppl", math.nan))]
  seeds = _seed_columns(fieldnames, _VALID_PREFIX) or ["valid_ppl"]
  epochs = np.array([row["epoch"] for row in rows], np.float64)
  values = np.array([[row[k] for row in rows] for k in seeds], np.float64)
  return epochs, values.reshape(len(seeds), len(rows))


def _kind(workdir: str, payload: Optional[Mapping[str, Any]]) -> str:
  if payload is not None:
    return LM if _is_lm_payload(payload) else A2C
  path = os.path.join(workdir, metrics_lib.METRICS_CSV)
  if not os.path.exists(path):
    return LM if os.path.exists(os.path.join(workdir, RESULTS_JSON)) else A2C
  fieldnames, _ = _read_metrics(workdir)
  if _seed_columns(fieldnames, _REWARD_PREFIX):
    return A2C
  if "valid_ppl" in fieldnames:
    return LM
  raise ValueError(
    f"{path} has neither {_REWARD_PREFIX}<s> (train.a2c) nor valid_ppl (train.lm) columns."
  )


def load_curves(workdir: str) -> list[Curves]:
  """The runs of a workdir: one, or one per setting of a sweep.

  Raises:
    FileNotFoundError: no such directory, or no metrics.csv in it.
    ValueError: a metrics.csv of neither trainer.
  """
  _check_workdir(workdir)
  payload = _read_json(os.path.join(workdir, CONFIG_JSON))
  kind = _kind(workdir, payload)
  settings = _run_settings(payload)
  if kind == LM:
    steps, values = load_valid_ppl(workdir)
    env = LM_ENV
  else:
    steps, values = load_rewards(workdir)
    env = settings.get("env")
  seed = int(settings.get("seed", 0))
  seeds = tuple(seed + s for s in range(values.shape[0]))
  whole = Curves(workdir, kind, env, settings, seeds, steps, values)
  sweep = _read_json(os.path.join(workdir, SWEEP_JSON)) if kind == A2C else None
  if sweep is None:
    return [whole]
  grid, per = list(sweep["grid"]), int(sweep["seeds_per_setting"])
  if not values.size:
    return [whole]
  if len(grid) * per != values.shape[0]:
    warnings.warn(
      f"{workdir}: {SWEEP_JSON} has {len(grid)} settings x {per} seeds but "
      f"{metrics_lib.METRICS_CSV} {values.shape[0]} reward columns; plotted as one run.",
      stacklevel=2,
    )
    return [whole]
  return [
    dataclasses.replace(
      whole,
      settings={**settings, **setting, "num_seeds": per},
      seeds=seeds[g * per : (g + 1) * per],
      values=values[g * per : (g + 1) * per],
      setting=g,
    )
    for g, setting in enumerate(grid)
  ]


# --------------------------------------------------------------------------
# Grouping and labels.


def _canonical(value: Any) -> Any:
  """A hashable form of a JSON value (2 and 2.0 are equal)."""
  if isinstance(value, bool) or value is None or isinstance(value, str):
    return value
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, (list, tuple)):
    return tuple(_canonical(v) for v in value)
  if isinstance(value, dict):
    return tuple(sorted((k, _canonical(v)) for k, v in value.items()))
  return repr(value)


def _format(name: str, value: Any) -> str:
  if name in ("env", "network"):
    return str(value)
  if name == "workdir":
    return os.path.basename(os.path.normpath(value))
  if isinstance(value, float):
    text = f"{value:g}"
  else:
    text = str(value)
  return f"{name}={text}"


def _split_settings(curves: Curves, ignored: frozenset[str]) -> dict[str, Any]:
  """The settings that tell runs apart; without a config.json, the workdir."""
  settings = {"env": curves.env, "network": curves.settings.get("network", _MISSING)}
  if not curves.settings:
    settings["workdir"] = os.path.abspath(curves.workdir)
  settings.update({k: v for k, v in curves.settings.items() if k not in ignored})
  return settings


def _paper_defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
  """The A2C config of the paper defaults of the run's env and network ({} if unknown)."""
  from train import a2c_config  # pylint: disable=g-import-not-at-top

  try:
    return a2c_config.a2c_defaults(settings["env"], network=settings["network"]).to_dict()
  except (KeyError, TypeError, ValueError):
    return {}


def _label_keys(differing: Sequence[str], groups: Sequence[Mapping[str, Any]]) -> list[str]:
  """The differing settings to name in labels.

  Between environments, a setting every group has at its env's paper default
  (hidden size, episode length, ...) goes without saying: the env names it.
  """
  if "env" not in differing:
    return list(differing)
  defaults = [_paper_defaults(g) for g in groups]

  def implied(key: str) -> bool:
    return all(
      key in d and _canonical(g.get(key, _MISSING)) == _canonical(d[key])
      for g, d in zip(groups, defaults)
    )

  return [k for k in differing if k in ("env", "network") or not implied(k)]


def group_curves(curves: Sequence[Curves]) -> list[Group]:
  """Groups runs by (environment, every setting that differs); pools their seeds.

  Runs without rows are left out and runs of a group cut to their common
  length, each with a warning; so does a plot of several environments.

  Raises:
    ValueError: A2C and language-model runs together (no common axes).
  """
  kinds = sorted({c.kind for c in curves})
  if len(kinds) > 1:
    raise ValueError(
      "Cannot plot A2C runs (reward vs iteration) and language-model runs (validation "
      f"perplexity vs epoch) in one figure: {[c.workdir for c in curves]}. Plot them separately."
    )
  kept = []
  for c in curves:
    if c.steps.size == 0 or c.values.size == 0:
      warnings.warn(f"{c.workdir}: no rows to plot yet; left out.", stacklevel=2)
    else:
      kept.append(c)
  envs = sorted({str(c.env) for c in kept})
  if len(envs) > 1:
    warnings.warn(
      f"Plotting runs of different environments ({', '.join(envs)}) on one axis: "
      "their rewards are not comparable.",
      stacklevel=2,
    )
  ignored = _ignored_fields()
  split = [_split_settings(c, ignored) for c in kept]
  names = list(dict.fromkeys(k for s in split for k in s))
  differing = [k for k in names if len({_canonical(s.get(k, _MISSING)) for s in split}) > 1]
  members: "OrderedDict[tuple, list[int]]" = OrderedDict()
  for i, s in enumerate(split):
    members.setdefault(tuple(_canonical(s.get(k, _MISSING)) for k in differing), []).append(i)
  label_keys = _label_keys(differing, [split[indices[0]] for indices in members.values()])
  groups, labels = [], set()
  for indices in members.values():
    runs = tuple(kept[i] for i in indices)
    settings = split[indices[0]]
    label = ", ".join(_format(k, settings.get(k, _MISSING)) for k in label_keys)
    if not label:
      network = settings["network"]
      label = str(network) if network != _MISSING else _format("workdir", runs[0].workdir)
    while label in labels:  # Values that print alike.
      label += "'"
    labels.add(label)
    lengths = [len(r.steps) for r in runs]
    n = min(lengths)
    if len(set(lengths)) > 1:
      unit = "epochs" if runs[0].kind == LM else "iterations"
      warnings.warn(
        f"{label}: its runs have {', '.join(map(str, lengths))} {unit} "
        f"({', '.join(r.workdir for r in runs)}); each is cut to the common {n}.",
        stacklevel=2,
      )
    seeds = [s for r in runs for s in r.seeds]
    if len(runs) > 1 and len(set(seeds)) < len(seeds):
      warnings.warn(
        f"{label}: runs with the same seeds are pooled ({', '.join(r.workdir for r in runs)}).",
        stacklevel=2,
      )
    groups.append(
      Group(
        label=label,
        kind=runs[0].kind,
        env=runs[0].env,
        settings={k: settings[k] for k in settings if k in differing or k in ("env", "network")},
        runs=runs,
        steps=runs[int(np.argmin(lengths))].steps[:n],
        values=np.concatenate([r.values[:, :n] for r in runs], axis=0),
      )
    )
  return groups


def load_groups(workdirs: Sequence[str]) -> list[Group]:
  """`group_curves` of every run in `workdirs` (a sweep counts one run per setting)."""
  return group_curves([c for w in workdirs for c in load_curves(w)])


def group_runs(workdirs: Sequence[str]) -> "OrderedDict[str, tuple[np.ndarray, np.ndarray]]":
  """label -> (steps [N], values [S_total, N]) of `load_groups(workdirs)`."""
  return OrderedDict((g.label, (g.steps, g.values)) for g in load_groups(workdirs))


# --------------------------------------------------------------------------
# Statistics and the figure.


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


def final_median(rewards: np.ndarray, fraction: float = 0.1) -> float:
  """Median over seeds of each seed's mean reward over the last `fraction` of iterations."""
  n = rewards.shape[1]
  tail = max(1, int(round(n * fraction)))
  return float(np.median(rewards[:, n - tail :].mean(axis=1)))


def _seeds(count: int) -> str:
  return f"{count} seed{'s' if count != 1 else ''}"


def _default_title(groups: Sequence[Group]) -> str:
  common = sorted({str(g.env) for g in groups if g.env})
  networks = {str(g.settings.get("network")) for g in groups}
  if len(groups) > 1 and len(networks) == 1 and _MISSING not in networks:
    common += sorted(networks)
  title = "median and inter-quartile range over seeds"
  return f"{' '.join(common)}: {title}" if common else title


def make_figure(groups: Sequence[Group], smoothing: int = 10, title: Optional[str] = None):
  """A matplotlib Figure (Agg canvas, no pyplot) of the median + IQR curves of `groups`.

  `smoothing` is the moving-average window over iterations (A2C); LM curves
  (one point per epoch) are not smoothed. Iterations and epochs get integer ticks.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(6, 4), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  lm = any(g.kind == LM for g in groups)
  for group in groups:
    values = group.values if lm else smooth(group.values, smoothing)
    median, low, high = median_iqr(values)
    (line,) = ax.plot(
      group.steps,
      median,
      marker="o" if lm else None,
      label=f"{group.label} ({_seeds(len(values))})",
    )
    ax.fill_between(group.steps, low, high, color=line.get_color(), alpha=0.25, lw=0)
  ax.set_xlabel("epoch" if lm else "iteration (batch of episodes)")
  ax.set_ylabel("validation perplexity" if lm else "reward per episode")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_title(title or _default_title(groups), fontsize=10)
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend(fontsize=8 if len(groups) > 4 else None)
  fig.tight_layout()
  return fig


def plot_groups(
  groups: Sequence[Group], out: str, smoothing: int = 10, title: Optional[str] = None
) -> str:
  """Writes `make_figure(groups, smoothing, title)` to `out`; returns `out`."""
  fig = make_figure(groups, smoothing, title)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out)
  return out


def plot_workdirs(
  workdirs: Sequence[str], out: str, smoothing: int = 10, title: Optional[str] = None
) -> str:
  """Writes the median + IQR curves of the runs in `workdirs` to `out`; returns `out`.

  Raises:
    FileNotFoundError: a workdir that does not exist or holds no metrics.csv.
    ValueError: A2C and language-model runs together.
  """
  return plot_groups(load_groups(workdirs), out, smoothing, title)


def summary(group: Group) -> str:
  """One line: the group's final median (A2C: over the last 10% of iterations)."""
  seeds = group.values.shape[0]
  if group.kind == LM:
    return (
      f"{group.label}: median validation perplexity after epoch {group.steps[-1]:g} "
      f"({_seeds(seeds)}) = {float(np.median(group.values[:, -1])):.2f}"
    )
  return (
    f"{group.label}: final median reward (mean over the last 10% of "
    f"{group.values.shape[1]} iterations, {_seeds(seeds)}) = {final_median(group.values):.3f}"
  )


def main(argv):
  import sys  # pylint: disable=g-import-not-at-top

  from absl import flags, logging  # pylint: disable=g-import-not-at-top

  fv = flags.FLAGS
  if not fv["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # JAX logs its backend search at INFO.
  # `--workdirs A B C`: absl keeps A in the flag and leaves B C as arguments.
  workdirs = list(fv.workdirs) + list(argv[1:])
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      groups = load_groups(workdirs)
      out = plot_groups(groups, fv.out, fv.smoothing, fv.title)
    except (FileNotFoundError, ValueError) as e:
      print(f"ERROR: {e}", file=sys.stderr, flush=True)
      sys.exit(1)
  for w in caught:
    print(f"WARNING: {w.message}", file=sys.stderr, flush=True)
  for group in groups:
    print(summary(group))
  print(f"Wrote {out}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_multi_string("workdirs", None, "Run directories (repeat or space-separate).")
  flags.DEFINE_string("out", "curves.png", "Output image.")
  flags.DEFINE_integer(
    "smoothing",
    10,
    "Moving-average window (iterations; LM curves are not smoothed).",
    lower_bound=1,
  )
  flags.DEFINE_string("title", None, "Plot title.")
  flags.mark_flag_as_required("workdirs")
  app.run(main)
