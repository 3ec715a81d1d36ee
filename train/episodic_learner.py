"""The episodic trainer's pure functions: one optimiser step on fresh episodes, under `jit`.

    spec = make_spec(config)
    state = init(spec, key)
    state, metrics = run(spec, task_params, state, num_iterations)  # lax.scan
    scores = evaluate(spec, held_out_params, state.params, key, num_episodes)

Each step samples `batch_size` episodes (`task.sample_episode`, vmapped), runs
the network over each (BPTT through the whole episode), and takes one Adam
step on the mean over the batch of the task family's loss
(`train.episodic_adapters`): the final-step squared error `sum_j (y_T[j] -
target[j])^2` of the completion tasks (SPEC §5.4-5.5), the binary
cross-entropy of the final step of one-shot classification (SPEC §5.6).
The learning rate is constant, or multiplied by `lr_decay` every
`lr_decay_every` episodes. `make_train(config) -> train(key)` is the whole run
as one function (seeds: `jax.vmap(train)`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from train.episodic_adapters import TaskAdapter
from train.episodic_config import EpisodicConfig

Array = jax.Array
PyTree = Any
EVAL_KEY = 20180710  # Held-out episodes: the same ones for every run and evaluation.


@flax.struct.dataclass
class EpisodicTrainState:
  """One model's training state (vmap adds a leading seed axis S)."""

  params: PyTree  # The network's variables.
  opt_state: optax.OptState
  iteration: Array  # [] int32, optimiser steps taken.
  key: Array  # [2] uint32 raw PRNG key data (`jax.random.key_data`) for the next episodes.


@dataclasses.dataclass(frozen=True)
class EpisodicSpec:
  """What fixes the program: the config, the task (shapes), the network, the optimiser.

  `adapter` is the task family's network, loss and scores (`train.episodic_adapters`).
  """

  config: EpisodicConfig
  task: Any
  network: nn.Module
  optimizer: optax.GradientTransformation
  adapter: TaskAdapter


def make_network(config: EpisodicConfig, task: Any) -> nn.Module:
  """The config's network for `task`: the family's (`CompletionNet`, the LSTM, `OmniglotNet`)."""
  return config.adapter.make_network(config, task)


def learning_rate(config: EpisodicConfig) -> float | optax.Schedule:
  """The constant rate, or `lr * lr_decay ** floor(episodes / lr_decay_every)` (optax schedule).

  The schedule's count is the optimiser step; episodes seen before it = count * batch_size.
  """
  if not config.lr_decay_every:
    return config.learning_rate
  rate, decay = config.learning_rate, config.lr_decay
  every, batch = config.lr_decay_every, config.batch_size

  def schedule(count: Array) -> Array:
    return rate * decay ** jnp.floor(count * batch / every)

  return schedule


def make_spec(config: EpisodicConfig) -> EpisodicSpec:
  task, _, _ = config.make_task()
  return EpisodicSpec(
    config=config,
    task=task,
    network=make_network(config, task),
    optimizer=optax.adam(learning_rate(config)),
    adapter=config.adapter,
  )


def param_count(spec: EpisodicSpec) -> int:
  shapes = jax.eval_shape(lambda key: init(spec, key).params, jax.random.key(0))
  return sum(x.size for x in jax.tree.leaves(shapes))


def init(spec: EpisodicSpec, key: Array) -> EpisodicTrainState:
  key_params, key_run = jax.random.split(key)
  params = spec.adapter.init(spec.network, spec.task, key_params)
  return EpisodicTrainState(
    params=params,
    opt_state=spec.optimizer.init(params),
    iteration=jnp.int32(0),
    key=jax.random.key_data(key_run),
  )


def episode_scores(spec: EpisodicSpec, params: PyTree, episode: Any) -> dict[str, Array]:
  """The family's scores of one episode (`spec.adapter.scores`: loss first).

  Completion: loss `sum_j (y_T[j] - target[j])^2` and the fraction of wrong
  signs; one-shot: the BCE of y_T against the target and the accuracy.
  """
  return spec.adapter.episode_scores(spec.network, params, episode)


def sample_episodes(spec: EpisodicSpec, task_params: Any, key: Array, num: int) -> Any:
  """[num] stacked episodes."""
  keys = jax.random.split(key, num)
  return jax.vmap(spec.task.sample_episode, in_axes=(0, None))(keys, task_params)


def _batch_loss(spec: EpisodicSpec, params: PyTree, episodes: Any):
  scores = jax.vmap(lambda e: episode_scores(spec, params, e))(episodes)
  scores = jax.tree.map(jnp.mean, scores)
  return scores["loss"], scores


def train_step(
  spec: EpisodicSpec, task_params: Any, state: EpisodicTrainState
) -> tuple[EpisodicTrainState, dict[str, Array]]:
  """One Adam step on `batch_size` fresh episodes; metrics: the family's scores, finite."""
  key, key_episodes = jax.random.split(jax.random.wrap_key_data(state.key))
  episodes = sample_episodes(spec, task_params, key_episodes, spec.config.batch_size)
  grads, scores = jax.grad(lambda p: _batch_loss(spec, p, episodes), has_aux=True)(state.params)
  updates, opt_state = spec.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(scores["loss"]) & jnp.all(
    jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((grads, params))])
  )
  new_state = EpisodicTrainState(
    params=params, opt_state=opt_state, iteration=state.iteration + 1, key=jax.random.key_data(key)
  )
  return new_state, dict(scores, finite=finite)


def run(
  spec: EpisodicSpec, task_params: Any, state: EpisodicTrainState, num_iterations: int
) -> tuple[EpisodicTrainState, dict[str, Array]]:
  """`num_iterations` train steps under `lax.scan`; metrics have a leading [N] axis."""
  return jax.lax.scan(lambda s, _: train_step(spec, task_params, s), state, None, num_iterations)


def evaluate(
  spec: EpisodicSpec, task_params: Any, params: PyTree, key: Array, num_episodes: int
) -> dict[str, Array]:
  """Mean scores (loss, bit error / accuracy) over `num_episodes` episodes drawn with `key`."""
  episodes = sample_episodes(spec, task_params, key, num_episodes)
  scores = jax.lax.map(
    lambda e: episode_scores(spec, params, e), episodes, batch_size=min(num_episodes, 10)
  )
  return jax.tree.map(jnp.mean, scores)


def eval_key() -> Array:
  return jax.random.key(EVAL_KEY)


def make_train(config: EpisodicConfig) -> Callable[[Array, Any], tuple[EpisodicTrainState, dict]]:
  """`train(key, task_params) -> (final state, per-iteration metrics)`: the whole run."""
  spec = make_spec(config)

  def train(key: Array, task_params: Any):
    return run(spec, task_params, init(spec, key), config.iterations)

  return train
