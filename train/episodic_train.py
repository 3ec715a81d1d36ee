"""The episodic host loop: chunks of jitted optimiser steps over the run scaffold (`train.run`).

    config = episodic_defaults("PatternCompletion-v0", network="plastic", num_seeds=3)
    state, rows = train_and_evaluate(config, "runs/patterns_plastic")

Outputs in the workdir: config.json, metrics.csv (per iteration, or per
`log_every` iterations as their mean: the task family's scores per seed and
their median, loss and bit error for the completion tasks, loss and accuracy
for one-shot classification; at every `eval_every` iterations the same on
`eval_episodes` held-out episodes: the test images for ImageCompletion, the
held-out characters for Omniglot), TensorBoard events, checkpoints/,
curves.png. `--resume` continues after the latest checkpoint with the same
numbers as an uninterrupted run.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from train import devices as devices_lib
from train import distributed
from train import episodic_learner as learner_lib
from train import metrics as metrics_lib
from train import run as run_lib
from train.episodic_config import RUN_CONTROL_FIELDS, EpisodicConfig
from train.episodic_learner import EpisodicSpec, EpisodicTrainState

CURVES_PNG = "curves.png"
SCORES = ("loss", "bit_error")  # The completion tasks'; a config's own: `config.adapter.scores`.


def _init_fn(spec: EpisodicSpec):
  return devices_lib.vmap_over_agents(
    lambda key: learner_lib.init(spec, key), (0,), spec.config.num_seeds
  )


def _run_fn(spec: EpisodicSpec, num_iterations: int):
  return devices_lib.vmap_over_agents(
    lambda params, state: learner_lib.run(spec, params, state, num_iterations),
    (None, 0),
    spec.config.num_seeds,
  )


def _eval_fn(spec: EpisodicSpec, num_episodes: int):
  return devices_lib.vmap_over_agents(
    lambda params, model: learner_lib.evaluate(
      spec, params, model, learner_lib.eval_key(), num_episodes
    ),
    (None, 0),
    spec.config.num_seeds,
  )


def init_state(spec: EpisodicSpec) -> EpisodicTrainState:
  """The seed-stacked initial state (leaves [S, ...])."""
  keys = run_lib.seed_keys(spec.config.seed, spec.config.num_seeds)
  fn, _ = run_lib.compiled(
    ("episodic_init", spec.config, devices_lib.placement_key(spec.config.num_seeds)),
    lambda: _init_fn(spec),
    keys,
  )
  return fn(keys)


def abstract_state(spec: EpisodicSpec) -> EpisodicTrainState:
  return jax.eval_shape(_init_fn(spec), run_lib.seed_keys(0, spec.config.num_seeds))


def metric_fieldnames(num_seeds: int, scores: Sequence[str] = SCORES) -> list[str]:
  names = ["iteration"]
  for prefix in ("", "eval_"):
    for score in scores:
      names += [f"{prefix}{score}_seed{s}" for s in range(num_seeds)] + [f"{prefix}{score}_median"]
  return names + ["episodes_per_s"]


def _score_columns(
  scores: dict, prefix: str, n: Optional[int] = None, names: Sequence[str] = SCORES
) -> dict[str, float]:
  row = {}
  for score in names:
    values = np.asarray(scores[score])
    values = values[:, n] if n is not None else values  # [S]
    row.update({f"{prefix}{score}_seed{s}": float(v) for s, v in enumerate(values)})
    row[f"{prefix}{score}_median"] = float(np.median(values))
  return row


class _RowGrouper:
  """Per-iteration metrics -> one row per `log_every` iterations (their mean per seed).

  A group ends at an iteration i with (i + 1) % log_every == 0, or at the run's
  last iteration; iterations of an unfinished group wait for the next chunk.
  With log_every = 1 every iteration is its own row (its values unchanged).
  """

  def __init__(self, log_every: int, last_iteration: int, names: Sequence[str]):
    self.log_every, self.last_iteration, self.names = log_every, last_iteration, names
    self.pending: list[dict[str, np.ndarray]] = []  # Per iteration: score -> [S].

  def add(self, first_iteration: int, metrics: dict, episodes_per_s: float) -> list[dict]:
    """Rows completed by a chunk's metrics ([S, n] per score), starting at `first_iteration`."""
    rows = []
    n = np.asarray(metrics[self.names[0]]).shape[1]
    for k in range(n):
      iteration = first_iteration + k
      self.pending.append({name: np.asarray(metrics[name])[:, k] for name in self.names})
      if (iteration + 1) % self.log_every and iteration != self.last_iteration:
        continue
      # [S, 1] per score: the group's mean (one iteration: its values as they are).
      group = {
        name: np.mean(np.stack([p[name] for p in self.pending], 1), 1, keepdims=True)
        if len(self.pending) > 1
        else self.pending[0][name][:, None]
        for name in self.names
      }
      self.pending = []
      rows.append(
        dict(
          iteration=iteration,
          episodes_per_s=episodes_per_s,
          **_score_columns(group, "", 0, self.names),
        )
      )
    return rows


