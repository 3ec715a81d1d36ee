"""The episodic (supervised meta-learning) trainer's config: tasks of SPEC.md §5.4-5.6.

    config = episodic_defaults("PatternCompletion-v0", network="rnn", num_seeds=3)
    config = episodic_defaults("Omniglot-v0", data_dir="/path/to/omniglot")

Defaults are the reference's per task (`PAPER_DEFAULTS`): Adam 3e-4, 2000
episodes, inputs added x20 (patterns); Adam 1e-4, 100k episodes, inputs
clamped (images); batch 1, decay rule, scalar eta 0.01, W and alpha ~ 0.01 N(0, 1).
Omniglot (and its offline stand-in SyntheticGlyphs, generated glyphs that are
not Omniglot): 5-way 1-shot, Oja-plastic output layer, Adam 3e-5 x 0.666 every
1M episodes, 5M episodes, batch 1. The task's family (`train.episodic_adapters`)
brings the network, the loss and the scores.
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
from envs import omniglot_data
from train import episodic_adapters
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
  omniglot_split=omniglot_data.SPLITS,
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
  "log_every",
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
  network: str = field(
    "plastic",
    "Network: plastic | rnn (no plasticity) | lstm (Flax LSTM; completion tasks only).",
  )
  alpha_kind: str = field("full", "alpha per connection (full) or one shared scalar (single).")
  iterations: int = field(2000, "Optimiser steps (each on batch_size fresh episodes).")
  batch_size: int = field(1, "Episodes per optimiser step (reference: 1).")
  learning_rate: float = field(3e-4, "Adam learning rate.")
  lr_decay_every: int = field(
    0, "Multiply the learning rate by lr_decay every N episodes (0: never)."
  )
  lr_decay: float = field(0.666, "Factor of the step learning-rate decay (lr_decay_every > 0).")
  input_mode: str = field(
    "add", "Completion tasks: inputs added to the pre-activation (add) or clamped (clamp)."
  )
  input_scale: float = field(20.0, "Completion tasks: factor of the added inputs (input_mode=add).")
  init_scale: float = field(
    0.01, "W, alpha ~ init_scale * N(0, 1) (one-shot tasks: alpha ~ init_scale * U(0, 1))."
  )
  eta_init: float = field(0.01, "Initial plasticity rate eta (decay rule; one-shot: Oja rule).")
  lstm_features: int = field(0, "LSTM width; 0: the smallest with >= the plastic net's params.")
  pattern_size: int = field(1000, "PatternCompletion: bits per pattern.")
  n_items: int = field(
    0, "Patterns / images / classes (n-way) per episode; 0: the task's default (5 / 3 / 5)."
  )
  image_source: str = field("skimage", "ImageCompletion images: skimage (offline) | cifar10.")
  data_dir: str = field(
    "",
    "The data folder: CIFAR-10 batches (ImageCompletion, image_source=cifar10) or the Omniglot "
    "python release (Omniglot-v0: images_background/, images_evaluation/ or their zips).",
  )
  omniglot_split: str = field(
    "paper",
    "Omniglot-v0 characters: paper (merged, fixed shuffle, last held_out_classes for testing) "
    "| standard (background / evaluation).",
  )
  num_classes: int = field(0, "SyntheticGlyphs-v0: glyph classes generated (0: 1000).")
  held_out_classes: int = field(
    100, "Omniglot-v0 (paper split), SyntheticGlyphs-v0: classes held out for testing."
  )
  eval_every: int = field(100, "Evaluate on held-out episodes every N iterations (0: never).")
  eval_episodes: int = field(
    50, "Held-out episodes per evaluation (images: test images; Omniglot: test characters)."
  )
  log_every: int = field(
    1, "Iterations per metrics.csv row (the mean over them); divides eval/checkpoint_every."
  )
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
          "log_every",
          "held_out_classes",
        ),
        2: ("pattern_size",),
        0: (
          "seed",
          "lstm_features",
          "n_items",
          "eval_every",
          "remat_every",
          "lr_decay_every",
          "num_classes",
        ),
      },
      positive=("learning_rate", "input_scale", "init_scale", "lr_decay"),
      nonnegative=("eta_init",),
    )
    if self.network not in self.adapter.networks:
      raise ValueError(
        f"network={self.network!r} is not available for {self.task}; choose one of "
        f"{', '.join(self.adapter.networks)}"
        + (
          " (rnn: the same conv net with a non-plastic output layer)."
          if self.adapter is episodic_adapters.ONE_SHOT
          else "."
        )
      )
    if self.image_source == "cifar10" and not self.data_dir:
      raise ValueError("image_source=cifar10 needs --data_dir: the folder of the CIFAR-10 batches.")
    if self.task == "Omniglot-v0" and not self.data_dir:
      raise ValueError(
        "Omniglot-v0 needs --data_dir: the folder of the Omniglot python release "
        "(images_background/ and images_evaluation/, or their zips, from "
        "https://github.com/brendenlake/omniglot); offline, use --task=SyntheticGlyphs-v0 "
        "(generated glyphs, not Omniglot)."
      )
    for name in ("eval_every", "checkpoint_every"):
      if self.log_every > 1 and getattr(self, name) % self.log_every:
        raise ValueError(
          f"log_every={self.log_every} must divide {name}={getattr(self, name)} "
          "(metrics rows end where evaluations and checkpoints happen)."
        )
    self.make_task()  # The task's own checks (sizes, data).

  @property
  def adapter(self) -> episodic_adapters.TaskAdapter:
    """The task family's network, loss and scores."""
    return episodic_adapters.adapter_for(self.task)

  def make_task(self):
    """(task, training params, held-out params) of this run."""
    kwargs = {}
    if self.task == "PatternCompletion-v0":
      kwargs["pattern_size"] = self.pattern_size
      if self.n_items:
        kwargs["n_patterns"] = self.n_items
    elif self.task == "ImageCompletion-v0":
      kwargs.update(source=self.image_source, data_dir=self.data_dir)
      if self.n_items:
        kwargs["n_images"] = self.n_items
    else:  # One-shot classification (SPEC §5.6).
      kwargs["held_out_classes"] = self.held_out_classes
      if self.n_items:
        kwargs["n_way"] = self.n_items
      if self.task == "Omniglot-v0":
        kwargs.update(data_dir=self.data_dir, split=self.omniglot_split)
      elif self.num_classes:
        kwargs["num_classes"] = self.num_classes
    task, params = envs.make(self.task, **kwargs)
    held_out = task.params_for_split("test") if hasattr(task, "params_for_split") else params
    as_arrays = lambda p: jax.tree.map(jnp.asarray, p)  # Traced arguments of the program.
    return task, as_arrays(params), as_arrays(held_out)

  @property
  def plasticity(self) -> PlasticityConfig:
    network = "rnn" if self.network == "rnn" else "plastic"
    return completion.PAPER_CONFIG.replace(network=network, alpha_kind=self.alpha_kind)


