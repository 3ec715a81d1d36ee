"""The A2C host loop: chunks of jitted iterations over the run scaffold (`train.run`).

    config = a2c_defaults("GridMaze-v0", network="modplast", iterations=2000)
    state, rows = train_and_evaluate(config, "runs/maze_modplast")

Outputs in the workdir: config.json (with `step_impl` as used), metrics.csv
(+ TensorBoard events), checkpoints/, curves.png. `--resume` continues after
the latest checkpoint with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np

from train import a2c_learner as learner_lib
from train import devices as devices_lib
from train import distributed
from train import metrics as metrics_lib
from train import run as run_lib
from train.a2c_config import RUN_CONTROL_FIELDS, A2CConfig, A2CHParams
from train.a2c_learner import A2CSpec, A2CTrainState

CURVES_PNG = "curves.png"
# Per-iteration metrics averaged over the agents (the reward is per agent too).
_MEAN_METRICS = ("loss", "policy_loss", "value_loss", "entropy_loss", "grad_norm", "modulation_abs")


def _init_fn(spec: A2CSpec, per_agent: bool, num_agents: int = 1, mesh=None):
  in_axes = (0, 0 if per_agent else None)
  fn = jax.vmap(lambda key, hparams: learner_lib.init(spec, key, hparams), in_axes=in_axes)
  return devices_lib.over_agents(fn, in_axes, num_agents, mesh)


def _run_fn(
  spec: A2CSpec,
  num_iterations: int,
  per_agent: bool,
  freeze: bool = False,
  num_agents: int = 1,
  mesh=None,
):
  """The chunk of `num_iterations` updates of every agent, its agents split over `mesh`."""
  if freeze:  # Diverged agents frozen (`learner_lib.run(frozen=)`): (state, hparams, frozen [S]).
    in_axes = (0, 0 if per_agent else None, 0)
    fn = jax.vmap(
      lambda state, hparams, frozen: learner_lib.run(spec, state, hparams, num_iterations, frozen),
      in_axes=in_axes,
    )
  else:
    in_axes = (0, 0 if per_agent else None)
    fn = jax.vmap(
      lambda state, hparams: learner_lib.run(spec, state, hparams, num_iterations),
      in_axes=in_axes,
    )
  return devices_lib.over_agents(fn, in_axes, num_agents, mesh)


def init_state(config: A2CConfig, hparams: Optional[A2CHParams] = None) -> A2CTrainState:
  """The seed-stacked initial A2CTrainState of a run (leaves [S, ...]).

  `hparams` leaves are scalars (all agents) or [S] (one per agent).
  """
  spec = learner_lib.make_spec(config)
  hparams = config.hparams() if hparams is None else hparams
  keys = run_lib.seed_keys(config.seed, config.num_seeds)
  per_agent = learner_lib.hparams_per_agent(hparams, config.num_seeds)
  mesh = devices_lib.agent_mesh(config.num_seeds)
  fn, _ = run_lib.compiled(
    ("a2c_init", spec.config, per_agent, devices_lib.mesh_key(mesh)),
    lambda: _init_fn(spec, per_agent, config.num_seeds, mesh),
    keys,
    hparams,
    fast_compile=config.fast_compile,
  )
  return fn(keys, hparams)


def abstract_state(spec: A2CSpec, num_seeds: int) -> A2CTrainState:
  """Shapes/dtypes of the seed-stacked A2CTrainState (for restoring)."""
  keys = run_lib.seed_keys(0, num_seeds)
  return jax.eval_shape(_init_fn(spec, False), keys, spec.config.hparams())


def metric_fieldnames(num_seeds: int) -> list[str]:
  return (
    ["iteration"]
    + [f"reward_seed{s}" for s in range(num_seeds)]
    + ["reward_median", *_MEAN_METRICS, "env_steps_per_s"]
  )


def _rows(
  metrics: dict, start: int, steps_per_s: float, live: Optional[np.ndarray] = None
) -> list[dict]:
  """Per-iteration CSV rows from chunk metrics with leaves [S, N].

  `live`: [S, N] bool, the agents still training (default: all); the others'
  rewards are written as NaN and left out of the median and the means.
  """
  rewards = np.asarray(metrics["reward"])  # [S, N]
  live = np.ones(rewards.shape, bool) if live is None else live
  rows = []
  for n in range(rewards.shape[1]):
    row = {"iteration": start + n}
    alive = live[:, n]
    row.update(
      {
        f"reward_seed{s}": float(rewards[s, n]) if alive[s] else float("nan")
        for s in range(rewards.shape[0])
      }
    )
    row["reward_median"] = float(np.median(rewards[alive, n])) if alive.any() else float("nan")
    for name in _MEAN_METRICS:
      values = np.asarray(metrics[name])[alive, n]
      row[name] = float(np.mean(values)) if alive.any() else float("nan")
    row["env_steps_per_s"] = steps_per_s
    rows.append(row)
  return rows


DIVERGED_JSON = "diverged.json"


def _describe_agent(agent: int, hparams: A2CHParams, per_agent: bool, num_seeds: int) -> str:
  if not per_agent:
    return f"agent {agent}"
  leaves = {k: np.asarray(v) for k, v in vars(hparams).items()}
  varying = {k: float(v[agent]) for k, v in leaves.items() if len(np.unique(v)) > 1}
  return f"agent {agent} ({', '.join(f'{k}={v:g}' for k, v in varying.items())})"


def load_config(workdir: str) -> A2CConfig:
  """The A2CConfig saved in `workdir`: config.json's, else the latest checkpoint's."""
  return run_lib.load_config(workdir, A2CConfig)


def restore_state(
  workdir: str, config: Optional[A2CConfig] = None, step: Optional[int] = None
) -> tuple[A2CConfig, A2CTrainState, int]:
  """Loads (config, seed-stacked A2CTrainState, iteration) from a workdir's checkpoint."""
  config = config or load_config(workdir)
  spec = learner_lib.make_spec(config)
  state, iteration = run_lib.restore_checkpoint(
    workdir, config.keep_checkpoints, abstract_state(spec, config.num_seeds), step
  )
  return config, state, iteration


