"""Flax cells over the pure plasticity core (`bpm_jax.plasticity`).

The cells only declare parameters and call the core; any leading batch
dimensions of the inputs are handled with `jax.vmap` (the core is unbatched).
Both are `flax.linen.RNNCellBase` subclasses, so they work in `nn.RNN` and
`nn.scan`:

    cell = PlasticRNNCell(features=200, config=PlasticityConfig("modplast"))
    carry = cell.initialize_carry(key, (batch, num_inputs))
    carry, h = cell(carry, x)          # x [B, I], h [B, H]

As in Flax's own cells (`nn.LSTMCell(features=...)`), the number of hidden
units H is `features`, and `kernel_init`/`bias_init`/`param_dtype` configure
the input projection and the parameters. `hidden_size=` is a deprecated alias
of `features` (a DeprecationWarning; `cell.hidden_size` is then None).

The modulation signal m_t [..., K] is recorded with
`sow("intermediates", "modulation", m)` and, with `return_modulation=True`,
returned as the output `(h, m)`.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bpm_jax import plasticity
from bpm_jax.config import PlasticityConfig, check_choice, check_positive

Array = jax.Array
Initializer = Callable[..., Array]

# PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Initializer:
  """PyTorch's nn.Linear bias default, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return uniform_range(-bound, bound)


