"""m(t) around rewards (`train.inspect.reward_triggered`) against a plain loop."""

import numpy as np

from train import inspect as agent_inspect


def test_reward_triggered_matches_a_loop():
  rng = np.random.default_rng(0)
  steps, episodes, modulators, before, after = 15, 4, 2, 2, 3
  modulation = rng.normal(size=(steps, episodes, modulators)).astype(np.float32)
  reward = rng.choice([-1.0, 0.0, 0.0, 1.0], size=(steps, episodes)).astype(np.float32)
  reward[0, 0], reward[-1, 1] = 1.0, -1.0  # Events whose window leaves the episode.
  got = agent_inspect.reward_triggered(modulation, reward, before, after)
  np.testing.assert_array_equal(got["lags"], np.arange(-before, after + 1))
  for name, sign in (("positive", 1.0), ("negative", -1.0)):
    expected = []
    for t in range(steps):  # Events in the order of np.nonzero: by step, then episode.
      for n in range(episodes):
        if np.sign(reward[t, n]) == sign and t - before >= 0 and t + after < steps:
          expected.append([modulation[t + lag, n] for lag in range(-before, after + 1)])
    assert len(expected) > 0
    np.testing.assert_array_equal(got[name], np.asarray(expected))
  summary = agent_inspect.summarise_triggered(got)
  positive = np.asarray(got["positive"])
  assert summary["positive"]["events"] == len(positive)
  np.testing.assert_allclose(summary["positive"]["median"], np.median(positive, axis=0).T)


def test_reward_triggered_without_events():
  modulation = np.zeros((10, 2, 1), np.float32)
  reward = np.zeros((10, 2), np.float32)
  summary = agent_inspect.summarise_triggered(agent_inspect.reward_triggered(modulation, reward))
  assert summary["positive"] == {"events": 0} and summary["negative"] == {"events": 0}
