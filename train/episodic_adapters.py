"""What a task family brings to the episodic trainer: its network, its loss and its scores.

    adapter = adapter_for("Omniglot-v0")          # ONE_SHOT
    network = adapter.make_network(config, task)
    variables = adapter.init(network, task, key)
    scores = adapter.episode_scores(network, variables, episode)  # {"loss": [], "accuracy": []}

The learner (`train.episodic_learner`) is the same for every family: it
samples episodes, averages `episode_scores` over the batch and descends on
`scores["loss"]`. Families:

- `COMPLETION` (PatternCompletion-v0, ImageCompletion-v0; SPEC §5.4-5.5):
  `bpm_jax.completion.CompletionNet` (plastic / rnn) or the LSTM baseline on
  `episode.inputs` [T, N]; loss `sum_j (y_T[j] - target[j])^2`, `bit_error`
  the fraction of wrong signs.
- `ONE_SHOT` (Omniglot-v0, SyntheticGlyphs-v0; SPEC §5.6):
  `bpm_jax.omniglot_net.OmniglotNet` (plastic: Oja output layer; rnn: the
  same network without plasticity) on `episode.images` [T, 31, 31] and
  `episode.labels` [T, n]; loss the binary cross-entropy of the final step's
  y against the one-hot target, `accuracy` whether argmax y_T is the target.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

import envs
from bpm_jax import completion, omniglot_net
from envs.omniglot import OneShotTask

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True)
class TaskAdapter:
  """A task family's network, initialisation and per-episode scores (all pure).

  Attributes:
    name: the family.
    scores: the metric names of `episode_scores`, the loss first (metrics.csv columns).
    networks: the `network` values the family has.
    make_network: (config, task) -> the Flax module of one episode.
    init: (network, task, key) -> the network's variables.
    episode_scores: (network, variables, episode) -> {score: [] float32}.
  """

  name: str
  scores: tuple[str, ...]
  networks: tuple[str, ...]
  make_network: Callable[[Any, Any], nn.Module]
  init: Callable[[nn.Module, Any, Array], PyTree]
  episode_scores: Callable[[nn.Module, PyTree, Any], dict[str, Array]]


# --------------------------------------------------------------------------
# Completion tasks (SPEC §5.4-5.5).


def _completion_network(config: Any, task: Any) -> nn.Module:
  n, p = task.num_neurons, task.item_size
  if config.network == "lstm":
    features = config.lstm_features or completion.lstm_features_for(
      n, p, completion.plastic_param_count(n, completion.PAPER_CONFIG)
    )
    return completion.LSTMCompletionNet(features=features, output_size=p)
  return completion.CompletionNet(
    num_neurons=n,
    config=config.plasticity,
    input_mode=config.input_mode,
    input_scale=config.input_scale,
    init_scale=config.init_scale,
    eta_init=config.eta_init,
    remat_every=config.remat_every,
  )


def _completion_init(network: nn.Module, task: Any, key: Array) -> PyTree:
  inputs = jnp.zeros((task.episode_length, task.num_neurons), jnp.float32)
  return network.init(key, inputs)


def _completion_scores(network: nn.Module, variables: PyTree, episode: Any) -> dict[str, Array]:
  """Loss `sum_j (y_T[j] - target[j])^2` and the fraction of wrong signs, one episode."""
  output = network.apply(variables, episode.inputs)  # [P]
  return {
    "loss": jnp.sum(jnp.square(output - episode.target)),
    "bit_error": jnp.mean(jnp.sign(output) != jnp.sign(episode.target)),
  }


COMPLETION = TaskAdapter(
  name="completion",
  scores=("loss", "bit_error"),
  networks=("plastic", "rnn", "lstm"),
  make_network=_completion_network,
  init=_completion_init,
  episode_scores=_completion_scores,
)


# --------------------------------------------------------------------------
# One-shot classification (SPEC §5.6).


def _one_shot_network(config: Any, task: Any) -> nn.Module:
  if config.network not in ONE_SHOT.networks:
    raise ValueError(
      f"network={config.network!r} is not available for {config.task}: choose plastic "
      "(Oja-plastic output layer) or rnn (the same conv net, output layer without plasticity)."
    )
  return omniglot_net.OmniglotNet(
    n_way=task.n_way,
    plastic=config.network == "plastic",
    alpha_kind=config.alpha_kind,
    init_scale=config.init_scale,
    eta_init=config.eta_init,
  )


def _one_shot_init(network: nn.Module, task: Any, key: Array) -> PyTree:
  t, side = task.episode_length, task.image_side
  return network.init(key, jnp.zeros((t, side, side), jnp.float32), jnp.zeros((t, task.n_way)))


def _one_shot_scores(network: nn.Module, variables: PyTree, episode: Any) -> dict[str, Array]:
  """BCE of the final step's y against the target, and whether argmax y_T is right."""
  logits = network.apply(variables, episode.images, episode.labels)[-1]  # [n]
  correct = jnp.argmax(logits) == jnp.argmax(episode.target)
  return {
    "loss": omniglot_net.binary_cross_entropy(logits, episode.target),
    "accuracy": correct.astype(jnp.float32),
  }


ONE_SHOT = TaskAdapter(
  name="one_shot",
  scores=("loss", "accuracy"),
  networks=("plastic", "rnn"),
  make_network=_one_shot_network,
  init=_one_shot_init,
  episode_scores=_one_shot_scores,
)


def adapter_for(task_id: str) -> TaskAdapter:
  """The family of a registered episodic task (by its class; nothing is loaded)."""
  if issubclass(envs.task_class(task_id), OneShotTask):
    return ONE_SHOT
  return COMPLETION
