"""Hyperparameter sweeps (train/sweep.py): grid, per-agent hparams, outputs, resume, flags."""

import json
import os

import jax
import numpy as np
import pytest
from absl import flags

from tests.a2c_tiny import TINY
from train import a2c_learner, a2c_train, sweep
from train import inspect as agent_inspect
from train import metrics as metrics_lib
from train import run as run_lib
from train.a2c_config import HPARAM_FIELDS, a2c_defaults


def tiny(**overrides):
  return a2c_defaults("CueReward-v0", **dict(TINY, network="modplast", **overrides))


def test_parse_sweep_is_the_cartesian_product_last_flag_fastest():
  grid = sweep.parse_sweep(["learning_rate=1e-4,1e-3", "entropy_coef=0.03,0.1,0.3"])
  assert len(grid) == 6
  assert grid[0] == {"learning_rate": 1e-4, "entropy_coef": 0.03}
  assert grid[1] == {"learning_rate": 1e-4, "entropy_coef": 0.1}
  assert grid[5] == {"learning_rate": 1e-3, "entropy_coef": 0.3}


@pytest.mark.parametrize(
  "specs,match",
  [
    ([], "--sweep is required"),
    (["hidden_size=8,16"], "cannot be swept.*learning_rate"),
    (["learning_rate"], "NAME=V1,V2"),
    (["learning_rate=1e-3,fast"], "must be a number"),
    (["discount=0.9", "discount=0.99"], "twice"),
  ],
)
def test_parse_sweep_rejects_bad_specs(specs, match):
  with pytest.raises(ValueError, match=match):
    sweep.parse_sweep(specs)


def test_check_grid_names_an_invalid_value():
  with pytest.raises(ValueError, match="learning_rate=-1.0"):
    sweep.check_grid(tiny(), [{"learning_rate": 1e-3}, {"learning_rate": -1.0}])


def test_stack_hparams_one_leaf_per_agent():
  config = tiny(entropy_coef=0.05)
  hp = sweep.stack_hparams(config, [{"learning_rate": 1e-3}, {"learning_rate": 1e-2}], 3)
  assert all(np.shape(getattr(hp, name)) == (6,) for name in HPARAM_FIELDS)
  np.testing.assert_allclose(hp.learning_rate, [1e-3] * 3 + [1e-2] * 3)
  np.testing.assert_allclose(hp.entropy_coef, [0.05] * 6)
  assert a2c_learner.hparams_per_agent(hp, 6) and not a2c_learner.hparams_per_agent(
    config.hparams(), 6
  )
  with pytest.raises(ValueError, match=r"shape \(4,\)"):
    a2c_learner.hparams_per_agent(hp, 4)


def test_sweep_agents_equal_separate_runs(tmp_path):
  grid = [{"learning_rate": 1e-3}, {"learning_rate": 3e-2}]
  rows = sweep.run_sweep(tiny(num_seeds=2), grid, str(tmp_path / "sweep"))
  assert [r["setting"] for r in rows] == [0, 1] and all("final_median" in r for r in rows)
  for name in ("sweep.json", "sweep.csv", "sweep.png", "metrics.csv", "config.json"):
    assert (tmp_path / "sweep" / name).exists(), name
  saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
  assert saved == {"grid": grid, "seeds_per_setting": 2}
  state, _ = a2c_train.restore_state(str(tmp_path / "sweep"))[1:]
  sweep_rows = metrics_lib.read_csv(str(tmp_path / "sweep" / "metrics.csv"))
  # Agent 3 = setting 1 (lr 3e-2), key(seed + 3): the same as a run of its own.
  alone, alone_rows = a2c_train.train_and_evaluate(
    tiny(learning_rate=3e-2, seed=3), str(tmp_path / "alone")
  )
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(alone), strict=True):
    np.testing.assert_allclose(np.asarray(x)[3], np.asarray(y)[0], rtol=2e-5, atol=1e-6)
  assert [r["reward_seed3"] for r in sweep_rows] == [r["reward_seed0"] for r in alone_rows]
  # The two settings really differ: lr 3e-2 moves the weights further than 1e-3.
  w = np.asarray(state.params["params"]["cell"]["w"])
  w0 = np.asarray(a2c_train.init_state(tiny(num_seeds=4)).params["params"]["cell"]["w"])
  assert np.abs(w[3] - w0[3]).max() > 5 * np.abs(w[1] - w0[1]).max()


def test_sweep_resume_rules(tmp_path):
  grid = [{"discount": 0.8}, {"discount": 0.9}]
  workdir = str(tmp_path)
  sweep.run_sweep(tiny(), grid, workdir)
  before = (tmp_path / "sweep.json").read_text()
  with pytest.raises(ValueError, match="--resume"):  # Refuses to overwrite ...
    sweep.run_sweep(tiny(), [{"discount": 0.5}], workdir)
  assert (tmp_path / "sweep.json").read_text() == before  # ... and keeps the grid.
  with pytest.raises(ValueError, match="differs from"):
    sweep.run_sweep(tiny(resume=True, iterations=4), [{"discount": 0.5}], workdir)
  rows = sweep.run_sweep(tiny(resume=True, iterations=4), grid, workdir)
  assert len(rows) == 2
  assert len(metrics_lib.read_csv(os.path.join(workdir, "metrics.csv"))) == 4


