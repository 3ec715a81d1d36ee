"""bpm_jax.completion (the networks of SPEC.md §5.4-5.5) against a NumPy loop and
against `plasticity.rnn_step`; segmented (recomputed) BPTT against a plain scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpm_jax import completion, plasticity
from bpm_jax.config import PlasticityConfig


def numpy_forward(w, alpha, eta, inputs, mode, scale=20.0):
  """SPEC §5.4-5.5 from the text: y_0 = 0, Hebb_0 = 0;
  add:   y_t = tanh(y_tm1 @ (W + alpha * Hebb_tm1) + scale * x_t)
  clamp: y_t[j] = x_t[j] where x_t[j] != 0, else tanh(y_tm1 @ (W + alpha * Hebb_tm1))[j]
  Hebb_t = (1 - eta) * Hebb_tm1 + eta * outer(y_tm1, y_t)  (decay rule, per synapse)."""
  n = w.shape[0]
  y, hebb = np.zeros(n), np.zeros((n, n))
  for x in inputs:
    y_new = np.zeros(n)
    for j in range(n):
      total = sum(y[i] * (w[i, j] + alpha_of(alpha, i, j) * hebb[i, j]) for i in range(n))
      if mode == "add":
        y_new[j] = np.tanh(total + scale * x[j])
      else:
        y_new[j] = x[j] if x[j] != 0 else np.tanh(total)
    for i in range(n):
      for j in range(n):
        hebb[i, j] = (1 - eta) * hebb[i, j] + eta * y[i] * y_new[j]
    y = y_new
  return y[:-1]


def alpha_of(alpha, i, j):
  return alpha if np.ndim(alpha) == 0 else alpha[i, j]


def episode_inputs(key, t, n, sparse):
  x = jax.random.normal(key, (t, n)) * 0.3
  if sparse:  # Zeros (free neurons) and non-zeros (clamped) mixed, bias neuron at 1.
    x = jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, (t, n)), x, 0.0)
  return x.at[:, -1].set(1.0)


@pytest.mark.parametrize(
  "mode,alpha_kind", [("add", "full"), ("clamp", "full"), ("add", "single"), ("clamp", "single")]
)
def test_forward_matches_numpy_loop(mode, alpha_kind):
  n, t = 6, 9
  config = completion.PAPER_CONFIG.replace(alpha_kind=alpha_kind)
  net = completion.CompletionNet(
    n, config, input_mode=mode, init_scale=0.5, eta_init=0.3, remat_every=4
  )
  inputs = episode_inputs(jax.random.key(0), t, n, sparse=mode == "clamp")
  variables = net.init(jax.random.key(1), inputs)
  p = variables["params"]
  assert p["w"].shape == (n, n) and p["eta"].shape == ()
  assert p["alpha"].shape == ((n, n) if alpha_kind == "full" else ())
  expected = numpy_forward(
    np.asarray(p["w"], np.float64),
    np.asarray(p["alpha"], np.float64),
    float(p["eta"]),
    np.asarray(inputs, np.float64),
    mode,
  )
  for fn in (net.apply, jax.jit(net.apply)):
    np.testing.assert_allclose(fn(variables, inputs), expected, rtol=2e-5, atol=2e-6)


def test_rnn_baseline_has_no_plasticity():
  n = 5
  net = completion.CompletionNet(n, completion.PAPER_CONFIG.replace(network="rnn"), init_scale=0.5)
  inputs = episode_inputs(jax.random.key(2), 7, n, sparse=False)
  variables = net.init(jax.random.key(3), inputs)
  assert set(variables["params"]) == {"w"}
  w = np.asarray(variables["params"]["w"], np.float64)
  expected = numpy_forward(w, 0.0, 0.0, np.asarray(inputs, np.float64), "add")
  np.testing.assert_allclose(net.apply(variables, inputs), expected, rtol=2e-5, atol=2e-6)


def test_step_is_plasticity_rnn_step():
  """One step of the network is `plasticity.rnn_step` with x_drive = 20 x (add) or a clamp."""
  n = 4
  net = completion.CompletionNet(n, init_scale=0.5, eta_init=0.2)
  x = episode_inputs(jax.random.key(4), 1, n, sparse=True)
  p = net.init(jax.random.key(5), x)["params"]
  params = plasticity.PlasticParams(w=p["w"], alpha=p["alpha"], eta=p["eta"])
  state = plasticity.RNNState(
    h=jnp.zeros(n), traces=plasticity.init_traces(completion.PAPER_CONFIG, n, n)
  )
  stepped, _ = plasticity.rnn_step(params, state, 20.0 * x[0], completion.PAPER_CONFIG, 1.0)
  np.testing.assert_allclose(net.apply({"params": p}, x), stepped.h[:-1], rtol=1e-6)
  clamped, _ = plasticity.rnn_step(
    params, state, jnp.zeros(n), completion.PAPER_CONFIG, 1.0, clamp=x[0]
  )
  net_clamp = net.clone(input_mode="clamp")
  np.testing.assert_allclose(net_clamp.apply({"params": p}, x), clamped.h[:-1], rtol=1e-6)
  nonzero = np.asarray(x[0]) != 0
  np.testing.assert_array_equal(np.asarray(clamped.h)[nonzero], np.asarray(x[0])[nonzero])


@pytest.mark.parametrize("t,every", [(12, 4), (13, 5), (7, 10)])
def test_segmented_bptt_equals_plain_scan(t, every):
  n = 5
  inputs = episode_inputs(jax.random.key(6), t, n, sparse=False)
  target = jnp.sign(jax.random.normal(jax.random.key(7), (n - 1,)))
  plain = completion.CompletionNet(n, init_scale=0.3, remat_every=0)
  segmented = plain.clone(remat_every=every)
  variables = plain.init(jax.random.key(8), inputs)

  def loss(net, v):
    return jnp.sum((net.apply(v, inputs) - target) ** 2)

  g_plain = jax.grad(lambda v: loss(plain, v))(variables)
  g_seg = jax.jit(jax.grad(lambda v: loss(segmented, v)))(variables)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_seg), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_segmented_scan_counts_every_step():
  step = lambda params, carry, x: carry * params + x
  xs = jnp.arange(1.0, 12.0)
  expected = 0.0
  for x in np.arange(1.0, 12.0):
    expected = expected * 0.5 + x
  for every in (0, 1, 3, 5, 11, 20):
    out = completion.segmented_scan(step, 0.5, jnp.float32(0.0), xs, every)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_lstm_baseline_has_at_least_the_plastic_parameter_count():
  n, p = 41, 40
  plastic = completion.plastic_param_count(n)
  assert plastic == 2 * n * n + 1  # W, alpha (full), eta.
  features = completion.lstm_features_for(n, p, plastic)
  net = completion.LSTMCompletionNet(features=features, output_size=p)
  inputs = jnp.zeros((5, n))
  variables = net.init(jax.random.key(0), inputs)
  count = sum(x.size for x in jax.tree.leaves(variables))
  assert count == completion.lstm_param_count(n, features, p) >= plastic
  assert completion.lstm_param_count(n, features - 1, p) < plastic
  out = net.apply(variables, episode_inputs(jax.random.key(1), 5, n, sparse=False))
  assert out.shape == (p,) and bool(jnp.all(jnp.abs(out) <= 1))


def test_bad_network_arguments():
  with pytest.raises(ValueError, match="input_mode"):
    completion.CompletionNet(5, input_mode="multiply")
  with pytest.raises(ValueError, match="num_neurons"):
    completion.CompletionNet(1)
  net = completion.CompletionNet(5)
  with pytest.raises(ValueError, match="expected N = 5"):
    net.init(jax.random.key(0), jnp.zeros((3, 4)))
  assert PlasticityConfig(network="plastic", rule="decay") == completion.PAPER_CONFIG


@pytest.mark.parametrize(
  "mode,alpha_kind,every",
  [("add", "full", 4), ("clamp", "full", 5), ("add", "single", 0), ("clamp", "single", 3)],
)
def test_hand_written_backward_equals_autodiff(mode, alpha_kind, every):
  """decay_sequence's gradients (params and inputs) against autodiff of the plain scan."""
  n, t = 6, 11
  config = completion.PAPER_CONFIG.replace(alpha_kind=alpha_kind)
  fast = completion.CompletionNet(
    n, config, input_mode=mode, init_scale=0.5, eta_init=0.2, remat_every=every
  )
  slow = fast.clone(hand_written_backward=False, remat_every=0)
  inputs = episode_inputs(jax.random.key(9), t, n, sparse=mode == "clamp")
  target = jnp.sign(jax.random.normal(jax.random.key(10), (n - 1,)))
  variables = fast.init(jax.random.key(11), inputs)

  def loss(net, v, x):
    return jnp.sum((net.apply(v, x) - target) ** 2)

  np.testing.assert_allclose(
    fast.apply(variables, inputs), slow.apply(variables, inputs), rtol=1e-6
  )
  g_fast = jax.jit(jax.grad(lambda v, x: loss(fast, v, x), argnums=(0, 1)))(variables, inputs)
  g_slow = jax.grad(lambda v, x: loss(slow, v, x), argnums=(0, 1))(variables, inputs)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_slow), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  batched = jax.vmap(jax.grad(lambda v, x: loss(fast, v, x)), in_axes=(None, 0))(
    variables, jnp.stack([inputs, inputs])
  )
  # Float32 rounding of another batch layout (seen: 5e-7 apart at 0.016 on an AMD EPYC).
  for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(g_fast[0]), strict=True):
    np.testing.assert_allclose(a[1], b, rtol=2e-5, atol=1e-6)


