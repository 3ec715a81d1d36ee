"""The Flax cells: they declare parameters and call the pure core."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpm_jax import PlasticityConfig, PlasticLSTMCell, PlasticRNNCell, fused_step, plasticity
from tests.plastic_params import with_plasticity

NETWORKS = ["rnn", "plastic", "modplast", "retromod"]


def _episode(cell, variables, xs):
  """Steps `cell` over xs [B, T, I] by hand; returns hs [B, T, H], ms, final carry."""
  carry = cell.initialize_carry(jax.random.key(0), xs[:, 0].shape)
  hs, ms = [], []
  for t in range(xs.shape[1]):
    carry, (h, m) = cell.apply(variables, carry, xs[:, t])
    hs.append(h)
    ms.append(m)
  return jnp.stack(hs, 1), jnp.stack(ms, 1), carry


@pytest.mark.parametrize("cell_cls", [PlasticRNNCell, PlasticLSTMCell])
@pytest.mark.parametrize("network", NETWORKS)
def test_cell_in_flax_rnn_equals_manual_steps(cell_cls, network):
  config = PlasticityConfig(network=network, fan_out=network != "plastic")
  cell = cell_cls(features=6, config=config, return_modulation=True)
  xs = jax.random.normal(jax.random.key(1), (3, 9, 4))
  variables = cell.init(
    jax.random.key(2), cell.initialize_carry(jax.random.key(0), (3, 4)), xs[:, 0]
  )
  hs, ms, carry = _episode(cell, variables, xs)
  assert hs.shape == (3, 9, 6) and ms.shape == (3, 9, 1)
  rnn = nn.RNN(cell, return_carry=True)
  final, (hs_rnn, ms_rnn) = rnn.apply({"params": {"cell": variables["params"]}}, xs)
  np.testing.assert_allclose(hs_rnn, hs, atol=1e-6)
  np.testing.assert_allclose(ms_rnn, ms, atol=1e-6)
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(carry)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  if config.is_modulated:
    assert np.abs(np.asarray(ms)).max() > 0
  else:
    assert np.all(np.asarray(ms) == 0)


def test_rnn_cell_calls_core_with_its_params():
  """The cell computes exactly plasticity.rnn_step on its own parameters."""
  config = PlasticityConfig(network="retromod", fan_out=True)
  cell = PlasticRNNCell(features=5, config=config, clip_value=0.7)
  x = jax.random.normal(jax.random.key(3), (4,))
  carry = cell.initialize_carry(None, x.shape)
  variables = cell.init(jax.random.key(4), carry, x)
  prm = dict(variables["params"])
  dense = prm.pop("input")
  core = plasticity.PlasticParams(**prm)
  for _ in range(3):
    want, _ = plasticity.rnn_step(core, carry, x @ dense["kernel"] + dense["bias"], config, 0.7)
    carry, h = cell.apply(variables, carry, x)
    np.testing.assert_allclose(h, want.h, atol=1e-6)
    np.testing.assert_allclose(carry.traces.elig, want.traces.elig, atol=1e-6)


@pytest.mark.parametrize("network", ["plastic", "modplast", "retromod"])
@pytest.mark.parametrize("step_impl", ["reference", "fused"])
def test_lstm_cell_calls_core_with_its_params(step_impl, network):
  """The LSTM cell computes exactly plasticity.lstm_step on its own parameters
  (input Dense, gate_kernel and the plastic path: h, c, m and the traces),
  with either step_impl, its own clip binding."""
  if step_impl == "fused" and not fused_step.available():
    pytest.skip("the fused kernel cannot build here (the reference case still runs)")
  config = PlasticityConfig(network=network, fan_out=network != "plastic")
  cell = PlasticLSTMCell(
    features=5,
    config=config,
    clip_value=0.05,
    init_scale=0.8,
    step_impl=step_impl,
    return_modulation=True,
  )
  x = jax.random.normal(jax.random.key(3), (2, 4))
  carry = cell.initialize_carry(None, x.shape)
  variables = {"params": with_plasticity(cell.init(jax.random.key(4), carry, x)["params"], eta=0.5)}
  prm = dict(variables["params"])
  dense, gate_kernel = prm.pop("input"), prm.pop("gate_kernel")
  core = plasticity.PlasticParams(**prm)
  want = carry
  for _ in range(3):
    want, (h_want, m_want) = jax.vmap(
      lambda s, xd: plasticity.lstm_step(core, gate_kernel, s, xd, config, 0.05)
    )(want, x @ dense["kernel"] + dense["bias"])
    carry, (h, m) = cell.apply(variables, carry, x)
    np.testing.assert_allclose(h, h_want, atol=1e-5)
    np.testing.assert_allclose(m, m_want, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), carry, want)
  np.testing.assert_allclose(np.abs(np.asarray(want.traces.hebb)).max(), 0.05)  # the clip binds


def test_rnn_cell_reference_initialisation():
  """SPEC §3.4: W, alpha ~ U(0, 0.01); Linear layers as PyTorch's default."""
  cell = PlasticRNNCell(features=200, config=PlasticityConfig(network="modplast"))
  x = jnp.zeros((27,))
  params = cell.init(jax.random.key(0), cell.initialize_carry(None, x.shape), x)["params"]
  for name in ("w", "alpha"):
    v = np.asarray(params[name])
    assert v.shape == (200, 200)
    assert v.min() >= 0.0 and v.max() <= 0.01 and v.std() > 0.002
  bound = 1 / np.sqrt(27)
  kernel = np.asarray(params["input"]["kernel"])
  assert kernel.shape == (27, 200)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
  assert np.abs(np.asarray(params["mod_kernel"])).max() <= 1 / np.sqrt(200)