def load_config(workdir: str) -> EpisodicConfig:
  """The EpisodicConfig saved in `workdir`: config.json's, else the latest checkpoint's."""
  return run_lib.load_config(workdir, EpisodicConfig)


def restore_state(
  workdir: str, config: Optional[EpisodicConfig] = None, step: Optional[int] = None
) -> tuple[EpisodicConfig, EpisodicTrainState, int]:
  """(config, seed-stacked state, iteration) from a workdir's (latest or given) checkpoint."""
  config = config or load_config(workdir)
  spec = learner_lib.make_spec(config)
  state, iteration = run_lib.restore_checkpoint(
    workdir, config.keep_checkpoints, abstract_state(spec), step
  )
  return config, state, iteration


def train_and_evaluate(
  config: EpisodicConfig, workdir: str
) -> tuple[EpisodicTrainState, list[dict[str, Any]]]:
  """Trains `config.num_seeds` models; writes config, metrics, checkpoints, curves.

  Returns:
    (final seed-stacked state, the metric rows written by this call).

  Raises:
    NonFiniteError: NaN/inf in loss, gradient or parameters (the last good
      checkpoint stays).
    checkpoint_lib.CheckpointError: unreadable checkpoint on --resume.
  """
  spec = learner_lib.make_spec(config)
  _, train_params, held_out_params = config.make_task()
  with run_lib.Run.for_config(
    workdir,
    config,
    unit="iteration",
    run_control=RUN_CONTROL_FIELDS,
    read_saved=EpisodicConfig.saved_settings,
    outputs=(CURVES_PNG,),
  ) as run:
    state, _ = run.restore_or_init(
      abstract_state=lambda: abstract_state(spec), init=lambda: init_state(spec)
    )
    start = int(distributed.to_host(state.iteration)[0])
    run.write_config(config.to_dict())
    scores = spec.adapter.scores
    run.open_metrics(
      metric_fieldnames(config.num_seeds, scores),
      keep=lambda row: int(float(row["iteration"])) < start,
    )
    print(
      metrics_lib.format_config(
        config.to_dict(),
        f"{config.task}, {config.network} network ({learner_lib.param_count(spec):,} parameters); "
        f"reference settings of the task unless set. Workdir: {run.workdir}",
      ),
      flush=True,
    )
    num_seeds = config.num_seeds
    print(devices_lib.describe(num_seeds, devices_lib.agent_mesh(num_seeds)) + ".", flush=True)
    if start:
      print(f"Resuming from the checkpoint at iteration {start}.", flush=True)

    progress = run.progress(config.iterations, start, config.progress, desc=config.network)
    grouper = _RowGrouper(config.log_every, config.iterations - 1, scores)
    all_rows, last_row = [], None
    iteration = start
    while iteration < config.iterations:
      stops = [config.checkpoint_every, config.eval_every or config.iterations]
      next_stop = min((iteration // every + 1) * every for every in stops)
      n = min(config.chunk_size, next_stop - iteration, config.iterations - iteration)
      fn, compile_seconds = run_lib.compiled(
        ("episodic_run", config, n, devices_lib.placement_key(config.num_seeds)),
        lambda: _run_fn(spec, n),
        train_params,
        state,
        fast_compile=config.fast_compile,
      )
      if compile_seconds:
        progress.write(f"Compiled the {n}-iteration chunk in {compile_seconds:.1f} s.")
      watch = metrics_lib.Stopwatch()
      new_state, metrics = fn(train_params, state)
      metrics = distributed.to_host(metrics)
      seconds = watch.lap()
      rows = grouper.add(iteration, metrics, config.num_seeds * config.batch_size * n / seconds)
      run.check_finite(
        metrics["finite"],  # [S, N]
        describe=lambda bad, seeds: (
          f"loss, gradient or parameters at iteration {iteration + bad} (seed index {seeds})"
        ),
        good_rows=lambda bad: [row for row in rows if row["iteration"] < iteration + bad],
        lost="that state was not saved",
        hint="Lower --learning_rate, or check the settings.",
      )
      state = new_state
      iteration += n
      if config.eval_every and (
        iteration % config.eval_every == 0 or iteration == config.iterations
      ):
        eval_fn, _ = run_lib.compiled(
          ("episodic_eval", config, devices_lib.placement_key(config.num_seeds)),
          lambda: _eval_fn(spec, config.eval_episodes),
          held_out_params,
          state.params,
        )
        evaluation = distributed.to_host(eval_fn(held_out_params, state.params))
        rows[-1].update(_score_columns(evaluation, "eval_", names=scores))
      run.write_rows(rows)
      all_rows += rows
      last_row = rows[-1] if rows else last_row
      shown = {name: last_row[f"{name}_median"] for name in scores} if last_row else {}
      progress.update(n, **shown, episodes_per_s=config.num_seeds * config.batch_size * n / seconds)
      if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
        run.save(iteration, state, {"iteration": iteration, "config": config.to_dict()})
    run.close_progress()
    if run.writes and (all_rows or os.path.exists(run.metrics_path)):
      from train import episodic_plots  # pylint: disable=g-import-not-at-top

      episodic_plots.plot_curves([run.workdir], os.path.join(run.workdir, CURVES_PNG))
    return state, all_rows