def uniform_range(low: float, high: float) -> Initializer:
  """Initializer drawing U(low, high)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, low, high)

  return init


def constant(value: float) -> Initializer:
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.full(shape, value, dtype)

  return init


def _alpha_shape(kind: str, pre: int, post: int) -> tuple[int, ...]:
  return {"full": (pre, post), "per_neuron": (1, post), "single": ()}[kind]


def declare_plastic_params(
  module: nn.Module,
  pre: int,
  post: int,
  config: PlasticityConfig,
  w_init: Initializer,
  alpha_init: Initializer,
  eta_init: float,
  plain_eta_init: float,
  param_dtype: Any,
) -> plasticity.PlasticParams:
  """Declares the plastic path's parameters on `module` (call in compact code).

  Names: `w` [H, P], `alpha`, `eta`, `mod_kernel` [H, K], `mod_bias` [K],
  `fanout_kernel` [K, P], `fanout_bias` [P], `plain_eta` [].
  """
  p = module.param
  params = dict(w=p("w", w_init, (pre, post), param_dtype))
  if config.is_plastic:
    params["alpha"] = p(
      "alpha", alpha_init, _alpha_shape(config.alpha_kind, pre, post), param_dtype
    )
  if config.network in ("plastic", "retromod"):
    eta_shape = () if config.eta_kind == "scalar" else (pre, post)
    params["eta"] = p("eta", constant(eta_init), eta_shape, param_dtype)
  if config.is_modulated:
    k = config.num_modulators
    params["mod_kernel"] = p("mod_kernel", torch_kernel_init, (pre, k), param_dtype)
    params["mod_bias"] = p("mod_bias", torch_bias_init(pre), (k,), param_dtype)
    if config.fan_out:
      params["fanout_kernel"] = p("fanout_kernel", torch_kernel_init, (k, post), param_dtype)
      params["fanout_bias"] = p("fanout_bias", torch_bias_init(k), (post,), param_dtype)
    if config.partial_modulation:
      params["plain_eta"] = p("plain_eta", constant(plain_eta_init), (), param_dtype)
  return plasticity.PlasticParams(**params)


def check_modulators(owner: str, config: PlasticityConfig, post: int) -> None:
  if config.is_modulated and not config.fan_out and config.num_modulators > post:
    raise ValueError(
      f"{owner}: num_modulators={config.num_modulators} exceeds the {post} "
      "postsynaptic units they would gate without fan-out; use fewer "
      "modulators or fan_out=True."
    )


def _user_stacklevel() -> int:
  """The `warnings.warn` stacklevel of the first caller outside this file and Flax."""
  flax_dir = os.path.dirname(os.path.dirname(os.path.abspath(nn.__file__))) + os.sep
  here = os.path.abspath(__file__)
  frame, level = sys._getframe(2), 2  # 1: warnings.warn's caller; 2: its caller.
  while frame is not None:
    name = frame.f_code.co_filename
    internal = name == "<string>" or os.path.abspath(name) == here or name.startswith(flax_dir)
    if not internal:
      return level
    frame, level = frame.f_back, level + 1
  return 2


def _resolve_features(module: nn.Module) -> None:
  """Checks `module.features` (H), taking it from the deprecated `hidden_size=`.

  Call first in `__post_init__`. After it `features` holds H and `hidden_size`
  is None, so Flax's clones of the module do not warn again.

  Raises:
    ValueError: neither given, both given with different values, or H < 1.
  """
  owner = type(module).__name__
  if module.hidden_size is not None:
    warnings.warn(
      f"{owner}(hidden_size=...) is deprecated: use features=..., as in Flax's "
      "cells (nn.LSTMCell(features=...)).",
      DeprecationWarning,
      stacklevel=_user_stacklevel(),
    )
    if module.features is not None and module.features != module.hidden_size:
      raise ValueError(
        f"{owner}: features={module.features!r} and the deprecated "
        f"hidden_size={module.hidden_size!r} differ; give only features."
      )
    module.features, module.hidden_size = module.hidden_size, None
  if module.features is None:
    raise ValueError(f"{owner}: features (H, the number of hidden units) is required.")
  check_positive(owner, "features", module.features)


STEP_IMPLS = ("reference", "fast", "fused")


def check_step_impl(owner: str, step_impl: str, config: PlasticityConfig) -> None:
  """Raises a ValueError for an unknown `step_impl` or one that cannot run `config`."""
  check_choice(owner, "step_impl", step_impl, STEP_IMPLS)
  if step_impl == "fused" and config.is_plastic:
    from bpm_jax import fused_step  # pylint: disable=g-import-not-at-top

    fused_step.check_supported(config)


def rnn_step_impl(name: str) -> Callable:
  """The per-episode plastic RNN step for `step_impl` name (same signature).

  `fused` has no per-episode form (its kernels take the whole batch); the
  cell calls `fused_step.rnn_step_fused` on the batch directly.
  """
  if name == "fast":
    from bpm_jax import fast_step  # pylint: disable=g-import-not-at-top

    return fast_step.rnn_step_fast
  return plasticity.rnn_step


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_batch(x: Array, size: int) -> Array:
  """x [...] -> [size, ...], whose transpose sums over the batch with a dot.

  Autodiff of a vmapped step with unbatched params sums each parameter's
  per-example cotangent with `reduce_sum(axis=0)`; on XLA:CPU that reduction
  of a [B, H, H] array is ~100x slower than the same sum as `ones(B) @ g`
  (27 ms vs 0.24 ms at B=20, H=200). Broadcasting the [H, P] parameters that
  meet the traces elementwise (alpha, eta) through this op moves that sum
  into a dot. The forward broadcast fuses into its consumer.
  """
  return jnp.broadcast_to(x, (size,) + x.shape)


def _broadcast_batch_fwd(x, size):
  return broadcast_batch(x, size), None


def _broadcast_batch_bwd(size, _, g):
  return (jnp.tensordot(jnp.ones((size,), g.dtype), g, axes=1),)


broadcast_batch.defvjp(_broadcast_batch_fwd, _broadcast_batch_bwd)

# [H, P] parameters used elementwise against the [H, P] traces.
_ELEMENTWISE_PARAMS = ("alpha", "eta")


def batched(step: Callable, batch_shape: tuple[int, ...]) -> Callable:
  """Maps `step(params, state, x)` over leading batch dims of state and x.

  The batch dims are flattened into one, the step is vmapped (params shared),
  and the outputs are reshaped back.
  """
  if not batch_shape:
    return step
  size = math.prod(batch_shape)

  def run(params: plasticity.PlasticParams, state, x):
    flat = lambda t: t.reshape((size,) + t.shape[len(batch_shape) :])
    state, x = jax.tree.map(flat, (state, x))
    in_axes = jax.tree.map(lambda _: None, params)
    for name in _ELEMENTWISE_PARAMS:
      value = getattr(params, name)
      if value is not None and value.ndim == 2:
        params = params.replace(**{name: broadcast_batch(value, size)})
        in_axes = in_axes.replace(**{name: 0})
    out = jax.vmap(step, in_axes=(in_axes, 0, 0))(params, state, x)
    return jax.tree.map(lambda t: t.reshape(batch_shape + t.shape[1:]), out)

  return run


def _batch_reshapers(batch_shape: tuple[int, ...]) -> tuple[Callable, Callable]:
  """(flat, unflat): leading batch dims `batch_shape` <-> one dim, after `lead` axes."""
  size = math.prod(batch_shape)

  def flat(t, lead=0):
    return t.reshape(t.shape[:lead] + (size,) + t.shape[lead + len(batch_shape) :])

  def unflat(t, lead=0):
    return t.reshape(t.shape[:lead] + batch_shape + t.shape[lead + 1 :])

  return flat, unflat


def _fused_batched(
  params: plasticity.PlasticParams,
  state: plasticity.RNNState,
  x_drive: Array,
  config: PlasticityConfig,
  clip_value: Any,
  sequence: bool,
  recorded: Any = None,
):
  """The fused kernels over any leading batch dims (none: a batch of 1).

  x_drive: [..., H], or [T, ..., H] with `sequence`.
  recorded: a `fused_step.Recorded` of this sequence (one batch dim).
  """
  from bpm_jax import fused_step  # pylint: disable=g-import-not-at-top

  batch_shape = state.h.shape[:-1]
  flat, unflat = _batch_reshapers(batch_shape)
  state = jax.tree.map(flat, state)
  if recorded is not None and (not sequence or len(batch_shape) != 1):
    raise ValueError("recorded= needs sequence=True and one batch dim [T, B, I].")
  if sequence:
    if recorded is None:
      out = fused_step.rnn_sequence_fused(params, state, flat(x_drive, 1), config, clip_value)
    else:
      out = fused_step.rnn_sequence_recorded(params, state, x_drive, config, clip_value, recorded)
    state, (h, m) = out
    return jax.tree.map(unflat, state), (unflat(h, 1), unflat(m, 1))
  out = fused_step.rnn_step_fused(params, state, flat(x_drive), config, clip_value)
  return jax.tree.map(unflat, out)


class PlasticRNNCell(nn.RNNCellBase):
  """Plastic recurrent layer: h_t = tanh(x W_in + b + h_tm1 (W + alpha Hebb)).

  Attributes:
    features: H, the number of hidden units (required).
    config: the plasticity variant (`network` selects rnn/plastic/modplast/retromod).
    clip_value: trace bound c (1.0 in the cue-reward task and maze); may be a
      traced scalar so a sweep can vmap over it.
    w_init, alpha_init: initializers of W and alpha (SPEC.md §3.4: U(0, 0.01)).
    eta_init: initial eta (Hebbian rate of `plastic`, eligibility rate of
      `retromod`): 0.1 (cue-reward) / 0.01 (maze).
    plain_eta_init: initial rate of the non-modulated half.
    return_modulation: if True the output is `(h [..., H], m [..., K])`.
    step_impl: `reference` (plain autodiff of `plasticity.rnn_step`),
      `fast` (`bpm_jax.fast_step.rnn_step_fast`: same numbers, a hand-written
      backward pass that saves far less per step) or `fused`
      (`bpm_jax.fused_step.rnn_step_fused`: C++ CPU kernels over the whole
      batch, the papers' configurations only; equal to float32 rounding).
    kernel_init: initializer of the input kernel W_in [I, H] (PyTorch's
      nn.Linear default, U(-1/sqrt(I), 1/sqrt(I))).
    bias_init: initializer of the input bias b [H]; None: PyTorch's default,
      U(-1/sqrt(I), 1/sqrt(I)).
    param_dtype: dtype of every parameter and of the carry.
    hidden_size: deprecated alias of `features` (None after construction).
  """

  features: Optional[int] = None
  config: PlasticityConfig = PlasticityConfig()
  clip_value: Any = 1.0
  step_impl: str = "reference"
  w_init: Initializer = uniform_range(0.0, 0.01)
  alpha_init: Initializer = uniform_range(0.0, 0.01)
  eta_init: float = 0.1
  plain_eta_init: float = 0.1
  return_modulation: bool = False
  kernel_init: Initializer = torch_kernel_init
  bias_init: Optional[Initializer] = None
  param_dtype: Any = jnp.float32
  hidden_size: Optional[int] = None

  def __post_init__(self):
    _resolve_features(self)
    check_modulators(type(self).__name__, self.config, self.features)
    check_step_impl(type(self).__name__, self.step_impl, self.config)
    super().__post_init__()

  @nn.compact
  def __call__(
    self, carry: plasticity.RNNState, x: Array, sequence: bool = False, recorded: Any = None
  ):
    """One step, or a whole sequence.

    Args:
      carry: RNNState with leading batch dims.
      x: [..., I] inputs of one step, or [T, ..., I] with `sequence=True`.
      sequence: run T steps (time-major `x`); h and m get a leading T axis.
        With `step_impl="fused"` the T steps are one kernel call per
        direction (`fused_step.rnn_sequence_fused`), else a `lax.scan`.
      recorded: `fused` only: a `fused_step.Recorded` of these T steps (made
        by a rollout of one-step calls with the same parameters); the
        sequence then returns it and runs only the backward kernel
        (`fused_step.rnn_sequence_recorded`).
    """
    hsize = self.features
    x_drive = nn.Dense(
      hsize,
      kernel_init=self.kernel_init,
      bias_init=self.bias_init or torch_bias_init(x.shape[-1]),
      param_dtype=self.param_dtype,
      name="input",
    )(x)
    params = declare_plastic_params(
      self,
      hsize,
      hsize,
      self.config,
      self.w_init,
      self.alpha_init,
      self.eta_init,
      self.plain_eta_init,
      self.param_dtype,
    )
    fused = self.step_impl == "fused" and self.config.is_plastic
    if recorded is not None and not fused:
      raise ValueError("recorded= needs step_impl='fused' and a plastic network.")
    if fused:
      carry, (h, m) = _fused_batched(
        params, carry, x_drive, self.config, self.clip_value, sequence, recorded
      )
    else:
      rnn_step = rnn_step_impl(self.step_impl)

      def step(state, xd):
        return batched(
          lambda p, s, x: rnn_step(p, s, x, self.config, self.clip_value), xd.shape[:-1]
        )(params, state, xd)

      carry, (h, m) = jax.lax.scan(step, carry, x_drive) if sequence else step(carry, x_drive)
    self.sow("intermediates", "modulation", m)
    return carry, ((h, m) if self.return_modulation else h)

  @nn.nowrap
  def initialize_carry(self, rng, input_shape) -> plasticity.RNNState:
    """Zero h [..., H] and traces [..., H, H] for batch dims `input_shape[:-1]`."""
    del rng
    batch = tuple(input_shape[:-1])
    traces = plasticity.init_traces(self.config, self.features, self.features, self.param_dtype)
    traces = jax.tree.map(lambda t: jnp.broadcast_to(t, batch + t.shape), traces)
    return plasticity.RNNState(
      h=jnp.zeros(batch + (self.features,), self.param_dtype), traces=traces
    )

  @property
  def num_feature_axes(self) -> int:
    return 1


LSTM_STEP_IMPLS = ("auto", "reference", "fused")


def resolve_lstm_step_impl(
  step_impl: str, config: PlasticityConfig, plastic_gates: bool = False
) -> str:
  """The LSTM step that runs: `reference` for a plain LSTM (`rnn`: XLA's own
  code), `step_impl` if not `auto`, else `fused` where the kernels cover the
  variant and build on this (CPU) backend, else `reference`."""
  if not config.is_plastic:
    return "reference"
  if step_impl != "auto":
    return step_impl
  from bpm_jax import fused_lstm, fused_step  # pylint: disable=g-import-not-at-top

  fused = fused_lstm.unsupported_reason(config, plastic_gates) is None and fused_step.available()
  return "fused" if fused else "reference"


def _fused_lstm_batched(
  params: plasticity.PlasticParams,
  gate_kernel: Array,
  state: plasticity.LSTMState,
  x_drive: Array,
  config: PlasticityConfig,
  clip_value: Any,
  sequence: bool,
):
  """The fused LSTM kernels over any leading batch dims (none: a batch of 1).

  x_drive: [..., 4H], or [T, ..., 4H] with `sequence` (one step: T = 1).
  """
  from bpm_jax import fused_lstm  # pylint: disable=g-import-not-at-top

  flat, unflat = _batch_reshapers(state.h.shape[:-1])
  x_seq = flat(x_drive, 1) if sequence else flat(x_drive)[None]
  state, (h, m) = fused_lstm.lstm_sequence_fused(
    params, gate_kernel, jax.tree.map(flat, state), x_seq, config, clip_value
  )
  state = jax.tree.map(unflat, state)
  if sequence:
    return state, (unflat(h, 1), unflat(m, 1))
  return state, (unflat(h[0]), unflat(m[0]))


class PlasticLSTMCell(nn.RNNCellBase):
  """Plastic LSTM (SPEC.md §4): plasticity on the h_tm1 -> cell-candidate path.

  Attributes:
    features: H, the number of hidden units (required).
    config: the plasticity variant.
    clip_value: trace bound c (2.0 for the LSTMs).
    plastic_gates: extension (off by default): the i, f, o gate paths are
      plastic too, with traces of shape [H, 4H].
    w_init: initializer of the plastic-path W (default: uniform init of the
      other LSTM weights, `uniform_range(-init_scale, init_scale)`).
    init_scale: U(-s, s) init of all non-plastic weights and W (PTB: ~0.1).
    alpha_init: initializer of alpha.
    eta_init, plain_eta_init: initial rates.
    return_modulation: if True the output is `(h, m)`.
    kernel_init: initializer of the input kernel [I, 4H] (None: the uniform
      init of `init_scale`).
    bias_init: initializer of the input bias [4H] (zeros).
    param_dtype: dtype of every parameter and of the carry.
    step_impl: `reference` (autodiff of `plasticity.lstm_step`), `fused`
      (`bpm_jax.fused_lstm.lstm_sequence_fused`: C++ CPU kernels over the
      batch and all T steps of a `sequence=True` call, the cell path's
      configurations; equal to float32 rounding) or `auto` (`fused` where it
      applies and builds, i.e. on the CPU, else `reference`). A non-plastic
      LSTM (`rnn`) always runs the reference.
    hidden_size: deprecated alias of `features` (None after construction).
  """

  features: Optional[int] = None
  config: PlasticityConfig = PlasticityConfig()
  clip_value: Any = 2.0
  plastic_gates: bool = False
  init_scale: float = 0.1
  w_init: Optional[Initializer] = None
  alpha_init: Initializer = uniform_range(0.0, 0.01)
  eta_init: float = 0.01
  plain_eta_init: float = 0.01
  return_modulation: bool = False
  kernel_init: Optional[Initializer] = None
  bias_init: Initializer = nn.initializers.zeros
  param_dtype: Any = jnp.float32
  step_impl: str = "reference"
  hidden_size: Optional[int] = None

  def __post_init__(self):
    _resolve_features(self)
    check_modulators(type(self).__name__, self.config, self.post_size)
    check_choice(type(self).__name__, "step_impl", self.step_impl, LSTM_STEP_IMPLS)
    if self.step_impl == "fused" and self.config.is_plastic:
      from bpm_jax import fused_lstm  # pylint: disable=g-import-not-at-top

      fused_lstm.check_supported(self.config, self.plastic_gates)
    super().__post_init__()

  @property
  def resolved_step_impl(self) -> str:
    """`step_impl` with `auto` made concrete (`resolve_lstm_step_impl`)."""
    return resolve_lstm_step_impl(self.step_impl, self.config, self.plastic_gates)

  @property
  def post_size(self) -> int:
    return self.features * (4 if self.plastic_gates else 1)

  @nn.compact
  def __call__(self, carry: plasticity.LSTMState, x: Array, sequence: bool = False):
    """One step, or a whole sequence.

    Args:
      carry: LSTMState with leading batch dims.
      x: [..., I] inputs of one step, or [T, ..., I] with `sequence=True`.
      sequence: run T steps (time-major `x`); h and m get a leading T axis.
        With the fused kernels the T steps are one kernel call per direction,
        else a `lax.scan`.
    """
    hsize = self.features
    uniform = uniform_range(-self.init_scale, self.init_scale)
    x_drive = nn.Dense(
      4 * hsize,
      kernel_init=self.kernel_init or uniform,
      bias_init=self.bias_init,
      param_dtype=self.param_dtype,
      name="input",
    )(x)
    gate_kernel = None
    if not self.plastic_gates:
      gate_kernel = self.param("gate_kernel", uniform, (hsize, 3 * hsize), self.param_dtype)
    params = declare_plastic_params(
      self,
      hsize,
      self.post_size,
      self.config,
      self.w_init or uniform,
      self.alpha_init,
      self.eta_init,
      self.plain_eta_init,
      self.param_dtype,
    )

    if self.resolved_step_impl == "fused":
      carry, (h, m) = _fused_lstm_batched(
        params, gate_kernel, carry, x_drive, self.config, self.clip_value, sequence
      )
    else:

      def step(state, xd):
        return batched(
          lambda p, s, xs: plasticity.lstm_step(
            p, gate_kernel, s, xs, self.config, self.clip_value
          ),
          xd.shape[:-1],
        )(params, state, xd)

      carry, (h, m) = jax.lax.scan(step, carry, x_drive) if sequence else step(carry, x_drive)
    self.sow("intermediates", "modulation", m)
    return carry, ((h, m) if self.return_modulation else h)

  @nn.nowrap
  def initialize_carry(self, rng, input_shape) -> plasticity.LSTMState:
    """Zero h, c [..., H] and traces [..., H, P] for batch dims `input_shape[:-1]`."""
    del rng
    batch = tuple(input_shape[:-1])
    traces = plasticity.init_traces(self.config, self.features, self.post_size, self.param_dtype)
    traces = jax.tree.map(lambda t: jnp.broadcast_to(t, batch + t.shape), traces)
    zeros = jnp.zeros(batch + (self.features,), self.param_dtype)
    return plasticity.LSTMState(h=zeros, c=zeros, traces=traces)

  @property
  def num_feature_axes(self) -> int:
    return 1
