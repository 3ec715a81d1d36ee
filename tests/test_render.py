"""Smoke tests of envs.render: files are written and are valid images."""

import jax
import numpy as np
from PIL import Image

from envs import render
from tests import test_cue_reward, test_grid_maze  # Shared (already compiled) rollouts.

_N_FRAMES = 12


def test_maze_gif(tmp_path):
  env, _, _, (_, states, _, _) = test_grid_maze._run(5, 0)
  states = jax.tree.map(lambda x: x[:_N_FRAMES], states)
  path = render.save_maze_gif(env, states, tmp_path / "maze.gif", fps=10)
  with Image.open(path) as image:
    assert image.format == "GIF" and image.n_frames == _N_FRAMES
  state_list = [jax.tree.map(lambda x: x[t], states) for t in range(_N_FRAMES)]
  path = render.save_maze_gif(env, state_list, tmp_path / "list.gif")
  with Image.open(path) as image:
    assert image.n_frames == _N_FRAMES
  path = render.save_maze_gif(
    env, states.pos, tmp_path / "path.gif", reward_pos=states.reward_pos[0]
  )
  with Image.open(path) as image:
    assert image.n_frames == _N_FRAMES


def test_draw_maze_and_cue_reward_png(tmp_path):
  maze, _, _, (_, maze_states, _, _) = test_grid_maze._run(9, 0)
  fig = render._new_figure()
  render.draw_maze(fig.add_subplot(), maze, jax.tree.map(lambda x: x[0], maze_states))
  fig.savefig(tmp_path / "maze.png")

  env, params, actions, (_, states, rewards, _) = test_cue_reward._run("default", 0)
  episode = slice(0, params.max_steps_in_episode)
  states = jax.tree.map(lambda x: x[episode], states)
  render.plot_cue_reward_episode(
    env, states, actions[episode], rewards[episode], tmp_path / "cue.png"
  )
  for name in ("maze.png", "cue.png"):
    assert (tmp_path / name).stat().st_size > 0
    with Image.open(tmp_path / name) as image:
      image.verify()
      assert image.format == "PNG"
  assert np.any(rewards[episode] != 0)
