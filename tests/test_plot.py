"""train.plot: which runs become one curve, how curves are labelled, LM workdirs.

The workdirs are written by hand in the trainers' formats: config.json from
the real config's `to_dict()` (train.run sorts its keys), metrics.csv with the
trainers' own column lists (`metric_fieldnames`), sweep.json as train.sweep's.
"""

import csv
import dataclasses
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from train import a2c_train, lm_train, plot
from train.a2c_config import a2c_defaults
from train.lm_config import LMTrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_csv(path, fieldnames, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fieldnames, restval="")
    writer.writeheader()
    writer.writerows(rows)


def write_a2c(workdir, rewards, env="CueReward-v0", **overrides):
  """A train.a2c workdir whose metrics.csv holds `rewards` [S, N]; returns its path."""
  rewards = np.asarray(rewards, np.float64)
  num_seeds, n = rewards.shape
  config = a2c_defaults(env, num_seeds=num_seeds, iterations=n, **overrides)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(json.dumps(config.to_dict(), indent=2, sort_keys=True))
  rows = []
  for i in range(n):
    row = {"iteration": i, "reward_median": float(np.median(rewards[:, i]))}
    row.update({f"reward_seed{s}": rewards[s, i] for s in range(num_seeds)})
    row.update(loss=0.5, policy_loss=0.1, value_loss=0.2, entropy_loss=0.3, grad_norm=1.0)
    row.update(modulation_abs=0.0, env_steps_per_s=1000.0)
    rows.append(row)
  _write_csv(os.path.join(workdir, "metrics.csv"), a2c_train.metric_fieldnames(num_seeds), rows)
  return str(workdir)


def write_sweep(workdir, rewards, grid, seeds_per_setting, **overrides):
  """A train.sweep workdir: a train.a2c run of G*S agents plus sweep.json."""
  write_a2c(workdir, rewards, **overrides)
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump({"grid": grid, "seeds_per_setting": seeds_per_setting}, f, indent=2)
  return str(workdir)


def write_lm(workdir, valid_ppl, network="rnn", steps_per_epoch=3, **overrides):
  """A train.lm workdir after len(valid_ppl[0]) epochs; valid_ppl [S, E]."""
  valid_ppl = np.asarray(valid_ppl, np.float64)
  num_seeds, epochs = valid_ppl.shape
  config = LMTrainConfig(
    data_dir="ptb", network=network, num_seeds=num_seeds, epochs=epochs, **overrides
  )
  model = config.resolve_model_config(vocab_size=50)
  os.makedirs(workdir, exist_ok=True)
  payload = {
    "train": config.to_dict(),
    "model": dataclasses.asdict(model),
    "num_params": 1234,
    "network": network,
    "steps_per_epoch": steps_per_epoch,
  }
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(json.dumps(payload, indent=2, sort_keys=True))
  rows, step = [], 0
  for epoch in range(1, epochs + 1):
    for done in range(1, steps_per_epoch + 1):
      step += 1
      row = {"step": step, "epoch": epoch - 1 + done / steps_per_epoch, "learning_rate": 1.0}
      row.update(train_ppl=500.0, grad_norm=1.0, tokens_per_s=10.0)
      row.update({f"train_ppl_seed{s}": 500.0 for s in range(num_seeds)})
      if done == steps_per_epoch:  # The epoch's last row holds its validation.
        row["valid_ppl"] = float(np.mean(valid_ppl[:, epoch - 1]))
        row.update({f"valid_ppl_seed{s}": valid_ppl[s, epoch - 1] for s in range(num_seeds)})
      rows.append(row)
  test = {"step": step, "epoch": epochs, "test_ppl": 400.0}
  rows.append(dict(test, **{f"test_ppl_seed{s}": 400.0 for s in range(num_seeds)}))
  _write_csv(os.path.join(workdir, "metrics.csv"), lm_train.metric_fieldnames(num_seeds), rows)
  return str(workdir)


def _rewards(num_seeds, n, offset=0.0):
  return offset + np.arange(num_seeds * n, dtype=np.float64).reshape(num_seeds, n)


def _legend(groups):
  fig = plot.make_figure(groups, smoothing=1)
  return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_runs_with_different_learning_rates_are_separate_curves(tmp_path):
  low = write_a2c(tmp_path / "a", _rewards(2, 6), network="modplast", learning_rate=1e-4)
  high = write_a2c(tmp_path / "b", _rewards(2, 6, 50.0), network="modplast", learning_rate=1e6)
  groups = plot.load_groups([low, high])
  assert [g.label for g in groups] == ["learning_rate=0.0001", "learning_rate=1e+06"]
  np.testing.assert_array_equal(groups[0].values, _rewards(2, 6))
  np.testing.assert_array_equal(groups[1].values, _rewards(2, 6, 50.0))
  assert list(plot.group_runs([low, high])) == ["learning_rate=0.0001", "learning_rate=1e+06"]
  assert _legend(groups) == ["learning_rate=0.0001 (2 seeds)", "learning_rate=1e+06 (2 seeds)"]
  # The setting they share goes to the title.
  fig = plot.make_figure(groups)
  assert fig.axes[0].get_title().startswith("CueReward-v0 modplast:")


