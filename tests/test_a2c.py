"""A2C meta-training (train/a2c_loss, a2c_learner, a2c_train, a2c): returns, loss,
runs, resume, guards, CLI flags."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from bpm_jax import fused_step, xla
from tests.a2c_tiny import TINY
from train import a2c, a2c_learner, a2c_train, evaluate
from train import a2c_loss as losses
from train import checkpoint as checkpoint_lib
from train import inspect as agent_inspect
from train import metrics as metrics_lib
from train import run as run_lib
from train.a2c_config import A2CConfig, a2c_defaults, paper_defaults, resolve_step_impl


def tiny(env="CueReward-v0", network="modplast", **overrides):
  return a2c_defaults(env, **dict(TINY, network=network, **overrides))


def read_rows(workdir):
  return metrics_lib.read_csv(os.path.join(workdir, "metrics.csv"))


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------
# Returns and loss.


@pytest.mark.parametrize("use_jit", [False, True])
def test_discounted_returns_by_hand(use_jit):
  rewards = jnp.array([0.0, 1.0, 0.0, 2.0])
  fn = jax.jit(losses.discounted_returns) if use_jit else losses.discounted_returns
  # R3 = 2; R2 = 0 + .5*2 = 1; R1 = 1 + .5*1 = 1.5; R0 = 0 + .5*1.5 = .75.
  np.testing.assert_allclose(fn(rewards, 0.5), [0.75, 1.5, 1.0, 2.0])
  # Batched [T, B]: each column on its own; gamma = 0 gives the rewards.
  batch = jnp.array([[1.0, -1.0], [0.0, 0.0], [1.0, 3.0]])
  np.testing.assert_allclose(fn(batch, 0.9), [[1.81, 1.43], [0.9, 2.7], [1.0, 3.0]], rtol=1e-6)
  np.testing.assert_allclose(fn(batch, 0.0), batch)


def test_advantages_by_hand():
  rewards = jnp.array([[1.0], [0.0], [-1.0]])
  values = jnp.array([[0.5], [0.2], [-2.0]])
  advantages = losses.discounted_returns(rewards, 0.9) - values
  # Returns: R2 = -1, R1 = -0.9, R0 = 1 - 0.81 = 0.19.
  np.testing.assert_allclose(advantages, [[0.19 - 0.5], [-0.9 - 0.2], [-1.0 + 2.0]], rtol=1e-6)


def numpy_loss(
  log_prob, value, reward, penalty, gamma, value_coef, entropy_coef, baseline="batch0"
):
  """SPEC.md §5.3 written as the reference's loop over steps and episodes.

  baseline="batch0": the reference's `R - vs[t][0]` (batch element 0's value
  for every episode); "own": each episode's own V_t.
  """
  num_steps, batch = reward.shape
  total = 0.0
  for b in range(batch):
    ret, policy, value_loss, reg = 0.0, 0.0, 0.0, 0.0
    for t in reversed(range(num_steps)):
      ret = reward[t, b] + gamma * ret
      v = value[t, 0] if baseline == "batch0" else value[t, b]
      policy -= log_prob[t, b] * (ret - v)
      value_loss += (ret - v) ** 2
      reg += entropy_coef * penalty[t, b]
    total += (policy + reg + value_coef * value_loss) / num_steps
  return total / batch


@pytest.mark.parametrize("baseline", ["batch0", "own"])
@pytest.mark.parametrize("use_jit", [False, True])
def test_a2c_loss_against_numpy(use_jit, baseline):
  rng = np.random.default_rng(0)
  log_prob, value, reward, penalty = (rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4))
  loss_fn = functools.partial(losses.a2c_loss, baseline=baseline)
  fn = jax.jit(loss_fn) if use_jit else loss_fn
  terms = fn(log_prob, value, reward, penalty, 0.9, 0.1, 0.03)
  want = numpy_loss(log_prob, value, reward, penalty, 0.9, 0.1, 0.03, baseline)
  np.testing.assert_allclose(terms.loss, want, rtol=1e-5)
  np.testing.assert_allclose(
    terms.loss, terms.policy_loss + terms.entropy_loss + 0.1 * terms.value_loss, rtol=1e-6
  )


def test_a2c_loss_gradients_stop_at_the_advantage():
  """d/dlogpi = -sg(A)/(T B); d/dV = -2 value_coef A/(T B): the baseline is not pushed by the policy."""
  rng = np.random.default_rng(1)
  log_prob, value, reward, penalty = (
    jnp.asarray(rng.normal(size=(4, 2)), jnp.float32) for _ in range(4)
  )
  adv = losses.discounted_returns(reward, 0.9) - value
  g_logp, g_value = jax.grad(
    lambda lp, v: losses.a2c_loss(lp, v, reward, penalty, 0.9, 0.1, 0.0, "own").loss, argnums=(0, 1)
  )(log_prob, value)
  np.testing.assert_allclose(g_logp, -adv / 8, rtol=1e-5)
  np.testing.assert_allclose(g_value, -2 * 0.1 * adv / 8, rtol=1e-5)


def test_batch0_baseline_trains_only_element_0s_value_towards_the_batch_mean():
  """SPEC §5.3 (1): A_t^b = R_t^b - V_t^0; d/dV^0 = -2 vc sum_b A^b / (T B), d/dV^b>0 = 0."""
  rng = np.random.default_rng(2)
  log_prob, value, reward, penalty = (
    jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(4)
  )
  adv = losses.discounted_returns(reward, 0.9) - value[:, :1]  # [T, B]
  g_logp, g_value = jax.grad(
    lambda lp, v: losses.a2c_loss(lp, v, reward, penalty, 0.9, 0.1, 0.0, "batch0").loss,
    argnums=(0, 1),
  )(log_prob, value)
  np.testing.assert_allclose(g_logp, -adv / 12, rtol=1e-5)
  np.testing.assert_allclose(g_value[:, 0], -2 * 0.1 * adv.sum(1) / 12, rtol=1e-5)
  np.testing.assert_array_equal(g_value[:, 1:], 0.0)
  # Its optimum is the batch-mean return.
  mean_return = losses.discounted_returns(reward, 0.9).mean(1)
  at_mean = value.at[:, 0].set(mean_return)
  g_at_mean = jax.grad(
    lambda v: losses.a2c_loss(log_prob, v, reward, penalty, 0.9, 0.1, 0.0, "batch0").loss
  )(at_mean)
  np.testing.assert_allclose(g_at_mean, 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="batch0"):
    losses.a2c_loss(log_prob, value, reward, penalty, 0.9, 0.1, 0.0, "mine")


def test_reference_defaults_batch0_baseline_and_101_burn_in(tmp_path):
  """SPEC §5.3: both are the default; a config.json written before `baseline`
  existed resumes with the baseline it ran with (each episode's own V_t)."""
  config = a2c_defaults("CueReward-v0")
  assert config.baseline == "batch0" and config.burn_in == 101
  old = config.to_dict()
  del old["baseline"]
  assert A2CConfig.from_json(json.dumps(old)).baseline == "own"
  assert A2CConfig.from_json(config.to_json()) == config


def test_loss_of_a_fixed_rollout_against_numpy():
  config = tiny()
  spec = a2c_learner.make_spec(config)
  hp = config.hparams()
  params = jax.tree.map(lambda x: x[0], a2c_train.init_state(config).params)
  key = jax.random.key(5)
  loss_fn = functools.partial(a2c_learner.loss, spec)
  loss, (aux, traj) = xla.compile(jax.jit(loss_fn), params, key, hp, fast=config.fast_compile)(
    params, key, hp
  )
  traj = jax.device_get(traj)
  assert traj.log_prob.shape == (12, 3) and traj.modulation.shape == (12, 3, 1)
  # The rollout's own bookkeeping: log pi(a) <= 0 and the concentration and
  # entropy of a 2-action softmax are tied by p = exp(log pi(a)).
  p = np.exp(traj.log_prob)
  np.testing.assert_allclose(traj.concentration, p**2 + (1 - p) ** 2, rtol=1e-5)
  np.testing.assert_allclose(
    traj.entropy, -(p * np.log(p) + (1 - p) * np.log1p(-p)), rtol=1e-4, atol=1e-6
  )
  want = numpy_loss(traj.log_prob, traj.value, traj.reward, traj.concentration, 0.9, 0.1, 0.1)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_array_equal(losses.regulariser(traj, "concentration"), traj.concentration)
  np.testing.assert_array_equal(losses.regulariser(traj, "entropy"), -traj.entropy)
  np.testing.assert_allclose(aux["reward"], traj.reward.sum(0).mean(), rtol=1e-6)
  # Cue-reward: only Go steps are rewarded, with +-1.
  assert set(np.unique(traj.reward)) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("network", ["modplast", "retromod"])
def test_step_impls_and_remat_give_the_same_loss_and_gradients(network):
  """`fast` (custom VJP) and `remat` change memory and speed, not the numbers."""
  variants = [
    tiny(network=network, step_impl="reference"),
    tiny(network=network, step_impl="fast"),
    tiny(network=network, step_impl="fast", remat=True),
  ]
  specs = [a2c_learner.make_spec(c) for c in variants]
  hp = variants[0].hparams()
  params = jax.tree.map(lambda x: x[0], a2c_train.init_state(variants[0]).params)

  def all_grads(params, key):
    return [jax.grad(lambda p, s=s: a2c_learner.loss(s, p, key, hp)[0])(params) for s in specs]

  key = jax.random.key(3)
  grads = xla.compile(jax.jit(all_grads), params, key, fast=variants[0].fast_compile)(params, key)
  for other in grads[1:]:
    for x, y in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(other), strict=True):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(grads[0]["params"]["cell"]["alpha"])).max() > 0