def test_eta_init_and_alpha_kinds_shapes():
  x = jnp.zeros((3,))
  for kind, shape in [("full", (4, 4)), ("per_neuron", (1, 4)), ("single", ())]:
    cell = PlasticRNNCell(
      features=4, eta_init=0.01, config=PlasticityConfig(network="retromod", alpha_kind=kind)
    )
    params = cell.init(jax.random.key(0), cell.initialize_carry(None, x.shape), x)["params"]
    assert params["alpha"].shape == shape
    assert float(params["eta"]) == pytest.approx(0.01)


def test_lstm_plastic_gates_shapes():
  cell = PlasticLSTMCell(
    features=5, plastic_gates=True, config=PlasticityConfig(network="modplast", fan_out=True)
  )
  x = jnp.ones((2, 3))
  carry = cell.initialize_carry(None, x.shape)
  assert carry.traces.hebb.shape == (2, 5, 20)
  variables = cell.init(jax.random.key(0), carry, x)
  assert "gate_kernel" not in variables["params"]
  assert variables["params"]["w"].shape == (5, 20)
  carry, h = cell.apply(variables, carry, x)
  assert np.all(np.asarray(carry.traces.hebb) == 0)  # pre = h_tm1 = 0 at step 1.
  carry, h = cell.apply(variables, carry, x)
  assert h.shape == (2, 5) and np.abs(np.asarray(carry.traces.hebb)).max() > 0


def test_modulation_is_sown():
  cell = PlasticRNNCell(features=4, config=PlasticityConfig(num_modulators=2))
  x = jnp.ones((3, 2))
  carry = cell.initialize_carry(None, x.shape)
  variables = cell.init(jax.random.key(0), carry, x)
  (_, h), state = cell.apply(variables, carry, x, mutable=["intermediates"])
  (m,) = state["intermediates"]["modulation"]
  assert h.shape == (3, 4) and m.shape == (3, 2)


def test_multiple_batch_dims_and_nn_scan():
  """Leading batch dims are vmapped; the cell also runs inside nn.scan."""
  cell = PlasticRNNCell(features=4, config=PlasticityConfig(network="retromod"))
  xs = jax.random.normal(jax.random.key(0), (5, 2, 3, 6))  # [T, B1, B2, I]
  carry = cell.initialize_carry(None, xs[0].shape)
  assert carry.traces.hebb.shape == (2, 3, 4, 4)
  variables = cell.init(jax.random.key(1), carry, xs[0])
  scan = nn.scan(PlasticRNNCell, variable_broadcast="params", split_rngs={"params": False})
  _, hs = scan(features=4, config=cell.config).apply(variables, carry, xs)
  c = carry
  for t in range(5):
    c, h = cell.apply(variables, c, xs[t])
    np.testing.assert_allclose(hs[t], h, atol=1e-6)


def test_clip_value_can_be_traced_and_vmapped():
  config = PlasticityConfig(network="modplast")
  x = jnp.ones((3,)) * 3.0
  variables = PlasticRNNCell(features=4, config=config).init(
    jax.random.key(0), PlasticRNNCell(4).initialize_carry(None, x.shape), x
  )
  variables = jax.tree.map(lambda v: v * 100.0, variables)  # drive the traces to the bound

  def final_hebb(clip_value):
    cell = PlasticRNNCell(features=4, config=config, clip_value=clip_value)
    carry = cell.initialize_carry(None, x.shape)
    for _ in range(3):
      carry, _ = cell.apply(variables, carry, x)
    return jnp.abs(carry.traces.hebb).max()

  np.testing.assert_allclose(
    jax.jit(jax.vmap(final_hebb))(jnp.array([0.1, 0.5])), [0.1, 0.5], atol=1e-6
  )


