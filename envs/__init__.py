"""Meta-RL environments of the Backpropamine papers as jittable gymnax envs.

    env, env_params = envs.make("GridMaze-v0", maze_size=11)
    obs, state = env.reset(key, env_params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, env_params)

Importing this package also registers the ids with gymnax (`gymnax.make`).
Rendering helpers live in `envs.render` (imports matplotlib lazily).
"""

from envs.cue_reward import CueReward
from envs.cue_reward import EnvParams as CueRewardParams
from envs.cue_reward import EnvState as CueRewardState
from envs.grid_maze import EnvParams as GridMazeParams
from envs.grid_maze import EnvState as GridMazeState
from envs.grid_maze import GridMaze
from envs.registry import make, registered_envs

__all__ = [
  "CueReward",
  "CueRewardParams",
  "CueRewardState",
  "GridMaze",
  "GridMazeParams",
  "GridMazeState",
  "make",
  "registered_envs",
]
