"""The fused C++ kernels (`fused_step`) against autodiff of `plasticity.rnn_step`.

The kernels compute in float32 and sum in their own order, so they agree with
the reference to float32 rounding: the random networks here are scaled so
that 10-step episodes are not chaotic, and tolerances are relative to each
array's largest entry.
"""

import functools
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from bpm_jax import cells, fused_step, plasticity
from bpm_jax.config import PlasticityConfig
from tests import plastic_params

pytestmark = pytest.mark.skipif(
  shutil.which("g++") is None,
  reason="no C++ compiler (g++): the fused kernels cannot be built here",
)

B, H, T = 3, 7, 10
CLIP = 0.7
NETWORKS = ["plastic", "modplast", "retromod"]


def params_for(network, seed=0):
  config = PlasticityConfig(network=network)
  p = plastic_params.random_params(config, H, H, seed, w_scale=0.3)
  return config, p.replace(alpha=p.alpha * 0.5)


def random_state(config, seed=1, scale=0.9):
  """h, Hebb (and E) with entries beyond +-CLIP, so the clip acts."""
  rng = np.random.default_rng(seed)
  f = lambda *shape: jnp.asarray(rng.uniform(-scale, scale, shape), jnp.float32)
  traces = plasticity.Traces(hebb=f(B, H, H), elig=f(B, H, H) if config.has_eligibility else None)
  return plasticity.RNNState(h=f(B, H), traces=traces)


def reference_step(params, state, x, config, clip):
  return jax.vmap(lambda s, xi: plasticity.rnn_step(params, s, xi, config, clip))(state, x)


def weighted_sum(tree, seed):
  """A loss that sends a distinct cotangent into every entry of every leaf."""
  total = 0.0
  for k, leaf in enumerate(jax.tree.leaves(tree)):
    w = jnp.sin(jnp.arange(leaf.size, dtype=leaf.dtype) * (0.37 + 0.1 * k) + seed)
    total = total + jnp.sum(jnp.sin(leaf) * w.reshape(leaf.shape))
  return total


def assert_close(actual, desired, rtol):
  """Leafwise |a - d| <= rtol * max(max |d|, 1).

  The floor is for sums that cancel to nearly 0 (e.g. the clip value's
  gradient, a sum of +-terms of order 0.1-1): their rounding error is set by
  the terms, not by the small result. Measured on an AMD EPYC (modplast, T=10):
  the clip gradient is 1.585e-4 in float64, 1.468e-4 from the float32
  reference and 1.510e-4 from the kernel: the reference's own float32 error
  (1.2e-5) is over 0.1 * 2e-5.
  """
  assert jax.tree.structure(actual) == jax.tree.structure(desired)
  for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired)):
    a, d = np.asarray(a), np.asarray(d)
    assert a.shape == d.shape and a.dtype == d.dtype
    scale = max(np.max(np.abs(d)), 1.0)
    np.testing.assert_allclose(a, d, atol=rtol * scale, rtol=0)


@pytest.mark.parametrize("network", NETWORKS)
def test_one_step_forward_and_gradients_match_autodiff(network):
  config, params = params_for(network)
  state = random_state(config)
  x = jnp.asarray(np.random.default_rng(2).normal(0, 1, (B, H)), jnp.float32)

  def loss(step, params, state, x, clip):
    return weighted_sum(step(params, state, x, config, clip), 0)

  args = (params, state, x, jnp.float32(CLIP))
  ref = jax.jit(jax.value_and_grad(functools.partial(loss, reference_step), argnums=(0, 1, 2, 3)))(
    *args
  )
  got = jax.jit(
    jax.value_and_grad(functools.partial(loss, fused_step.rnn_step_fused), argnums=(0, 1, 2, 3))
  )(*args)
  assert_close(got, ref, rtol=1e-5)  # scalar sums over B*H*H terms
  out = fused_step.rnn_step_fused(params, state, x, config, CLIP)
  assert_close(out, reference_step(params, state, x, config, CLIP), rtol=1e-6)
  # The clip is active in some entries, so its branches and c's gradient count.
  hebb = np.abs(np.asarray(out[0].traces.hebb))
  assert np.any(hebb == np.float32(CLIP)) and np.any(hebb < CLIP)
  assert abs(float(ref[1][3])) > 1e-3