def test_shared_alpha_starts_at_init_scale():
  net = completion.CompletionNet(5, completion.PAPER_CONFIG.replace(alpha_kind="single"))
  params = net.init(jax.random.key(0), jnp.zeros((3, 5)))["params"]
  assert float(params["alpha"]) == pytest.approx(0.01)


@pytest.mark.parametrize("every", [1, 11, 50])
def test_hand_written_backward_at_segment_extremes(every):
  n, t = 5, 11
  fast = completion.CompletionNet(n, init_scale=0.5, eta_init=0.3, remat_every=every)
  slow = fast.clone(hand_written_backward=False, remat_every=0)
  inputs = episode_inputs(jax.random.key(12), t, n, sparse=False)
  variables = fast.init(jax.random.key(13), inputs)
  grad = lambda net: jax.grad(lambda v: jnp.sum(net.apply(v, inputs) ** 2))(variables)
  for a, b in zip(jax.tree.leaves(grad(fast)), jax.tree.leaves(grad(slow)), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_hand_written_backward_over_seed_stacked_params_and_a_long_episode():
  """vmap over the parameters (seeds), T = 201 (the image task's length), float32."""
  n, t = 16, 201
  fast = completion.CompletionNet(n, init_scale=0.3, eta_init=0.2, remat_every=10)
  slow = fast.clone(hand_written_backward=False, remat_every=0)
  inputs = episode_inputs(jax.random.key(14), t, n, sparse=False)
  seeds = jax.vmap(lambda k: fast.init(k, inputs))(jax.random.split(jax.random.key(15), 3))

  def grads(net):
    return jax.vmap(jax.grad(lambda v: jnp.sum(net.apply(v, inputs) ** 2)))(seeds)

  for a, b in zip(jax.tree.leaves(grads(fast)), jax.tree.leaves(grads(slow)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
