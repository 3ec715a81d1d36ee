"""The pure plasticity core against the naive NumPy transcription of SPEC.md."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from bpm_jax import plasticity
from bpm_jax.config import PlasticityConfig
from tests import numpy_plasticity as ref
from tests.plastic_params import random_params

H = 7
T = 60
ATOL = 1e-5


@pytest.fixture
def x64():
  """Runs a test in float64: the random networks below are strong enough to be
  chaotic, so float32 rounding alone would grow past ATOL over T steps."""
  with jax.enable_x64(True):
    yield


def np_params(params):
  return {k: np.asarray(v, np.float64) for k, v in vars(params).items() if v is not None}


def cfg_dict(config):
  return dataclasses.asdict(config)


def run_rnn(params, config, x_drives, clip_value):
  dtype = x_drives.dtype
  state = plasticity.RNNState(
    h=jnp.zeros((H,), dtype), traces=plasticity.init_traces(config, H, H, dtype)
  )

  def body(s, xd):
    s, (h, m) = plasticity.rnn_step(params, s, xd, config, clip_value)
    return s, (h, m)

  state, (hs, ms) = lax.scan(body, state, x_drives)
  return state, hs, ms


def x_drive_seq(seed=1, steps=T, size=H, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(0, scale, (steps, size)))


RNN_CONFIGS = [
  PlasticityConfig(network="rnn"),
  PlasticityConfig(network="plastic", rule="clip"),
  PlasticityConfig(network="plastic", rule="decay"),
  PlasticityConfig(network="plastic", rule="oja"),
  PlasticityConfig(network="plastic", rule="soft_clip"),
  PlasticityConfig(network="plastic", alpha_kind="per_neuron"),
  PlasticityConfig(network="plastic", alpha_kind="single"),
  PlasticityConfig(network="plastic", eta_kind="full"),
  PlasticityConfig(network="modplast"),
  PlasticityConfig(network="modplast", modulation_fn="sigmoid"),
  # Identity modulation is unbounded: pair it with clip (soft_clip with a rate
  # |M d| > 2 is an expanding map, where any rounding doubles every step).
  PlasticityConfig(network="modplast", modulation_fn="identity"),
  PlasticityConfig(network="modplast", rule="soft_clip"),
  PlasticityConfig(network="modplast", fan_out=True),
  PlasticityConfig(network="modplast", num_modulators=3),
  PlasticityConfig(network="modplast", num_modulators=2, fan_out=True),
  PlasticityConfig(network="modplast", partial_modulation=True),
  PlasticityConfig(network="modplast", rule="decay", modulation_fn="sigmoid"),
  PlasticityConfig(network="modplast", rule="oja", alpha_kind="per_neuron"),
  PlasticityConfig(network="retromod"),
  PlasticityConfig(network="retromod", fan_out=True, alpha_kind="single"),
  PlasticityConfig(network="retromod", num_modulators=2),
  PlasticityConfig(network="retromod", partial_modulation=True, eta_kind="full"),
  PlasticityConfig(network="retromod", rule="soft_clip"),
  PlasticityConfig(network="retromod", modulation_fn="identity", rule="decay"),
]


@pytest.mark.parametrize("config", RNN_CONFIGS, ids=str)
def test_rnn_episode_matches_numpy(config, x64):
  params = random_params(config, H, H)
  x_drives = x_drive_seq()
  clip_value = 0.5
  state, hs, ms = run_rnn(params, config, x_drives, clip_value)
  ref_hs, ref_ms, ref_hebb = ref.rnn_episode(
    np_params(params), cfg_dict(config), np.asarray(x_drives, np.float64), clip_value
  )
  np.testing.assert_allclose(hs, ref_hs, atol=ATOL)
  np.testing.assert_allclose(ms, ref_ms, atol=ATOL)
  if config.is_plastic:
    np.testing.assert_allclose(state.traces.hebb, ref_hebb, atol=ATOL)
    # The episode must exercise the trace: not all zero.
    assert np.abs(ref_hebb).max() > 1e-3


def test_clip_is_active_and_bounds_hebb():
  config = PlasticityConfig(network="modplast")
  params = random_params(config, H, H)
  state, _, _ = run_rnn(params, config, x_drive_seq(scale=2.0), 0.25)
  hebb = np.asarray(state.traces.hebb)
  assert np.abs(hebb).max() == pytest.approx(0.25)


@pytest.mark.parametrize("rule", ["clip", "decay", "oja", "soft_clip"])
def test_hebbian_update_single_step(rule):
  rng = np.random.default_rng(3)
  hebb = rng.uniform(-0.9, 0.9, (4, 5))
  pre, post = rng.normal(size=4), rng.normal(size=5)
  rate = 0.3
  got = plasticity.hebbian_update(
    jnp.asarray(hebb), jnp.asarray(pre), jnp.asarray(post), rate, rule, 0.7
  )
  want = np.array(
    [
      [
        ref.rule_update(rule, hebb[i, j], rate, pre[i], post[j], pre[i] * post[j], 0.7)
        for j in range(5)
      ]
      for i in range(4)
    ]
  )
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_retromod_update_order_uses_old_eligibility():
  """Hebb_t = clip(Hebb_tm1 + M_t E_tm1); E_t updated afterwards (SPEC §3.2)."""
  config = PlasticityConfig(network="retromod")
  params = random_params(config, 3, 3)
  elig = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3)), jnp.float32)
  traces = plasticity.Traces(hebb=jnp.zeros((3, 3)), elig=elig)
  pre, post = jnp.array([1.0, -0.5, 0.2]), jnp.array([0.3, 0.9, -0.7])
  new, m = plasticity.update_traces(params, traces, pre, post, post, config, 10.0)
  np.testing.assert_allclose(new.hebb, m[0] * elig, atol=1e-6)
  eta = params.eta
  np.testing.assert_allclose(new.elig, (1 - eta) * elig + eta * np.outer(pre, post), atol=1e-6)


def test_weight_convention_w_pre_post():
  """W[pre, post]: W[0, 1] carries neuron 0's activity to neuron 1 (SPEC §1)."""
  config = PlasticityConfig(network="plastic")
  w = jnp.zeros((3, 3)).at[0, 1].set(2.0)
  params = plasticity.PlasticParams(w=w, alpha=jnp.zeros((3, 3)), eta=jnp.asarray(0.5))
  state = plasticity.RNNState(
    h=jnp.array([0.5, 0.0, 0.0]), traces=plasticity.init_traces(config, 3, 3)
  )
  new, (h, _) = plasticity.rnn_step(params, state, jnp.zeros(3), config, 1.0)
  np.testing.assert_allclose(h, [0.0, np.tanh(1.0), 0.0], atol=1e-6)
  # Hebb = eta * outer(pre=h_tm1, post=h_t): only [0, 1] is nonzero.
  expected = np.zeros((3, 3))
  expected[0, 1] = 0.5 * 0.5 * np.tanh(1.0)
  np.testing.assert_allclose(new.traces.hebb, expected, atol=1e-6)
  # Per-neuron alpha indexes the postsynaptic neuron (columns).
  drive = plasticity.plastic_drive(
    jnp.array([1.0, 0.0, 0.0]),
    jnp.zeros((3, 3)),
    jnp.array([[0.0, 3.0, 0.0]]),
    jnp.ones((3, 3)),
    "per_neuron",
  )
  np.testing.assert_allclose(drive, [0.0, 3.0, 0.0])