def scan_loss(step, params, x_drives, clip, config):
  def body(state, x):
    return step(params, state, x, config, clip)

  zero = plasticity.RNNState(
    h=jnp.zeros((B, H)),
    traces=jax.tree.map(
      lambda t: jnp.broadcast_to(t, (B,) + t.shape),
      plasticity.init_traces(config, H, H, jnp.float32),
    ),
  )
  final, outputs = lax.scan(body, zero, x_drives)
  return weighted_sum((final, outputs), 1), (final, outputs)


def sequence_loss(params, x_drives, clip, config, state=None, segment=None):
  zero = plasticity.RNNState(
    h=jnp.zeros((B, H)),
    traces=jax.tree.map(
      lambda t: jnp.broadcast_to(t, (B,) + t.shape),
      plasticity.init_traces(config, H, H, jnp.float32),
    ),
  )
  state = zero if state is None else state
  final, outputs = fused_step.rnn_sequence_fused(params, state, x_drives, config, clip, segment)
  return weighted_sum((final, outputs), 1), (final, outputs)


@pytest.mark.parametrize("network", NETWORKS)
def test_episode_step_and_sequence_kernels_match_autodiff(network):
  """T steps: scanned step kernel, sequence kernel and the reference agree;
  the two kernels' forward passes are the same arithmetic, bit for bit."""
  config, params = params_for(network)
  x_drives = jnp.asarray(np.random.default_rng(3).normal(0, 1, (T, B, H)), jnp.float32)
  grad = lambda fn: jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True))(
    params, x_drives, jnp.float32(CLIP)
  )
  ref = grad(lambda *a: scan_loss(reference_step, *a, config))
  step = grad(lambda *a: scan_loss(fused_step.rnn_step_fused, *a, config))
  seq = grad(lambda *a: sequence_loss(*a, config))
  assert_close(step, ref, rtol=2e-5)
  assert_close(seq, ref, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(step[0][1]), jax.tree.leaves(seq[0][1])):
    np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(ref[1][0].alpha)).max() > 1e-3


@pytest.mark.parametrize("network", NETWORKS)
def test_sequence_segments_recompute_the_full_history_bit_for_bit(network):
  """Checkpoints every k steps, recomputed in the backward: the numbers of k=1
  (every step's traces kept), for k dividing T or not, k = T and k > T; with
  the clip active, from random initial traces (and E); against autodiff too."""
  config, params = params_for(network)
  state = random_state(config, seed=8)
  x_drives = jnp.asarray(np.random.default_rng(9).normal(0, 1, (T, B, H)), jnp.float32)

  def grad(segment):
    loss = lambda p, s, x, c: sequence_loss(p, x, c, config, s, segment)
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    return fn(params, state, x_drives, jnp.float32(CLIP))

  full = grad(1)
  for segment in (2, 3, 4, T, T + 5, None):
    got = grad(segment)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(full)):
      np.testing.assert_array_equal(a, b, err_msg=f"segment={segment}")
  with fused_step.segment_length(3):  # what the cells and train.a2c get
    for a, b in zip(jax.tree.leaves(grad(None)), jax.tree.leaves(full)):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(grad(4)), jax.tree.leaves(grad(4))):  # deterministic
    np.testing.assert_array_equal(a, b)

  def scan_ref(p, s, x, c):
    final, outputs = lax.scan(lambda st, xt: reference_step(p, st, xt, config, c), s, x)
    return weighted_sum((final, outputs), 1), (final, outputs)

  ref = jax.jit(jax.value_and_grad(scan_ref, argnums=(0, 1, 2, 3), has_aux=True))(
    params, state, x_drives, jnp.float32(CLIP)
  )
  assert_close(full, ref, rtol=2e-5)
  hebb = np.abs(np.asarray(full[0][1][0].traces.hebb))
  assert np.any(hebb == np.float32(CLIP)) and np.any(hebb < CLIP)


