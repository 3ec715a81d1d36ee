"""Rendering of grid-maze and cue-reward episodes (matplotlib, Agg, no pyplot).

matplotlib is imported inside the functions so the environment modules never
depend on it. Figures are built with `matplotlib.figure.Figure` on an Agg
canvas, so nothing touches pyplot's global state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from envs.cue_reward import EMPTY, GO, CueReward
from envs.grid_maze import GridMaze

if TYPE_CHECKING:
  from matplotlib.axes import Axes
  from matplotlib.figure import Figure


def _new_figure(**kwargs: Any) -> Figure:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(**kwargs)
  FigureCanvasAgg(fig)
  return fig


def draw_maze(
  ax: Axes,
  env: GridMaze,
  state: Any = None,
  *,
  pos: Any = None,
  reward_pos: Any = None,
  path: Any = None,
) -> Axes:
  """Draws walls, the reward cell (star), the agent (circle) and its path.

  Args:
    ax: matplotlib axes to draw on (cleared first).
    env: the `GridMaze`.
    state: an unbatched grid-maze `EnvState`; or give `pos` `[2]` and
      `reward_pos` `[2]` instead.
    path: optional `[T, 2]` (row, col) positions drawn as a line.
  """
  if state is not None:
    pos, reward_pos = state.pos, state.reward_pos
  ax.clear()
  ax.imshow(env.walls, cmap="Greys", vmin=0, vmax=1.5)
  if path is not None and len(path) > 1:
    path = np.asarray(path)
    ax.plot(path[:, 1], path[:, 0], "-", color="tab:blue", alpha=0.4, lw=2)
  if reward_pos is not None:
    row, col = np.asarray(reward_pos)
    ax.plot(col, row, marker="*", color="gold", markeredgecolor="k", ms=18)
  if pos is not None:
    row, col = np.asarray(pos)
    ax.plot(col, row, marker="o", color="tab:red", ms=12)
  ax.set_xticks([])
  ax.set_yticks([])
  return ax


def _maze_trajectory(states_or_positions: Any, reward_pos: Any) -> tuple[np.ndarray, np.ndarray]:
  """Returns positions `[T, 2]` and reward cells `[T, 2]` as NumPy arrays."""
  items = states_or_positions
  if isinstance(items, Sequence) and len(items) > 0 and hasattr(items[0], "pos"):
    states_or_positions = jax.tree.map(lambda *x: np.stack(x), *items)  # List of states.
  if hasattr(states_or_positions, "pos"):
    positions = np.asarray(states_or_positions.pos)
    reward_cells = np.asarray(states_or_positions.reward_pos)
  else:
    positions = np.asarray(states_or_positions)
    if reward_pos is None:
      raise ValueError("reward_pos is required when positions are given, got None.")
    reward_cells = np.broadcast_to(np.asarray(reward_pos), positions.shape)
  if positions.ndim != 2 or positions.shape[1] != 2:
    raise ValueError(f"expected positions of shape [T, 2], got {positions.shape}.")
  return positions, reward_cells


def save_maze_gif(
  env: GridMaze,
  states_or_positions: Any,
  path: str | os.PathLike,
  *,
  reward_pos: Any = None,
  fps: int = 5,
) -> str:
  """Writes an animated GIF of a grid-maze episode; returns `path`.

  Args:
    env: the `GridMaze`.
    states_or_positions: grid-maze `EnvState` stacked over time (leaves
      `[T, ...]`, e.g. from `lax.scan`), a list of unbatched states, or
      agent positions `[T, 2]` (then `reward_pos` `[2]` is required).
    path: output file, e.g. `episode.gif`.
    fps: frames per second.
  """
  from matplotlib.animation import FuncAnimation, PillowWriter

  positions, reward_cells = _maze_trajectory(states_or_positions, reward_pos)
  fig = _new_figure(figsize=(3, 3), dpi=80)
  ax = fig.add_subplot()

  def draw_frame(t: int) -> list:
    # The trail restarts after a teleport (a jump of more than one cell).
    jumps = np.nonzero(np.abs(np.diff(positions[: t + 1], axis=0)).sum(axis=1) > 1)[0]
    start = jumps[-1] + 1 if len(jumps) else 0
    draw_maze(ax, env, pos=positions[t], reward_pos=reward_cells[t], path=positions[start : t + 1])
    ax.set_title(f"t = {t}", fontsize=9)
    return []

  animation = FuncAnimation(fig, draw_frame, frames=len(positions), blit=False)
  animation.save(os.fspath(path), writer=PillowWriter(fps=fps))
  return os.fspath(path)


def plot_cue_reward_episode(
  env: CueReward,
  states: Any,
  actions: Any,
  rewards: Any,
  path: str | os.PathLike | None = None,
) -> Figure:
  """Plots a cue-reward episode: cues per step, Go steps, responses, rewards.

  Args:
    env: the `CueReward`.
    states: cue-reward `EnvState` stacked over time (leaves `[T, ...]`): the
      state whose observation the agent saw at each step.
    actions: `[T]` int actions taken.
    rewards: `[T]` float rewards received.
    path: optional output file (PNG).

  Returns:
    The matplotlib `Figure`.
  """
  trial_step = np.asarray(states.trial_step)
  schedule = np.asarray(states.schedule)
  steps = np.arange(len(trial_step))
  stimulus = schedule[steps, trial_step]  # [T] cue index / EMPTY / GO.
  target = np.asarray(states.target)
  actions = np.asarray(actions)
  rewards = np.asarray(rewards)

  fig = _new_figure(figsize=(max(7.0, len(steps) / 8 + 1.5), 4), dpi=100)
  ax_cues, ax_resp = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
  shown = stimulus >= 0
  is_target = shown & (stimulus == target)
  other = shown & ~is_target
  ax_cues.scatter(steps[other], stimulus[other], marker="s", c="tab:blue", label="cue")
  ax_cues.scatter(
    steps[is_target], stimulus[is_target], marker="s", c="tab:orange", label="target cue"
  )
  go = stimulus == GO
  ax_cues.scatter(steps[go], np.full(go.sum(), env.n_cues), marker="v", c="k", label="Go")
  trial_starts = steps[(trial_step == 0) & (steps > 0)]
  for ax in (ax_cues, ax_resp):
    for start in trial_starts:
      ax.axvline(start - 0.5, color="0.85", lw=0.8)
  ax_cues.set_yticks(range(env.n_cues + 1), [f"cue {k}" for k in range(env.n_cues)] + ["Go"])
  ax_cues.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
  ax_cues.set_title(f"{env.name}: stimuli (empty steps: {int((stimulus == EMPTY).sum())})")

  ax_resp.scatter(steps[go], actions[go], marker="o", c="k", s=12, label="response on Go")
  colours = np.where(rewards > 0, "tab:green", np.where(rewards < 0, "tab:red", "0.6"))
  ax_resp.bar(steps, rewards, color=colours, width=0.8, alpha=0.6, label="reward")
  ax_resp.set_xlabel("step")
  ax_resp.set_ylabel("response / reward")
  ax_resp.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
  fig.tight_layout()
  if path is not None:
    fig.savefig(os.fspath(path))
  return fig
