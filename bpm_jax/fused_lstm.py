"""The plastic LSTM's cell path as fused CPU kernels (C++ through XLA's FFI).

`lstm_sequence_fused(params, gate_kernel, state, x_drives, config, clip_value)`
runs T steps of B streams in one kernel call per direction and equals (to
float32 rounding) `lax.scan` of `jax.vmap(plasticity.lstm_step)`, with a
hand-written backward kernel (`bpm_jax/kernels/plastic_lstm.cc`). It is what
`PlasticLSTMCell(step_impl="fused")` runs, so the PTB language model's
training step (`train.lm`) takes the kernels on the CPU.

Each stream's [H, H] traces stay in its core's cache for the T steps. The
forward keeps no trace history: the backward recomputes each stream's traces
from the initial ones (and the stored h, gate activations and m) in a
per-core scratch of T - 1 steps, with the forward's own machine code, then
walks them in reverse. The gradients of the recurrent weights U (gates i, f,
o) and W (the plastic path's fixed part) are the outer products of h_tm1 with
the kernel's pre-activation cotangents, taken here as one matrix product over
all steps and streams.

Supported (`unsupported_reason`): networks `plastic`, `modplast`, `retromod`
on the cell path (not `plastic_gates`), rule `clip`, alpha `full` or
`per_neuron`, eta scalar or per connection, `tanh` modulators with or
without fan-out (K >= 1), no partial modulation, float32, on the CPU: every
variant of the Backpropamine small language model. Elsewhere the cell uses
the reference step.

The kernels are built with the RNN's (`bpm_jax.fused_step.library_path`):
one library, compiled on first use and cached.

The kernels' operands are passed by name through `LstmOperands`, whose field
order is that of both FFI calls (and of the C++ handlers' bindings):

  x h0 c0 hebb0 elig0 u w alpha eta w_mod b_mod fan_v fan_u clip
  h c act m g_h g_m g_c g_hebb g_elig
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

from bpm_jax import fused_step, plasticity
from bpm_jax.config import PlasticityConfig

Array = jax.Array


class LstmOperands(NamedTuple):
  """The kernels' operands by name, in THE order of both FFI calls.

  Shapes per agent (under `jax.vmap` every operand gets the same leading dims).
  """

  # The forward's operands; the backward returns the cotangents of h0 .. clip
  # (except u and w, computed here) after that of x.
  x: Optional[Array] = None  # [T, B, 4H] input drives x_t W_x + b (i, f, o, g)
  h0: Optional[Array] = None  # [B, H]
  c0: Optional[Array] = None  # [B, H]
  hebb0: Optional[Array] = None  # [B, H, H]
  elig0: Optional[Array] = None  # [B, H, H] (retromod) or a [1] placeholder
  u: Optional[Array] = None  # [H, 3H] recurrent weights of i, f, o
  w: Optional[Array] = None  # [H, H]
  alpha: Optional[Array] = None  # [H, H] (per-neuron alpha broadcast)
  eta: Optional[Array] = None  # [H, H] (a scalar broadcast; 0 where unused)
  w_mod: Optional[Array] = None  # [H, K] (0 where unused)
  b_mod: Optional[Array] = None  # [K]
  fan_v: Optional[Array] = None  # [K, H] (without fan-out: modulator groups)
  fan_u: Optional[Array] = None  # [H]
  clip: Optional[Array] = None  # []
  # The forward's results the backward reads, and the final cotangents.
  h: Optional[Array] = None  # [T, B, H]
  c: Optional[Array] = None  # [T, B, H]
  act: Optional[Array] = None  # [T, B, 4H] activated gates i, f, o, g
  m: Optional[Array] = None  # [T, B, K]
  g_h: Optional[Array] = None  # [T, B, H]
  g_m: Optional[Array] = None  # [T, B, K]
  g_c: Optional[Array] = None  # [B, H]: cotangent of the final c
  g_hebb: Optional[Array] = None  # [B, H, H]: of the final Hebb
  g_elig: Optional[Array] = None  # [B, H, H] or [1]


_FWD_OPERANDS = LstmOperands._fields[: LstmOperands._fields.index("clip") + 1]
_BWD_OPERANDS = tuple(f for f in LstmOperands._fields if f != "x")
_KERNEL_GRADS = ("x", "h0", "c0", "hebb0", "elig0", "alpha", "eta", "w_mod", "b_mod")
_KERNEL_GRADS += ("fan_v", "fan_u", "clip")
_PARAMS = ("u", "w", "alpha", "eta", "w_mod", "b_mod", "fan_v", "fan_u", "clip")


def unsupported_reason(config: PlasticityConfig, plastic_gates: bool = False) -> Optional[str]:
  """Why the fused LSTM kernels cannot compute `config`, or None if they can."""
  if config.network not in ("plastic", "modplast", "retromod"):
    return f"network={config.network!r} (the fused LSTM covers the plastic networks)"
  if plastic_gates:
    return "plastic_gates=True (the fused LSTM covers the cell path only)"
  if config.rule != "clip":
    return f"rule={config.rule!r} (the fused LSTM needs 'clip')"
  if config.alpha_kind not in ("full", "per_neuron"):
    return f"alpha_kind={config.alpha_kind!r} (the fused LSTM needs 'full' or 'per_neuron')"
  if config.is_modulated:
    if config.modulation_fn != "tanh":
      return f"modulation_fn={config.modulation_fn!r} (the fused LSTM needs 'tanh')"
    if config.partial_modulation:
      return "partial_modulation=True (not in the fused LSTM)"
  return None


def check_supported(config: PlasticityConfig, plastic_gates: bool = False) -> None:
  """Raises a ValueError naming the setting the fused LSTM does not cover."""
  reason = unsupported_reason(config, plastic_gates)
  if reason is not None:
    raise ValueError(
      f"step_impl='fused' does not support {reason}; use step_impl='reference', "
      "which covers every configuration."
    )


def _check_inputs(config, params, gate_kernel, state, x_drives, clip_value) -> None:
  check_supported(config)
  if jax.default_backend() != "cpu":
    raise ValueError(
      "step_impl='fused' runs on the CPU only (its kernels are C++), but JAX's "
      f"backend is {jax.default_backend()!r}; use step_impl='reference' there."
    )
  if (
    state.h.ndim != 2
    or x_drives.ndim != 3
    or x_drives.shape[1:]
    != (
      state.h.shape[0],
      4 * state.h.shape[1],
    )
  ):
    raise ValueError(
      "lstm_sequence_fused: state.h must be [B, H] and x_drives [T, B, 4H]; "
      f"got {state.h.shape} and {x_drives.shape}."
    )
  dtypes = {jnp.dtype(a.dtype) for a in jax.tree.leaves((params, gate_kernel, state, x_drives))}
  if dtypes != {jnp.dtype(jnp.float32)}:
    raise ValueError(f"step_impl='fused' computes in float32; got dtypes {dtypes}.")
  batch, size = state.h.shape
  chex.assert_shape([gate_kernel], (size, 3 * size))
  chex.assert_shape([params.w], (size, size))
  chex.assert_shape([state.c], (batch, size))
  chex.assert_shape(state.traces.hebb, (batch, size, size))
  if config.has_eligibility:
    chex.assert_equal_shape([state.traces.hebb, state.traces.elig])
  chex.assert_rank(clip_value, 0)
  fused_step._register()  # pylint: disable=protected-access


def _operands(params, gate_kernel, state, x_drives, config, clip_value) -> LstmOperands:
  """The forward's operands, with the kernel's shapes and zero placeholders."""
  size = state.h.shape[-1]
  square = lambda a: jnp.broadcast_to(a, (size, size))
  zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
  k = config.num_modulators
  if config.is_modulated:
    w_mod, b_mod = params.mod_kernel, params.mod_bias
    if config.fan_out:
      fan_v, fan_u = params.fanout_kernel, params.fanout_bias
    else:  # unit j is gated by modulator group(j): a fixed one-hot fan-out.
      groups = plasticity.modulator_groups(k, size)
      fan_v = (groups[None, :] == jnp.arange(k)[:, None]).astype(jnp.float32)
      fan_u = zeros(size)
  else:
    w_mod, b_mod, fan_v, fan_u = zeros(size, k), zeros(k), zeros(k, size), zeros(size)
  elig = state.traces.elig
  return LstmOperands(
    x=x_drives,
    h0=state.h,
    c0=state.c,
    hebb0=state.traces.hebb,
    elig0=zeros(1) if elig is None else elig,
    u=gate_kernel,
    w=params.w,
    alpha=square(params.alpha),
    eta=square(params.eta) if params.eta is not None else zeros(size, size),
    w_mod=w_mod,
    b_mod=b_mod,
    fan_v=fan_v,
    fan_u=fan_u,
    clip=clip_value,
  )


def lstm_sequence_fused(
  params: plasticity.PlasticParams,
  gate_kernel: Array,
  state: plasticity.LSTMState,
  x_drives: Array,
  config: PlasticityConfig,
  clip_value: Array | float,
) -> tuple[plasticity.LSTMState, tuple[Array, Array]]:
  """T steps of `jax.vmap(plasticity.lstm_step)` over B streams, fused kernels.

  Args:
    params: the plastic path's parameters (w [H, H], alpha [H, H] / [1, H],
      eta [] / [H, H] where used, mod_kernel [H, K], mod_bias [K], and with
      fan-out fanout_kernel [K, H], fanout_bias [H]).
    gate_kernel: [H, 3H] recurrent weights of the gates i, f, o.
    state: h_0, c_0 [B, H], Hebb_0 [B, H, H] (and E_0).
    x_drives: [T, B, 4H] input drives (gate order i, f, o, g).
    config: the variant (see `unsupported_reason`).
    clip_value: c, a number or a traced scalar.

  Returns:
    (final state, (h [T, B, H], m [T, B, K])), as the scanned reference.
  """
  clip_value = jnp.asarray(clip_value, jnp.float32)
  _check_inputs(config, params, gate_kernel, state, x_drives, clip_value)
  if x_drives.shape[0] == 0:
    raise ValueError("lstm_sequence_fused: x_drives has no steps (T = 0).")
  ops = _operands(params, gate_kernel, state, x_drives, config, clip_value)
  h, m, c_last, hebb, elig = _lstm_sequence(config.network, ops)
  traces = plasticity.Traces(hebb=hebb, elig=elig if config.has_eligibility else None)
  return plasticity.LSTMState(h=h[-1], c=c_last, traces=traces), (h, m)


def _shape(x: Array) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _forward(network: str, ops: LstmOperands):
  """(h, c, act, m, Hebb_T, E_T) of T steps."""
  steps_batch = ops.x.shape[:-1]
  size, k = ops.h0.shape[-1], ops.b_mod.shape[-1]
  per_step = lambda width: jax.ShapeDtypeStruct(steps_batch + (width,), jnp.float32)
  shapes = (per_step(size), per_step(size), _shape(ops.x), per_step(k))
  shapes += (_shape(ops.hebb0), _shape(ops.elig0))
  return fused_step._kernel(  # pylint: disable=protected-access
    "bpm_plastic_lstm_fwd", network, _FWD_OPERANDS, ops, shapes
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lstm_sequence(network: str, ops: LstmOperands):
  h, c, _, m, hebb, elig = _forward(network, ops)
  return h, m, c[-1], hebb, elig


def _lstm_sequence_fwd(network, ops):
  h, c, act, m, hebb, elig = _forward(network, ops)
  residuals = ops._replace(x=None, h=h, c=c, act=act, m=m)
  return (h, m, c[-1], hebb, elig), residuals


def _lstm_sequence_bwd(network, residuals, cotangents):
  g_h, g_m, g_c, g_hebb, g_elig = cotangents
  ops = residuals._replace(g_h=g_h, g_m=g_m, g_c=g_c, g_hebb=g_hebb, g_elig=g_elig)
  shapes = {"x": _shape(ops.act)}
  shapes.update({f: _shape(getattr(ops, f)) for f in _KERNEL_GRADS[1:]})
  grads = fused_step._kernel(  # pylint: disable=protected-access
    "bpm_plastic_lstm_bwd",
    network,
    _BWD_OPERANDS,
    ops,
    tuple(shapes[f] for f in _KERNEL_GRADS),
  )
  grads = dict(zip(_KERNEL_GRADS, grads))
  # U and W: sum over steps and streams of outer(h_tm1, pre-activation cotangent).
  size = ops.h0.shape[-1]
  h_prev = jnp.concatenate([ops.h0[None], ops.h[:-1]])
  g_pre = grads["x"]
  outer = lambda g: jnp.einsum("tbi,tbj->ij", h_prev, g)
  grads["u"] = outer(g_pre[..., : 3 * size])
  grads["w"] = outer(g_pre[..., 3 * size :])
  if network != "retromod":
    grads["elig0"] = jnp.zeros_like(ops.elig0)
  return (LstmOperands(**grads),)


_lstm_sequence.defvjp(_lstm_sequence_fwd, _lstm_sequence_bwd)
