"""The actor-critic agent: a plastic RNN cell plus policy and value heads."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpm_jax import PlasticityConfig, PlasticRNNCell
from bpm_jax.agents import ActorCritic

NETWORKS = ["rnn", "plastic", "modplast", "retromod"]
B, I, H, A = 3, 7, 6, 4


def _agent(network, **kwargs):
  return ActorCritic(num_actions=A, hidden_size=H, config=PlasticityConfig(network), **kwargs)


def _init(agent, key=0):
  carry = agent.initialize_carry((B,))
  obs = jax.random.normal(jax.random.key(key + 100), (B, I))
  return jax.jit(agent.init)(jax.random.key(key), carry, obs), carry, obs


@pytest.mark.parametrize("network", NETWORKS)
def test_step_shapes_and_modulation(network):
  agent = _agent(network)
  params, carry, obs = _init(agent)
  new_carry, (logits, value, m) = jax.jit(agent.apply)(params, carry, obs)
  assert logits.shape == (B, A) and value.shape == (B,) and m.shape == (B, 1)
  assert new_carry.h.shape == (B, H)
  assert jax.tree.structure(new_carry) == jax.tree.structure(carry)
  if network in ("modplast", "retromod"):
    assert np.abs(np.asarray(m)).min() > 0
  else:
    np.testing.assert_array_equal(m, 0.0)
  if network == "rnn":
    assert new_carry.traces.hebb is None
  else:
    assert new_carry.traces.hebb.shape == (B, H, H)


@pytest.mark.parametrize("network", ["rnn", "retromod"])
def test_initial_carry_is_zero(network):
  carry = _agent(network).initialize_carry((2, 5))
  assert carry.h.shape == (2, 5, H)
  for leaf in jax.tree.leaves(carry):
    assert leaf.shape[:2] == (2, 5)
    np.testing.assert_array_equal(leaf, 0.0)


def test_heads_read_the_cell_hidden_state():
  """logits = h W_pi + b_pi, value = h w_v + b_v with h the cell's output."""
  agent = _agent("modplast", clip_value=0.5, eta_init=0.2)
  params, carry, obs = _init(agent)
  p = params["params"]
  cell = PlasticRNNCell(
    features=H, config=PlasticityConfig("modplast"), clip_value=0.5, return_modulation=True
  )
  for _ in range(3):
    want_carry, (h, m) = cell.apply({"params": p["cell"]}, carry, obs)
    carry, (logits, value, m_agent) = agent.apply(params, carry, obs)
    h = np.asarray(h)
    np.testing.assert_allclose(
      logits, h @ p["policy"]["kernel"] + p["policy"]["bias"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
      value, h @ p["value"]["kernel"][:, 0] + p["value"]["bias"][0], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(m_agent, m)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(want_carry)):
      np.testing.assert_allclose(a, b)


def test_initialisation_follows_the_reference():
  """W, alpha ~ U(0, init_scale); heads PyTorch default U(+-1/sqrt(H)); eta = eta_init."""
  agent = ActorCritic(
    num_actions=A,
    hidden_size=50,
    config=PlasticityConfig("retromod"),
    eta_init=0.03,
    init_scale=0.01,
  )
  params = jax.jit(agent.init)(jax.random.key(0), agent.initialize_carry((1,)), jnp.zeros((1, I)))
  p = params["params"]
  for name in ("w", "alpha"):
    x = np.asarray(p["cell"][name])
    assert x.shape == (50, 50) and x.min() >= 0 and x.max() <= 0.01
    assert x.max() > 0.009  # Spans the range: not a narrower init.
  np.testing.assert_allclose(p["cell"]["eta"], 0.03)
  bound = 1 / math.sqrt(50)
  for head, out in (("policy", A), ("value", 1)):
    k, b = np.asarray(p[head]["kernel"]), np.asarray(p[head]["bias"])
    assert k.shape == (50, out) and b.shape == (out,)
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.8 * bound
    assert np.abs(b).max() <= bound


def test_jit_and_traced_clip_value():
  """The clip value may be traced: jit/vmap over it match eager per-value calls."""
  agent = _agent("modplast")
  params, carry, obs = _init(agent)

  def episode(clip_value):
    a = _agent("modplast", clip_value=clip_value)

    def step(c, _):
      c, (logits, value, m) = a.apply(params, c, obs)
      return c, logits

    c, logits = jax.lax.scan(step, carry, None, length=30)
    return c.traces.hebb, logits

  clips = jnp.array([0.001, 1.0])
  hebb_v, logits_v = jax.jit(jax.vmap(episode))(clips)
  for i, clip in enumerate([0.001, 1.0]):
    hebb, logits = episode(clip)
    np.testing.assert_allclose(hebb_v[i], hebb, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(logits_v[i], logits, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(hebb_v[0])).max() <= 0.001 + 1e-7
  assert np.abs(np.asarray(hebb_v[1])).max() > 0.001


def test_gradients_reach_every_parameter():
  agent = _agent("retromod")
  params, carry, obs = _init(agent)

  def loss(p):
    c = carry
    total = 0.0
    for _ in range(4):
      c, (logits, value, _) = agent.apply(p, c, obs)
      total = total + jnp.sum(jax.nn.log_softmax(logits)[:, 0]) + jnp.sum(value**2)
    return total

  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    assert np.abs(np.asarray(g)).max() > 0, path
