"""Networks of the completion tasks (Differentiable plasticity 4.1-4.2; SPEC.md §5.4-5.5).

`CompletionNet`: N fully recurrent neurons, one per input value plus a bias
neuron, no input weights. The input enters either added to the
pre-activation (`input_mode="add"`, patterns: `y_t = tanh(y_tm1 @ (W + alpha *
Hebb_tm1) + 20 x_t)`) or clamped (`"clamp"`, images: a neuron with a non-zero
input takes that value). The step is `bpm_jax.plasticity.rnn_step` (decay
rule with a trained scalar eta by default; `network="rnn"` is the same
network without plasticity). The output is the last step's state without the
bias neuron, `y_T[:P]`.

`LSTMCompletionNet`: a parameter-matched LSTM baseline, a Flax LSTM reading
the same inputs with a tanh readout to P values, sized to have at least as
many parameters as the plastic network (`lstm_features_for`). It is not the
reference's LSTM script (`simple/lstm.py`: P + 1 + 1949 hidden units whose
first P are the output, inputs x100, and weights overwritten so that those
units copy their input), which has about 8x more units.

Both map one episode's inputs [T, N] to the output [P]; batch with `jax.vmap`.

Memory: backpropagation through T steps would keep a [N, N] trace (4 MB at
N = 1001) and its intermediates per step; `segmented_scan` keeps the state
only every `remat_every` steps and recomputes the steps in between during the
backward pass (about one more forward pass of compute).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from bpm_jax import cells, plasticity
from bpm_jax.config import PlasticityConfig

Array = jax.Array
InputMode = Literal["add", "clamp"]
INPUT_MODES = ("add", "clamp")

# SPEC §5.4: decay rule, one trained scalar eta, alpha per connection.
PAPER_CONFIG = PlasticityConfig(network="plastic", rule="decay", alpha_kind="full")


def segmented_scan(
  step: Callable[[Any, Any, Array], Any], params: Any, carry: Any, xs: Array, remat_every: int
) -> Any:
  """The final carry of `carry = step(params, carry, x)` over `xs` [T, ...].

  With `remat_every` = S > 0 the scan runs as segments of S steps, each under
  `jax.checkpoint`: the backward pass stores the carry at segment boundaries
  only (T / S carries) and recomputes each segment's steps. S = 0: a plain scan.
  """

  def scan(carry, xs):
    return jax.lax.scan(lambda c, x: (step(params, c, x), None), carry, xs)[0]

  length = xs.shape[0]
  if remat_every <= 0 or remat_every >= length:
    return scan(carry, xs)
  num_segments, rest = divmod(length, remat_every)
  body = xs[: num_segments * remat_every].reshape((num_segments, remat_every) + xs.shape[1:])
  segment = jax.checkpoint(scan, prevent_cse=False)
  carry = jax.lax.scan(lambda c, seg: (segment(c, seg), None), carry, body)[0]
  return segment(carry, xs[num_segments * remat_every :]) if rest else carry


# --------------------------------------------------------------------------
# The decay-rule sequence with a hand-written backward pass.


def decay_sequence_supported(config: PlasticityConfig) -> bool:
  """Whether `decay_sequence` covers `config` (else: autodiff of `segmented_scan`)."""
  return (
    config.network == "plastic"
    and config.rule == "decay"
    and config.eta_kind == "scalar"
    and config.alpha_kind in ("full", "single")
  )


def _step(config, input_mode, input_scale, params, state, x):
  """One step of the completion network: `plasticity.rnn_step`, inputs added or clamped."""
  if input_mode == "clamp":
    return plasticity.rnn_step(params, state, jnp.zeros_like(x), config, 1.0, clamp=x)[0]
  return plasticity.rnn_step(params, state, input_scale * x, config, 1.0)[0]


def _segments(length: int, every: int) -> list[tuple[int, int]]:
  every = length if every <= 0 else min(every, length)
  return [(start, min(start + every, length)) for start in range(0, length, every)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def decay_sequence(
  config: PlasticityConfig,
  input_mode: str,
  input_scale: float,
  remat_every: int,
  params: plasticity.PlasticParams,
  inputs: Array,
) -> Array:
  """y_T [N] of the plastic completion network over inputs [T, N] (y_0 = 0, Hebb_0 = 0).

  The forward pass is `plasticity.rnn_step` per step. The backward pass is the
  chain rule written out for the decay rule with a scalar eta (SPEC §2.2):
  it keeps y_t for every step ([T + 1, N]) and Hebb only at the start of each
  segment of `remat_every` steps; within a segment the traces are recomputed
  from the kept y's (one elementwise pass per step, no matrix-vector product)
  and consumed in reverse. The gradient of W is one [N, T] x [T, N] matmul.
  Reverse mode only (a `custom_vjp`): for `jax.jvp` / Hessians build the
  network with `hand_written_backward=False`.
  """
  return _decay_forward(config, input_mode, input_scale, remat_every, params, inputs)[0]


def _decay_forward(config, input_mode, input_scale, remat_every, params, inputs):
  n = inputs.shape[-1]
  state = plasticity.RNNState(
    h=jnp.zeros((n,), inputs.dtype), traces=plasticity.init_traces(config, n, n, inputs.dtype)
  )
  step = functools.partial(_step, config, input_mode, input_scale, params)

  def body(state, x):
    state = step(state, x)
    return state, state.h

  ys, starts = [state.h[None]], []
  for start, stop in _segments(inputs.shape[0], remat_every):
    starts.append(state.traces.hebb)
    state, h = jax.lax.scan(body, state, inputs[start:stop])
    ys.append(h)
  return state.h, (params, inputs, jnp.concatenate(ys), starts)


def _decay_fwd(config, input_mode, input_scale, remat_every, params, inputs):
  y_final, residuals = _decay_forward(config, input_mode, input_scale, remat_every, params, inputs)
  return y_final, residuals


def _decay_bwd(config, input_mode, input_scale, remat_every, residuals, g_final):
  params, inputs, ys, starts = residuals  # ys [T + 1, N]: y_0 = 0, ..., y_T.
  eta, alpha, w = params.eta, params.alpha, params.w
  full = config.alpha_kind == "full"
  clamp = input_mode == "clamp"

  def backward_step(carry, xs):
    g_y, g_hebb, g_alpha, g_eta = carry  # dL/dy_t (from later steps), dL/dHebb_t.
    y_tm1, y_t, x_t, hebb_tm1 = xs
    # Hebb_t = (1 - eta) Hebb_tm1 + eta outer(y_tm1, y_t).
    g_y = g_y + eta * (y_tm1 @ g_hebb)
    g_eta = g_eta + jnp.sum(g_hebb * (jnp.outer(y_tm1, y_t) - hebb_tm1))
    free = (x_t == 0) if clamp else jnp.ones_like(x_t, bool)
    g_x = jnp.where(free, 0.0, g_y) if clamp else input_scale * g_y * (1.0 - y_t * y_t)
    # y_t = tanh(y_tm1 @ (W + alpha Hebb_tm1) + drive) on the free neurons.
    g_pre = jnp.where(free, g_y * (1.0 - y_t * y_t), 0.0)
    if full:
      g_alpha = g_alpha + hebb_tm1 * jnp.outer(y_tm1, g_pre)
      g_y_tm1 = (alpha * hebb_tm1) @ g_pre
      g_hebb_tm1 = (1.0 - eta) * g_hebb + alpha * jnp.outer(y_tm1, g_pre)
    else:
      hebb_g = hebb_tm1 @ g_pre
      g_alpha = g_alpha + y_tm1 @ hebb_g
      g_y_tm1 = alpha * hebb_g
      g_hebb_tm1 = (1.0 - eta) * g_hebb + alpha * jnp.outer(y_tm1, g_pre)
    g_y_tm1 = g_y_tm1 + w @ g_pre + eta * (g_hebb @ y_t)
    return (g_y_tm1, g_hebb_tm1, g_alpha, g_eta), (g_pre, g_x)

  n = inputs.shape[-1]
  carry = (g_final, jnp.zeros((n, n), g_final.dtype), jnp.zeros_like(alpha), jnp.zeros_like(eta))
  g_pres, g_xs = [], []
  for (start, stop), hebb_start in reversed(
    list(zip(_segments(inputs.shape[0], remat_every), starts))
  ):
    pre, post = ys[start:stop], ys[start + 1 : stop + 1]

    def recompute(hebb, yy):  # The forward's trace update (same expression).
      return plasticity.apply_trace_rule(hebb, jnp.outer(*yy), eta, "decay", 1.0), hebb

    _, hebbs = jax.lax.scan(recompute, hebb_start, (pre, post))  # Hebb_tm1 per step.
    carry, (g_pre, g_x) = jax.lax.scan(
      backward_step, carry, (pre, post, inputs[start:stop], hebbs), reverse=True
    )
    g_pres.insert(0, g_pre)
    g_xs.insert(0, g_x)
  _, _, g_alpha, g_eta = carry
  g_w = ys[:-1].T @ jnp.concatenate(g_pres)  # sum_t outer(y_tm1, g_pre_t).
  g_params = plasticity.PlasticParams(w=g_w, alpha=g_alpha, eta=g_eta)
  return g_params, jnp.concatenate(g_xs)


decay_sequence.defvjp(_decay_fwd, _decay_bwd)


class CompletionNet(nn.Module):
  """The plastic (or plain) recurrent network of SPEC §5.4-5.5 for one episode.

  Attributes:
    num_neurons: N = P + 1 (the last neuron is the bias neuron).
    config: the plasticity variant (default: decay rule, scalar eta, full
      alpha; `network="rnn"` for the non-plastic baseline; `alpha_kind=
      "single"` for one shared alpha).
    input_mode: `add` (pre-activation + input_scale * x) or `clamp`.
    input_scale: the factor of `add` (paper: 20).
    init_scale: W, alpha ~ init_scale * N(0, 1) (paper: 0.01).
    eta_init: initial eta (paper: 0.01).
    clip_value: trace bound c (only the `clip` rule uses it).
    remat_every: steps per recomputed segment in the backward pass (0: none).
    hand_written_backward: use `decay_sequence` where it applies (the
      paper's configs; same numbers); False: autodiff of `segmented_scan`.
  """

  num_neurons: int
  config: PlasticityConfig = PAPER_CONFIG
  input_mode: InputMode = "add"
  input_scale: float = 20.0
  init_scale: float = 0.01
  eta_init: float = 0.01
  clip_value: float = 1.0
  remat_every: int = 10
  hand_written_backward: bool = True

  def __post_init__(self):
    owner = type(self).__name__
    if self.input_mode not in INPUT_MODES:
      raise ValueError(f"{owner}.input_mode={self.input_mode!r} is not one of {INPUT_MODES}.")
    if self.num_neurons < 2:
      raise ValueError(f"{owner}.num_neurons={self.num_neurons} must be >= 2 (P values + bias).")
    cells.check_modulators(owner, self.config, self.num_neurons)
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    """inputs [T, N] -> output y_T[:P] [P]."""
    n = self.num_neurons
    if inputs.shape[-1] != n:
      raise ValueError(f"inputs have {inputs.shape[-1]} values per step; expected N = {n}.")
    init = nn.initializers.normal(stddev=self.init_scale)
    # One shared alpha starts at init_scale (the reference's `homogenous` option).
    alpha_init = cells.constant(self.init_scale) if self.config.alpha_kind == "single" else init
    params = cells.declare_plastic_params(
      self, n, n, self.config, init, alpha_init, self.eta_init, self.eta_init, jnp.float32
    )
    state = plasticity.RNNState(
      h=jnp.zeros((n,), jnp.float32), traces=plasticity.init_traces(self.config, n, n)
    )
    if self.hand_written_backward and decay_sequence_supported(self.config):
      return decay_sequence(
        self.config, self.input_mode, self.input_scale, self.remat_every, params, inputs
      )[:-1]
    config, clip_value, scale = self.config, self.clip_value, self.input_scale
    clamp = self.input_mode == "clamp"

    def step(params, state, x):
      if clamp:
        drive = jnp.zeros_like(x)
        return plasticity.rnn_step(params, state, drive, config, clip_value, clamp=x)[0]
      return plasticity.rnn_step(params, state, scale * x, config, clip_value)[0]

    state = segmented_scan(step, params, state, inputs, self.remat_every)
    return state.h[:-1]


def plastic_param_count(num_neurons: int, config: PlasticityConfig = PAPER_CONFIG) -> int:
  """Trained parameters of `CompletionNet` (W, alpha, eta, modulation)."""
  shapes = jax.eval_shape(
    CompletionNet(num_neurons, config).init, jax.random.key(0), jnp.zeros((1, num_neurons))
  )
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def lstm_param_count(input_size: int, features: int, output_size: int) -> int:
  """Parameters of `LSTMCompletionNet`: Flax's LSTM cell (input kernels without
  bias, recurrent kernels with bias, 4 gates) plus the readout."""
  return 4 * (input_size * features + features * features + features) + (
    features * output_size + output_size
  )


def lstm_features_for(input_size: int, output_size: int, at_least: int) -> int:
  """The smallest LSTM width with >= `at_least` parameters."""
  features = 1
  while lstm_param_count(input_size, features, output_size) < at_least:
    features += 1
  return features


class LSTMCompletionNet(nn.Module):
  """LSTM baseline: inputs [T, N] -> tanh(Dense(h_T)) [P].

  Attributes:
    features: LSTM hidden units.
    output_size: P.
  """

  features: int
  output_size: int

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    cell = nn.OptimizedLSTMCell(features=self.features)
    carry = cell.initialize_carry(jax.random.key(0), inputs.shape[-1:])
    scan = nn.scan(
      lambda cell, carry, x: cell(carry, x),
      variable_broadcast="params",
      split_rngs={"params": False},
    )
    (_, h), _ = scan(cell, carry, inputs)
    return jnp.tanh(nn.Dense(self.output_size)(h))