@pytest.mark.skipif(not fused_step.available(), reason="fused kernel cannot build here")
@pytest.mark.parametrize("network", ["plastic", "modplast", "retromod"])
def test_fused_replay_reproduces_the_rollout_and_its_gradient(network):
  """`step_impl=fused`: the loss replays the rollout's observations through the
  sequence kernel: the same log pi(a_t), V_t and m_t (to float32 rounding), and
  the gradient of the step-by-step `fast` rollout."""
  config = tiny(network=network, step_impl="fused")
  spec, fast = (
    a2c_learner.make_spec(config),
    a2c_learner.make_spec(config.replace(step_impl="fast")),
  )
  assert a2c_learner.replays_rollout(spec) and not a2c_learner.replays_rollout(fast)
  hp = config.hparams()
  params = jax.tree.map(lambda x: x[0], a2c_train.init_state(config).params)
  key = jax.random.key(5)

  def both(params, key):
    rolled = a2c_learner.rollout(spec, params, key, hp, config.batch_size)
    _, (_, replayed) = a2c_learner.loss(spec, params, key, hp)
    grads = [
      jax.grad(lambda p, s=s: a2c_learner.loss(s, p, key, hp)[0])(params) for s in (spec, fast)
    ]
    return rolled, replayed, grads

  rolled, replayed, (got, want) = xla.compile(jax.jit(both), params, key, fast=config.fast_compile)(
    params, key
  )
  for field in ("action", "reward", "obs"):
    np.testing.assert_array_equal(getattr(replayed, field), getattr(rolled, field))
  # The same kernels; the dense layers see [T, B, .] instead of [B, .] at a
  # time, which may round differently in the last bit.
  for field in ("log_prob", "concentration", "modulation", "value"):
    np.testing.assert_allclose(
      getattr(replayed, field), getattr(rolled, field), rtol=1e-5, atol=1e-6
    )
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(got["params"]["cell"]["alpha"])).max() > 0


