"""Grid maze (Differentiable plasticity 4.5, Backpropamine 4.2; SPEC.md 5.2).

A `maze_size x maze_size` grid (odd size >= 5). Border cells are walls; an
interior cell `(r, c)` is a wall if `r` and `c` are both even; the centre is
always free. Per episode an invisible reward cell is drawn uniformly among the
free cells other than the centre, and the agent starts at the centre. Moving
into a wall leaves the agent in place (reward `-wall_penalty`); stepping onto
the reward cell gives `+reward` and teleports the agent to a uniformly random
free cell other than the reward cell.

Actions: 0 up (row - 1), 1 down (row + 1), 2 left (col - 1), 3 right (col + 1).

Observation at step t (size 17), float32:

    [3x3 wall bits around the agent (9, row-major),
     0.0 (unused), 1.0 (bias), t / max_steps_in_episode, previous reward,
     previous action one-hot (4; zeros at t = 0)]
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

NUM_ACTIONS = 4
# Row/column displacement of each action: up, down, left, right.
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int32)
OBS_SIZE = 9 + 4 + NUM_ACTIONS


@struct.dataclass
class EnvState(environment.EnvState):
  """Grid-maze episode state (unbatched; `vmap` adds a leading B axis)."""

  time: jax.Array  # [] int32, steps taken in the episode.
  pos: jax.Array  # [2] int32, agent (row, col).
  reward_pos: jax.Array  # [2] int32, reward cell (row, col).
  prev_action: jax.Array  # [] int32, -1 before the first action.
  prev_reward: jax.Array  # [] float32.


@struct.dataclass
class EnvParams(environment.EnvParams):
  """Numeric settings; traced, so they can be `vmap`ped in a sweep."""

  max_steps_in_episode: int = 200  # Episode length.
  reward: float = 10.0  # Given on reaching the reward cell.
  wall_penalty: float = 0.0  # Subtracted when a move hits a wall (`wp`).

  @property
  def episode_length(self) -> int:
    return self.max_steps_in_episode


def maze_walls(maze_size: int) -> np.ndarray:
  """Wall map `[maze_size, maze_size]` bool of the SPEC 5.2 layout."""
  index = np.arange(maze_size)
  even = index % 2 == 0
  walls = even[:, None] & even[None, :]
  walls[[0, -1], :] = True
  walls[:, [0, -1]] = True
  walls[maze_size // 2, maze_size // 2] = False
  return walls


class GridMaze(environment.Environment[EnvState, EnvParams]):
  """Grid maze; 4 actions, observation `[17]` float32.

  Args:
    maze_size: odd side length >= 5 (9 in the papers, 13 in the reference
      README).
  """

  def __init__(self, maze_size: int = 9):
    super().__init__()
    if (
      isinstance(maze_size, bool)
      or not isinstance(maze_size, (int, np.integer))
      or maze_size < 5
      or maze_size % 2 == 0
    ):
      raise ValueError(
        f"maze_size must be an odd integer >= 5, got {maze_size!r}; "
        "use e.g. maze_size=9 (papers) or 13 (reference README)."
      )
    self.maze_size = int(maze_size)
    self.centre = np.array([maze_size // 2, maze_size // 2], dtype=np.int32)
    self.walls = maze_walls(self.maze_size)  # [S, S] bool.
    self.free_cells = np.argwhere(~self.walls).astype(np.int32)  # [F, 2].
    is_centre = np.all(self.free_cells == self.centre, axis=1)
    self.reward_cells = self.free_cells[~is_centre]  # [F - 1, 2].

  @property
  def default_params(self) -> EnvParams:
    return EnvParams()

  def validate_params(self, params: EnvParams) -> EnvParams:
    """Raises ValueError on invalid concrete params; returns them unchanged."""
    return validate_params(params)

  def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
    """Draws the reward cell; the agent starts at the centre. Obs `[17]`."""
    index = _random_index(key, len(self.reward_cells))
    state = EnvState(
      time=jnp.int32(0),
      pos=jnp.asarray(self.centre),
      reward_pos=jnp.asarray(self.reward_cells)[index],
      prev_action=jnp.int32(-1),
      prev_reward=jnp.float32(0.0),
    )
    return self.get_obs(state, params), state

  def step_env(
    self,
    key: jax.Array,
    state: EnvState,
    action: int | jax.Array,
    params: EnvParams,
  ) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict[str, Any]]:
    """Moves the agent one cell (or not, into a wall); teleports on reward.

    Returns obs `[17]`, state, reward `[]` float32, terminated (always
    False) and info with `hit_wall` and `reached_reward` for this step.
    """
    action = jnp.asarray(action, jnp.int32)
    target = state.pos + jnp.asarray(MOVES)[action]
    hit_wall = jnp.asarray(self.walls)[target[0], target[1]]
    moved = jnp.where(hit_wall, state.pos, target)
    reached = jnp.all(moved == state.reward_pos)
    pos = jnp.where(reached, self._sample_teleport(key, state.reward_pos), moved)
    reward = jnp.where(reached, params.reward, 0.0) - jnp.where(hit_wall, params.wall_penalty, 0.0)
    reward = jnp.asarray(reward, jnp.float32)
    next_state = state.replace(time=state.time + 1, pos=pos, prev_action=action, prev_reward=reward)
    info = {"hit_wall": hit_wall, "reached_reward": reached}
    obs, next_state = jax.tree.map(
      jax.lax.stop_gradient, (self.get_obs(next_state, params), next_state)
    )
    return obs, next_state, reward, jnp.array(False), info

  def get_obs(self, state: EnvState, params: EnvParams | None = None, key=None) -> jax.Array:
    """Observation `[17]` float32 at the agent's current cell."""
    if params is None:
      params = self.default_params
    walls = jnp.asarray(self.walls, jnp.float32)
    neighbourhood = jax.lax.dynamic_slice(walls, state.pos - 1, (3, 3)).reshape(9)
    time_frac = state.time / params.max_steps_in_episode
    scalars = jnp.stack([0.0, 1.0, time_frac, state.prev_reward])
    prev_action = jax.nn.one_hot(state.prev_action, NUM_ACTIONS)
    return jnp.concatenate([neighbourhood, scalars, prev_action]).astype(jnp.float32)

  def _sample_teleport(self, key: jax.Array, reward_pos: jax.Array) -> jax.Array:
    """Uniform free cell `[2]` int32 other than `reward_pos`."""
    free_cells = jnp.asarray(self.free_cells)
    reward_index = jnp.argmax(jnp.all(free_cells == reward_pos, axis=1))
    index = _random_index(key, len(self.free_cells) - 1)
    return free_cells[index + (index >= reward_index)]

  def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
    return jnp.array(False)

  @property
  def name(self) -> str:
    return "GridMaze-v0"

  @property
  def num_actions(self) -> int:
    return NUM_ACTIONS

  @property
  def obs_size(self) -> int:
    return OBS_SIZE

  def action_space(self, params: EnvParams | None = None) -> spaces.Discrete:
    return spaces.Discrete(NUM_ACTIONS)

  def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
    if params is None:
      params = self.default_params
    scalars_low = jnp.stack([0.0, 1.0, 0.0, -params.wall_penalty])
    scalars_high = jnp.stack([0.0, 1.0, 1.0, params.reward])
    low = jnp.concatenate([jnp.zeros(9), scalars_low, jnp.zeros(NUM_ACTIONS)])
    high = jnp.concatenate([jnp.ones(9), scalars_high, jnp.ones(NUM_ACTIONS)])
    return spaces.Box(low.astype(jnp.float32), high.astype(jnp.float32), (OBS_SIZE,), jnp.float32)