@pytest.mark.parametrize("cell_cls", [PlasticRNNCell, PlasticLSTMCell])
def test_bad_cell_arguments_raise(cell_cls):
  with pytest.raises(ValueError, match="features=0"):
    cell_cls(features=0)
  with pytest.raises(ValueError, match="features .* is required"):
    cell_cls()
  with pytest.raises(ValueError, match="num_modulators=9"):
    cell_cls(features=4, config=PlasticityConfig(num_modulators=9))
  cell_cls(features=4, config=PlasticityConfig(num_modulators=9, fan_out=True))


@pytest.mark.parametrize("cell_cls", [PlasticRNNCell, PlasticLSTMCell])
def test_features_follows_flax_cells(cell_cls):
  """`features` is H, as in `nn.LSTMCell(features=...)`; positional works too."""
  assert "features" in nn.LSTMCell.__dataclass_fields__  # The convention we follow.
  config = PlasticityConfig(network="modplast")
  x = jnp.ones((2, 3))
  for cell in (cell_cls(features=5, config=config), cell_cls(5, config=config)):
    assert cell.features == 5
    carry = cell.initialize_carry(None, x.shape)
    assert carry.h.shape == (2, 5)
    _, h = cell.apply(cell.init(jax.random.key(0), carry, x), carry, x)
    assert h.shape == (2, 5)


@pytest.mark.parametrize("cell_cls", [PlasticRNNCell, PlasticLSTMCell])
def test_hidden_size_is_a_deprecated_alias_of_features(cell_cls):
  config = PlasticityConfig(network="retromod")
  x = jnp.ones((2, 3))
  with pytest.warns(
    DeprecationWarning, match=r"hidden_size=\.\.\.\) is deprecated.*features"
  ) as rec:
    old = cell_cls(hidden_size=4, config=config)
  assert rec[0].filename == __file__  # Points at the caller, not at Flax.
  assert old.features == 4 and old.hidden_size is None
  new = cell_cls(features=4, config=config)
  carry = new.initialize_carry(None, x.shape)
  variables = new.init(jax.random.key(0), carry, x)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Flax's clones of the old cell do not warn again.
    got = old.apply(variables, old.initialize_carry(None, x.shape), x)
    assert jax.tree.map(jnp.shape, old.init(jax.random.key(0), carry, x)) == jax.tree.map(
      jnp.shape, variables
    )
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(new.apply(variables, carry, x))):
    np.testing.assert_array_equal(a, b)
  with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="differ"):
    cell_cls(features=4, hidden_size=5)


@pytest.mark.parametrize("cell_cls", [PlasticRNNCell, PlasticLSTMCell])
def test_input_kernel_and_bias_init_and_param_dtype(cell_cls):
  """Flax-style `kernel_init`/`bias_init` set the input projection; `param_dtype` every param."""
  cell = cell_cls(
    features=3,
    kernel_init=nn.initializers.constant(0.25),
    bias_init=nn.initializers.constant(-0.5),
  )
  x = jnp.ones((2,))
  params = cell.init(jax.random.key(0), cell.initialize_carry(None, x.shape), x)["params"]
  np.testing.assert_array_equal(params["input"]["kernel"], 0.25)
  np.testing.assert_array_equal(params["input"]["bias"], -0.5)
  half = cell_cls(features=3, param_dtype=jnp.bfloat16)
  carry = half.initialize_carry(None, x.shape)
  assert carry.h.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(half.init(jax.random.key(0), carry, x)):
    assert leaf.dtype == jnp.bfloat16


def test_gradients_flow_to_every_parameter():
  config = PlasticityConfig(network="retromod", fan_out=True, partial_modulation=True)
  cell = PlasticRNNCell(features=6, config=config)
  xs = jax.random.normal(jax.random.key(0), (2, 12, 3))
  rnn = nn.RNN(cell)
  variables = rnn.init(jax.random.key(1), xs)
  grads = jax.grad(lambda v: jnp.sum(rnn.apply(v, xs) ** 2))(variables)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    assert np.abs(np.asarray(g)).max() > 0, path


@pytest.mark.parametrize("cell_cls", [PlasticRNNCell, PlasticLSTMCell])
def test_batched_gradients_equal_sum_of_per_example_gradients(cell_cls):
  """`cells.batched` (params broadcast with a dot-transpose) is exact."""
  config = PlasticityConfig(network="retromod", eta_kind="full")
  cell = cell_cls(features=5, config=config)
  xs = jax.random.normal(jax.random.key(0), (3, 2, 7, 4))  # [B1, B2, T, I]
  rnn = nn.RNN(cell)
  variables = rnn.init(jax.random.key(1), xs)
  grad = jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(rnn.apply(v, x)))))
  batched = grad(variables, xs)
  per_example = [grad(variables, xs[i, j]) for i in range(3) for j in range(2)]
  summed = jax.tree.map(lambda *g: sum(g), *per_example)
  for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(summed)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert batched["params"]["cell"]["eta"].shape == (5, 5)