def test_auto_step_impl_resolves_and_fused_rejects_what_it_cannot_run():
  """`auto` is resolved when the learner is built, not when a config is made."""
  fused = "fused" if fused_step.available() else "fast"
  assert A2CConfig(network="modplast").step_impl == "auto"
  assert resolve_step_impl(A2CConfig(network="modplast")) == fused
  assert resolve_step_impl(A2CConfig(network="retromod", rule="clip")) == fused
  assert resolve_step_impl(A2CConfig(network="rnn")) == "fast"
  assert resolve_step_impl(A2CConfig(network="modplast", rule="decay")) == "fast"
  assert resolve_step_impl(A2CConfig(network="modplast", step_impl="reference")) == "reference"
  assert a2c_learner.make_spec(A2CConfig(network="modplast")).config.step_impl == fused
  with pytest.raises(ValueError, match="--step_impl=fused.*rule='oja'.*step_impl='fast'"):
    A2CConfig(network="plastic", rule="oja", step_impl="fused")


def test_batch_groups_average_the_gradients_of_their_groups():
  """G = 2 groups of B/2 episodes: the mean of the two B/2-batch gradients and metrics."""
  grouped = tiny(batch_size=4, batch_groups=2)
  half = a2c_learner.make_spec(tiny(batch_size=2))
  hp = grouped.hparams()
  params = jax.tree.map(lambda x: x[0], a2c_train.init_state(grouped).params)
  key = jax.random.key(5)

  def both(params, key):
    got = a2c_learner.grads(a2c_learner.make_spec(grouped), params, key, hp)
    parts = [a2c_learner.grads(half, params, k, hp) for k in jax.random.split(key, 2)]
    want = jax.tree.map(lambda a, b: (a + b) / 2, *parts)
    return got, want, parts[0][0]

  got, want, first = xla.compile(jax.jit(both), params, key, fast=grouped.fast_compile)(params, key)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  # Not trivially equal to one group's gradient.
  alpha = lambda g: np.asarray(g["params"]["cell"]["alpha"])
  assert not np.allclose(alpha(got[0]), alpha(first))
  with pytest.raises(ValueError, match="batch_groups=4 must divide batch_size=6"):
    tiny(batch_size=6, batch_groups=4)