def _random_index(key: jax.Array, n: int) -> jax.Array:
  """Uniform int32 index in 0..n-1 (bias < n * 2**-32) from one uint32 word.

  Draws 8 words and keeps one: under `vmap`, XLA on CPU compiles that PRNG
  call several times faster than `jax.random.randint`.
  """
  word = jax.random.bits(key, (8,), jnp.uint32)[0]
  return (word % jnp.uint32(n)).astype(jnp.int32)


def validate_params(params: EnvParams) -> EnvParams:
  """Raises ValueError on invalid concrete `EnvParams`; returns them unchanged.

  Traced params (inside `jit`/`vmap`) cannot be checked; call this on the
  concrete params before tracing (`envs.make` does).
  """
  length = np.asarray(params.max_steps_in_episode)
  if not np.issubdtype(length.dtype, np.integer) or np.any(length < 1):
    raise ValueError(
      f"max_steps_in_episode must be a positive integer, got "
      f"{params.max_steps_in_episode!r}; use e.g. max_steps_in_episode=200."
    )
  for field in ("reward", "wall_penalty"):
    value = np.asarray(getattr(params, field))
    if not np.all(np.isfinite(value)) or np.any(value < 0):
      raise ValueError(
        f"{field} must be finite and >= 0, got {value!r}; rewards and "
        "penalties are magnitudes (the sign is applied by the task)."
      )
  return params
