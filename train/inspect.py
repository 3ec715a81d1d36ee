"""Look inside a trained agent: m(t) and reward over one episode (Backpropamine Fig. 3).

    python -m train.inspect --workdir runs/cue_modplast --out modulation.png

Loads the final checkpoint of the workdir, runs one episode with the agent of
seed index `--seed_index` and plots the modulatory signal m(t) (one line per
modulator) above the reward received at each step. In the cue-reward task the
Go steps are marked; for the maze an `episode.gif` of the agent's path is also
written next to `--out` (via `envs.render.save_maze_gif`).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np

from bpm_jax import xla
from train import a2c_learner, a2c_train, sweep
from train.a2c_config import A2CConfig

# One recorded episode (batch element 0) as NumPy arrays. Keys: `modulation`
# [T, K], `reward` [T], `action` [T], `value` [T], `env_state` (leaves
# [T, ...], the state seen at each step), `is_go` [T] bool (cue-reward only).
Episode = dict


def run_episode(
  workdir: str, seed_index: int = 0, key: Optional[jax.Array] = None, step: Optional[int] = None
) -> tuple[A2CConfig, Any, Episode]:
  """Restores a workdir's checkpoint and records one episode of one agent.

  Args:
    workdir: a `train.a2c` workdir.
    seed_index: which of the run's `num_seeds` agents (of a `train.sweep`
      workdir: agent index `g*S + s`, run with setting g's hyperparameters).
    key: PRNG key of the episode (default `jax.random.key(1234)`).
    step: checkpoint iteration (default: the latest).

  Returns:
    (config, A2CSpec, Episode).
  """
  config, state, _ = a2c_train.restore_state(workdir, step=step)
  if not 0 <= seed_index < config.num_seeds:
    raise ValueError(
      f"seed_index={seed_index} is out of range: the run has {config.num_seeds} seed(s)."
    )
  spec = a2c_learner.make_spec(config)
  params = jax.tree.map(lambda x: x[seed_index], state.params)
  key = jax.random.key(1234) if key is None else key
  rollout = jax.jit(lambda p, k, h: a2c_learner.rollout(spec, p, k, h, 1, record=True))
  hparams = sweep.agent_hparams(config, workdir, seed_index)  # A sweep's own setting.
  rollout = xla.compile(rollout, params, key, hparams, fast=config.fast_compile)
  trajectory = jax.device_get(rollout(params, key, hparams))
  first = lambda x: np.asarray(x)[:, 0]  # [T, B, ...] -> [T, ...]
  episode = Episode(
    modulation=first(trajectory.modulation),
    reward=first(trajectory.reward),
    action=first(trajectory.action),
    value=first(trajectory.value),
    env_state=jax.tree.map(first, trajectory.env_state),
  )
  if isinstance(trajectory.info, dict) and "is_go" in trajectory.info:
    episode["is_go"] = first(trajectory.info["is_go"]).astype(bool)
  return config, spec, episode


def plot_modulation(config: A2CConfig, episode: Episode, out: str) -> str:
  """Two panels: m(t) per modulator, and the reward at each step; returns `out`."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  modulation, reward = episode["modulation"], episode["reward"]
  steps = np.arange(len(reward))
  fig = Figure(figsize=(8, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  ax_m, ax_r = fig.subplots(2, 1, sharex=True)
  for k in range(modulation.shape[1]):
    ax_m.plot(
      steps, modulation[:, k], lw=1.2, label=f"m{k}(t)" if modulation.shape[1] > 1 else "m(t)"
    )
  ax_m.axhline(0.0, color="0.6", lw=0.8)
  if not config.plasticity.is_modulated:
    ax_m.set_title(f"{config.network}: no neuromodulation (m(t) = 0)")
  else:
    ax_m.set_title(f"{config.env}, {config.network}: modulatory signal")
  ax_m.set_ylabel("m(t)")
  ax_m.legend(loc="upper right", fontsize=8)
  colours = np.where(reward > 0, "tab:green", np.where(reward < 0, "tab:red", "0.6"))
  ax_r.bar(steps, reward, color=colours, width=0.8)
  if "is_go" in episode:
    for t in steps[episode["is_go"]]:
      ax_m.axvline(t, color="0.85", lw=0.8, zorder=0)
    ax_r.set_title("reward at each step (grey lines above: Go steps)", fontsize=9)
  ax_r.set_xlabel("step")
  ax_r.set_ylabel("reward")
  ax_r.text(
    0.01, 0.95, f"episode total: {reward.sum():.1f}", transform=ax_r.transAxes, va="top", fontsize=8
  )
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out)
  return out


def inspect_workdir(
  workdir: str, out: str, seed_index: int = 0, gif: Optional[str] = None
) -> dict[str, str]:
  """Writes the modulation plot (and the maze GIF); returns {kind: path}."""
  config, spec, episode = run_episode(workdir, seed_index)
  written = {"modulation": plot_modulation(config, episode, out)}
  if config.env == "GridMaze-v0":
    from envs import render  # pylint: disable=g-import-not-at-top

    gif = gif or os.path.join(os.path.dirname(os.path.abspath(out)), "episode.gif")
    written["gif"] = render.save_maze_gif(spec.env, episode["env_state"], gif)
  return written


def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top

  del argv
  fv = flags.FLAGS
  if not fv["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  for kind, path in inspect_workdir(fv.workdir, fv.out, fv.seed_index, fv.gif).items():
    print(f"Wrote {kind}: {path}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdir", None, "A train.a2c workdir.", required=True)
  flags.DEFINE_string("out", "modulation.png", "Output image.")
  flags.DEFINE_integer("seed_index", 0, "Which seed's agent.", lower_bound=0)
  flags.DEFINE_string("gif", None, "Maze GIF path (default: episode.gif next to --out).")
  app.run(main)
