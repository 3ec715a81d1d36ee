"""`fast_step.rnn_step_fast` (custom VJP) against autodiff of `plasticity.rnn_step`."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from bpm_jax import cells, fast_step, plasticity
from bpm_jax.config import PlasticityConfig
from tests import plastic_params

H = 6
T = 30
CLIP_VALUE = 0.7
ATOL = 1e-5
RTOL = 1e-6

# Every branch of the backward pass, each in at least one config: every network
# x rule, every alpha kind, every rate source (eta scalar/full, K >= 1 with and
# without fan-out, every modulation fn, partial modulation), the retromod split.
CONFIGS = [
  PlasticityConfig(network="rnn"),
  PlasticityConfig(network="plastic", rule="clip"),
  PlasticityConfig(network="plastic", rule="decay", alpha_kind="per_neuron", eta_kind="full"),
  PlasticityConfig(network="plastic", rule="soft_clip", alpha_kind="single"),
  PlasticityConfig(network="plastic", rule="oja"),
  PlasticityConfig(network="modplast"),
  PlasticityConfig(
    network="modplast", rule="decay", modulation_fn="sigmoid", alpha_kind="per_neuron"
  ),
  PlasticityConfig(network="modplast", rule="soft_clip", alpha_kind="single", num_modulators=3),
  PlasticityConfig(
    network="modplast", rule="oja", alpha_kind="single", fan_out=True, partial_modulation=True
  ),
  PlasticityConfig(
    network="modplast",
    modulation_fn="identity",
    fan_out=True,
    num_modulators=2,
    partial_modulation=True,
  ),
  PlasticityConfig(network="retromod"),
  PlasticityConfig(network="retromod", rule="decay", alpha_kind="single"),
  PlasticityConfig(
    network="retromod",
    rule="soft_clip",
    alpha_kind="per_neuron",
    fan_out=True,
    num_modulators=2,
    modulation_fn="sigmoid",
  ),
  PlasticityConfig(network="retromod", num_modulators=3, eta_kind="full", modulation_fn="identity"),
  PlasticityConfig(network="retromod", partial_modulation=True),
  PlasticityConfig(
    network="retromod",
    partial_modulation=True,
    rule="soft_clip",
    fan_out=True,
    alpha_kind="per_neuron",
  ),
]


def jit_run(fn, *args):
  """`jax.jit(fn)(*args)`, compiled at XLA backend optimisation level 0.

  The programs here are tiny (H = 6) and run once: compiling them is nearly all
  of the test time, and level 0 halves it. Both implementations in a test are
  compiled in the same program, so they see the same code generation.
  """
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})(*args)


@pytest.fixture
def x64():
  """Runs a test in float64 (the random networks below are chaotic enough that
  float32 rounding alone would exceed ATOL over T steps)."""
  with jax.enable_x64(True):
    yield


def random_params(
  config: PlasticityConfig, size: int = H, seed: int = 0
) -> plasticity.PlasticParams:
  """Random parameters strong enough that traces saturate, clips and modulation act."""
  return plastic_params.random_params(config, size, size, seed)


def zero_state(config: PlasticityConfig, dtype, size: int = H) -> plasticity.RNNState:
  return plasticity.RNNState(
    h=jnp.zeros((size,), dtype), traces=plasticity.init_traces(config, size, size, dtype)
  )


def episode(step, params, config, x_drives, clip_value):
  """Scans `step` over x_drives [T, H]; returns (final state, h [T, H], m [T, K])."""

  def body(state, x_drive):
    state, (h, m) = step(params, state, x_drive, config, clip_value)
    return state, (h, m)

  return lax.scan(body, zero_state(config, x_drives.dtype, x_drives.shape[-1]), x_drives)


def episode_loss(step, params, config, x_drives, clip_value):
  """A loss sending a cotangent into every output (h_t, m_t, the final traces).

  Returns:
    (loss [], (final state, h [T, H], m [T, K])).
  """
  outputs = episode(step, params, config, x_drives, clip_value)
  state, (hs, ms) = outputs
  steps, size = hs.shape
  weights = jnp.cos(jnp.arange(steps * size, dtype=hs.dtype)).reshape(steps, size)
  loss = jnp.sum(jnp.sin(hs) * weights) + jnp.sum(jnp.square(ms))
  trace_weights = jnp.sin(jnp.arange(size * size, dtype=hs.dtype)).reshape(size, size)
  for trace in (state.traces.hebb, state.traces.elig):
    if trace is not None:
      loss = loss + jnp.sum(trace * trace_weights)
  return loss, outputs


def assert_trees_close(actual, desired, atol=ATOL, rtol=RTOL):
  assert jax.tree.structure(actual) == jax.tree.structure(desired)
  for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired)):
    assert a.shape == d.shape and a.dtype == d.dtype
    np.testing.assert_allclose(a, d, atol=atol, rtol=rtol)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_episode_forward_and_gradient_match_autodiff(config, x64):
  params = random_params(config)
  x_drives = jnp.asarray(np.random.default_rng(1).normal(0, 1.0, (T, H)))

  def both(params, x_drives, clip_value):
    def run(step):
      (_, outputs), grads = jax.value_and_grad(
        lambda p, x, c: episode_loss(step, p, config, x, c), argnums=(0, 1, 2), has_aux=True
      )(params, x_drives, clip_value)
      return outputs, grads

    return run(plasticity.rnn_step), run(fast_step.rnn_step_fast)

  (ref_out, ref_grads), (fast_out, fast_grads) = jit_run(
    both, params, x_drives, jnp.asarray(CLIP_VALUE)
  )
  # Forward: the same core functions, so the same numbers.
  assert_trees_close(fast_out, ref_out, atol=1e-12, rtol=0)
  # Gradients w.r.t. params, x_drives and the traced clip value.
  assert_trees_close(fast_grads, ref_grads)
  if config.is_plastic:
    assert np.any(np.abs(ref_grads[0].alpha) > 1e-3)
  if config.is_plastic and config.rule == "clip":
    # The test only means something if the clip is active in some entries.
    hebb = np.abs(np.asarray(ref_out[0].traces.hebb))
    assert np.any(hebb == CLIP_VALUE) and np.any(hebb < CLIP_VALUE)
    assert abs(float(ref_grads[2])) > 1e-6


@pytest.mark.parametrize(
  "config",
  [
    PlasticityConfig(network="modplast"),
    PlasticityConfig(network="retromod", partial_modulation=True),
    PlasticityConfig(network="retromod", rule="soft_clip"),
  ],
  ids=str,
)
def test_clip_ties_match_jnp_clip_autodiff(config, x64):
  """Entries exactly at +-c (Hebb_tm1 = +-c, zero update): JAX gives 0.5 there."""
  bound = 1.0 if config.rule == "soft_clip" else CLIP_VALUE
  params = random_params(config)
  rng = np.random.default_rng(2)
  h_tm1 = rng.uniform(-0.9, 0.9, H)
  h_tm1[[0, 3]] = 0.0  # rows with a zero Hebbian update
  hebb = rng.uniform(-0.5, 0.5, (H, H))
  hebb[0, :] = bound
  hebb[3, :] = -bound
  hebb[1, 2] = 3.0 * bound  # far outside: clipped
  traces = plasticity.Traces(hebb=jnp.asarray(hebb))
  if config.has_eligibility:
    elig = rng.uniform(-0.5, 0.5, (H, H))
    elig[[0, 3], :] = 0.0
    traces = traces.replace(elig=jnp.asarray(elig))
  state = plasticity.RNNState(h=jnp.asarray(h_tm1), traces=traces)
  x_drive = jnp.asarray(rng.normal(0, 1.0, H))
  args = (params, state, x_drive, jnp.asarray(CLIP_VALUE))

  def step_fn(step):
    return lambda p, s, x, c: step(p, s, x, config, c)

  out_shapes = jax.eval_shape(step_fn(plasticity.rnn_step), *args)
  leaves, treedef = jax.tree.flatten(out_shapes)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  cotangent = treedef.unflatten(
    [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)]
  )

  def both(args, cotangent):
    results = []
    for step in (plasticity.rnn_step, fast_step.rnn_step_fast):
      out, vjp_fn = jax.vjp(step_fn(step), *args)
      results.append((out, vjp_fn(cotangent)))
    return results

  (ref_out, ref_grads), (fast_out, fast_grads) = jit_run(both, args, cotangent)
  assert_trees_close(fast_out, ref_out, atol=0, rtol=0)
  assert_trees_close(fast_grads, ref_grads, atol=1e-12, rtol=0)
  if config.network == "modplast":
    # The ties are there: row 0 sits at +c with a zero update and h_tm1[0] = 0
    # (no drive term), so the reference passes exactly half the cotangent.
    np.testing.assert_allclose(
      np.asarray(ref_grads[1].traces.hebb)[0],
      0.5 * np.asarray(cotangent[0].traces.hebb)[0],
      atol=1e-12,
    )


@pytest.mark.parametrize(
  "config",
  [
    PlasticityConfig(
      network="modplast",
      rule="oja",
      fan_out=True,
      num_modulators=2,
      modulation_fn="sigmoid",
      alpha_kind="per_neuron",
    ),
    PlasticityConfig(
      network="retromod", partial_modulation=True, alpha_kind="single", eta_kind="full"
    ),
  ],
  ids=str,
)
def test_check_grads_numerically(config, x64):
  """Finite differences on the fast step (two steps, traces away from +-c kinks)."""
  params = random_params(config, seed=4)
  rng = np.random.default_rng(5)
  hebb = rng.uniform(-0.3, 0.3, (H, H))
  hebb[1, 2], hebb[4, 0] = 3.0, -3.0  # saturated, far from the kink
  traces = plasticity.Traces(hebb=jnp.asarray(hebb))
  if config.has_eligibility:
    traces = traces.replace(elig=jnp.asarray(rng.uniform(-0.3, 0.3, (H, H))))
  state = plasticity.RNNState(h=jnp.asarray(rng.uniform(-0.9, 0.9, H)), traces=traces)
  x_drives = jnp.asarray(rng.normal(0, 1.0, (2, H)))

  def two_steps(params, state, x_drives, clip_value):
    for x_drive in x_drives:
      state, (h, m) = fast_step.rnn_step_fast(params, state, x_drive, config, clip_value)
    return state, h, m

  check_grads(
    jax.jit(two_steps),
    (params, state, x_drives, jnp.asarray(1.0)),
    order=1,
    modes=["rev"],
    atol=1e-5,
    rtol=1e-5,
  )


def test_jit_and_vmap_over_batch(x64):
  """vmap over B episodes inside the scan, under jit: forward and grads agree."""
  config = PlasticityConfig(network="retromod", fan_out=True, num_modulators=2)
  params = random_params(config)
  batch = 3
  x_drives = jnp.asarray(np.random.default_rng(6).normal(0, 1.0, (T, batch, H)))
  batched_zero_state = jax.tree.map(
    lambda a: jnp.broadcast_to(a, (batch,) + a.shape), zero_state(config, x_drives.dtype)
  )

  def loss(step, params, clip_value):
    batched_step = jax.vmap(step, in_axes=(None, 0, 0, None, None))

    def body(state, x_drive):
      state, (h, m) = batched_step(params, state, x_drive, config, clip_value)
      return state, h

    state, hs = lax.scan(body, batched_zero_state, x_drives)
    return jnp.sum(jnp.sin(hs)) + jnp.sum(state.traces.hebb[:, 0])

  def both(params, clip_value, state):
    grads = [
      jax.value_and_grad(functools.partial(loss, step), argnums=(0, 1))(params, clip_value)
      for step in (plasticity.rnn_step, fast_step.rnn_step_fast)
    ]
    # One vmapped fast step against a Python loop over the batch.
    vmapped = jax.vmap(fast_step.rnn_step_fast, in_axes=(None, 0, 0, None, None))(
      params, state, x_drives[0], config, clip_value
    )
    looped = [
      fast_step.rnn_step_fast(
        params, jax.tree.map(lambda a: a[b], state), x_drives[0, b], config, clip_value
      )
      for b in range(batch)
    ]
    return grads, vmapped, looped

  state = batched_zero_state.replace(
    h=jnp.asarray(np.random.default_rng(7).uniform(-1, 1, (batch, H)))
  )
  (ref, fast), vmapped, looped = jit_run(both, params, jnp.asarray(CLIP_VALUE), state)
  assert_trees_close(fast, ref)
  for b in range(batch):
    assert_trees_close(jax.tree.map(lambda a: a[b], vmapped), looped[b], atol=1e-12, rtol=0)


@pytest.mark.parametrize("network, num_hh_residuals", [("modplast", 1), ("retromod", 2)])
def test_saves_only_old_traces_per_step(network, num_hh_residuals):
  """Under scan + vjp the fast step keeps per step only Hebb_tm1 (and E_tm1)
  among the [T, H, H] residuals; the parameters are hoisted, not stacked."""
  config = PlasticityConfig(network=network)
  params = random_params(config)
  x_drives = jnp.asarray(np.random.default_rng(1).normal(0, 1.0, (T, H)), jnp.float32)

  def count(step):
    def residuals(params):
      _, vjp_fn = jax.vjp(lambda p: episode_loss(step, p, config, x_drives, CLIP_VALUE)[0], params)
      return jax.tree.leaves(vjp_fn)

    # Abstract evaluation: the residual shapes, without compiling anything.
    return sum(1 for leaf in jax.eval_shape(residuals, params) if leaf.shape == (T, H, H))

  assert count(fast_step.rnn_step_fast) == num_hh_residuals
  assert count(plasticity.rnn_step) > num_hh_residuals


def test_cell_fast_equals_reference():
  """PlasticRNNCell(step_impl="fast") in nn.RNN: same outputs and parameter grads."""
  config = PlasticityConfig(network="retromod", fan_out=True)
  batch, steps, num_inputs = 2, 20, 3
  xs = jax.random.normal(jax.random.key(0), (batch, steps, num_inputs))

  def make(step_impl):
    return nn.RNN(
      cells.PlasticRNNCell(
        features=H,
        config=config,
        step_impl=step_impl,
        w_init=cells.uniform_range(-0.5, 0.5),
        alpha_init=cells.uniform_range(-1.0, 1.0),
        return_modulation=True,
      )
    )

  reference, fast = make("reference"), make("fast")

  def both(xs):
    variables = reference.init(jax.random.key(1), xs)
    results = []
    for model in (reference, fast):

      def loss(variables):
        h, m = model.apply(variables, xs)
        return jnp.sum(jnp.sin(h)) + jnp.sum(m), (h, m)

      results.append(jax.value_and_grad(loss, has_aux=True)(variables))
    return results

  ((_, ref_out), ref_grads), ((_, fast_out), fast_grads) = jit_run(both, xs)
  assert_trees_close(fast_out, ref_out, atol=0, rtol=0)
  assert_trees_close(fast_grads, ref_grads, atol=1e-5, rtol=1e-5)
  assert float(jnp.max(jnp.abs(ref_grads["params"]["cell"]["alpha"]))) > 1e-4
