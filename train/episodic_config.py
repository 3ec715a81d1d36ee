"""The episodic (supervised meta-learning) trainer's config: tasks of SPEC.md §5.4-5.5.

    config = episodic_defaults("PatternCompletion-v0", network="rnn", num_seeds=3)

Defaults are the reference's per task (`PAPER_DEFAULTS`): Adam 3e-4, 2000
episodes, inputs added x20 (patterns); Adam 1e-4, 100k episodes, inputs
clamped (images); batch 1, decay rule, scalar eta 0.01, W and alpha ~ 0.01 N(0, 1).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import jax
import jax.numpy as jnp

import envs
from bpm_jax import completion
from bpm_jax.config import PlasticityConfig
from train.config_base import ConfigMixin, field, run_fields
from train.validate import check_choice, check_fields

Network = Literal["plastic", "rnn", "lstm"]
NETWORKS: tuple[str, ...] = typing.get_args(Network)

CHOICES: dict[str, tuple[str, ...]] = dict(
  task=envs.registered_tasks,
  network=NETWORKS,
  alpha_kind=("full", "single"),
  input_mode=completion.INPUT_MODES,
  image_source=("skimage", "cifar10"),
)

# Fields free to change on --resume (they steer the run, not its numbers).
RUN_CONTROL_FIELDS = (
  "iterations",
  "chunk_size",
  "checkpoint_every",
  "keep_checkpoints",
  "resume",
  "overwrite",
  "progress",
  "fast_compile",
  "eval_every",
  "eval_episodes",
  "remat_every",
)

_RunFields = run_fields(
  "_RunFields",
  "model",
  "Iterations",
  chunk_size=50,
  keep_checkpoints=3,
  resume_help="Continue from the latest checkpoint in the workdir.",
)


@dataclasses.dataclass(frozen=True)
class EpisodicConfig(ConfigMixin, _RunFields):
  """One episodic meta-training run. Defaults: pattern completion, plastic network."""

  task: str = field("PatternCompletion-v0", "Task id: " + " | ".join(envs.registered_tasks) + ".")
  network: str = field("plastic", "Network: plastic | rnn (no plasticity) | lstm (Flax LSTM).")
  alpha_kind: str = field("full", "alpha per connection (full) or one shared scalar (single).")
  iterations: int = field(2000, "Optimiser steps (each on batch_size fresh episodes).")
  batch_size: int = field(1, "Episodes per optimiser step (reference: 1).")
  learning_rate: float = field(3e-4, "Adam learning rate.")
  input_mode: str = field("add", "Inputs added to the pre-activation (add) or clamped (clamp).")
  input_scale: float = field(20.0, "Factor of the added inputs (input_mode=add).")
  init_scale: float = field(0.01, "W, alpha ~ init_scale * N(0, 1).")
  eta_init: float = field(0.01, "Initial decay-rule rate eta.")
  lstm_features: int = field(0, "LSTM width; 0: the smallest with >= the plastic net's params.")
  pattern_size: int = field(1000, "PatternCompletion: bits per pattern.")
  n_items: int = field(0, "Patterns / images per episode; 0: the task's default (5 / 3).")
  image_source: str = field("skimage", "ImageCompletion images: skimage (offline) | cifar10.")
  data_dir: str = field("", "ImageCompletion with image_source=cifar10: the CIFAR-10 batches.")
  eval_every: int = field(100, "Evaluate on held-out episodes every N iterations (0: never).")
  eval_episodes: int = field(50, "Held-out episodes per evaluation (images: test images).")
  checkpoint_every: int = field(500, "Save a checkpoint every N iterations.")
  remat_every: int = field(10, "Steps per recomputed segment in the backward pass (0: none).")
  fast_compile: bool = field(False, "XLA backend optimisation level 0 (tests, tiny runs).")

  def __post_init__(self):
    check_fields(
      self,
      CHOICES,
      {
        1: (
          "iterations",
          "batch_size",
          "num_seeds",
          "chunk_size",
          "checkpoint_every",
          "keep_checkpoints",
          "eval_episodes",
        ),
        2: ("pattern_size",),
        0: ("seed", "lstm_features", "n_items", "eval_every", "remat_every"),
      },
      positive=("learning_rate", "input_scale", "init_scale"),
      nonnegative=("eta_init",),
    )
    if self.image_source == "cifar10" and not self.data_dir:
      raise ValueError("image_source=cifar10 needs --data_dir: the folder of the CIFAR-10 batches.")
    self.make_task()  # The task's own checks (sizes, data).

  def make_task(self):
    """(task, training params, held-out params) of this run."""
    kwargs = {}
    if self.task == "PatternCompletion-v0":
      kwargs["pattern_size"] = self.pattern_size
      if self.n_items:
        kwargs["n_patterns"] = self.n_items
    else:
      kwargs.update(source=self.image_source, data_dir=self.data_dir)
      if self.n_items:
        kwargs["n_images"] = self.n_items
    task, params = envs.make(self.task, **kwargs)
    held_out = task.params_for_split("test") if hasattr(task, "params_for_split") else params
    as_arrays = lambda p: jax.tree.map(jnp.asarray, p)  # Traced arguments of the program.
    return task, as_arrays(params), as_arrays(held_out)

  @property
  def plasticity(self) -> PlasticityConfig:
    network = "rnn" if self.network == "rnn" else "plastic"
    return completion.PAPER_CONFIG.replace(network=network, alpha_kind=self.alpha_kind)


PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
  "PatternCompletion-v0": dict(learning_rate=3e-4, iterations=2000, input_mode="add"),
  "ImageCompletion-v0": dict(
    learning_rate=1e-4, iterations=100_000, input_mode="clamp", eval_every=500
  ),
}


def episodic_defaults(task: str = "PatternCompletion-v0", **overrides: Any) -> EpisodicConfig:
  """`EpisodicConfig` with the reference settings of `task`, then `overrides`."""
  check_choice("task", task, envs.registered_tasks)
  return EpisodicConfig(**dict(PAPER_DEFAULTS[task], task=task, **overrides))
