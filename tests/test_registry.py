"""Tests of envs.make / envs.registered_envs and the gymnax registration."""

import gymnax
import pytest

import envs
from envs.cue_reward import CueReward
from envs.grid_maze import GridMaze


def test_registered_ids():
  assert envs.registered_envs == ("CueReward-v0", "CueRewardFixedCues-v0", "GridMaze-v0")


@pytest.mark.parametrize(
  "env_id, env_class, obs_size, episode_length",
  [
    ("CueReward-v0", CueReward, 27, 120),
    ("CueRewardFixedCues-v0", CueReward, 11, 120),
    ("GridMaze-v0", GridMaze, 17, 200),
  ],
)
def test_make_defaults(env_id, env_class, obs_size, episode_length):
  env, params = envs.make(env_id)
  assert type(env) is env_class and env.name == env_id
  assert env.obs_size == obs_size
  assert env.observation_space(params).shape == (obs_size,)
  assert params.max_steps_in_episode == episode_length


def test_make_splits_kwargs():
  env, params = envs.make("GridMaze-v0", maze_size=11, max_steps_in_episode=100, reward=5.0)
  assert env.maze_size == 11
  assert (params.max_steps_in_episode, params.reward) == (100, 5.0)
  env, params = envs.make("CueReward-v0", n_cues=6, cue_bits=8, action_penalty=0.1)
  assert (env.n_cues, env.cue_bits, params.action_penalty) == (6, 8, 0.1)
  env, _ = envs.make("CueRewardFixedCues-v0")
  assert (env.n_cues, env.cue_bits, env.fixed_cues) == (4, 4, True)


def test_gymnax_make():
  env, params = gymnax.make("GridMaze-v0", maze_size=7)
  assert isinstance(env, GridMaze) and env.maze_size == 7
  assert params == env.default_params
  env, _ = gymnax.make("CueRewardFixedCues-v0")
  assert isinstance(env, CueReward) and env.fixed_cues
  env, _ = gymnax.make("CueReward-v0")
  assert isinstance(env, CueReward) and not env.fixed_cues
  assert set(envs.registered_envs) <= set(gymnax.registered_envs)


def test_unknown_id_lists_known_ids():
  known = r"CueReward-v0, CueRewardFixedCues-v0, GridMaze-v0"
  with pytest.raises(ValueError, match=rf"'Maze-v9'.*{known}"):
    envs.make("Maze-v9")


def test_unknown_kwarg():
  with pytest.raises(ValueError, match=r"Unknown keyword\(s\) \['size'\].*maze_size"):
    envs.make("GridMaze-v0", size=9)
  with pytest.raises(ValueError, match=r"\['n_cues'\].*fixed by this id"):
    envs.make("CueRewardFixedCues-v0", n_cues=6)


@pytest.mark.parametrize(
  "env_id, kwargs, match",
  [
    ("GridMaze-v0", {"max_steps_in_episode": 0}, r"max_steps_in_episode must be .* got 0"),
    ("CueReward-v0", {"max_steps_in_episode": -5}, r"must be a positive integer, got -5"),
    ("CueReward-v0", {"max_steps_in_episode": 2.5}, r"positive integer, got 2.5"),
    ("GridMaze-v0", {"wall_penalty": -1.0}, r"wall_penalty must be finite and >= 0, got"),
    ("CueReward-v0", {"reward": float("nan")}, r"reward must be finite"),
    ("GridMaze-v0", {"maze_size": 10}, r"maze_size must be an odd integer >= 5, got 10; use"),
    ("CueReward-v0", {"cue_bits": 1}, r"cue_bits=1 is too small for n_cues=4"),
    ("CueReward-v0", {"n_cues": 1}, r"n_cues must be an integer >= 2, got 1"),
  ],
)
def test_invalid_values(env_id, kwargs, match):
  with pytest.raises(ValueError, match=match):
    envs.make(env_id, **kwargs)