@pytest.mark.parametrize("network", NETWORKS)
def test_a_recorded_rollout_gives_the_sequence_numbers_without_its_forward(network):
  """One-step calls in a scan, keeping the traces at segment starts
  (`scan_recording`), then `rnn_sequence_recorded`: the outputs and the
  gradient of `rnn_sequence_fused` bit for bit (the same kernel arithmetic),
  with a last segment shorter than the others, and no forward kernel call."""
  config, params = params_for(network)
  state = random_state(config, seed=4)
  x_drives = jnp.asarray(np.random.default_rng(5).normal(0, 1, (T, B, H)), jnp.float32)
  segment = 3  # T = 10: segments 3, 3, 3, 1

  def record(p, s, x):
    def step(st, xt):
      st, (h, m) = fused_step.rnn_step_fused(p, st, xt, config, CLIP)
      return st, (h, m[:, 0])

    final, (h, m), ckpt = fused_step.scan_recording(step, s, x, segment, lambda st: st.traces)
    return fused_step.Recorded(h, m, ckpt[0], ckpt[1], final.traces)

  def loss(run, p, s, x):
    final, outputs = run(p, s, x)
    return weighted_sum((final, outputs), 1), (final, outputs)

  def with_recording(p, s, x):
    recorded = record(*jax.lax.stop_gradient((p, s, x)))
    return fused_step.rnn_sequence_recorded(p, s, x, config, CLIP, recorded)

  def sequence(p, s, x):
    return fused_step.rnn_sequence_fused(p, s, x, config, CLIP, segment)

  grad = lambda run: jax.jit(
    jax.value_and_grad(functools.partial(loss, run), argnums=(0, 1, 2), has_aux=True)
  )
  with fused_step.segment_length(segment):
    got = grad(with_recording)(params, state, x_drives)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss(with_recording, p, state, x_drives)[0]))(params)
  want = grad(sequence)(params, state, x_drives)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)
  # The sequence forward kernel never runs: only the rollout's one-step calls
  # (T = 1 inside the scan) and the backward.
  calls = [e for e in jaxpr.eqns if e.primitive.name == "ffi_call"]
  assert [e.params["target_name"] for e in calls] == ["bpm_plastic_seq_bwd"]
  with pytest.raises(ValueError, match="segment"):
    with fused_step.segment_length(4):
      with_recording(params, state, x_drives)


@pytest.mark.parametrize("network", ["plastic", "retromod"])
def test_sequence_residual_is_one_checkpoint_per_segment(network):
  """The forward kernel returns ceil(T / k) checkpoints of the traces."""
  config, params = params_for(network)
  x_drives = jnp.zeros((T, B, H), jnp.float32)
  for segment, kept in ((1, T), (3, 4), (T, 1), (T + 5, 1)):
    jaxpr = jax.make_jaxpr(
      jax.grad(lambda p: sequence_loss(p, x_drives, CLIP, config, None, segment)[0])
    )(params)
    shapes = [v.aval.shape for e in jaxpr.eqns if e.primitive.name == "ffi_call" for v in e.outvars]
    assert shapes.count((kept, B, H, H)) == (2 if network == "retromod" else 1), shapes
  assert fused_step.default_segment(120, 200, "modplast") == 7
  assert fused_step.default_segment(120, 200, "retromod") == 4
  assert fused_step.default_segment(1, 200, "modplast") == 1
  for bad in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match="segment"):
      fused_step.rnn_sequence_fused(params, random_state(config), x_drives, config, CLIP, bad)


@pytest.mark.parametrize("network", ["modplast", "retromod"])
def test_clip_ties_give_half_the_cotangent_as_jnp_clip(network):
  """Hebb_tm1 = +-c with a zero update (h_tm1 rows of 0): JAX's gradient is 0.5."""
  config, params = params_for(network)
  state = random_state(config, scale=0.5)
  h = np.array(state.h)
  h[:, [0, 3]] = 0.0
  hebb = np.array(state.traces.hebb)
  hebb[:, 0, :2] = CLIP
  hebb[:, 3, 2:4] = -CLIP
  if config.has_eligibility:
    elig = np.array(state.traces.elig)
    elig[:, 0, :2] = elig[:, 3, 2:4] = 0.0  # zero retromod update there
    state = state.replace(traces=state.traces.replace(elig=jnp.asarray(elig)))
  state = state.replace(h=jnp.asarray(h), traces=state.traces.replace(hebb=jnp.asarray(hebb)))
  x = jnp.asarray(np.random.default_rng(4).normal(0, 1, (B, H)), jnp.float32)

  def g_old_hebb(step):
    loss = lambda s, c: jnp.sum(step(params, s, x, config, c)[0].traces.hebb)
    return jax.grad(loss, argnums=(0, 1))(state, jnp.float32(CLIP))

  ref, got = g_old_hebb(reference_step), g_old_hebb(fused_step.rnn_step_fused)
  np.testing.assert_allclose(got[0].traces.hebb[:, 0, :2], 0.5)
  assert_close(got, ref, rtol=1e-5)


