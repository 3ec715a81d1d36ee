"""Meta-RL environments of the Backpropamine papers as jittable gymnax envs.

    env, env_params = envs.make("GridMaze-v0", maze_size=11)
    obs, state = env.reset(key, env_params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, env_params)

The supervised episodic tasks of Differentiable plasticity (SPEC §5.4-5.6):

    task, params = envs.make("PatternCompletion-v0")
    episode = task.sample_episode(key, params)  # inputs [T, N], target [P]
    task, params = envs.make("Omniglot-v0", data_dir="/path/to/omniglot")  # or SyntheticGlyphs-v0
    episode = task.sample_episode(key, params)  # images [6, 31, 31], labels [6, 5], target [5]

Importing this package also registers the ids with gymnax (`gymnax.make`).
Rendering helpers live in `envs.render` (imports matplotlib lazily).
"""

from envs.cue_reward import CueReward
from envs.cue_reward import EnvParams as CueRewardParams
from envs.cue_reward import EnvState as CueRewardState
from envs.episodes import Episode
from envs.grid_maze import EnvParams as GridMazeParams
from envs.grid_maze import EnvState as GridMazeState
from envs.grid_maze import GridMaze
from envs.image_completion import ImageCompletion
from envs.omniglot import Omniglot, OneShotEpisode, SyntheticGlyphs
from envs.pattern_completion import PatternCompletion
from envs.registry import make, registered_envs, registered_tasks, task_class

__all__ = [
  "CueReward",
  "CueRewardParams",
  "CueRewardState",
  "Episode",
  "GridMaze",
  "GridMazeParams",
  "GridMazeState",
  "ImageCompletion",
  "Omniglot",
  "OneShotEpisode",
  "PatternCompletion",
  "SyntheticGlyphs",
  "make",
  "registered_envs",
  "registered_tasks",
  "task_class",
]
