r"""Hyperparameter sweeps: every setting x every seed, one vmapped program.

    python -m train.sweep --env=CueReward-v0 --network=modplast --hidden_size=50 \
        --sweep=learning_rate=1e-4,3e-4,1e-3 --sweep=entropy_coef=0.03,0.1 \
        --num_seeds=3 --iterations=2000 --workdir=runs/sweep_cue

The grid is the Cartesian product of the `--sweep` values. Only the traced
hyperparameters (`train.a2c_config.A2CHParams`: learning_rate, adam_eps,
grad_clip_norm, discount, value_coef, entropy_coef, clip_value) can be swept:
they change numbers, not shapes, so one compiled program trains them all.
With G settings and S seeds per setting the sweep is one `train.a2c` run of
G*S agents: agent `a = g*S + s` trains setting g with `jax.random.key(seed + a)`,
and its hyperparameters are leaf `a` of an [G*S] `A2CHParams`. Everything of
`train.a2c` applies: metrics.csv (a `reward_seed<a>` column per agent),
TensorBoard events, checkpoints, `--resume`, the NaN guard.

Extra outputs in the workdir:
  sweep.json  the grid and S (the truth for the swept fields: config.json
              holds the base values);
  sweep.csv   per setting: its values, the final median reward over its seeds
              (each seed's mean over the last 10% of iterations) and the IQR;
  sweep.png   the median reward curve of every setting.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from train import a2c, a2c_train, distributed
from train import plot as plot_lib
from train import run as run_lib
from train.a2c_config import HPARAM_FIELDS, A2CConfig, A2CHParams

SWEEP_JSON = "sweep.json"
SWEEP_CSV = "sweep.csv"
SWEEP_PNG = "sweep.png"
# What a sweep writes besides train.a2c's files.
SWEEP_OUTPUTS = (SWEEP_JSON, SWEEP_CSV, SWEEP_PNG, a2c_train.CURVES_PNG)

Setting = dict[str, float]


def parse_sweep(specs: Sequence[str]) -> list[Setting]:
  """The grid of `--sweep=name=v1,v2,...` flags, in row-major order (last flag fastest).

  Raises:
    ValueError: an unknown or repeated name, or a value that is not a number.
  """
  if not specs:
    raise ValueError(
      "--sweep is required: e.g. --sweep=learning_rate=1e-4,1e-3 "
      f"(repeat it for a grid); sweepable: {', '.join(HPARAM_FIELDS)}."
    )
  names, value_lists = [], []
  for spec in specs:
    name, sep, values = spec.partition("=")
    if not sep or not values:
      raise ValueError(
        f"--sweep={spec!r} is invalid: write NAME=V1,V2,... (e.g. --sweep=learning_rate=1e-4,1e-3)."
      )
    if name not in HPARAM_FIELDS:
      raise ValueError(
        f"--sweep={spec!r}: {name!r} cannot be swept; sweepable (traced) "
        f"hyperparameters: {', '.join(HPARAM_FIELDS)}. Sizes and network types "
        "change the compiled program: run them as separate train.a2c runs."
      )
    if name in names:
      raise ValueError(f"--sweep names {name!r} twice; give all its values in one flag.")
    try:
      numbers = [float(v) for v in values.split(",")]
    except ValueError as e:
      raise ValueError(f"--sweep={spec!r}: every value must be a number ({e}).") from e
    names.append(name)
    value_lists.append(numbers)
  return [dict(zip(names, combo)) for combo in itertools.product(*value_lists)]


def check_grid(config: A2CConfig, grid: Sequence[Setting]) -> None:
  """Validates every setting as a config would (ValueError naming the value)."""
  for setting in grid:
    try:
      config.replace(**setting)
    except ValueError as e:
      raise ValueError(f"--sweep value {e}") from e


def stack_hparams(config: A2CConfig, grid: Sequence[Setting], seeds_per_setting: int) -> A2CHParams:
  """[G*S] A2CHParams: agent g*S + s gets setting g (base `config` for fields not swept)."""
  base = config.hparams()
  leaves = {}
  for name in HPARAM_FIELDS:
    per_setting = [setting.get(name, float(getattr(base, name))) for setting in grid]
    leaves[name] = jnp.asarray(np.repeat(per_setting, seeds_per_setting), jnp.float32)
  return A2CHParams(**leaves)


def save_sweep(workdir: str, grid: Sequence[Setting], seeds_per_setting: int) -> None:
  """Writes the workdir's sweep.json (read back by `load_sweep`)."""
  with open(os.path.join(workdir, SWEEP_JSON), "w") as f:
    json.dump({"grid": list(grid), "seeds_per_setting": seeds_per_setting}, f, indent=2)