# --------------------------------------------------------------------------
# Whole runs.


SMOKE = [
  (env, network)
  for env in ("CueReward-v0", "GridMaze-v0")
  for network in ("rnn", "plastic", "modplast", "retromod")
]
SMOKE += [("CueRewardFixedCues-v0", "plastic")]


@pytest.mark.parametrize("env,network", SMOKE)
def test_smoke_run_writes_all_outputs(tmp_path, env, network):
  config = tiny(env, network)
  state, rows = a2c_train.train_and_evaluate(config, str(tmp_path))
  assert [r["iteration"] for r in rows] == [0, 1]
  assert [r["iteration"] for r in read_rows(tmp_path)] == [0.0, 1.0]
  for row in rows:
    assert all(np.isfinite(v) for v in row.values())
    assert row["env_steps_per_s"] > 0
  used = config.replace(step_impl=resolve_step_impl(config))  # config.json: as used.
  assert A2CConfig.from_json((tmp_path / "config.json").read_text()) == used
  assert (tmp_path / "curves.png").stat().st_size > 0
  assert any(p.startswith("events.out.tfevents") for p in os.listdir(tmp_path))
  assert int(np.asarray(state.iteration)[0]) == 2
  restored_config, restored, iteration = a2c_train.restore_state(str(tmp_path))
  assert iteration == 2 and restored_config == used
  assert_trees_equal(restored.params, state.params)
  if env == "GridMaze-v0":  # Batch means of multiples of the reward 10.
    for r in rows:
      found = r["reward_seed0"] * config.batch_size / 10
      assert abs(found - round(found)) < 1e-4
  if env == "GridMaze-v0" and network == "modplast":
    written = agent_inspect.inspect_workdir(str(tmp_path), str(tmp_path / "m.png"))
    assert set(written) == {"modulation", "gif"}
    assert (tmp_path / "m.png").stat().st_size > 0
    assert (tmp_path / "episode.gif").read_bytes()[:3] == b"GIF"
    # An exported agent, with m(t) around the rewards of fresh episodes.
    agent = evaluate.export_agent(str(tmp_path), 0, str(tmp_path / "agent"))
    out = tmp_path / "agent_m.png"
    written = agent_inspect.inspect_workdir(agent, str(out), episodes=6)
    assert set(written) == {"modulation", "gif", "around_reward", "around_reward_json"}
    summary = json.loads((tmp_path / "agent_m_around_reward.json").read_text())
    assert (summary["iteration"], summary["episodes"], summary["network"]) == (2, 6, "modplast")
    trajectory = agent_inspect.record_episodes(agent, 6)[2]  # The same key: the same episodes.
    modulation, reward = trajectory.modulation, trajectory.reward
    assert modulation.shape == (config.episode_length, 6, 1)
    lags = len(summary["lags"])
    inside = reward[3 : config.episode_length - 8]  # Events with a whole window.
    assert summary["negative"]["events"] == int(np.sum(inside < 0))
    assert summary["positive"]["events"] == int(np.sum(inside > 0))
    if summary["negative"]["events"]:
      assert np.asarray(summary["negative"]["median"]).shape == (1, lags)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The base tiny run for 4 iterations, in 2 chunks of 2 (checkpoints at 2, 4)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  state, _ = a2c_train.train_and_evaluate(tiny(iterations=4), str(workdir))
  return workdir, state