def test_agent_hparams_and_inspect_use_the_agents_own_setting(tmp_path):
  workdir = str(tmp_path)
  grid = [{"clip_value": 0.01}, {"clip_value": 10.0}]
  sweep.run_sweep(tiny(num_seeds=1), grid, workdir)
  config = a2c_train.restore_state(workdir)[0]
  assert [float(sweep.agent_hparams(config, workdir, a).clip_value) for a in (0, 1)] == [
    pytest.approx(0.01),
    10.0,
  ]
  assert float(sweep.agent_hparams(config, str(tmp_path / "nope"), 1).clip_value) == (
    config.clip_value
  )  # Not a sweep: the config's own values.
  own = agent_inspect.run_episode(workdir, seed_index=1)[2]
  # The same agent's weights under the other setting's clip value behave differently.
  (tmp_path / "sweep.json").write_text(
    json.dumps({"grid": [grid[0], grid[0]], "seeds_per_setting": 1})
  )
  other = agent_inspect.run_episode(workdir, seed_index=1)[2]
  assert not np.allclose(own["value"], other["value"])


def parse(*args):
  fv = flags.FlagValues()
  sweep.define_flags(fv)
  fv(["sweep", *args])
  return fv


def test_flags(tmp_path):
  grid, config = sweep.grid_and_config_from_flags(
    parse(
      f"--workdir={tmp_path}",
      "--network=rnn",
      "--num_seeds=2",
      "--sweep=learning_rate=1e-4,1e-3",
      "--sweep=clip_value=1,2",
    )
  )
  assert len(grid) == 4 and config.network == "rnn" and config.num_seeds == 2
  with pytest.raises(ValueError, match="cannot be swept"):
    sweep.grid_and_config_from_flags(parse(f"--workdir={tmp_path}", "--sweep=batch_size=3,4"))
  with pytest.raises(ValueError, match="--sweep is required"):
    sweep.grid_and_config_from_flags(parse(f"--workdir={tmp_path}"))
  # --resume alone: the grid and seeds per setting come from sweep.json.
  (tmp_path / "sweep.json").write_text(
    json.dumps({"grid": [{"discount": 0.8}, {"discount": 0.9}], "seeds_per_setting": 3})
  )
  (tmp_path / "config.json").write_text(tiny(num_seeds=6).to_json())
  grid, config = sweep.grid_and_config_from_flags(parse(f"--workdir={tmp_path}", "--resume"))
  assert grid == [{"discount": 0.8}, {"discount": 0.9}]
  assert config.num_seeds == 3 and config.hidden_size == 8 and config.resume


def test_a_diverging_setting_is_frozen_and_the_rest_train_on(tmp_path, capsys):
  grid = [{"learning_rate": 1e-3}, {"learning_rate": 1e30}]
  config = tiny(num_seeds=1, iterations=6, chunk_size=2, checkpoint_every=2)
  workdir = str(tmp_path / "sweep")
  sweep.run_sweep(config, grid, workdir)
  assert "agent 1 (learning_rate=1e+30) diverged" in capsys.readouterr().out
  diverged = json.loads((tmp_path / "sweep" / "diverged.json").read_text())
  assert list(diverged) == ["1"]
  bad = diverged["1"]
  rows = metrics_lib.read_csv(os.path.join(workdir, "metrics.csv"))
  assert len(rows) == 6
  assert all(np.isnan(r["reward_seed1"]) for r in rows[bad:])
  assert all(np.isfinite(r["reward_seed0"]) and np.isfinite(r["loss"]) for r in rows)
  # The live agent's numbers are those of a run of its own (same key: seed + 0).
  alone = str(tmp_path / "alone")
  _, alone_rows = a2c_train.train_and_evaluate(
    tiny(iterations=6, chunk_size=2, checkpoint_every=2, learning_rate=1e-3), alone
  )
  assert [r["reward_seed0"] for r in rows] == [r["reward_seed0"] for r in alone_rows]
  state = a2c_train.restore_state(workdir)[1]
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  # Resumed, the frozen agent stays frozen (from the checkpoint's metadata).
  sweep.run_sweep(config.replace(resume=True, iterations=8), grid, workdir)
  rows = metrics_lib.read_csv(os.path.join(workdir, "metrics.csv"))
  assert len(rows) == 8 and np.isnan(rows[-1]["reward_seed1"])


def test_stop_on_nan_or_every_agent_diverged_stops_the_run(tmp_path):
  grid = [{"learning_rate": 1e-3}, {"learning_rate": 1e30}]
  config = tiny(num_seeds=1, iterations=4, chunk_size=2, checkpoint_every=2)
  with pytest.raises(run_lib.NonFiniteError, match="seed index \\[1\\]"):
    sweep.run_sweep(config.replace(stop_on_nan=True), grid, str(tmp_path / "stop"))
  with pytest.raises(run_lib.NonFiniteError, match="every agent"):
    sweep.run_sweep(
      config, [{"learning_rate": 1e30}, {"learning_rate": 3e30}], str(tmp_path / "all")
    )