def test_labels_name_only_what_differs(tmp_path):
  modplast = write_a2c(tmp_path / "m", _rewards(1, 4), network="modplast")
  rnn = write_a2c(tmp_path / "r", _rewards(1, 4), network="rnn")
  assert [g.label for g in plot.load_groups([modplast, rnn])] == ["modplast", "rnn"]
  fast = write_a2c(tmp_path / "f", _rewards(1, 4), network="rnn", learning_rate=1e-3)
  labels = [g.label for g in plot.load_groups([modplast, rnn, fast])]
  assert labels == [
    "modplast, learning_rate=0.0001",
    "rnn, learning_rate=0.0001",
    "rnn, learning_rate=0.001",
  ]
  # A single run: its network, as before.
  assert _legend(plot.load_groups([modplast])) == ["modplast (1 seed)"]


def test_runs_that_differ_only_in_seeds_and_run_control_pool_their_seeds(tmp_path):
  first = write_a2c(tmp_path / "s0", _rewards(2, 5), network="retromod", seed=0)
  second = write_a2c(
    tmp_path / "s2",
    _rewards(3, 5, 100.0),
    network="retromod",
    seed=2,
    chunk_size=5,
    checkpoint_every=5,
    progress=False,
    step_impl="fast",
  )
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Nothing to warn about.
    (group,) = plot.load_groups([first, second])
  assert group.label == "retromod" and len(group.runs) == 2
  np.testing.assert_array_equal(
    group.values, np.concatenate([_rewards(2, 5), _rewards(3, 5, 100.0)])
  )
  assert _legend([group]) == ["retromod (5 seeds)"]


def test_pooling_the_same_seeds_twice_warns(tmp_path):
  first = write_a2c(tmp_path / "a", _rewards(2, 5), network="rnn")
  again = write_a2c(tmp_path / "b", _rewards(2, 5), network="rnn")
  with pytest.warns(UserWarning, match="same seeds"):
    plot.load_groups([first, again])


def test_cutting_runs_to_a_common_length_warns(tmp_path):
  long = write_a2c(tmp_path / "long", _rewards(2, 8), network="plastic")
  short = write_a2c(tmp_path / "short", _rewards(1, 3), network="plastic", seed=5)
  with pytest.warns(UserWarning, match=r"plastic: its runs have 8, 3 iterations.*common 3"):
    (group,) = plot.load_groups([long, short])
  np.testing.assert_array_equal(group.steps, [0, 1, 2])
  np.testing.assert_array_equal(
    group.values, np.concatenate([_rewards(2, 8)[:, :3], _rewards(1, 3)])
  )


def test_mixing_environments_warns_and_labels_by_env(tmp_path):
  cue = write_a2c(tmp_path / "cue", _rewards(1, 4), network="modplast")
  maze = write_a2c(tmp_path / "maze", _rewards(1, 4), env="GridMaze-v0", network="modplast")
  with pytest.warns(UserWarning, match="different environments.*CueReward-v0, GridMaze-v0"):
    groups = plot.load_groups([cue, maze])
  # Each env's paper defaults (H, episode length, ...) go without saying.
  assert [g.label for g in groups] == ["CueReward-v0", "GridMaze-v0"]
  assert groups[0].settings["hidden_size"] == 200 and groups[1].settings["hidden_size"] == 100
  # A setting off an env's defaults is named.
  small = write_a2c(tmp_path / "small", _rewards(1, 4), env="GridMaze-v0", hidden_size=8)
  with pytest.warns(UserWarning, match="different environments"):
    labels = [g.label for g in plot.load_groups([cue, maze, small])]
  assert labels == [
    "CueReward-v0, hidden_size=200",
    "GridMaze-v0, hidden_size=100",
    "GridMaze-v0, hidden_size=8",
  ]


