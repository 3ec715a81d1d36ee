"""train.attribute: the drift of mean |m(t)| split by A2C loss term."""

import importlib.util
import json
import os

import jax
import numpy as np
import optax
import pytest

from tests.a2c_tiny import TINY
from train import a2c_learner, a2c_train
from train import attribute as attribute_lib
from train.a2c_config import BASELINES, a2c_defaults
from train.a2c_loss import a2c_loss, regulariser


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("attribute") / "run")
  config = a2c_defaults("CueReward-v0", **dict(TINY, network="modplast", iterations=4))
  a2c_train.train_and_evaluate(config, path)
  return path


def test_term_gradients_sum_to_the_training_gradient(workdir):
  config, params, _, hparams, _ = attribute_lib.load(workdir)
  spec = a2c_learner.make_spec(config)  # baseline batch0, the run's.
  key = jax.random.key(3)
  got = attribute_lib.make_gradients(spec)(params, key, hparams)
  value_and_grad = jax.value_and_grad(a2c_learner.loss, argnums=1, has_aux=True)
  (loss, (aux, trajectory)), expected = jax.jit(value_and_grad, static_argnums=0)(
    spec, params, key, hparams
  )
  terms = [got[f"batch0/{t}"] for t in attribute_lib.TERMS]
  np.testing.assert_allclose(sum(float(v) for v, _ in terms), float(loss), rtol=1e-5)
  total = jax.tree.map(lambda *g: sum(g), *(g for _, g in terms))
  for a, b in zip(jax.tree.leaves(total), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(float(got["m_abs"][0]), float(aux["modulation_abs"]), rtol=1e-5)
  # The other baseline's terms: a2c_loss(baseline="own") of the same episodes.
  own = a2c_loss(
    trajectory.log_prob,
    trajectory.value,
    trajectory.reward,
    regulariser(trajectory, config.entropy_kind),
    hparams.discount,
    hparams.value_coef,
    hparams.entropy_coef,
    "own",
  )
  expected_own = (own.policy_loss, own.entropy_loss, hparams.value_coef * own.value_loss)
  for term, value in zip(attribute_lib.TERMS, expected_own):
    np.testing.assert_allclose(float(got[f"own/{term}"][0]), float(value), rtol=1e-5)
  assert float(got["own/value"][0]) != float(got["batch0/value"][0])
  # The gradient of mean |m| is that of the replayed episodes' modulation.
  m_value, grad_m = got["m_abs"]

  def m_abs(p):
    replayed = a2c_learner.replay(spec, p, trajectory.replace(replay=None), hparams)
    return jax.numpy.mean(jax.numpy.abs(replayed.modulation))

  assert float(m_value) == pytest.approx(float(m_abs(params)), rel=1e-5)
  for a, b in zip(jax.tree.leaves(grad_m), jax.tree.leaves(jax.grad(m_abs)(params))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grad_m))


def test_adam_denominator_is_optax_adams():
  params = {"a": np.ones((3,), np.float32), "mod_kernel": np.ones((2,), np.float32)}
  optimizer = optax.adam(1e-2, eps=1e-6)
  state = optimizer.init(params)
  assert attribute_lib.adam_denominator(state, 1e-6) is None
  rng = np.random.default_rng(1)
  for _ in range(3):
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    updates, state = optimizer.update(grads, state)
  denom = attribute_lib.adam_denominator(state, 1e-6)
  # optax's update is -lr mu_hat / D: recover D from it and the first moment.
  (adam,) = [s for s in state if isinstance(s, optax.ScaleByAdamState)]
  mu_hat = jax.tree.map(lambda m: m / (1 - 0.9**3), adam.mu)
  for u, m, d in zip(*(jax.tree.leaves(t) for t in (updates, mu_hat, denom))):
    np.testing.assert_allclose(np.asarray(u), -1e-2 * np.asarray(m) / d, rtol=1e-5)


