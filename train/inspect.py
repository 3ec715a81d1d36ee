"""Look inside a trained agent: m(t) over an episode and around rewards (Backpropamine Fig. 3).

    python -m train.inspect --workdir runs/cue_modplast --out modulation.png
    python -m train.inspect --workdir results/maze/modplast_seed0 --out m.png --episodes 300

`--workdir` is a `train.a2c` workdir (its latest checkpoint or `--step`,
agent `--seed_index`) or an exported agent folder (`train.evaluate --export_to`).
Writes:
- `--out`: one episode's modulatory signal m(t) (one line per modulator)
  above the reward received at each step. In the cue-reward task the Go steps
  are marked; for the maze an `episode.gif` of the agent's path is also
  written next to `--out` (via `envs.render.save_maze_gif`).
- `<out>_around_reward.png` and `.json` (modulated networks, `--episodes` > 0):
  m(t) aligned on the rewards of `--episodes` fresh episodes, median and
  inter-quartile range over the events, separately for positive and negative
  rewards. Lag 0 is the step whose action earned the reward; the agent sees
  the reward in its input one step later (lag +1).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np

from bpm_jax import xla
from train import a2c_learner, evaluate
from train import flags as flags_lib
from train.a2c_config import A2CConfig

# One recorded episode (batch element 0) as NumPy arrays. Keys: `modulation`
# [T, K], `reward` [T], `action` [T], `value` [T], `env_state` (leaves
# [T, ...], the state seen at each step), `is_go` [T] bool (cue-reward only).
Episode = dict


def record_episodes(
  workdir: str,
  episodes: int = 1,
  seed_index: int = 0,
  key: Optional[jax.Array] = None,
  step: Optional[int] = None,
) -> tuple[A2CConfig, Any, a2c_learner.Trajectory, int]:
  """Restores a workdir's checkpoint (or an exported agent) and records fresh episodes of one agent.

  Args:
    workdir: a `train.a2c` workdir or an exported agent folder.
    episodes: how many episodes (one batch).
    seed_index: which of the run's `num_seeds` agents (of a `train.sweep`
      workdir: agent index `g*S + s`, run with setting g's hyperparameters).
    key: PRNG key of the episodes (default `jax.random.key(1234)`).
    step: checkpoint iteration (default: the latest).

  Returns:
    (config, A2CSpec, Trajectory with env states and infos (leaves [T, N, ...]),
    the checkpoint's iteration).
  """
  config, params, hparams, iteration = _agent(workdir, seed_index, step)
  spec, trajectory = _record(config, params, hparams, episodes, key)
  return config, spec, trajectory, iteration


def _record(config: A2CConfig, params, hparams, episodes: int, key: Optional[jax.Array]):
  """(A2CSpec, recorded Trajectory) of `episodes` fresh episodes of one agent."""
  if episodes < 1:
    raise ValueError(f"episodes={episodes}: record at least one episode.")
  spec = a2c_learner.make_spec(config)
  key = jax.random.key(1234) if key is None else key
  rollout = jax.jit(lambda p, k, h: a2c_learner.rollout(spec, p, k, h, episodes, record=True))
  rollout = xla.compile(rollout, params, key, hparams, fast=config.fast_compile)
  return spec, jax.device_get(rollout(params, key, hparams))


def first_episode(trajectory: a2c_learner.Trajectory) -> Episode:
  """Episode 0 of a recorded trajectory."""
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
  return episode


def run_episode(
  workdir: str, seed_index: int = 0, key: Optional[jax.Array] = None, step: Optional[int] = None
) -> tuple[A2CConfig, Any, Episode]:
  """One recorded episode of one agent (`record_episodes`): (config, A2CSpec, Episode)."""
  config, spec, trajectory, _ = record_episodes(workdir, 1, seed_index, key, step)
  return config, spec, first_episode(trajectory)


def _agent(workdir: str, seed_index: int, step: Optional[int]) -> tuple[A2CConfig, Any, Any, int]:
  """(config, params, hparams, iteration) of one agent (a sweep's agent: its own setting)."""
  config, params, hparams, iteration = evaluate.load_agents(workdir, step=step)
  if not 0 <= seed_index < len(params):
    raise ValueError(
      f"seed_index={seed_index} is out of range: {workdir} holds {len(params)} agent(s)."
    )
  return config, params[seed_index], hparams[seed_index], iteration


def reward_triggered(
  modulation: np.ndarray, reward: np.ndarray, before: int = 3, after: int = 8
) -> dict[str, Any]:
  """m(t) in a window around every rewarded step, by the reward's sign.

  Args:
    modulation: [T, N, K] m(t) of N episodes.
    reward: [T, N] the reward of each step's action.
    before, after: the window is lags -before..+after around the step t with
      a reward (events whose window leaves the episode are skipped).

  Returns:
    {"lags": [L] ints, "positive"/"negative": [events, L, K] arrays of m}.
  """
  steps = reward.shape[0]
  lags = np.arange(-before, after + 1)
  out = {"lags": lags}
  for name, rewarded in (("positive", reward > 0), ("negative", reward < 0)):
    t, n = np.nonzero(rewarded)
    inside = (t - before >= 0) & (t + after < steps)
    t, n = t[inside], n[inside]
    windows = modulation[t[:, None] + lags[None, :], n[:, None]]  # [E, L, K]
    out[name] = windows.reshape(len(t), len(lags), modulation.shape[-1])
  return out


def summarise_triggered(triggered: dict[str, Any]) -> dict[str, Any]:
  """Median and quartiles over the events per lag and modulator (JSON-ready)."""
  summary = {"lags": [int(v) for v in triggered["lags"]]}
  for name in ("positive", "negative"):
    windows = triggered[name]
    entry = {"events": int(windows.shape[0])}
    if windows.shape[0]:
      q25, median, q75 = np.percentile(windows, [25, 50, 75], axis=0)  # [L, K]
      entry.update(median=median.T.tolist(), q25=q25.T.tolist(), q75=q75.T.tolist())
    summary[name] = entry
  return summary


def plot_reward_triggered(config: A2CConfig, summary: dict[str, Any], out: str) -> str:
  """m(t) around positive and negative rewards, median and IQR per modulator."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  lags = np.asarray(summary["lags"])
  # One panel per reward sign that occurred (the maze has no negative reward
  # without a wall penalty).
  names = [n for n in ("positive", "negative") if summary[n]["events"]] or ["positive"]
  fig = Figure(figsize=(max(6.0, 4.5 * len(names)), 3.8), dpi=120)
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
  for ax, name in zip(axes, names):
    entry = summary[name]
    if entry["events"]:
      for k, (med, lo, hi) in enumerate(zip(entry["median"], entry["q25"], entry["q75"])):
        label = f"m{k}" if len(entry["median"]) > 1 else "m"
        ax.plot(lags, med, lw=1.5, label=label)
        ax.fill_between(lags, lo, hi, alpha=0.25)
      ax.legend(loc="best", fontsize=8)
    ax.axvline(0.0, color="0.6", lw=0.8, ls="--")
    ax.axvline(1.0, color="0.8", lw=0.8, ls=":")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_title(f"{name} rewards ({entry['events']} events)", fontsize=9)
    ax.set_xlabel("steps from the rewarded action")
  axes[0].set_ylabel("m(t): median, IQR over events")
  fig.suptitle(
    f"{config.env}, {config.network}: m(t) around rewards\n"
    "(dashed: the rewarded action; dotted: the reward reaches the input)",
    fontsize=9,
  )
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out)
  return out


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
  workdir: str,
  out: str,
  seed_index: int = 0,
  gif: Optional[str] = None,
  episodes: int = 0,
  step: Optional[int] = None,
) -> dict[str, str]:
  """Writes the modulation plot, the maze GIF and (`episodes` > 0, modulated
  networks) m(t) around rewards, as a plot and JSON; returns {kind: path}."""
  config, params, hparams, iteration = _agent(workdir, seed_index, step)
  # Many episodes only where they are used (m(t) around rewards); the plot
  # and the GIF show episode 0.
  around = episodes > 0 and config.plasticity.is_modulated
  spec, trajectory = _record(config, params, hparams, episodes if around else 1, None)
  episode = first_episode(trajectory)
  written = {"modulation": plot_modulation(config, episode, out)}
  if config.env == "GridMaze-v0":
    from envs import render  # pylint: disable=g-import-not-at-top

    gif = gif or os.path.join(os.path.dirname(os.path.abspath(out)), "episode.gif")
    written["gif"] = render.save_maze_gif(spec.env, episode["env_state"], gif)
  if around:
    triggered = reward_triggered(np.asarray(trajectory.modulation), np.asarray(trajectory.reward))
    summary = summarise_triggered(triggered)
    stem = os.path.splitext(out)[0] + "_around_reward"
    written["around_reward"] = plot_reward_triggered(config, summary, stem + ".png")
    with open(stem + ".json", "w") as f:
      json.dump(
        dict(
          summary,
          workdir=workdir,
          iteration=iteration,
          seed_index=seed_index,
          episodes=episodes,
          env=config.env,
          network=config.network,
        ),
        f,
      )
    written["around_reward_json"] = stem + ".json"
  return written


def _main(fv) -> None:
  written = inspect_workdir(fv.workdir, fv.out, fv.seed_index, fv.gif, fv.episodes, fv.step)
  for kind, path in written.items():
    print(f"Wrote {kind}: {path}")


def main(argv):
  flags_lib.run_tool(argv, _main)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string(
    "workdir", None, "A train.a2c workdir or an exported agent folder.", required=True
  )
  flags.DEFINE_string("out", "modulation.png", "Output image.")
  flags.DEFINE_integer("seed_index", 0, "Which seed's agent.", lower_bound=0)
  flags.DEFINE_integer("step", None, "Checkpoint iteration (default: the latest).")
  flags.DEFINE_string("gif", None, "Maze GIF path (default: episode.gif next to --out).")
  flags.DEFINE_integer(
    "episodes", 200, "Fresh episodes for m(t) around rewards (0: skip).", lower_bound=0
  )
  app.run(main)