def test_vmap_over_agents_equals_one_call_per_agent():
  """Under vmap (seeds, sweeps) the kernels run once per agent."""
  config, _ = params_for("modplast")
  agents = [params_for("modplast", seed)[1] for seed in (0, 5)]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *agents)
  x_drives = jnp.asarray(np.random.default_rng(6).normal(0, 1, (T, B, H)), jnp.float32)
  clips = jnp.asarray([0.7, 0.5], jnp.float32)

  def grads(p, c):  # several segments per episode (T=10, k=3)
    loss = lambda p, c: sequence_loss(p, x_drives, c, config, segment=3)[0]
    return jax.grad(loss, argnums=(0, 1))(p, c)

  batched = jax.jit(jax.vmap(grads))(stacked, clips)
  # Nested vmaps (agents x clip values): the kernel sees [2, 2] leading dims.
  nested = jax.jit(jax.vmap(jax.vmap(grads, in_axes=(None, 0)), in_axes=(0, None)))(stacked, clips)
  for k, p in enumerate(agents):
    for j in range(2):
      single = jax.jit(grads)(p, clips[j])
      for a, b in zip(jax.tree.leaves(nested), jax.tree.leaves(single)):
        np.testing.assert_allclose(a[k, j], b, rtol=1e-6, atol=1e-7)
      if j == k:
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
          np.testing.assert_allclose(a[k], b, rtol=1e-6, atol=1e-7)


def test_cell_fused_step_and_sequence_equal_reference():
  """`PlasticRNNCell(step_impl="fused")`: step by step and `sequence=True`."""
  config = PlasticityConfig(network="retromod")
  x = jnp.asarray(np.random.default_rng(7).normal(0, 1, (T, 2, B, 5)), jnp.float32)
  make = lambda impl: cells.PlasticRNNCell(
    features=H, config=config, step_impl=impl, alpha_init=nn.initializers.uniform(0.5)
  )
  carry = make("reference").initialize_carry(None, (2, B, 5))
  params = make("reference").init(jax.random.key(0), carry, x[0])

  def run(impl, sequence):
    cell = make(impl)
    if sequence:
      return cell.apply(params, carry, x, sequence=True)
    return lax.scan(lambda c, xt: cell.apply(params, c, xt), carry, x)

  ref = jax.jit(lambda: run("reference", False))()
  for impl, sequence in (("fused", False), ("fused", True), ("fast", True)):
    assert_close(jax.jit(lambda: run(impl, sequence))(), ref, rtol=1e-5)


@pytest.mark.parametrize(
  "config, message",
  [
    (PlasticityConfig(network="modplast", rule="decay"), "rule='decay'"),
    (PlasticityConfig(network="plastic", alpha_kind="single"), "alpha_kind='single'"),
    (PlasticityConfig(network="modplast", fan_out=True), "fan_out"),
    (PlasticityConfig(network="retromod", modulation_fn="sigmoid"), "modulation_fn"),
    (PlasticityConfig(network="plastic", eta_kind="full"), "eta_kind='full'"),
  ],
)
def test_unsupported_configs_name_the_setting_and_the_fix(config, message):
  with pytest.raises(ValueError, match=message) as info:
    cells.PlasticRNNCell(features=4, config=config, step_impl="fused")
  assert "step_impl='fast'" in str(info.value)


def test_bad_inputs_are_rejected_with_the_reason():
  config, params = params_for("plastic")
  state = random_state(config)
  x = jnp.zeros((B, H), jnp.float32)
  with pytest.raises(ValueError, match="float32"):
    fused_step.rnn_step_fused(
      jax.tree.map(lambda a: a.astype(jnp.bfloat16), params), state, x, config, CLIP
    )
  with pytest.raises(ValueError, match=r"\[T, B, H\]"):
    fused_step.rnn_sequence_fused(params, state, x, config, CLIP)


def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setenv("CXX", "no-such-compiler-xyz")
  monkeypatch.setenv("BPM_JAX_CACHE", str(tmp_path))
  with pytest.raises(RuntimeError, match="no-such-compiler-xyz.*step_impl='fast'"):
    fused_step.library_path.__wrapped__()
  assert not list(tmp_path.iterdir())
