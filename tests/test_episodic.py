"""The episodic trainer (train/episodic_config, episodic_learner, episodic_train, episodic):
learning smoke runs, resume, the NaN guard, flags, figures."""

import json
import os

import jax
import numpy as np
import pytest
from absl import flags

from train import episodic, episodic_learner, episodic_plots, episodic_train
from train import metrics as metrics_lib
from train import run as run_lib
from train.episodic_config import EpisodicConfig, episodic_defaults

TINY = dict(
  pattern_size=20,
  n_items=2,
  batch_size=4,
  learning_rate=3e-3,
  eval_every=10,
  eval_episodes=4,
  chunk_size=10,
  checkpoint_every=10,
  progress=False,
  fast_compile=True,
)


def tiny(**overrides):
  return episodic_defaults("PatternCompletion-v0", **dict(TINY, **overrides))


def read_rows(workdir):
  return metrics_lib.read_csv(os.path.join(workdir, metrics_lib.METRICS_CSV))


def test_defaults_are_the_reference_settings():
  patterns = episodic_defaults("PatternCompletion-v0")
  assert (patterns.learning_rate, patterns.iterations, patterns.batch_size) == (3e-4, 2000, 1)
  assert (patterns.input_mode, patterns.input_scale, patterns.eta_init) == ("add", 20.0, 0.01)
  assert patterns.plasticity.rule == "decay" and patterns.plasticity.eta_kind == "scalar"
  images = episodic_defaults("ImageCompletion-v0")
  assert (images.learning_rate, images.iterations, images.input_mode) == (1e-4, 100_000, "clamp")


def test_plastic_network_learns_and_the_plain_one_does_not():
  """Tiny pattern completion (20 bits, 2 patterns): the plastic network completes
  the probe within 200 steps; the same network without plasticity stays near
  the 25% error of copying the probe."""
  errors = {}
  for network in ("plastic", "rnn"):
    config = tiny(network=network, iterations=200)
    _, metrics = jax.jit(episodic_learner.make_train(config))(
      jax.random.key(0), config.make_task()[1]
    )
    bit_error = np.asarray(metrics["bit_error"])
    errors[network] = (bit_error[:40].mean(), bit_error[-40:].mean())
  assert errors["plastic"][1] < 0.05 < errors["plastic"][0] / 1.5
  assert errors["rnn"][1] > 0.15


def test_run_writes_metrics_eval_and_figures(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny(iterations=20, num_seeds=2, network="lstm", lstm_features=8)
  state, rows = episodic_train.train_and_evaluate(config, workdir)
  assert len(rows) == 20 and [r["iteration"] for r in rows] == list(range(20))
  saved = read_rows(workdir)
  evals = [r for r in saved if not np.isnan(r["eval_loss_median"])]
  assert [r["iteration"] for r in evals] == [9, 19]
  assert {"loss_seed1", "bit_error_median", "eval_bit_error_seed0"} <= set(saved[0])
  assert json.load(open(os.path.join(workdir, run_lib.CONFIG_JSON)))["network"] == "lstm"
  assert os.path.exists(os.path.join(workdir, episodic_train.CURVES_PNG))
  np.testing.assert_array_equal(np.asarray(state.iteration), [20, 20])
  out = episodic_plots.plot_completions([workdir], str(tmp_path / "completions.png"))
  assert os.path.getsize(out) > 0
  result = episodic_plots.completions(workdir)
  assert result["output"].shape == result["target"].shape == (20,)


def test_resume_gives_the_same_numbers(tmp_path):
  straight = str(tmp_path / "straight")
  split = str(tmp_path / "split")
  episodic_train.train_and_evaluate(tiny(iterations=30), straight)
  episodic_train.train_and_evaluate(tiny(iterations=20), split)
  episodic_train.train_and_evaluate(tiny(iterations=30, resume=True), split)
  a, b = read_rows(straight), read_rows(split)
  assert len(a) == len(b) == 30
  for row_a, row_b in zip(a, b):
    for name in ("loss_seed0", "bit_error_seed0", "eval_loss_seed0"):
      np.testing.assert_equal(row_a[name], row_b[name])


def test_non_finite_values_stop_the_run_and_keep_what_was_saved(tmp_path):
  workdir = str(tmp_path / "nan")
  # W ~ 1e38 N(0, 1): the drives overflow, the loss or its gradient is not finite.
  with pytest.raises(run_lib.NonFiniteError, match="iteration 0 .*no checkpoint was saved yet"):
    episodic_train.train_and_evaluate(tiny(iterations=20, init_scale=1e38), workdir)
  assert read_rows(workdir) == []


def test_bad_settings_are_clear_errors():
  with pytest.raises(ValueError, match="network"):
    tiny(network="transformer")
  with pytest.raises(ValueError, match="odd"):
    tiny(pattern_size=21)
  with pytest.raises(ValueError, match="data_dir"):
    episodic_defaults("ImageCompletion-v0", image_source="cifar10")
  with pytest.raises(ValueError, match="task"):
    episodic_defaults("Omniglot-v9")
  with pytest.raises(ValueError, match="Unknown EpisodicConfig field"):
    EpisodicConfig.from_dict({"hidden_units": 3})


def test_flags_give_the_reference_defaults_and_reject_bad_values(tmp_path):
  fv = flags.FlagValues()
  episodic.define_flags(fv)
  fv(["prog", "--task=ImageCompletion-v0", "--network=rnn", f"--workdir={tmp_path}"])
  config = episodic.config_from_flags(fv)
  assert (config.task, config.network, config.learning_rate) == ("ImageCompletion-v0", "rnn", 1e-4)
  fv = flags.FlagValues()
  episodic.define_flags(fv)
  fv(["prog", "--pattern_size=7", f"--workdir={tmp_path}"])
  with pytest.raises(ValueError, match="pattern_size"):
    episodic.config_from_flags(fv)


def test_demo_reports_what_each_network_learned_and_reruns(tmp_path, monkeypatch, capsys):
  from train import demo

  small = {k: v for k, v in TINY.items() if k != "progress"}
  monkeypatch.setattr(demo, "DEMO", dict(small, iterations=20))
  monkeypatch.setattr(demo, "episodic_defaults", lambda task, **kw: tiny(**kw))
  results = demo.run_demo(str(tmp_path), progress=False)
  assert set(results) == {"plastic", "rnn"}
  out = capsys.readouterr().out
  assert "Wrong bits" in out and "curves.png" in out and "completions.png" in out
  assert os.path.exists(tmp_path / "curves.png") and os.path.exists(tmp_path / "completions.png")
  again = demo.run_demo(str(tmp_path), progress=False)  # Finished runs: reported, not redone.
  assert again == results
  assert "nothing to do" in capsys.readouterr().out
