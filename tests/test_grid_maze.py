"""Tests of envs.grid_maze against SPEC 5.2 and its NumPy transcription."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.grid_maze import EnvParams, GridMaze, maze_walls
from tests.env_rollouts import eager_rollout, rollout
from tests.numpy_envs import NumpyGridMaze

# One instance per size, so each jitted rollout compiles once.
_ENVS = {size: GridMaze(size) for size in (5, 9, 13)}
_EPISODE_LENGTH = 100
_N_EPISODES = 2


def _run(size: int, seed: int, key=None, **param_kwargs):
  """Two episodes of random actions; returns env, params, actions `[T]` and
  the rollout outputs as NumPy."""
  env = _ENVS[size]
  params = EnvParams(max_steps_in_episode=_EPISODE_LENGTH, **param_kwargs)
  rng = np.random.default_rng(seed)
  actions = jnp.asarray(rng.integers(0, 4, _N_EPISODES * _EPISODE_LENGTH), jnp.int32)
  key = jax.random.key(seed) if key is None else key
  out = rollout(env, params, key, actions)
  return env, params, np.asarray(actions), jax.tree.map(np.asarray, out)


def _numpy_episode(env, params, states, rewards, start: int) -> NumpyGridMaze:
  """Builds the NumPy maze from the draws stored in the JAX states."""
  end = start + params.max_steps_in_episode
  # After a rewarded step t, state t + 1 holds the teleport destination; the
  # destination after the episode's last step is never observed.
  teleports = [states.pos[t + 1] for t in range(start, end - 1) if rewards[t] > 0]
  teleports.append(env.centre)
  return NumpyGridMaze(
    env.maze_size,
    states.reward_pos[start],
    teleports,
    params.max_steps_in_episode,
    reward=params.reward,
    wall_penalty=params.wall_penalty,
  )


@pytest.mark.parametrize(
  "size, param_kwargs", [(5, {}), (9, {"wall_penalty": 0.5}), (13, {"reward": 3.0})]
)
def test_matches_numpy_transcription(size, param_kwargs):
  env, params, actions, (obs, states, rewards, infos) = _run(size, 4, **param_kwargs)
  n_steps = params.max_steps_in_episode
  for start in (0, n_steps):  # The second episode follows the auto-reset.
    reference = _numpy_episode(env, params, states, rewards, start)
    for t in range(start, start + n_steps):
      np.testing.assert_allclose(obs[t], reference.observation(), rtol=1e-6, atol=0)
      assert rewards[t] == pytest.approx(reference.step(int(actions[t])))
  truncated = np.nonzero(infos["truncated"])[0]
  np.testing.assert_array_equal(truncated, [n_steps - 1, 2 * n_steps - 1])
  assert not infos["terminated"].any()
  if size == 5:
    assert (rewards > 0).sum() >= 3  # Teleports are exercised.


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.sampled_from(sorted(_ENVS)))
def test_maze_invariants(seed, size):
  env, params, actions, (obs, states, rewards, infos) = _run(size, seed)
  walls = maze_walls(size)
  centre = (size // 2, size // 2)
  assert obs.shape == (_N_EPISODES * _EPISODE_LENGTH, 17)
  rows, cols = states.pos.T
  assert not walls[rows, cols].any()  # Never on a wall.
  reward_rows, reward_cols = states.reward_pos.T
  assert not walls[reward_rows, reward_cols].any()  # Reward cell free ...
  assert not np.all(states.reward_pos == centre, axis=1).any()  # ... not the centre.
  assert not np.all(states.pos == states.reward_pos, axis=1).any()  # Teleported away.
  # Each step moves at most one cell, except teleports after a reward and resets.
  jump = np.abs(np.diff(states.pos, axis=0)).sum(axis=1)
  teleport_or_reset = (rewards[:-1] > 0) | infos["truncated"][:-1]
  assert np.all(jump[~teleport_or_reset] <= 1)
  assert set(np.unique(rewards)) <= {0.0, params.reward}
  np.testing.assert_array_equal(rewards > 0, infos["reached_reward"])
  moved = ~teleport_or_reset
  np.testing.assert_array_equal(jump[moved] == 0, infos["hit_wall"][:-1][moved])


def test_layout():
  expected_9 = np.array(
    [
      "#########",
      "#.......#",
      "#.#.#.#.#",
      "#.......#",
      "#.#...#.#",
      "#.......#",
      "#.#.#.#.#",
      "#.......#",
      "#########",
    ]
  )
  np.testing.assert_array_equal(maze_walls(9), np.array([list(r) for r in expected_9]) == "#")
  assert not maze_walls(5)[2, 2] and not maze_walls(11)[5, 5]
  assert len(GridMaze(9).free_cells) == 49 - 9 + 1


def test_reward_cell_and_teleport_are_uniform():
  env = _ENVS[5]  # 9 free cells: 8 reward cells; 8 teleport cells.
  keys = jax.random.split(jax.random.key(0), 8000)
  _, states = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, env.default_params)
  cells, counts = np.unique(np.asarray(states.reward_pos), axis=0, return_counts=True)
  np.testing.assert_array_equal(cells, env.reward_cells)
  assert np.all(np.abs(counts - 1000) < 150), counts
  reward_pos = jnp.array([1, 3])
  teleports = jax.jit(jax.vmap(env._sample_teleport, in_axes=(0, None)))(keys, reward_pos)
  cells, counts = np.unique(np.asarray(teleports), axis=0, return_counts=True)
  expected = env.free_cells[~np.all(env.free_cells == [1, 3], axis=1)]
  np.testing.assert_array_equal(cells, expected)
  assert np.all(np.abs(counts - 1000) < 150), counts


def test_vmap_equals_single_episodes():
  env = _ENVS[9]
  params = EnvParams(max_steps_in_episode=_EPISODE_LENGTH)
  keys = jax.random.split(jax.random.key(5), 1024)
  actions = jax.random.randint(jax.random.key(6), (1024, _N_EPISODES * _EPISODE_LENGTH), 0, 4)
  batched = jax.jit(jax.vmap(lambda k, a: rollout(env, params, k, a)))(keys, actions)
  for i in (0, 517, 1023):
    single = rollout(env, params, keys[i], actions[i])
    jax.tree.map(lambda b, s: np.testing.assert_allclose(b[i], s, rtol=1e-6), batched, single)


def test_jit_and_no_jit_agree_with_legacy_key():
  key = jax.random.PRNGKey(11)  # Raw uint32 key; the other tests use typed keys.
  env, params, actions, jitted = _run(9, 11, key=key)
  n = 8
  eager = eager_rollout(env, params, key, actions[:n])
  jax.tree.map(lambda j, e: np.testing.assert_allclose(j[:n], e, rtol=1e-6), jitted, eager)


def test_spaces():
  env = _ENVS[9]
  params = env.default_params
  assert env.num_actions == 4 and env.action_space(params).n == 4
  space = env.observation_space(params.replace(max_steps_in_episode=_EPISODE_LENGTH))
  assert space.shape == (17,)
  _, _, _, (obs, *_) = _run(9, 2)
  assert all(bool(space.contains(o)) for o in obs)
  assert env.name == "GridMaze-v0"
  assert params.episode_length == params.max_steps_in_episode == 200


@pytest.mark.parametrize("size", [8, 3, 4, -1, 9.0, True])
def test_invalid_maze_size(size):
  with pytest.raises(ValueError, match=rf"maze_size must be an odd integer >= 5, got {size!r}"):
    GridMaze(size)
