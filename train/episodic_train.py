"""The episodic host loop: chunks of jitted optimiser steps over the run scaffold (`train.run`).

    config = episodic_defaults("PatternCompletion-v0", network="plastic", num_seeds=3)
    state, rows = train_and_evaluate(config, "runs/patterns_plastic")

Outputs in the workdir: config.json, metrics.csv (per iteration: loss and bit
error per seed and their median; at every `eval_every` iterations the same on
`eval_episodes` held-out episodes, the test images for ImageCompletion),
TensorBoard events, checkpoints/, curves.png. `--resume` continues after the
latest checkpoint with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np

from train import checkpoint as checkpoint_lib
from train import episodic_learner as learner_lib
from train import metrics as metrics_lib
from train import run as run_lib
from train.episodic_config import RUN_CONTROL_FIELDS, EpisodicConfig
from train.episodic_learner import EpisodicSpec, EpisodicTrainState

CURVES_PNG = "curves.png"
SCORES = ("loss", "bit_error")


def _init_fn(spec: EpisodicSpec):
  return jax.vmap(lambda key: learner_lib.init(spec, key))


def _run_fn(spec: EpisodicSpec, num_iterations: int):
  return jax.vmap(
    lambda params, state: learner_lib.run(spec, params, state, num_iterations), in_axes=(None, 0)
  )


def _eval_fn(spec: EpisodicSpec, num_episodes: int):
  return jax.vmap(
    lambda params, model: learner_lib.evaluate(
      spec, params, model, learner_lib.eval_key(), num_episodes
    ),
    in_axes=(None, 0),
  )


def init_state(spec: EpisodicSpec) -> EpisodicTrainState:
  """The seed-stacked initial state (leaves [S, ...])."""
  keys = run_lib.seed_keys(spec.config.seed, spec.config.num_seeds)
  fn, _ = run_lib.compiled(("episodic_init", spec.config), lambda: _init_fn(spec), keys)
  return fn(keys)


def abstract_state(spec: EpisodicSpec) -> EpisodicTrainState:
  return jax.eval_shape(_init_fn(spec), run_lib.seed_keys(0, spec.config.num_seeds))


def metric_fieldnames(num_seeds: int) -> list[str]:
  names = ["iteration"]
  for prefix in ("", "eval_"):
    for score in SCORES:
      names += [f"{prefix}{score}_seed{s}" for s in range(num_seeds)] + [f"{prefix}{score}_median"]
  return names + ["episodes_per_s"]


def _score_columns(scores: dict, prefix: str, n: Optional[int] = None) -> dict[str, float]:
  row = {}
  for score in SCORES:
    values = np.asarray(scores[score])
    values = values[:, n] if n is not None else values  # [S]
    row.update({f"{prefix}{score}_seed{s}": float(v) for s, v in enumerate(values)})
    row[f"{prefix}{score}_median"] = float(np.median(values))
  return row


def load_config(workdir: str) -> EpisodicConfig:
  """The EpisodicConfig saved in `workdir`: config.json's, else the latest checkpoint's."""
  payload, _ = run_lib.saved_payload(workdir)
  return EpisodicConfig.from_dict(EpisodicConfig.saved_settings(payload))


def restore_state(
  workdir: str, config: Optional[EpisodicConfig] = None, step: Optional[int] = None
) -> tuple[EpisodicConfig, EpisodicTrainState, int]:
  """(config, seed-stacked state, iteration) from a workdir's (latest or given) checkpoint."""
  config = config or load_config(workdir)
  spec = learner_lib.make_spec(config)
  with checkpoint_lib.Checkpointer(
    os.path.join(workdir, run_lib.CHECKPOINT_DIR), config.keep_checkpoints
  ) as ckpt:
    state, metadata = ckpt.restore(abstract_state(spec), step)
  return config, state, int(metadata.get("iteration", int(np.asarray(state.iteration)[0])))


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
    start = int(np.asarray(state.iteration)[0])
    run.write_config(config.to_dict())
    run.open_metrics(
      metric_fieldnames(config.num_seeds), keep=lambda row: int(float(row["iteration"])) < start
    )
    print(
      metrics_lib.format_config(
        config.to_dict(),
        f"{config.task}, {config.network} network ({learner_lib.param_count(spec):,} parameters); "
        f"reference settings of the task unless set. Workdir: {run.workdir}",
      ),
      flush=True,
    )
    if start:
      print(f"Resuming from the checkpoint at iteration {start}.", flush=True)

    progress = run.progress(config.iterations, start, config.progress, desc=config.network)
    all_rows = []
    iteration = start
    while iteration < config.iterations:
      stops = [config.checkpoint_every, config.eval_every or config.iterations]
      next_stop = min((iteration // every + 1) * every for every in stops)
      n = min(config.chunk_size, next_stop - iteration, config.iterations - iteration)
      fn, compile_seconds = run_lib.compiled(
        ("episodic_run", config, n),
        lambda: _run_fn(spec, n),
        train_params,
        state,
        fast_compile=config.fast_compile,
      )
      if compile_seconds:
        progress.write(f"Compiled the {n}-iteration chunk in {compile_seconds:.1f} s.")
      watch = metrics_lib.Stopwatch()
      new_state, metrics = fn(train_params, state)
      metrics = jax.device_get(metrics)
      seconds = watch.lap()
      rows = [
        dict(
          iteration=iteration + k,
          episodes_per_s=config.num_seeds * config.batch_size * n / seconds,
          **_score_columns(metrics, "", k),
        )
        for k in range(n)
      ]
      run.check_finite(
        metrics["finite"],  # [S, N]
        describe=lambda bad, seeds: (
          f"loss, gradient or parameters at iteration {iteration + bad} (seed index {seeds})"
        ),
        good_rows=lambda bad: rows[:bad],
        lost="that state was not saved",
        hint="Lower --learning_rate, or check the settings.",
      )
      state = new_state
      iteration += n
      if config.eval_every and (
        iteration % config.eval_every == 0 or iteration == config.iterations
      ):
        eval_fn, _ = run_lib.compiled(
          ("episodic_eval", config),
          lambda: _eval_fn(spec, config.eval_episodes),
          held_out_params,
          state.params,
        )
        scores = jax.device_get(eval_fn(held_out_params, state.params))
        rows[-1].update(_score_columns(scores, "eval_"))
      run.write_rows(rows)
      all_rows += rows
      progress.update(
        n,
        loss=rows[-1]["loss_median"],
        bit_error=rows[-1]["bit_error_median"],
        episodes_per_s=rows[-1]["episodes_per_s"],
      )
      if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
        run.save(iteration, state, {"iteration": iteration, "config": config.to_dict()})
    run.close_progress()
    if all_rows or os.path.exists(run.metrics_path):
      from train import episodic_plots  # pylint: disable=g-import-not-at-top

      episodic_plots.plot_curves([run.workdir], os.path.join(run.workdir, CURVES_PNG))
    return state, all_rows