def test_resume_equals_uninterrupted(tmp_path, uninterrupted):
  full_dir, full_state = uninterrupted
  a2c_train.train_and_evaluate(tiny(iterations=2), str(tmp_path))
  with pytest.raises(ValueError, match="--resume"):
    a2c_train.train_and_evaluate(tiny(iterations=4), str(tmp_path))
  state, rows = a2c_train.train_and_evaluate(tiny(iterations=4, resume=True), str(tmp_path))
  assert [r["iteration"] for r in rows] == [2, 3]
  assert_trees_equal(state, full_state)
  want, got = read_rows(full_dir), read_rows(tmp_path)
  assert [r["iteration"] for r in got] == [0, 1, 2, 3]
  for w, g in zip(want, got):
    for k in w:
      if k != "env_steps_per_s":
        assert w[k] == g[k], (k, w, g)


def test_resume_rejects_a_different_config(tmp_path):
  a2c_train.train_and_evaluate(tiny(), str(tmp_path))
  with pytest.raises(ValueError, match="hidden_size"):
    a2c_train.train_and_evaluate(tiny(hidden_size=9, iterations=4, resume=True), str(tmp_path))


def test_same_seed_same_numbers_other_seed_differs(tmp_path, uninterrupted):
  full_dir, full_state = uninterrupted
  state, _ = a2c_train.train_and_evaluate(tiny(iterations=4), str(tmp_path / "same"))
  assert_trees_equal(state, full_state)
  other, _ = a2c_train.train_and_evaluate(tiny(iterations=4, seed=1), str(tmp_path / "other"))
  assert not np.array_equal(
    other.params["params"]["cell"]["w"], full_state.params["params"]["cell"]["w"]
  )


def test_vmapped_seeds_equal_separate_runs(tmp_path):
  both, rows = a2c_train.train_and_evaluate(tiny(num_seeds=2), str(tmp_path / "both"))
  assert set(rows[0]) >= {"reward_seed0", "reward_seed1", "reward_median"}
  for s in range(2):
    alone, alone_rows = a2c_train.train_and_evaluate(tiny(seed=s), str(tmp_path / f"seed{s}"))
    for x, y in zip(jax.tree.leaves(both), jax.tree.leaves(alone), strict=True):
      np.testing.assert_allclose(np.asarray(x)[s], np.asarray(y)[0], rtol=2e-5, atol=1e-6)
    for r, ra in zip(rows, alone_rows):
      assert r[f"reward_seed{s}"] == ra["reward_seed0"]
  assert rows[0]["reward_median"] == pytest.approx(
    np.median([rows[0]["reward_seed0"], rows[0]["reward_seed1"]])
  )


