"""train.attribute: the drift of mean |m(t)| split by A2C loss term."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from tests.a2c_tiny import TINY
from train import a2c_learner, a2c_train
from train import attribute as attribute_lib
from train.a2c_config import a2c_defaults


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("attribute") / "run")
  config = a2c_defaults("CueReward-v0", **dict(TINY, network="modplast", iterations=4))
  a2c_train.train_and_evaluate(config, path)
  return path


@pytest.mark.parametrize("step_impl", ["fused", "reference"])
def test_term_gradients_sum_to_the_training_gradient(workdir, step_impl):
  config, params, _, hparams, _ = attribute_lib.load(workdir)
  spec = a2c_learner.make_spec(config.replace(step_impl=step_impl))  # baseline batch0
  key = jax.random.key(3)
  got = attribute_lib.make_gradients(spec)(params, key, hparams)
  value_and_grad = jax.value_and_grad(a2c_learner.loss, argnums=1, has_aux=True)
  (loss, (aux, trajectory)), expected = jax.jit(value_and_grad, static_argnums=0)(
    spec, params, key, hparams
  )
  terms = [got[f"batch0/{t}"] for t in attribute_lib.TERMS]
  np.testing.assert_allclose(sum(float(v) for v, _ in terms), float(loss), rtol=1e-5)
  np.testing.assert_allclose(
    sum(np.asarray(g) for _, g in terms), ravel_pytree(expected)[0], rtol=1e-4, atol=1e-7
  )
  np.testing.assert_allclose(float(got["m_abs"][0]), float(aux["modulation_abs"]), rtol=1e-5)
  # The other baseline's terms: the loss with baseline="own" of the same episodes.
  own = a2c_learner.loss_terms(trajectory, hparams, config.entropy_kind, "own")
  expected_own = (own.policy_loss, own.entropy_loss, hparams.value_coef * own.value_loss)
  for term, value in zip(attribute_lib.TERMS, expected_own):
    np.testing.assert_allclose(float(got[f"own/{term}"][0]), float(value), rtol=1e-5)
  assert float(got["own/value"][0]) != float(got["batch0/value"][0])
  # The pathwise gradient of mean |m|: autodiff of the reference step's scan
  # on the same observations and actions (independent of the fused kernels).
  reference = a2c_learner.make_spec(config.replace(step_impl="reference"))

  def m_abs(p):
    replayed = a2c_learner.replay(reference, p, trajectory.replace(replay=None), hparams)
    return jnp.mean(jnp.abs(replayed.modulation))

  m_grad = ravel_pytree(jax.jit(jax.grad(m_abs))(params))[0]
  np.testing.assert_allclose(got["m_abs_pathwise"][1], m_grad, rtol=1e-3, atol=1e-6)
  assert np.any(m_grad != 0)
  # The full gradient adds the score-function term: it differs, with the same value.
  assert float(got["m_abs"][0]) == pytest.approx(float(got["m_abs_pathwise"][0]))
  assert not np.allclose(got["m_abs"][1], got["m_abs_pathwise"][1])


def test_modulation_surrogate_matches_a_loop():
  rng = np.random.default_rng(4)
  steps, batch = 6, 4
  m_abs = rng.uniform(size=(steps, batch)).astype(np.float32)
  log_prob = -rng.uniform(size=(steps, batch)).astype(np.float32)
  value = attribute_lib.modulation_surrogate(jnp.asarray(m_abs), jnp.asarray(log_prob))
  assert float(value) == pytest.approx(m_abs.mean(), rel=1e-6)
  d_m, d_log_prob = jax.grad(attribute_lib.modulation_surrogate, argnums=(0, 1))(
    jnp.asarray(m_abs), jnp.asarray(log_prob)
  )
  np.testing.assert_allclose(d_m, np.full_like(m_abs, 1 / (steps * batch)), rtol=1e-6)
  expected = np.zeros_like(log_prob)
  for s in range(steps):
    for b in range(batch):
      for t in range(s + 1, steps):  # m_t depends on the actions before t.
        others = (m_abs[t].sum() - m_abs[t, b]) / (batch - 1)
        expected[s, b] += (m_abs[t, b] - others) / (steps * batch)
  np.testing.assert_allclose(d_log_prob, expected, rtol=1e-5, atol=1e-7)


def test_pair_estimate_and_its_jackknife_match_a_loop():
  rng = np.random.default_rng(5)
  n, size = 5, 7
  grad_m, steps = rng.normal(size=(n, size)), rng.normal(size=(n, size)) + 0.3

  def pairs(keep):
    return np.mean([grad_m[i] @ steps[j] for i in keep for j in keep if i != j])

  estimate, sem = attribute_lib.pair_estimate(grad_m, steps)
  assert estimate == pytest.approx(pairs(range(n)))
  leave_out = np.array([pairs([i for i in range(n) if i != j]) for j in range(n)])
  expected_sem = np.sqrt((n - 1) / n * np.sum((leave_out - leave_out.mean()) ** 2))
  assert sem == pytest.approx(expected_sem)
  with pytest.raises(ValueError, match="at least 3"):
    attribute_lib.pair_estimate(grad_m[:2], steps[:2])


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


def test_modulator_mask_marks_the_modulators_parameters():
  params = {"cell": {"mod_kernel": 1, "mod_bias": 2, "w": 3, "fanout_kernel": 4}, "value": {"k": 5}}
  assert attribute_lib.modulator_mask(params) == {
    "cell": {"mod_kernel": True, "mod_bias": True, "w": False, "fanout_kernel": False},
    "value": {"k": False},
  }


def test_attribute_workdir_assembles_the_drift_from_the_gradients(workdir):
  result = attribute_lib.attribute_workdir(workdir, batches=3, seed=7)
  assert result["iteration"] == 4 and result["run_baseline"] == "batch0"
  assert result["denominator"]["batch0"].startswith("the checkpoint's Adam nu (count 4)")
  # One entry by hand: the value term's drift through the modulator's parameters.
  config, params, opt_state, hparams, _ = attribute_lib.load(workdir)
  gradients = attribute_lib.make_gradients(a2c_learner.make_spec(config))
  rows = [gradients(params, k, hparams) for k in jax.random.split(jax.random.key(7), 3)]
  mask = ravel_pytree(
    jax.tree.map(lambda m, x: np.full(np.shape(x), m), attribute_lib.modulator_mask(params), params)
  )[0]
  denom = ravel_pytree(attribute_lib.adam_denominator(opt_state, float(hparams.adam_eps)))[0]
  steps = []
  for r in rows:
    total = sum(np.asarray(r[f"batch0/{t}"][1]) for t in attribute_lib.TERMS)
    clip = min(1.0, float(hparams.grad_clip_norm) / np.linalg.norm(total))
    steps.append(-float(hparams.learning_rate) * clip * np.asarray(r["batch0/value"][1]) / denom)
  grad_m = [np.asarray(r["m_abs"][1]) * mask for r in rows]
  expected = np.mean([grad_m[i] @ steps[j] for i in range(3) for j in range(3) if i != j])
  got = result["drift"]["batch0/value/modulator"]["mean"]
  assert got == pytest.approx(expected, rel=1e-4, abs=1e-12)
  drift = result["drift"]
  difference = drift["own/value/all"]["mean"] - drift["batch0/value/all"]["mean"]
  assert drift["own-batch0/value/all"]["mean"] == pytest.approx(difference, rel=1e-6, abs=1e-12)
  table = attribute_lib.format_table(result)
  assert "own - batch0 (all, same batches): policy" in table
  assert "own*" in table and "batch0    value" in table and "batches clipped" in table
  at_init = attribute_lib.attribute_workdir(workdir, batches=3, at_init=True)
  assert at_init["iteration"] == 0 and at_init["denominator"]["own"].startswith("steady")
  assert at_init["m_abs"] != result["m_abs"]


def test_bad_input_names_the_problem(workdir, tmp_path):
  with pytest.raises(ValueError, match="out of range"):
    attribute_lib.load(workdir, seed_index=3)
  with pytest.raises(ValueError, match="at least 3"):
    attribute_lib.attribute_workdir(workdir, batches=2)
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
  script.run_points(workdir, ["init", "4"], [0], batches=3)
  results = script.load()
  assert sorted(r["file"] for r in results) == ["run_agent0_4.json", "run_agent0_init.json"]
  assert {r["workdir"] for r in results} == {"run"}  # the folder's name, not the machine's path
  rows = [row for row in script.table(results).splitlines() if row.startswith("| run | 0 |")]
  assert len(rows) == 4 and sum("own*" in row for row in rows) == 2
  value = results[0]["drift"]["own/value/all"]["mean"]
  assert f"{script.PER * value:+.4f}" in "\n".join(rows)
  script.figure(results, str(tmp_path / "attribution.png"))
  assert os.path.getsize(tmp_path / "attribution.png") > 0