# Fields added after runs were saved, at the values those runs used:
# a constant learning rate, one metrics row per iteration; the rest is unused by them.
EpisodicConfig.SAVED_BEFORE_FIELD_EXISTED = dict(
  lr_decay_every=0,
  lr_decay=0.666,
  log_every=1,
  omniglot_split="paper",
  num_classes=0,
  held_out_classes=100,
)

# SPEC §5.6 / the reference: Adam 3e-5, x 0.666 every 1M episodes, 5M episodes, batch 1;
# 100 held-out episodes per evaluation; rows of 100 iterations (not 5M rows).
_ONE_SHOT_DEFAULTS = dict(
  learning_rate=3e-5,
  lr_decay_every=1_000_000,
  lr_decay=0.666,
  iterations=5_000_000,
  eval_every=1000,
  eval_episodes=100,
  log_every=100,
  chunk_size=1000,
  checkpoint_every=10_000,
)
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
  "PatternCompletion-v0": dict(learning_rate=3e-4, iterations=2000, input_mode="add"),
  "ImageCompletion-v0": dict(
    learning_rate=1e-4, iterations=100_000, input_mode="clamp", eval_every=500
  ),
  "Omniglot-v0": _ONE_SHOT_DEFAULTS,
  "SyntheticGlyphs-v0": _ONE_SHOT_DEFAULTS,
}


def episodic_defaults(task: str = "PatternCompletion-v0", **overrides: Any) -> EpisodicConfig:
  """`EpisodicConfig` with the reference settings of `task`, then `overrides`."""
  check_choice("task", task, envs.registered_tasks)
  return EpisodicConfig(**dict(PAPER_DEFAULTS[task], task=task, **overrides))