def train_and_evaluate(
  config: A2CConfig, workdir: str, hparams: Optional[A2CHParams] = None
) -> tuple[A2CTrainState, list[dict[str, Any]]]:
  """Trains `config.num_seeds` agents; writes config, metrics, checkpoints, curves.

  Args:
    config: the run.
    workdir: output directory: config.json, metrics.csv, TensorBoard events,
      checkpoints/, curves.png.
    hparams: traced hyperparameters; default `config.hparams()`. Leaves are
      scalars (every agent) or [num_seeds] (one setting per agent: a sweep,
      see `train/sweep.py`).

  Returns:
    (final seed-stacked A2CTrainState, the metric rows written by this call).

  Raises:
    NonFiniteError: NaN/inf in loss, gradient or parameters (nothing of the
      bad iteration is saved; the last good checkpoint stays).
    checkpoint_lib.CheckpointError: unreadable checkpoint on --resume.
    ValueError / run_lib.WorkdirError / run_lib.NothingToDo: the workdir rules
      (see `train.run.claim_workdir`: in use, not ours, --resume without a
      checkpoint or past --iterations, a changed setting, a file system error).
  """
  hparams = config.hparams() if hparams is None else hparams
  per_agent = learner_lib.hparams_per_agent(hparams, config.num_seeds)
  mesh = devices_lib.agent_mesh(config.num_seeds)
  spec = learner_lib.make_spec(config)
  config = config.replace(step_impl=spec.config.step_impl)  # As used: config.json.
  with run_lib.Run.for_config(
    workdir,
    config,
    unit="iteration",
    run_control=RUN_CONTROL_FIELDS,
    read_saved=A2CConfig.saved_settings,
    outputs=(CURVES_PNG, DIVERGED_JSON),
  ) as run:
    state, metadata = run.restore_or_init(
      abstract_state=lambda: abstract_state(spec, config.num_seeds),
      init=lambda: init_state(config, hparams),
    )
    start = int(distributed.to_host(state.iteration)[0])
    # Several agents: a diverged one is frozen and the rest train on (unless --stop_on_nan).
    freeze = config.num_seeds > 1 and not config.stop_on_nan
    diverged = {int(a): int(i) for a, i in ((metadata or {}).get("diverged") or {}).items()}
    frozen = np.array([a in diverged for a in range(config.num_seeds)])
    run.write_config(config.to_dict())
    run.open_metrics(
      metric_fieldnames(config.num_seeds), keep=lambda row: int(float(row["iteration"])) < start
    )
    print(
      metrics_lib.format_config(
        config.to_dict(),
        f"A2C on {config.env} ({config.network}); paper defaults "
        f"of {config.env} unless set. Workdir: {run.workdir}",
      ),
      flush=True,
    )
    print(devices_lib.describe(config.num_seeds, mesh) + ".", flush=True)
    if start:
      print(f"Resuming from the checkpoint at iteration {start}.", flush=True)

    env_steps = config.num_seeds * config.batch_size * config.episode_length
    progress = run.progress(config.iterations, start, config.progress, desc=config.network)
    all_rows = []
    iteration = start
    while iteration < config.iterations:
      next_ckpt = (iteration // config.checkpoint_every + 1) * config.checkpoint_every
      n = min(config.chunk_size, next_ckpt - iteration, config.iterations - iteration)
      args = (state, hparams, frozen) if freeze else (state, hparams)
      fn, compile_seconds = run_lib.compiled(
        ("a2c_run", spec.config, n, per_agent, freeze, devices_lib.mesh_key(mesh)),
        lambda: _run_fn(spec, n, per_agent, freeze, config.num_seeds, mesh),
        *args,
        fast_compile=config.fast_compile,
      )
      if compile_seconds:
        progress.write(f"Compiled the {n}-iteration chunk in {compile_seconds:.1f} s.")
      watch = metrics_lib.Stopwatch()
      new_state, chunk_metrics = fn(*args)
      chunk_metrics = distributed.to_host(chunk_metrics)
      seconds = watch.lap()
      finite = np.asarray(chunk_metrics["finite"])  # [S, N]
      hint = "Lower --learning_rate or --grad_clip_norm, or check the hyperparameters."
      if freeze:
        live = ~np.asarray(chunk_metrics["frozen"])  # [S, N]
        for agent in np.nonzero(~live.all(axis=1) & ~frozen)[0]:
          bad = int(np.argmax(~live[agent]))
          diverged[int(agent)] = iteration + bad
          progress.write(
            f"WARNING: {_describe_agent(agent, hparams, per_agent, config.num_seeds)} "
            f"diverged (NaN/inf) at iteration {iteration + bad}: frozen at its last finite "
            f"parameters; its rewards are NaN from there (workdir/{DIVERGED_JSON}); the other "
            "agents train on."
          )
        frozen = ~live[:, -1]
        rows = _rows(chunk_metrics, iteration, env_steps * n / seconds, live)
        run.check_finite(
          live.any(axis=0)[None],  # Stop only when no agent is left.
          describe=lambda bad, seeds: f"updates of every agent by iteration {iteration + bad}",
          good_rows=lambda bad: rows[:bad],
          lost="that state was not saved",
          hint=hint,
        )
        if diverged:
          run.write_json(DIVERGED_JSON, {str(a): i for a, i in sorted(diverged.items())})
      else:
        rows = _rows(chunk_metrics, iteration, env_steps * n / seconds)
        run.check_finite(
          finite,
          describe=lambda bad, seeds: (
            f"loss, gradient or parameters at iteration {iteration + bad} (seed index {seeds})"
          ),
          good_rows=lambda bad: rows[:bad],
          lost="that state was not saved",
          hint=hint,
        )
      state = new_state
      run.write_rows(rows)
      all_rows += rows
      iteration += n
      progress.update(
        n, median_reward=rows[-1]["reward_median"], env_steps_per_s=rows[-1]["env_steps_per_s"]
      )
      if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
        run.save(
          iteration,
          state,
          {
            "iteration": iteration,
            "config": config.to_dict(),
            "diverged": {str(a): i for a, i in sorted(diverged.items())},
          },
        )
    run.close_progress()
    if run.writes and (all_rows or os.path.exists(run.metrics_path)):
      from train import plot  # pylint: disable=g-import-not-at-top

      plot.plot_workdirs([run.workdir], os.path.join(run.workdir, CURVES_PNG))
    return state, all_rows