def load_sweep(workdir: str) -> Optional[tuple[list[Setting], int]]:
  """(grid, seeds per setting) from a workdir's sweep.json; None if it is not a sweep."""
  path = os.path.join(workdir, SWEEP_JSON)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  return list(saved["grid"]), int(saved["seeds_per_setting"])


def agent_hparams(config: A2CConfig, workdir: str, agent: int) -> A2CHParams:
  """The hyperparameters agent `agent` of a `train.a2c`/`train.sweep` workdir was trained with.

  For a sweep, its setting's values (config.json holds only the base values);
  otherwise `config.hparams()`.
  """
  sweep = load_sweep(workdir)
  if sweep is None:
    return config.hparams()
  return jax.tree.map(lambda leaf: leaf[agent], stack_hparams(config, *sweep))


def summarize(
  workdir: str, grid: Sequence[Setting], seeds_per_setting: int, fraction: float = 0.1
) -> list[dict[str, Any]]:
  """Per setting: its values, final median reward over its seeds, 25th/75th percentiles."""
  _, rewards = plot_lib.load_rewards(workdir)  # [G*S, N]
  rows = []
  for g, setting in enumerate(grid):
    seeds = rewards[g * seeds_per_setting : (g + 1) * seeds_per_setting]
    n = seeds.shape[1]
    tail = seeds[:, n - max(1, int(round(n * fraction))) :].mean(axis=1) if n else seeds[:, :0]
    row = {"setting": g, **setting}
    if tail.size:
      row.update(
        final_median=float(np.median(tail)),
        final_p25=float(np.percentile(tail, 25)),
        final_p75=float(np.percentile(tail, 75)),
      )
    rows.append(row)
  return rows


def label(setting: Setting) -> str:
  return ", ".join(f"{k}={v:g}" for k, v in setting.items())