def test_modulation_rate_groups_and_fanout():
  m = jnp.array([0.5, -1.0])
  rate = plasticity.modulation_rate(m, None, None, 5)
  np.testing.assert_allclose(rate, [[0.5, 0.5, 0.5, -1.0, -1.0]])
  v = jnp.arange(10.0).reshape(2, 5)
  u = jnp.ones(5)
  rate = plasticity.modulation_rate(m, v, u, 5)
  np.testing.assert_allclose(rate, [np.asarray(m) @ np.asarray(v) + 1.0])
  assert plasticity.modulation_rate(m[:1], None, None, 4).shape == (1, 4)


LSTM_CONFIGS = [
  PlasticityConfig(network="rnn"),
  PlasticityConfig(network="plastic", eta_kind="full"),
  PlasticityConfig(network="modplast", fan_out=True),
  PlasticityConfig(network="retromod", fan_out=True),
  PlasticityConfig(network="retromod", alpha_kind="per_neuron"),
]


@pytest.mark.parametrize("plastic_gates", [False, True])
@pytest.mark.parametrize("config", LSTM_CONFIGS, ids=str)
def test_lstm_episode_matches_numpy(config, plastic_gates, x64):
  hsize = 5
  post = 4 * hsize if plastic_gates else hsize
  params = random_params(config, hsize, post, seed=2)
  rng = np.random.default_rng(4)
  gate_kernel = None if plastic_gates else jnp.asarray(rng.normal(0, 0.6, (hsize, 3 * hsize)))
  x_drives = x_drive_seq(seed=5, steps=T, size=4 * hsize)
  clip_value = 0.5

  def body(s, xd):
    return plasticity.lstm_step(params, gate_kernel, s, xd, config, clip_value)

  zeros = jnp.zeros(hsize, x_drives.dtype)
  state0 = plasticity.LSTMState(
    h=zeros, c=zeros, traces=plasticity.init_traces(config, hsize, post, x_drives.dtype)
  )
  state, (hs, ms) = lax.scan(body, state0, x_drives)
  ref_hs, ref_ms, ref_hebb = ref.lstm_episode(
    np_params(params),
    None if gate_kernel is None else np.asarray(gate_kernel, np.float64),
    cfg_dict(config),
    np.asarray(x_drives, np.float64),
    clip_value,
  )
  np.testing.assert_allclose(hs, ref_hs, atol=ATOL)
  np.testing.assert_allclose(ms, ref_ms, atol=ATOL)
  if config.is_plastic:
    np.testing.assert_allclose(state.traces.hebb, ref_hebb, atol=ATOL)
    assert np.abs(ref_hebb).max() > 1e-3


