r"""`python -m train.evaluate`: the reward of saved A2C agents on fresh episodes.

    python -m train.evaluate --workdir=runs/cue_modplast --episodes=1000
    python -m train.evaluate --workdir=results/cue_reward/modplast_seed0 --greedy
    python -m train.evaluate --workdir=runs/cue_modplast --step=20000 --json_out=eval.json
    python -m train.evaluate --workdir=runs/cue_modplast --export_to=results/cue_reward

`--workdir` is a `train.a2c` / `train.sweep` workdir (its latest checkpoint,
or `--step`; every agent of the run) or an exported agent folder
(`export_agent`: config.json + params.msgpack, one agent). Each agent plays
`--episodes` fresh episodes (keys from `--seed`, the same episodes for every
agent and run), sampling its policy as in training or, with `--greedy`,
taking the most probable action; the reward per episode (the sum over its T
steps) is reported per agent as mean, standard deviation and standard error,
as a text table and as JSON (stdout, and `--json_out` if given).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from bpm_jax import xla
from train import a2c_learner, a2c_train, sweep
from train import flags as flags_lib
from train import run as run_lib
from train.a2c_config import A2CConfig

PARAMS_FILE = "params.msgpack"


def export_agent(workdir: str, agent: int, out_dir: str, step: Optional[int] = None) -> str:
  """Writes agent `agent` of a workdir's checkpoint as config.json + params.msgpack."""
  config, state, iteration = a2c_train.restore_state(workdir, step=step)
  return _write_agent(workdir, config, state, iteration, agent, out_dir)


def export_agents(workdir: str, out_root: str, step: Optional[int] = None) -> list[str]:
  """Exports every agent of a workdir to out_root/<name>/ (`agent_name`)."""
  config, state, iteration = a2c_train.restore_state(workdir, step=step)
  return [
    _write_agent(
      workdir, config, state, iteration, agent, os.path.join(out_root, agent_name(config, agent))
    )
    for agent in range(config.num_seeds)
  ]


def agent_name(config: A2CConfig, agent: int) -> str:
  """`<network>_seed<k>` (k: the agent's seed), `<network>_<baseline>_seed<k>`
  when the baseline is not the default `batch0`."""
  baseline = "" if config.baseline == "batch0" else f"_{config.baseline}"
  return f"{config.network}{baseline}_seed{config.seed + agent}"


def _write_agent(workdir, config, state, iteration, agent: int, out_dir: str) -> str:
  _check_agent(agent, config.num_seeds)
  params = jax.tree.map(lambda x: np.asarray(x[agent]), state.params)
  hparams = sweep.agent_hparams(config, workdir, agent)
  values = dict(config.to_dict(), num_seeds=1, seed=config.seed + agent, resume=False)
  values.update({k: float(v) for k, v in jax.tree.map(np.asarray, vars(hparams)).items()})
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, run_lib.CONFIG_JSON), "w") as f:
    json.dump(
      dict(values, exported_from=os.path.abspath(workdir), iteration=iteration), f, indent=2
    )
  with open(os.path.join(out_dir, PARAMS_FILE), "wb") as f:
    f.write(flax.serialization.to_bytes(params))
  return out_dir


def _check_agent(agent: int, num_seeds: int) -> None:
  if not 0 <= agent < num_seeds:
    raise ValueError(f"agent={agent} is out of range: the run has {num_seeds} agent(s).")


def load_agents(workdir: str, step: Optional[int] = None) -> tuple[A2CConfig, list, list, int]:
  """(config, [params per agent], [hparams per agent], iteration) of a workdir or export."""
  params_path = os.path.join(workdir, PARAMS_FILE)
  if os.path.exists(params_path):
    with open(os.path.join(workdir, run_lib.CONFIG_JSON)) as f:
      values = json.load(f)
    iteration = int(values.pop("iteration", 0))
    values.pop("exported_from", None)
    config = A2CConfig.from_dict(A2CConfig.saved_settings(values))
    spec = a2c_learner.make_spec(config)
    abstract = jax.eval_shape(
      lambda key: a2c_learner.init(spec, key, config.hparams()).params, jax.random.key(0)
    )
    with open(params_path, "rb") as f:
      try:
        params = flax.serialization.from_bytes(abstract, f.read())
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(
          f"{params_path} does not hold this agent's parameters ({type(e).__name__}: {e}); "
          "export the agent again with train.evaluate.export_agent."
        ) from e
    return config, [params], [config.hparams()], iteration
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"No run directory {workdir!r}.")
  config, state, iteration = a2c_train.restore_state(workdir, step=step)
  agents = range(config.num_seeds)
  params = [jax.tree.map(lambda x, a=a: x[a], state.params) for a in agents]
  hparams = [sweep.agent_hparams(config, workdir, a) for a in agents]
  return config, params, hparams, iteration