def test_make_train_vmaps_over_hyperparameters():
  """purejaxrl style: the whole run is one function of (key, hparams)."""
  config = tiny()
  train = jax.jit(jax.vmap(a2c_learner.make_train(config), in_axes=(None, 0)))
  hp = config.hparams()
  sweep = jax.tree.map(lambda x: jnp.stack([x, x]), hp).replace(
    learning_rate=jnp.array([1e-4, 3e-2])
  )
  key = jax.random.key(0)
  state, metrics = xla.compile(train, key, sweep, fast=config.fast_compile)(key, sweep)
  assert metrics["loss"].shape == (2, 2) and state.iteration.tolist() == [2, 2]
  w0 = a2c_train.init_state(config).params["params"]["cell"]["w"][0]  # Seed 0: key(0).
  step0 = np.abs(np.asarray(state.params["params"]["cell"]["w"][0]) - w0).max()
  step1 = np.abs(np.asarray(state.params["params"]["cell"]["w"][1]) - w0).max()
  assert 0 < step0 < step1  # Adam moves each weight by about lr per step.
  assert step0 <= 3 * 1e-4


def test_burn_in_computes_but_does_not_apply_gradients(tmp_path):
  config = tiny(
    "GridMaze-v0",
    "plastic",
    burn_in=2,
    iterations=3,
    chunk_size=1,
    checkpoint_every=1,
    entropy_kind="entropy",
    remat=True,
  )
  state, rows = a2c_train.train_and_evaluate(config, str(tmp_path))
  init = a2c_train.init_state(config)
  assert all(r["grad_norm"] > 0 for r in rows)
  # Two iterations of burn-in left the parameters and Adam alone; the third moved them.
  _, after_burn_in, _ = a2c_train.restore_state(str(tmp_path), step=2)
  assert_trees_equal(after_burn_in.params, init.params)
  assert int(after_burn_in.opt_state[1][0].count[0]) == 0
  assert int(state.opt_state[1][0].count[0]) == 1
  assert not np.array_equal(state.params["params"]["cell"]["w"], init.params["params"]["cell"]["w"])


# --------------------------------------------------------------------------
# Guards.


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny()
  a2c_train.train_and_evaluate(config, str(tmp_path))
  bad = config.hparams().replace(learning_rate=jnp.float32(np.nan))
  with pytest.raises(run_lib.NonFiniteError, match=r"iteration 2\b") as info:
    a2c_train.train_and_evaluate(tiny(iterations=4, resume=True), str(tmp_path), hparams=bad)
  assert os.path.join("checkpoints", "2") in str(info.value)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.all_steps() == [2]
  ckpt.close()
  _, state, iteration = a2c_train.restore_state(str(tmp_path))
  assert iteration == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  assert [r["iteration"] for r in read_rows(tmp_path)] == [0, 1]


def test_corrupt_checkpoint_names_the_path(tmp_path):
  config = tiny()
  a2c_train.train_and_evaluate(config, str(tmp_path))
  step_dir = tmp_path / "checkpoints" / "2" / "state"
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with pytest.raises(checkpoint_lib.CheckpointError) as info:
    a2c_train.train_and_evaluate(tiny(iterations=4, resume=True), str(tmp_path))
  message = str(info.value)
  assert str(tmp_path / "checkpoints" / "2") in message
  assert "Delete" in message and "fresh workdir" in message


# --------------------------------------------------------------------------
# Command-line flags.


def parse(*args):
  fv = flags.FlagValues()
  a2c.define_flags(fv)
  fv(["a2c", *args])
  return fv


