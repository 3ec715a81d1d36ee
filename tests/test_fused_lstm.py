"""The fused plastic LSTM kernels (bpm_jax.fused_lstm) against autodiff of
`lax.scan` over `jax.vmap(plasticity.lstm_step)`: values and every gradient,
for each network, alpha and eta shape, modulation with and without fan-out,
traces at the clip bound, carried state and vmapped agents."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpm_jax import fused_lstm, fused_step, lm, plasticity
from bpm_jax.cells import PlasticLSTMCell
from bpm_jax.config import PlasticityConfig
from tests.plastic_params import with_plasticity

pytestmark = pytest.mark.skipif(not fused_step.available(), reason="fused kernel cannot build here")

H, B, T = 8, 3, 6
CLIP = 0.5


def make_params(config: PlasticityConfig, key, eta_scale=0.5):
  """Random parameters of the cell path, large enough that traces reach the clip."""
  keys = iter(jax.random.split(key, 12))
  normal = lambda *shape, scale=0.5: scale * jax.random.normal(next(keys), shape)
  alpha_shape = {"full": (H, H), "per_neuron": (1, H)}[config.alpha_kind]
  params = dict(w=normal(H, H), alpha=normal(*alpha_shape))
  if config.network in ("plastic", "retromod"):
    eta_shape = () if config.eta_kind == "scalar" else (H, H)
    params["eta"] = 0.3 + eta_scale * jax.random.uniform(next(keys), eta_shape)
  if config.is_modulated:
    k = config.num_modulators
    params.update(mod_kernel=normal(H, k), mod_bias=normal(k))
    if config.fan_out:
      params.update(fanout_kernel=normal(k, H, scale=2.0), fanout_bias=normal(H))
  return plasticity.PlasticParams(**params), normal(H, 3 * H)


def make_state(config: PlasticityConfig, key, batch=B):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  traces = plasticity.Traces(
    hebb=jax.random.uniform(k1, (batch, H, H), minval=-CLIP, maxval=CLIP),
    elig=jax.random.normal(k2, (batch, H, H)) if config.has_eligibility else None,
  )
  return plasticity.LSTMState(
    h=0.5 * jax.random.normal(k3, (batch, H)),
    c=jax.random.normal(k4, (batch, H)),
    traces=traces,
  )


def reference_sequence(params, gate_kernel, state, x_drives, config, clip_value):
  step = jax.vmap(lambda s, x: plasticity.lstm_step(params, gate_kernel, s, x, config, clip_value))
  return jax.lax.scan(step, state, x_drives)


def loss_fn(run, config, weights):
  """A scalar from every output (h, m per step; the final state)."""

  def loss(params, gate_kernel, state, x_drives, clip_value):
    final, (h, m) = run(params, gate_kernel, state, x_drives, config, clip_value)
    total = jnp.sum(weights["h"] * h) + jnp.sum(weights["m"] * m)
    total += jnp.sum(weights["c"] * final.c) + jnp.sum(weights["hT"] * final.h)
    total += jnp.sum(weights["hebb"] * final.traces.hebb)
    if final.traces.elig is not None:
      total += jnp.sum(weights["elig"] * final.traces.elig)
    return total

  return loss


def random_weights(config, key):
  keys = jax.random.split(key, 6)
  k = config.num_modulators
  return dict(
    h=jax.random.normal(keys[0], (T, B, H)),
    m=jax.random.normal(keys[1], (T, B, k)),
    c=jax.random.normal(keys[2], (B, H)),
    hT=jax.random.normal(keys[3], (B, H)),
    hebb=jax.random.normal(keys[4], (B, H, H)),
    elig=jax.random.normal(keys[5], (B, H, H)),
  )


def assert_close(got, want, name, rtol=2e-4):
  got, want = np.asarray(got), np.asarray(want)
  scale = max(1.0, float(np.max(np.abs(want))))
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=name)


# Every code path of the kernels and of `fused_lstm._operands`: eta per
# connection and scalar (broadcast), alpha full and per neuron (broadcast),
# fan-out with K = 1 and 3, no fan-out (one-hot groups) with K = 2.
CONFIGS = {
  "plastic_full_eta": PlasticityConfig("plastic", eta_kind="full"),
  "plastic_per_neuron_alpha": PlasticityConfig("plastic", alpha_kind="per_neuron"),
  "modplast_fanout": PlasticityConfig("modplast", fan_out=True),
  "modplast_two_modulators": PlasticityConfig("modplast", num_modulators=2),
  "modplast_fanout_k3_per_neuron": PlasticityConfig(
    "modplast", fan_out=True, num_modulators=3, alpha_kind="per_neuron"
  ),
  "retromod_fanout": PlasticityConfig("retromod", fan_out=True),
  "retromod_full_eta_no_fanout": PlasticityConfig("retromod", eta_kind="full"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_values_and_gradients_equal_autodiff_of_the_reference(name):
  config = CONFIGS[name]
  assert fused_lstm.unsupported_reason(config) is None
  key = jax.random.key(sorted(CONFIGS).index(name))
  kp, ks, kx, kw = jax.random.split(key, 4)
  params, gate_kernel = make_params(config, kp)
  state = make_state(config, ks)
  x_drives = jax.random.normal(kx, (T, B, 4 * H))
  weights = random_weights(config, kw)
  args = (params, gate_kernel, state, x_drives, jnp.float32(CLIP))

  want_final, (want_h, want_m) = reference_sequence(*args[:4], config, CLIP)
  got_final, (got_h, got_m) = fused_lstm.lstm_sequence_fused(*args[:4], config, CLIP)
  assert_close(got_h, want_h, "h")
  assert_close(got_m, want_m, "m")
  jax.tree.map(lambda g, w: assert_close(g, w, "final state"), got_final, want_final)
  hebb = np.asarray(got_final.traces.hebb)
  assert np.any(np.abs(hebb) == CLIP), "the test should reach the clip bound"

  grad = lambda run: jax.jit(jax.grad(loss_fn(run, config, weights), argnums=(0, 1, 2, 3, 4)))
  want = grad(reference_sequence)(*args)
  got = grad(fused_lstm.lstm_sequence_fused)(*args)
  names = ("params", "gate_kernel", "state", "x_drives", "clip")
  for label, g, w in zip(names, got, want):
    jax.tree_util.tree_map_with_path(
      lambda path, a, b, label=label: assert_close(a, b, f"d/d{label}{jax.tree_util.keystr(path)}"),
      g,
      w,
    )


def test_vmapped_agents_equal_one_agent_at_a_time():
  """Seeds in one program (`jax.vmap` over agents): the kernel loops over them."""
  config = CONFIGS["retromod_fanout"]
  keys = jax.random.split(jax.random.key(7), 2)
  params, gate_kernel = jax.vmap(lambda k: make_params(config, k))(keys)
  state = jax.vmap(lambda k: make_state(config, k))(keys)
  x_drives = jax.random.normal(jax.random.key(8), (2, T, B, 4 * H))
  weights = random_weights(config, jax.random.key(9))
  loss = loss_fn(fused_lstm.lstm_sequence_fused, config, weights)
  grad = jax.grad(loss, argnums=(0, 1, 2, 3))
  batched = jax.jit(jax.vmap(lambda *a: grad(*a, CLIP)))(params, gate_kernel, state, x_drives)
  for agent in range(2):
    one = jax.tree.map(lambda a, agent=agent: a[agent], (params, gate_kernel, state, x_drives))
    single = jax.jit(lambda *a: grad(*a, CLIP))(*one)
    jax.tree.map(
      lambda b, s, agent=agent: np.testing.assert_array_equal(np.asarray(b)[agent], s),
      batched,
      single,
    )


def test_same_inputs_give_the_same_numbers():
  config = CONFIGS["modplast_fanout"]
  params, gate_kernel = make_params(config, jax.random.key(1))
  state = make_state(config, jax.random.key(2), batch=5)
  x_drives = jax.random.normal(jax.random.key(3), (T, 5, 4 * H))
  run = jax.jit(
    jax.grad(
      lambda p: jnp.sum(
        fused_lstm.lstm_sequence_fused(p, gate_kernel, state, x_drives, config, CLIP)[1][0]
      )
    )
  )
  first, second = run(params), run(params)
  jax.tree.map(np.testing.assert_array_equal, first, second)


@pytest.mark.parametrize(
  "config, plastic_gates, match",
  [
    (PlasticityConfig("rnn"), False, "network='rnn'"),
    (PlasticityConfig("modplast"), True, "plastic_gates"),
    (PlasticityConfig("modplast", rule="oja"), False, "rule='oja'"),
    (PlasticityConfig("plastic", alpha_kind="single"), False, "alpha_kind='single'"),
    (PlasticityConfig("modplast", modulation_fn="sigmoid"), False, "modulation_fn"),
    (PlasticityConfig("retromod", partial_modulation=True), False, "partial_modulation"),
  ],
)
def test_unsupported_configurations_are_named(config, plastic_gates, match):
  with pytest.raises(ValueError, match=match):
    fused_lstm.check_supported(config, plastic_gates)


def test_bad_shapes_are_a_clear_error():
  config = CONFIGS["modplast_fanout"]
  params, gate_kernel = make_params(config, jax.random.key(0))
  state = make_state(config, jax.random.key(1))
  with pytest.raises(ValueError, match=r"x_drives \[T, B, 4H\]"):
    fused_lstm.lstm_sequence_fused(params, gate_kernel, state, jnp.zeros((T, B, H)), config, CLIP)
  with pytest.raises(ValueError, match="float32"):
    fused_lstm.lstm_sequence_fused(
      params, gate_kernel, state, jnp.zeros((T, B, 4 * H), jnp.float16), config, CLIP
    )


@pytest.mark.parametrize("network", ["plastic", "modplast", "retromod"])
def test_language_model_fused_equals_reference(network):
  """The LM's loss, gradients and carried state with step_impl='fused' and
  'reference' over two consecutive minibatches, in both layers, with weights,
  alpha and (where the variant has one: plastic's Hebbian rate, retromod's
  eligibility rate) eta large enough that the traces grow to O(1); modplast's
  rate is the fan-out M_t, O(1) at its default init. (At init, alpha ~ U(0,
  0.01) and eta 0.01 leave the traces too small for a difference to show.)"""
  base = lm.LMConfig(vocab_size=23, hidden_size=H, network=network, num_layers=2, init_scale=1.0)
  models = {
    impl: lm.PlasticLSTMLanguageModel(dataclasses.replace(base, step_impl=impl))
    for impl in ("reference", "fused")
  }
  tokens = jax.random.randint(jax.random.key(0), (2, B, 5), 0, 23)
  carry = models["reference"].initialize_carry(B)
  params = models["reference"].init(jax.random.key(1), carry, tokens[0])["params"]
  params_fused = models["fused"].init(jax.random.key(1), carry, tokens[0])["params"]
  jax.tree.map(np.testing.assert_array_equal, params, params_fused)
  params = with_plasticity(params, alpha=0.5, eta=0.5)

  def loss(model, params):
    c, total = carry, 0.0
    for batch in tokens:
      c, logits = model.apply({"params": params}, c, batch)
      total += jnp.mean(lm.sequence_nll(logits, batch))
    return total, c

  value_and_grad = lambda impl: jax.jit(
    jax.value_and_grad(lambda p: loss(models[impl], p), has_aux=True)
  )(params)
  (want, want_carry), want_grad = value_and_grad("reference")
  (got, got_carry), got_grad = value_and_grad("fused")
  for layer in want_carry:  # every layer's traces grew: a wrong update would show
    assert float(jnp.max(jnp.abs(layer.traces.hebb))) > 0.3
    if network == "retromod":
      assert float(jnp.max(jnp.abs(layer.traces.elig))) > 0.05
  assert_close(got, want, "loss")
  jax.tree_util.tree_map_with_path(
    lambda path, a, b: assert_close(a, b, f"carry{jax.tree_util.keystr(path)}"),
    got_carry,
    want_carry,
  )
  jax.tree_util.tree_map_with_path(
    lambda path, a, b: assert_close(a, b, jax.tree_util.keystr(path)), got_grad, want_grad
  )


def test_cell_sequence_mode_equals_steps():
  """PlasticLSTMCell(sequence=True) (one call over T steps) equals T calls of one step."""
  config = CONFIGS["modplast_fanout"]
  for impl in ("reference", "fused"):
    cell = PlasticLSTMCell(features=H, config=config, step_impl=impl)
    carry = cell.initialize_carry(None, (B, 5))
    xs = jax.random.normal(jax.random.key(0), (T, B, 5))
    params = cell.init(jax.random.key(1), carry, xs[0])
    seq_carry, seq_h = cell.apply(params, carry, xs, sequence=True)
    c, hs = carry, []
    for x in xs:
      c, h = cell.apply(params, c, x)
      hs.append(h)
    assert_close(seq_h, jnp.stack(hs), f"{impl} h")
    jax.tree.map(lambda a, b: assert_close(a, b, f"{impl} carry"), seq_carry, c)