@pytest.mark.parametrize("network", ["rnn", "plastic", "modplast", "retromod"])
def test_jit_equals_nojit(network, x64):
  config = PlasticityConfig(network=network)
  params = random_params(config, H, H)
  x = x_drive_seq(steps=10)
  with jax.disable_jit():
    _, hs_nojit, ms_nojit = run_rnn(params, config, x, 0.5)
  _, hs_jit, ms_jit = jax.jit(run_rnn, static_argnums=1)(params, config, x, 0.5)
  np.testing.assert_allclose(hs_jit, hs_nojit, atol=1e-10)
  np.testing.assert_allclose(ms_jit, ms_nojit, atol=1e-10)


@pytest.mark.parametrize("network", ["plastic", "modplast", "retromod"])
def test_vmap_equals_python_loop(network, x64):
  config = PlasticityConfig(network=network, fan_out=True)
  params = random_params(config, H, H)
  batch = jnp.stack([x_drive_seq(seed=s, steps=15) for s in range(4)])
  clips = jnp.array([0.2, 0.5, 1.0, 2.0])  # The clip value is a traced, vmappable knob.
  _, hs_v, _ = jax.vmap(run_rnn, in_axes=(None, None, 0, 0))(params, config, batch, clips)
  for b in range(4):
    _, hs_b, _ = run_rnn(params, config, batch[b], clips[b])
    np.testing.assert_allclose(hs_v[b], hs_b, atol=1e-10)


@pytest.mark.parametrize(
  "config",
  [
    PlasticityConfig(network="rnn"),
    PlasticityConfig(network="plastic"),
    PlasticityConfig(network="plastic", rule="decay"),
    PlasticityConfig(network="modplast", fan_out=True),
    PlasticityConfig(network="modplast", rule="oja"),
    PlasticityConfig(network="retromod"),
    PlasticityConfig(network="retromod", partial_modulation=True, num_modulators=2),
  ],
  ids=str,
)
def test_gradients_numerically(config):
  """check_grads on tiny sizes, float64, for every network type."""
  from jax.test_util import check_grads  # pylint: disable=g-import-not-at-top

  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) * 0.5, random_params(config, 4, 4))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float64)

    def loss(p, xs):
      state = plasticity.RNNState(
        h=jnp.zeros(4, jnp.float64), traces=plasticity.init_traces(config, 4, 4, jnp.float64)
      )

      def body(s, xd):
        s, (h, m) = plasticity.rnn_step(p, s, xd, config, 5.0)
        return s, jnp.sum(h**2) + jnp.sum(m)

      _, out = lax.scan(body, state, xs)
      return jnp.sum(out)

    check_grads(loss, (params, x), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
    grads = jax.grad(loss)(params, x)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    if config.is_plastic:
      assert np.abs(grads.alpha).max() > 0  # plasticity actually contributes.


@pytest.mark.parametrize(
  "changes, field",
  [
    (dict(network="lstm"), "network"),
    (dict(alpha_kind="per_synapse"), "alpha_kind"),
    (dict(rule="bcm"), "rule"),
    (dict(modulation_fn="relu"), "modulation_fn"),
    (dict(eta_kind="vector"), "eta_kind"),
    (dict(num_modulators=0), "num_modulators"),
    (dict(network="retromod", rule="oja"), "rule"),
    (dict(network="plastic", partial_modulation=True), "partial_modulation"),
  ],
)
def test_bad_config_raises(changes, field):
  with pytest.raises(ValueError, match=field):
    PlasticityConfig(**changes)


def test_bad_config_message_lists_options():
  with pytest.raises(ValueError, match="'rnn', 'plastic', 'modplast', 'retromod'"):
    PlasticityConfig(network="lstm")