def test_flags_map_one_to_one_and_default_to_the_paper():
  fv = parse(
    "--env=GridMaze-v0",
    "--network=rnn",
    "--workdir=/tmp/x",
    "--noremat",
    "--learning_rate=3e-4",
    "--num_seeds=3",
    "--noprogress",
    "--fast_compile",
  )
  config = a2c.config_from_flags(fv)
  want = A2CConfig(
    **dict(
      paper_defaults("GridMaze-v0", "rnn"),
      learning_rate=3e-4,
      num_seeds=3,
      progress=False,
      remat=False,
      fast_compile=True,
    )
  )
  assert config == want
  assert config.hidden_size == 100 and config.entropy_coef == 0.03
  assert config.episode_length == 200 and config.adam_eps == 1e-4
  cue = a2c.config_from_flags(parse("--workdir=/tmp/x"))
  assert (cue.env, cue.network, cue.hidden_size, cue.episode_length) == (
    "CueReward-v0",
    "modplast",
    200,
    120,
  )
  assert (cue.batch_size, cue.grad_clip_norm, cue.adam_eps, cue.entropy_coef) == (
    30,
    2.0,
    1e-6,
    0.1,
  )
  assert (cue.baseline, cue.burn_in) == ("batch0", 101)
  assert a2c.config_from_flags(parse("--workdir=/tmp/x", "--baseline=own")).baseline == "own"


@pytest.mark.parametrize(
  "arg,allowed",
  [
    ("--network=lstm", "rnn"),
    ("--env=Pong-v0", "GridMaze-v0"),
    ("--entropy_kind=kl", "concentration"),
    ("--step_impl=cuda", "reference"),
    ("--baseline=mean", "batch0"),
  ],
)
def test_unknown_choice_flags_fail_at_parse(arg, allowed):
  with pytest.raises(flags.IllegalFlagValueError) as info:
    parse(arg, "--workdir=/tmp/x")
  assert arg.split("=")[0].lstrip("-") in str(info.value) and allowed in str(info.value)


@pytest.mark.parametrize(
  "arg",
  [
    "--learning_rate=-1",
    "--hidden_size=0",
    "--batch_size=-3",
    "--discount=1.5",
    "--maze_size=8",
    "--grad_clip_norm=0",
  ],
)
def test_bad_numeric_flags_fail_before_any_work(arg):
  fv = parse(arg, "--workdir=/tmp/x")
  name = arg.split("=")[0]
  with pytest.raises(ValueError, match=name):
    a2c.config_from_flags(fv)


def test_resume_flag_takes_the_saved_settings(tmp_path):
  saved = a2c_defaults(
    "GridMaze-v0", network="retromod", hidden_size=8, learning_rate=1e-3, num_seeds=2
  )
  (tmp_path / "config.json").write_text(saved.to_json())
  # `--workdir=DIR --resume` alone continues the saved run; run control may change.
  config = a2c.config_from_flags(parse(f"--workdir={tmp_path}", "--resume", "--iterations=50"))
  assert config == saved.replace(resume=True, iterations=50)
  # A flag that is given still wins (the trainer then refuses the changed setting).
  config = a2c.config_from_flags(parse(f"--workdir={tmp_path}", "--resume", "--hidden_size=9"))
  assert (config.env, config.network, config.hidden_size) == ("GridMaze-v0", "retromod", 9)
  # Without --resume the saved file is not read: the paper's defaults.
  fresh = a2c.config_from_flags(parse(f"--workdir={tmp_path}"))
  assert (fresh.env, fresh.network, fresh.hidden_size) == ("CueReward-v0", "modplast", 200)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="config.json.*fresh --workdir"):
    a2c.config_from_flags(parse(f"--workdir={tmp_path}", "--resume"))


def test_workdir_flag_is_required():
  with pytest.raises(ValueError, match="--workdir"):
    a2c.config_from_flags(parse("--network=rnn"))
