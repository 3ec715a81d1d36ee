"""Plain NumPy transcriptions of the task rules in shared/SPEC.md 5.1 and 5.2.

Written from the spec, not from the JAX code, for side-by-side tests. All random
draws are given to the constructors (taken from a JAX run), so both versions
can be stepped with the same actions and compared exactly.
"""

from collections.abc import Sequence

import numpy as np


class NumpyCueReward:
  """SPEC 5.1 cue-reward task.

  Args:
    cues: `[n_cues, cue_bits]` the episode's cues.
    target: index of the target cue.
    trial_middles: per trial, the middle segment (between the leading empty
      step and the Go step) as a list of cue indices and `None` (empty step).
    episode_length, reward, action_penalty: as in SPEC (`wp` = penalty).
  """

  def __init__(
    self,
    cues: np.ndarray,
    target: int,
    trial_middles: Sequence[Sequence[int | None]],
    episode_length: int,
    reward: float = 1.0,
    action_penalty: float = 0.0,
  ):
    self.cues = np.asarray(cues, dtype=np.float64)
    self.n_cues, self.cue_bits = self.cues.shape
    self.target = int(target)
    self.episode_length = episode_length
    self.reward = reward
    self.action_penalty = action_penalty
    # Flatten the trials into one stream of (stimulus, trial cues) per step.
    self.stream: list[tuple[object, frozenset]] = []
    for middle in trial_middles:
      shown = [c for c in middle if c is not None]
      length = len(middle) + 3
      half = self.n_cues // 2
      assert half + 3 <= length <= half + 3 + self.n_cues - 1, length
      assert len(shown) == half and len(set(shown)) == half, middle
      trial = ["empty", *["empty" if c is None else c for c in middle], "go", "empty"]
      self.stream += [(s, frozenset(shown)) for s in trial]
    self.t = 0
    self.prev_reward = 0.0
    self.prev_action = None

  def observation(self) -> np.ndarray:
    stimulus, _ = self.stream[self.t]
    cue = self.cues[stimulus] if isinstance(stimulus, int) else np.zeros(self.cue_bits)
    go = 1.0 if stimulus == "go" else 0.0
    prev_action = np.zeros(2)
    if self.prev_action is not None:
      prev_action[self.prev_action] = 1.0
    scalars = [go, 1.0, self.t / self.episode_length, self.prev_reward, 0.0]
    return np.concatenate([cue, scalars, prev_action])

  def step(self, action: int) -> float:
    stimulus, shown = self.stream[self.t]
    if stimulus == "go":
      target_in_trial = self.target in shown
      right = (target_in_trial and action == 1) or (not target_in_trial and action == 0)
      reward = self.reward if right else -self.reward
    else:
      reward = -self.action_penalty if action == 1 else 0.0
    self.t += 1
    self.prev_reward = reward
    self.prev_action = action
    return reward


class NumpyGridMaze:
  """SPEC 5.2 grid maze.

  Args:
    maze_size: odd side length.
    reward_cell: (row, col) of this episode's reward.
    teleports: the (row, col) destinations used, in order, each time the
      reward is reached.
    episode_length, reward, wall_penalty: as in SPEC (`wp` = penalty).
  """

  MOVES = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}  # up, down, left, right

  def __init__(
    self,
    maze_size: int,
    reward_cell: tuple[int, int],
    teleports: Sequence[tuple[int, int]],
    episode_length: int,
    reward: float = 10.0,
    wall_penalty: float = 0.0,
  ):
    n = maze_size
    self.walls = np.zeros((n, n), dtype=bool)
    for r in range(n):
      for c in range(n):
        border = r in (0, n - 1) or c in (0, n - 1)
        self.walls[r, c] = border or (r % 2 == 0 and c % 2 == 0)
    self.centre = (n // 2, n // 2)
    self.walls[self.centre] = False
    self.reward_cell = tuple(int(x) for x in reward_cell)
    assert not self.walls[self.reward_cell] and self.reward_cell != self.centre
    self.teleports = [tuple(int(x) for x in p) for p in teleports]
    self.episode_length = episode_length
    self.reward = reward
    self.wall_penalty = wall_penalty
    self.pos = self.centre
    self.t = 0
    self.prev_reward = 0.0
    self.prev_action = None

  def observation(self) -> np.ndarray:
    r, c = self.pos
    neighbourhood = [float(self.walls[r + dr, c + dc]) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    prev_action = np.zeros(4)
    if self.prev_action is not None:
      prev_action[self.prev_action] = 1.0
    scalars = [0.0, 1.0, self.t / self.episode_length, self.prev_reward]
    return np.concatenate([neighbourhood, scalars, prev_action])

  def step(self, action: int) -> float:
    dr, dc = self.MOVES[action]
    new = (self.pos[0] + dr, self.pos[1] + dc)
    reward = 0.0
    if self.walls[new]:
      reward -= self.wall_penalty
    else:
      self.pos = new
    if self.pos == self.reward_cell:
      reward += self.reward
      self.pos = self.teleports.pop(0)
      assert not self.walls[self.pos] and self.pos != self.reward_cell
    self.t += 1
    self.prev_reward = reward
    self.prev_action = action
    return reward
