"""Tests of envs.cue_reward against SPEC 5.1 and its NumPy transcription."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.cue_reward import (
  EMPTY,
  GO,
  CueReward,
  EnvParams,
  sample_distinct_cues,
  trial_draw_size,
  trial_from_uniform,
)
from tests.env_rollouts import eager_rollout, rollout
from tests.numpy_envs import NumpyCueReward

# One instance per shape config, so each jitted rollout compiles once.
_ENVS = {
  "default": CueReward(),
  "fixed": CueReward(n_cues=4, cue_bits=4, fixed_cues=True),
  "six_cues": CueReward(n_cues=6, cue_bits=3),
}
_EPISODE_LENGTH = 60
_N_EPISODES = 2  # Every rollout has the same length, so it compiles once per env.


def _random_actions(seed: int, length: int) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).integers(0, 2, length), jnp.int32)


def _run(name: str, seed: int, **param_kwargs):
  """Two episodes of random actions; returns env, params, actions `[T]` and
  the rollout outputs as NumPy."""
  env = _ENVS[name]
  params = EnvParams(max_steps_in_episode=_EPISODE_LENGTH, **param_kwargs)
  actions = _random_actions(seed, _N_EPISODES * _EPISODE_LENGTH)
  out = rollout(env, params, jax.random.key(seed), actions)
  return env, params, np.asarray(actions), jax.tree.map(np.asarray, out)


def _numpy_episode(env, params, states, start: int) -> NumpyCueReward:
  """Builds the NumPy task from the draws stored in the JAX states."""
  middles = []
  for t in range(start, start + params.max_steps_in_episode):
    if states.trial_step[t] == 0:
      length = states.trial_length[t]
      middle = states.schedule[t][1 : length - 2]
      middles.append([None if s == EMPTY else int(s) for s in middle])
  return NumpyCueReward(
    states.cues[start],
    states.target[start],
    middles,
    params.max_steps_in_episode,
    reward=params.reward,
    action_penalty=params.action_penalty,
  )


@pytest.mark.parametrize(
  "name, param_kwargs",
  [
    ("default", {}),
    ("fixed", {"reward": 2.0}),
    ("six_cues", {"action_penalty": 0.25}),
  ],
)
def test_matches_numpy_transcription(name, param_kwargs):
  env, params, actions, (obs, states, rewards, infos) = _run(name, 3, **param_kwargs)
  n_steps = params.max_steps_in_episode
  for start in (0, n_steps):  # The second episode follows the auto-reset.
    reference = _numpy_episode(env, params, states, start)
    for t in range(start, start + n_steps):
      np.testing.assert_allclose(obs[t], reference.observation(), rtol=1e-6, atol=0)
      assert rewards[t] == pytest.approx(reference.step(int(actions[t])))
  truncated = np.nonzero(infos["truncated"])[0]
  np.testing.assert_array_equal(truncated, [n_steps - 1, 2 * n_steps - 1])
  assert not infos["terminated"].any()
  assert (rewards != 0).any()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(sorted(_ENVS)))
def test_trial_structure(seed, name):
  env, params, actions, (obs, states, rewards, infos) = _run(name, seed)
  assert obs.shape == (_N_EPISODES * _EPISODE_LENGTH, env.cue_bits + 7)
  obs, states, rewards, infos, actions = jax.tree.map(
    lambda x: x[:_EPISODE_LENGTH], (obs, states, rewards, infos, actions)
  )  # First episode.
  if not env.fixed_cues:  # Cues distinct, in {-1, +1}.
    assert set(np.unique(states.cues)) <= {-1.0, 1.0}
    assert len({tuple(c) for c in states.cues[0]}) == env.n_cues
  trial_index = infos["trial_index"]
  for trial in range(trial_index[-1]):  # The last trial may be cut off.
    steps = np.nonzero(trial_index == trial)[0]
    length = len(steps)
    assert env.n_cues // 2 + 3 <= length <= env.n_cues // 2 + 2 + env.n_cues
    is_go = infos["is_go"][steps]
    assert is_go.sum() == 1 and is_go[length - 2]
    stimuli = states.schedule[steps[0], :length]
    shown = stimuli[stimuli >= 0]
    assert len(shown) == len(set(shown)) == env.n_cues // 2
    assert stimuli[0] == EMPTY and stimuli[-1] == EMPTY and stimuli[-2] == GO
    go_step = steps[length - 2]
    target_shown = states.target[0] in shown
    correct = actions[go_step] == int(target_shown)
    assert rewards[go_step] == (params.reward if correct else -params.reward)
  # With action_penalty = 0, only the judged Go steps are rewarded.
  assert np.all(rewards[~infos["is_go"]] == 0)
  assert np.all(np.abs(rewards[infos["is_go"]]) == params.reward)


_sample_cues = jax.jit(sample_distinct_cues, static_argnums=(1, 2))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_cues_distinct_in_plus_minus_one(seed):
  # 4 cues of 2 bits: all four patterns, so many redraws (the hard case).
  cues = np.asarray(_sample_cues(jax.random.key(seed), 4, 2))
  assert set(np.unique(cues)) <= {-1.0, 1.0}
  assert len({tuple(c) for c in cues}) == 4


def test_fixed_cues_are_one_hot():
  _, _, _, (_, states, _, _) = _run("fixed", 0)
  np.testing.assert_array_equal(states.cues, np.broadcast_to(np.eye(4), states.cues.shape))


def test_trial_draws_cover_all_lengths_and_layouts():
  u = np.random.default_rng(1).uniform(size=(8000, trial_draw_size(4)))
  schedule, trial_cues, length = jax.jit(jax.vmap(lambda x: trial_from_uniform(x, 4)))(u)
  counts = np.bincount(np.asarray(length), minlength=9)[5:]
  assert np.all(np.abs(counts - 2000) < 200), counts  # L uniform on 5..8.
  # 12 ordered cue pairs x C(L - 3, 2) placements, summed over L = 5..8.
  assert len({tuple(s) for s in np.asarray(schedule)}) == 12 * (1 + 3 + 6 + 10)
  shown = np.bincount(np.asarray(trial_cues).ravel(), minlength=4)
  assert np.all(np.abs(shown - 4000) < 300), shown  # Each cue in half the trials.


def test_target_and_penalty():
  env, params, actions, (obs, states, rewards, infos) = _run("default", 7, action_penalty=0.5)
  penalised = ~infos["is_go"] & (actions == 1)
  assert penalised.any()
  np.testing.assert_array_equal(rewards[penalised], -0.5)
  np.testing.assert_array_equal(rewards[~infos["is_go"] & (actions == 0)], 0.0)
  assert 0 <= states.target[0] < env.n_cues


def test_vmap_equals_single_episodes():
  env = _ENVS["default"]
  params = EnvParams(max_steps_in_episode=_EPISODE_LENGTH)
  keys = jax.random.split(jax.random.key(5), 1024)
  actions = jax.random.randint(jax.random.key(6), (1024, _EPISODE_LENGTH), 0, 2)
  batched = jax.jit(jax.vmap(lambda k, a: rollout(env, params, k, a)))(keys, actions)
  for i in (0, 517, 1023):
    single = rollout(env, params, keys[i], actions[i])
    jax.tree.map(lambda b, s: np.testing.assert_allclose(b[i], s, rtol=1e-6), batched, single)


def test_jit_and_no_jit_agree():
  env, params, actions, jitted = _run("default", 11)
  n = 8
  eager = eager_rollout(env, params, jax.random.key(11), actions[:n])
  jax.tree.map(lambda j, e: np.testing.assert_allclose(j[:n], e, rtol=1e-6), jitted, eager)


def test_spaces():
  env = _ENVS["default"]
  params = env.default_params
  assert env.num_actions == 2 and env.action_space(params).n == 2
  space = env.observation_space(params)
  assert space.shape == (27,)
  _, _, _, (obs, *_) = _run("default", 2)
  assert all(bool(space.contains(o)) for o in obs)
  assert env.name == "CueReward-v0" and _ENVS["fixed"].name == "CueRewardFixedCues-v0"
  assert params.episode_length == params.max_steps_in_episode == 120


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"n_cues": 1}, r"n_cues must be an integer >= 2, got 1"),
    ({"n_cues": 4, "cue_bits": 1}, r"cue_bits=1 is too small for n_cues=4.*cue_bits >= 2"),
    ({"n_cues": 5, "cue_bits": 0}, r"cue_bits must be an integer >= 1, got 0"),
    ({"cue_bits": 3, "fixed_cues": True}, r"cue_bits=3 .*fixed_cues=True.*cue_bits=4"),
  ],
)
def test_invalid_constructor_args(kwargs, match):
  with pytest.raises(ValueError, match=match):
    CueReward(**kwargs)
