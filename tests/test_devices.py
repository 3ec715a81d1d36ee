"""Agents sharded over devices (`train.devices`): 4 CPU host devices against 1.

Each configuration runs in its own Python process, since the number of host
devices is fixed when JAX starts (`--xla_force_host_platform_device_count`).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A sweep (2 settings x 3 seeds = 6 agents: 4 devices get 2, 2, 2, 0 + padding)
# of `modplast` (the fused CPU kernel, a custom call, inside shard_map), and a
# 3-agent (odd) seed run resumed halfway. Prints the per-agent numbers as JSON.
# The episodic and LM trainers' seeds over devices: tests/test_distributed.py
# (2 processes of 2 devices each against one process).
_SCRIPT = r"""
import json, sys
import jax
import numpy as np
from tests.a2c_tiny import TINY
from train import a2c_train, sweep
from train.a2c_config import A2CConfig

out, = sys.argv[1:]
base = A2CConfig(env="CueReward-v0", network="modplast", **TINY).replace(
    iterations=4, chunk_size=2, checkpoint_every=2)
grid = [{"learning_rate": 1e-3}, {"learning_rate": 3e-3}]
sweep.run_sweep(base.replace(num_seeds=3), grid, out + "/sweep")
_, sweep_state, _ = a2c_train.restore_state(out + "/sweep")
# 3 agents; stopped at 2 and resumed to 4.
a2c_train.train_and_evaluate(base.replace(num_seeds=3, iterations=2), out + "/seeds")
_, rows = a2c_train.train_and_evaluate(
    base.replace(num_seeds=3, resume=True), out + "/seeds")
_, seeds_state, _ = a2c_train.restore_state(out + "/seeds")

print(json.dumps(dict(
    devices=jax.device_count(),
    sweep_params=[np.asarray(x).tolist() for x in jax.tree.leaves(sweep_state.params)],
    seeds_params=[np.asarray(x).tolist() for x in jax.tree.leaves(seeds_state.params)],
    seeds_rewards=[[r[f"reward_seed{a}"] for a in range(3)] for r in rows],
)))
"""


def _run(tmp_path, num_devices):
  out = tmp_path / f"d{num_devices}"
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
  proc = subprocess.run(
    [sys.executable, "-c", _SCRIPT, str(out)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["devices"] == num_devices
  return result, proc.stdout


@pytest.fixture(scope="module")
def one_and_four(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("devices")
  return _run(tmp_path, 1), _run(tmp_path, 4)


def test_four_devices_give_every_agent_the_one_device_numbers(one_and_four):
  (one, one_log), (four, four_log) = one_and_four
  # Equal to float32 rounding, not bit for bit: XLA lays out a vmap over 2
  # agents (or 1) otherwise than one over 6 (measured: at most ~7e-8 apart,
  # parameters of ~1e-2). The sampled episodes, and so the rewards, are the same.
  for key in ("sweep_params", "seeds_params"):
    for a, b in zip(one[key], four[key]):
      np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)
  assert four["seeds_rewards"] == one["seeds_rewards"]
  assert len(four["seeds_rewards"]) == 2  # the resumed half
  assert "6 agents on 1 device (1 process)" in one_log
  assert "6 agents on 4 devices (1 process, 2 per device, 2 padding)" in four_log
  assert four_log.count("3 agents on 3 devices (1 process, 1 per device)") == 2  # run and resume


def test_over_agents_pads_an_odd_agent_count_and_drops_the_padding():
  # In this process there is one CPU device: a mesh of it twice is not
  # allowed, so check the padding and the unchanged one-device path directly.
  x = jnp.arange(5.0)
  np.testing.assert_array_equal(devices._pad(x, 8), [0, 1, 2, 3, 4, 4, 4, 4])
  assert devices.agent_mesh(7, jax.devices()[:1]) is None
  fn = jax.vmap(lambda a, b: a * b, in_axes=(0, None))
  assert devices.over_agents(fn, (0, None), 5, None) is fn
  assert devices.describe(1, None) == "1 agent on 1 device (1 process)"


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="num_agents must be >= 1"):
    devices.agent_mesh(0)
  with pytest.raises(ValueError, match="No devices"):
    devices.agent_mesh(3, [])