def episode_rewards(
  config: A2CConfig, params: Any, hparams: Any, episodes: int, seed: int, greedy: bool
) -> np.ndarray:
  """[episodes] reward per episode of one agent (batches of `config.batch_size`)."""
  play, batch = _compile_player(config, params, hparams, episodes, greedy)
  return _rewards(play, params, hparams, episodes, seed, batch)


def _compile_player(config: A2CConfig, params: Any, hparams: Any, episodes: int, greedy: bool):
  """(the jitted `(params, key, hparams) -> [B]` rewards of B episodes, B),
  compiled once for every agent of a run (same shapes; hparams are arguments)."""
  spec = a2c_learner.make_spec(config)
  batch = min(config.batch_size, episodes)

  def play(p, key, h):
    trajectory = a2c_learner.rollout(spec, p, key, h, batch, greedy=greedy)
    return jnp.sum(trajectory.reward, axis=0)  # [B]

  compiled = xla.compile(
    jax.jit(play), params, jax.random.key(0), hparams, fast=config.fast_compile
  )
  return compiled, batch


def _rewards(play, params: Any, hparams: Any, episodes: int, seed: int, batch: int) -> np.ndarray:
  """[episodes] rewards from `play` (batches of `batch` episodes, keys from `seed`)."""
  key = jax.random.key(seed)
  rewards = []
  for k in range(math.ceil(episodes / batch)):
    rewards.append(np.asarray(play(params, jax.random.fold_in(key, k), hparams)))
  return np.concatenate(rewards)[:episodes]


def evaluate(
  workdir: str, episodes: int = 100, seed: int = 0, greedy: bool = False, step=None
) -> dict:
  """The evaluation of every agent of `workdir` (see the module docstring), as a dict."""
  if episodes < 1:
    raise ValueError(f"episodes={episodes} must be >= 1.")
  config, params, hparams, iteration = load_agents(workdir, step)
  play, batch = _compile_player(config, params[0], hparams[0], episodes, greedy)
  agents = []
  for a, (p, h) in enumerate(zip(params, hparams)):
    r = _rewards(play, p, h, episodes, seed, batch)
    agents.append(
      dict(
        agent=a,
        agent_seed=config.seed + a,
        mean=float(r.mean()),
        std=float(r.std()),
        sem=float(r.std(ddof=1) / math.sqrt(len(r))) if len(r) > 1 else float("nan"),
        min=float(r.min()),
        max=float(r.max()),
      )
    )
  means = [a["mean"] for a in agents]
  return dict(
    workdir=os.path.abspath(workdir),
    env=config.env,
    network=config.network,
    baseline=config.baseline,
    iteration=iteration,
    episodes=episodes,
    seed=seed,
    policy="greedy" if greedy else "sampled",
    agents=agents,
    median_of_means=float(np.median(means)),
  )


def format_table(result: dict) -> str:
  lines = [
    f"{result['env']} {result['network']} at iteration {result['iteration']}: reward per "
    f"episode over {result['episodes']} fresh episodes ({result['policy']} policy, "
    f"seed {result['seed']})",
    f"  {'agent':>5s} {'mean':>8s} {'std':>7s} {'sem':>6s} {'min':>7s} {'max':>7s}",
  ]
  for a in result["agents"]:
    lines.append(
      f"  {a['agent']:5d} {a['mean']:8.2f} {a['std']:7.2f} {a['sem']:6.2f} "
      f"{a['min']:7.1f} {a['max']:7.1f}"
    )
  lines.append(f"  median of the agents' means: {result['median_of_means']:.2f}")
  return "\n".join(lines)


def _main(fv) -> None:
  result = evaluate(fv.workdir, fv.episodes, fv.seed, fv.greedy, fv.step)
  print(format_table(result))
  text = json.dumps(result, indent=2)
  print(text)
  if fv.json_out:
    with open(fv.json_out, "w") as f:
      f.write(text + "\n")
  if fv.export_to:
    try:
      for path in export_agents(fv.workdir, fv.export_to, fv.step):
        print(f"exported {path}")
    except run_lib.RUN_ERRORS + (OSError,) as e:
      raise ValueError(f"exporting to {fv.export_to}: {e}") from e


def main(argv):
  flags_lib.run_tool(argv, _main)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdir", None, "A train.a2c workdir or an exported agent.", required=True)
  flags.DEFINE_integer("episodes", 100, "Fresh episodes per agent.", lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Seed of the evaluation episodes.")
  flags.DEFINE_bool("greedy", False, "Most probable action instead of sampling.")
  flags.DEFINE_integer("step", None, "Checkpoint iteration (default: the latest).")
  flags.DEFINE_string("json_out", "", "Also write the JSON here.")
  flags.DEFINE_string(
    "export_to",
    "",
    "Also export every agent of --workdir as DIR/<network>_seed<k>/ (with "
    "_<baseline> before _seed when not batch0) "
    "(config.json + params.msgpack: small, evaluable with --workdir).",
  )
  app.run(main)