def test_drift_shares_match_a_loop():
  rng = np.random.default_rng(2)
  shapes = {"cell": {"mod_kernel": (4, 1), "w": (4, 4)}, "value": {"kernel": (4, 1)}}
  tree = lambda: jax.tree.map(  # noqa: E731
    lambda s: rng.normal(size=s), shapes, is_leaf=lambda x: isinstance(x, tuple)
  )
  grad_m, denom = tree(), jax.tree.map(np.abs, tree())
  grads = [tree(), tree()]
  mask = attribute_lib.modulator_mask(grad_m)
  assert mask == {"cell": {"mod_kernel": True, "w": False}, "value": {"kernel": False}}
  got = attribute_lib.drift_shares(grad_m, grads, denom, 0.5, mask)
  for b, g in enumerate(grads):
    modulator = -0.5 * np.sum(
      grad_m["cell"]["mod_kernel"] * g["cell"]["mod_kernel"] / denom["cell"]["mod_kernel"]
    )
    rest = -0.5 * sum(
      np.sum(grad_m[k1][k2] * g[k1][k2] / denom[k1][k2])
      for k1, k2 in (("cell", "w"), ("value", "kernel"))
    )
    assert got["modulator"][b] == pytest.approx(modulator)
    assert got["rest"][b] == pytest.approx(rest)
    assert got["all"][b] == pytest.approx(modulator + rest)


def test_attribute_workdir_and_its_table(workdir):
  result = attribute_lib.attribute_workdir(workdir, batches=2)
  assert result["iteration"] == 4 and result["run_baseline"] == "batch0"
  drift = result["drift"]
  for baseline in BASELINES:
    for where in ("modulator", "rest", "all"):
      total = sum(drift[f"{baseline}/{t}/{where}"]["mean"] for t in attribute_lib.TERMS)
      assert drift[f"{baseline}/total/{where}"]["mean"] == pytest.approx(total, rel=1e-6, abs=1e-12)
  table = attribute_lib.format_table(result)
  assert "own*" in table and "batch0    value" in table
  at_init = attribute_lib.attribute_workdir(workdir, batches=2, at_init=True)
  assert at_init["iteration"] == 0 and at_init["denominator"].startswith("steady")
  assert at_init["m_abs"] != result["m_abs"]


def test_bad_input_names_the_problem(workdir, tmp_path):
  with pytest.raises(ValueError, match="out of range"):
    attribute_lib.load(workdir, seed_index=3)
  with pytest.raises(ValueError, match="at least 2"):
    attribute_lib.attribute_workdir(workdir, batches=1)
  # A run of a network without m(t): refused from its config alone.
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  (tmp_path / "config.json").write_text(json.dumps(dict(saved, network="rnn")))
  with pytest.raises(ValueError, match="no modulation"):
    attribute_lib.load(str(tmp_path))


def test_results_script_writes_json_table_and_figure(workdir, tmp_path, monkeypatch):
  path = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "results",
    "cue_reward",
    "attribution.py",
  )
  spec = importlib.util.spec_from_file_location("cue_reward_attribution", path)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  monkeypatch.setattr(script, "OUT", str(tmp_path / "attribution"))
  script.run_points(workdir, ["init", "4"], [0], batches=2)
  results = script.load()
  assert sorted(r["file"] for r in results) == ["run_agent0_4.json", "run_agent0_init.json"]
  assert {r["workdir"] for r in results} == {"run"}  # the folder's name, not the machine's path
  rows = [row for row in script.table(results).splitlines() if row.startswith("| run | 0 |")]
  assert len(rows) == 4 and sum("own*" in row for row in rows) == 2
  value = results[0]["drift"]["own/value/all"]["mean"]
  assert f"{script.PER * value:+.4f}" in "\n".join(rows)
  script.figure(results, str(tmp_path / "attribution.png"))
  assert os.path.getsize(tmp_path / "attribution.png") > 0
