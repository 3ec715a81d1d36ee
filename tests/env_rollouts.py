"""Rollouts of a gymnax environment shared by the environment tests.

`rollout` (jitted, `lax.scan`) and `eager_rollout` (a Python loop over the
un-jitted `reset`/`step`) return the same arrays for the same key and actions.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnums=0)
def rollout(env, params, key: jax.Array, actions: jax.Array):
  """Runs `actions` `[T]` from a reset; per step t returns the state and obs
  the agent saw (`[T, ...]`), the reward `[T]` and the info dict."""
  key_reset, key_steps = jax.random.split(key)
  obs, state = env.reset(key_reset, params)

  def step(carry, inputs):
    obs, state = carry
    t, action = inputs
    out = env.step(jax.random.fold_in(key_steps, t), state, action, params)
    next_obs, next_state, reward, _, _, info = out
    return (next_obs, next_state), (obs, state, reward, info)

  inputs = (jnp.arange(actions.shape[0]), actions)
  _, (obs, states, rewards, infos) = jax.lax.scan(step, (obs, state), inputs)
  return obs, states, rewards, infos


def eager_rollout(env, params, key: jax.Array, actions: np.ndarray):
  """`rollout` without jit: a Python loop over gymnax's un-jitted reset/step."""
  reset, step = type(env).reset.__wrapped__, type(env).step.__wrapped__
  key_reset, key_steps = jax.random.split(key)
  obs, state = reset(env, key_reset, params)
  outputs = []
  for t, action in enumerate(actions):
    out = step(env, jax.random.fold_in(key_steps, t), state, action, params)
    outputs.append((obs, state, out[2], out[5]))
    obs, state = out[0], out[1]
  return jax.tree.map(lambda *x: jnp.stack(x), *outputs)