def plot_sweep(
  workdir: str, grid: Sequence[Setting], seeds_per_setting: int, out: str, smoothing: int = 10
) -> str:
  """Median reward curve over the seeds of every setting; returns `out`."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  iterations, rewards = plot_lib.load_rewards(workdir)
  fig = Figure(figsize=(7, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  if rewards.size:
    smoothed = plot_lib.smooth(rewards, smoothing)
    for g, setting in enumerate(grid):
      seeds = smoothed[g * seeds_per_setting : (g + 1) * seeds_per_setting]
      ax.plot(iterations, np.median(seeds, axis=0), label=label(setting))
  ax.set_xlabel("iteration (batch of episodes)")
  ax.set_ylabel(f"reward per episode (median of {seeds_per_setting} seeds)")
  ax.set_title(f"sweep: {len(grid)} settings x {seeds_per_setting} seeds", fontsize=10)
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out)
  return out


def _check_saved_sweep(
  workdir: str, grid: Sequence[Setting], seeds_per_setting: int, resume: bool
) -> None:
  saved = load_sweep(workdir) if resume else None
  if saved is not None and saved != (list(grid), seeds_per_setting):
    raise ValueError(
      f"--resume with a sweep that differs from {os.path.join(workdir, SWEEP_JSON)} "
      f"(saved grid {saved[0]} x {saved[1]} seeds, now {list(grid)} "
      f"x {seeds_per_setting}). Resume with the same --sweep and --num_seeds or use "
      "a fresh workdir."
    )


def run_sweep(
  config: A2CConfig, grid: Sequence[Setting], workdir: str, smoothing: int = 10
) -> list[dict[str, Any]]:
  """Trains every setting of `grid` with `config.num_seeds` seeds each; returns summaries.

  Args:
    config: the base run; `num_seeds` is the number of seeds per setting.
    grid: settings of `A2CHParams` fields (see `parse_sweep`).
    workdir: output directory (train.a2c's files plus sweep.json/.csv/.png).
    smoothing: moving-average window of sweep.png.
  """
  grid = [dict(setting) for setting in grid]
  check_grid(config, grid)
  seeds_per_setting = config.num_seeds
  agents = config.replace(num_seeds=len(grid) * seeds_per_setting)
  hparams = stack_hparams(config, grid, seeds_per_setting)
  # The whole sweep holds the workdir (train_and_evaluate's run joins this claim).
  with run_lib.claim_workdir(
    workdir,
    resume=config.resume,
    overwrite=config.overwrite,
    unit="iteration",
    target=config.iterations,
    outputs=SWEEP_OUTPUTS,
  ) as workdir:
    _check_saved_sweep(workdir, grid, seeds_per_setting, config.resume)
    return _run_claimed(agents, hparams, grid, seeds_per_setting, workdir, smoothing)


def _run_claimed(
  agents: A2CConfig,
  hparams: A2CHParams,
  grid: Sequence[Setting],
  seeds_per_setting: int,
  workdir: str,
  smoothing: int,
) -> list[dict[str, Any]]:
  """`run_sweep` in its claimed workdir: sweep.json, the run, sweep.csv and sweep.png."""
  print(
    f"Sweep of {len(grid)} settings x {seeds_per_setting} seeds = "
    f"{agents.num_seeds} agents in one program:",
    flush=True,
  )
  for g, setting in enumerate(grid):
    print(
      f"  setting {g} (agents {g * seeds_per_setting}-"
      f"{(g + 1) * seeds_per_setting - 1}): {label(setting)}",
      flush=True,
    )
  primary = distributed.is_primary()  # Processes 1.. of a multi-process run only train.
  if primary and (not agents.resume or load_sweep(workdir) is None):
    save_sweep(workdir, grid, seeds_per_setting)
  a2c_train.train_and_evaluate(agents, workdir, hparams)
  if not primary:
    return []
  rows = summarize(workdir, grid, seeds_per_setting)
  fieldnames = list(dict.fromkeys(k for row in rows for k in row))
  with open(os.path.join(workdir, SWEEP_CSV), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
  plot_sweep(workdir, grid, seeds_per_setting, os.path.join(workdir, SWEEP_PNG), smoothing)
  print(
    "Final median reward per setting (mean over the last 10% of iterations; best first):",
    flush=True,
  )
  for row in sorted(rows, key=lambda r: -r.get("final_median", -np.inf)):
    if "final_median" in row:
      print(
        f"  {row['final_median']:9.3f}  [IQR {row['final_p25']:.3f}, "
        f"{row['final_p75']:.3f}]  {label(grid[row['setting']])}",
        flush=True,
      )
  print(
    f"Wrote {os.path.join(workdir, SWEEP_CSV)} and {os.path.join(workdir, SWEEP_PNG)}", flush=True
  )
  return rows


# --------------------------------------------------------------------------
# Command line: train.a2c's flags plus --sweep.


def define_flags(flag_values=None) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  a2c.define_flags(flag_values)
  fv = flag_values if flag_values is not None else flags.FLAGS
  flags.DEFINE_multi_string(
    "sweep",
    None,
    "NAME=V1,V2,...: values of a traced hyperparameter "
    f"({', '.join(HPARAM_FIELDS)}); repeat for a grid.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "sweep_smoothing", 10, "Moving-average window of sweep.png.", lower_bound=1, flag_values=fv
  )


def grid_and_config_from_flags(flag_values) -> tuple[list[Setting], A2CConfig]:
  """(grid, base config with num_seeds = seeds per setting) from parsed flags.

  On `--resume`, `--sweep` and `--num_seeds` not given come from sweep.json.
  """
  saved = load_sweep(flag_values["workdir"].value or "") if flag_values["resume"].value else None
  config = a2c.config_from_flags(flag_values)
  if flag_values["sweep"].value:
    grid = parse_sweep(flag_values["sweep"].value)
  elif saved is not None:
    grid = saved[0]
  else:
    grid = parse_sweep([])  # Raises: --sweep is required.
  if saved is not None and not flag_values["num_seeds"].present:
    config = config.replace(num_seeds=saved[1])
  check_grid(config, grid)
  return grid, config


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top

  from train import flags as flags_lib  # pylint: disable=g-import-not-at-top

  fv = flags.FLAGS
  flags_lib.run_main(
    argv,
    grid_and_config_from_flags,
    lambda grid_config, workdir: run_sweep(
      grid_config[1], grid_config[0], workdir, fv.sweep_smoothing
    ),
  )


if __name__ == "__main__":
  from train import flags as flags_lib  # pylint: disable=g-import-not-at-top

  flags_lib.run_cli(define_flags, main)
