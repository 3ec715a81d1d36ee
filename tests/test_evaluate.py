"""train.evaluate: reward of saved agents on fresh episodes; exported agents."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.a2c_tiny import TINY
from train import a2c_learner, a2c_train
from train import evaluate as evaluate_lib
from train.a2c_config import a2c_defaults


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("eval") / "run")
  a2c_train.train_and_evaluate(a2c_defaults("CueReward-v0", **dict(TINY, num_seeds=2)), path)
  return path


def test_rewards_are_the_rollouts_sums_and_reproducible(workdir):
  config, params, hparams, iteration = evaluate_lib.load_agents(workdir)
  assert iteration == TINY["iterations"] and len(params) == 2
  rewards = evaluate_lib.episode_rewards(config, params[1], hparams[1], 3, seed=5, greedy=False)
  spec = a2c_learner.make_spec(config)
  trajectory = a2c_learner.rollout(
    spec, params[1], jax.random.fold_in(jax.random.key(5), 0), hparams[1], 3
  )
  np.testing.assert_allclose(rewards, np.asarray(jnp.sum(trajectory.reward, axis=0)), rtol=1e-6)
  a = evaluate_lib.evaluate(workdir, episodes=7, seed=1)
  b = evaluate_lib.evaluate(workdir, episodes=7, seed=1)
  assert a == b and [x["agent"] for x in a["agents"]] == [0, 1]
  assert a["agents"][0]["min"] <= a["agents"][0]["mean"] <= a["agents"][0]["max"]
  greedy = evaluate_lib.evaluate(workdir, episodes=7, seed=1, greedy=True)
  assert greedy["policy"] == "greedy" and a["baseline"] == config.baseline
  assert "median of the agents' means" in evaluate_lib.format_table(a)


def test_exported_agent_evaluates_as_in_its_workdir(workdir, tmp_path):
  config = evaluate_lib.load_agents(workdir)[0]
  out = evaluate_lib.export_agent(workdir, 1, str(tmp_path / "agent1"))
  assert sorted(os.listdir(out)) == ["config.json", "params.msgpack"]
  exported = evaluate_lib.evaluate(out, episodes=6, seed=2)
  original = evaluate_lib.evaluate(workdir, episodes=6, seed=2)
  assert len(exported["agents"]) == 1
  # The exported agent keeps its seed in the run (agent 1 of a run from --seed=S is S + 1).
  assert exported["agents"][0]["agent_seed"] == original["agents"][1]["agent_seed"]
  assert [a["agent_seed"] for a in original["agents"]] == [config.seed, config.seed + 1]
  assert exported["agents"][0]["mean"] == pytest.approx(original["agents"][1]["mean"], abs=1e-6)
  with open(os.path.join(out, "params.msgpack"), "wb") as f:
    f.write(b"garbage")
  with pytest.raises(ValueError, match="does not hold this agent's parameters"):
    evaluate_lib.evaluate(out, episodes=2)


def test_bad_input_is_one_clear_line(workdir, tmp_path):
  with pytest.raises(ValueError, match="out of range"):
    evaluate_lib.export_agent(workdir, 5, str(tmp_path / "x"))
  with pytest.raises(ValueError, match="episodes"):
    evaluate_lib.evaluate(workdir, episodes=0)
  proc = subprocess.run(
    [sys.executable, "-m", "train.evaluate", f"--workdir={tmp_path / 'nowhere'}"],
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 1 and proc.stderr.strip().startswith("ERROR: No run directory")


def test_cli_prints_table_and_writes_json(workdir, tmp_path):
  out = tmp_path / "eval.json"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "train.evaluate",
      f"--workdir={workdir}",
      "--episodes=3",
      f"--json_out={out}",
      f"--export_to={tmp_path / 'agents'}",
    ],
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 0, proc.stderr
  assert "reward per episode over 3 fresh episodes" in proc.stdout
  assert json.loads(out.read_text())["episodes"] == 3
  # Every agent exported under its network and seed, each evaluable alone.
  assert sorted(os.listdir(tmp_path / "agents")) == ["modplast_seed0", "modplast_seed1"]
  one = evaluate_lib.evaluate(str(tmp_path / "agents" / "modplast_seed1"), episodes=3)
  assert one["agents"][0]["mean"] == pytest.approx(
    json.loads(out.read_text())["agents"][1]["mean"], abs=1e-6
  )


def test_export_names_carry_the_seed_and_a_non_default_baseline():
  config = a2c_defaults("CueReward-v0", **dict(TINY, num_seeds=2, seed=3))
  assert evaluate_lib.agent_name(config, 1) == "modplast_seed4"
  own = config.replace(baseline="own", network="rnn")
  assert evaluate_lib.agent_name(own, 0) == "rnn_own_seed3"