def test_sweep_workdir_has_one_curve_per_setting(tmp_path):
  grid = [{"learning_rate": 1e-4}, {"learning_rate": 1e-3}, {"learning_rate": 1e-2}]
  rewards = _rewards(6, 5)  # G=3 settings x S=2 seeds: agent g*S + s.
  sweep = write_sweep(tmp_path / "sweep", rewards, grid, 2, network="modplast")
  groups = plot.load_groups([sweep])
  assert [g.label for g in groups] == [
    "learning_rate=0.0001",
    "learning_rate=0.001",
    "learning_rate=0.01",
  ]
  for g, group in enumerate(groups):
    np.testing.assert_array_equal(group.values, rewards[2 * g : 2 * g + 2])
    assert group.runs[0].seeds == (2 * g, 2 * g + 1) and group.runs[0].setting == g
  # What a2c_train does at the end of a sweep's run: curves.png per setting.
  out = plot.plot_workdirs([sweep], os.path.join(sweep, "curves.png"))
  assert os.path.getsize(out) > 0
  # train.sweep reads every agent's column.
  _, all_rewards = plot.load_rewards(sweep)
  np.testing.assert_array_equal(all_rewards, rewards)


def test_iterations_get_integer_ticks(tmp_path):
  run = write_a2c(tmp_path / "run", _rewards(2, 3), network="rnn")
  fig = plot.make_figure(plot.load_groups([run]), smoothing=1)
  ticks = fig.axes[0].get_xticks()
  assert len(ticks) >= 2 and np.all(ticks == np.round(ticks))
  assert fig.axes[0].get_xlabel().startswith("iteration")


def test_lm_workdir_plots_validation_perplexity_per_epoch(tmp_path):
  valid = [[300.0, 200.0, 150.0], [310.0, 210.0, 160.0]]
  rnn = write_lm(tmp_path / "rnn", valid, network="rnn", hidden_size=16)
  (curves,) = plot.load_curves(rnn)
  assert curves.kind == plot.LM and curves.env == plot.LM_ENV
  np.testing.assert_allclose(curves.steps, [1, 2, 3])
  np.testing.assert_array_equal(curves.values, valid)  # The test row is not a point.
  assert plot.run_env(rnn) == plot.LM_ENV and plot.run_label(rnn) == "rnn"
  retromod = write_lm(tmp_path / "retromod", [[250.0, 180.0]], network="retromod", hidden_size=16)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Different networks: separate curves, nothing cut.
    groups = plot.load_groups([rnn, retromod])
  assert [g.label for g in groups] == ["rnn", "retromod"]
  fig = plot.make_figure(groups)
  ax = fig.axes[0]
  assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "validation perplexity"
  ticks = ax.get_xticks()
  assert np.all(ticks == np.round(ticks))
  np.testing.assert_allclose(ax.lines[0].get_ydata(), [305.0, 205.0, 155.0])  # Not smoothed.
  out = plot.plot_workdirs([rnn], str(tmp_path / "lm.png"))
  assert os.path.getsize(out) > 0
  assert "after epoch 3" in plot.summary(plot.load_groups([rnn])[0])


def test_lm_runs_split_by_their_resolved_hidden_size(tmp_path):
  small = write_lm(tmp_path / "h16", [[300.0]], hidden_size=16)
  large = write_lm(tmp_path / "h32", [[250.0]], hidden_size=32)
  assert [g.label for g in plot.load_groups([small, large])] == [
    "hidden_size=16",
    "hidden_size=32",
  ]


def test_lm_workdir_without_metrics_reads_results_json(tmp_path):
  workdir = tmp_path / "lm"
  write_lm(workdir, [[300.0, 200.0]], network="modplast")
  os.remove(workdir / "metrics.csv")
  with open(workdir / "results.json", "w") as f:
    json.dump({"valid_ppl_per_epoch": [[300.0], [200.0]], "test_ppl": [190.0]}, f)
  (curves,) = plot.load_curves(str(workdir))
  np.testing.assert_array_equal(curves.steps, [1, 2])
  np.testing.assert_array_equal(curves.values, [[300.0, 200.0]])


def test_a2c_and_lm_runs_together_are_an_error(tmp_path):
  a2c = write_a2c(tmp_path / "a2c", _rewards(1, 3), network="rnn")
  lm = write_lm(tmp_path / "lm", [[300.0]])
  with pytest.raises(ValueError, match="Plot them separately"):
    plot.load_groups([a2c, lm])


def test_missing_workdir_is_one_clear_error(tmp_path):
  missing = str(tmp_path / "no_such_run")
  with pytest.raises(FileNotFoundError, match="No run directory"):
    plot.plot_workdirs([missing], str(tmp_path / "out.png"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="No metrics.csv in"):
    plot.load_curves(str(empty))
  result = subprocess.run(
    [sys.executable, "-m", "train.plot", f"--workdirs={missing}", f"--out={tmp_path}/x.png"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("ERROR: No run directory"), result.stderr
  assert "no_such_run" in lines[0]


def test_single_run_plot_as_the_trainers_call_it(tmp_path):
  run = write_a2c(tmp_path / "run", _rewards(3, 12), network="modplast")
  out = plot.plot_workdirs([run], os.path.join(run, "curves.png"))
  assert os.path.getsize(out) > 0
  (label,) = plot.group_runs([run])
  assert label == "modplast"
