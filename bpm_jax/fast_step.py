"""The plastic RNN step with a hand-written backward pass (`jax.custom_vjp`).

`rnn_step_fast` has exactly the signature and the outputs of
`bpm_jax.plasticity.rnn_step`; its forward pass performs the same operations in
the same order (the traces are `plasticity.update_traces` itself), so the
numbers are the same. Only the backward pass differs.

Why: under `lax.scan` + `jax.grad`, plain autodiff of `rnn_step` stores several
[H, H] arrays per step and per episode (`alpha * Hebb_tm1`, the clip mask,
`outer(h_tm1, h_t)`, the pre-clip trace, ...), so backpropagation through a
200-step episode is memory-bound. The custom VJP stores per step only

    h_tm1 [H], h_t [H], m_t [K], Hebb_tm1 [H, H] and (retromod) E_tm1 [H, H]

(the parameters are loop-invariant and are hoisted out of the scan), and
recomputes everything else (the clip mask from `Hebb_tm1 + r * d`, the rate
M_t from m_t, `outer(h_tm1, h_t)`, `h_tm1 @ Hebb_tm1`) in the backward pass,
where the elementwise work fuses into a few passes over [H, H]. Cotangents of
the form `G * r` on `outer(h_tm1, h_t)` (r a scalar or a per-column rate) are
contracted as `(h_tm1 @ G) * r` and `G @ (r * h_t)`, never materialised.
The fixed drive `h_tm1 @ W` stays outside the custom VJP (plain autodiff), so
that under `vmap` the gradient of W is one matmul over the batch rather than B
per-example [H, H] outer products summed afterwards.

Supported: every `PlasticityConfig` of the plastic RNN — networks `rnn`,
`plastic`, `modplast`, `retromod`; alpha `full`, `per_neuron`, `single`; rules
`clip`, `decay`, `soft_clip` and `oja`; modulation `tanh`, `sigmoid`,
`identity`; fan-out on/off; any K >= 1; partial modulation; eta `scalar` or
`full`. There is no fallback path: a config the core accepts is handled here.

Gradient conventions match JAX's autodiff of the reference exactly:
`jnp.clip(x, lo, hi)` is `minimum(hi, maximum(lo, x))`, and `max`/`min` split
the cotangent 0.5/0.5 on ties, so the gradient through the clip is 1 inside
(lo, hi), 0.5 at a bound and 0 outside; the clip value c receives the rest
(the clip value is a traced scalar and gets its true cotangent).
`relu'(0) = 0` as in `jax.nn.relu`.

Shapes (one episode; batch with `jax.vmap`): H hidden neurons (P = H
postsynaptic units), K modulators.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from bpm_jax import plasticity
from bpm_jax.config import PlasticityConfig

Array = jax.Array


def rnn_step_fast(
  params: plasticity.PlasticParams,
  state: plasticity.RNNState,
  x_drive: Array,
  config: PlasticityConfig,
  clip_value: Array | float,
) -> tuple[plasticity.RNNState, tuple[Array, Array]]:
  """Same as `plasticity.rnn_step`, with a memory-lean custom backward pass.

  The fixed-weight drive `h_tm1 @ W` is computed outside the custom VJP with
  plain autodiff: under `vmap` its transpose is one [H, B] x [B, H] matmul
  for the gradient of W, instead of B per-example outer products.

  Args:
    params: recurrent plastic parameters (w: [H, H]).
    state: h_tm1 [H] and traces (Hebb [H, H], E [H, H] where used).
    x_drive: [H] input drive `x_t @ W_in + b_in`.
    config: the variant (static).
    clip_value: c, a Python number or a traced scalar (cast to the dtype of
      the hidden state; it receives its true gradient).

  Returns:
    (new state, (h_t [H], m_t [K])), equal to `plasticity.rnn_step`.
  """
  clip_value = jnp.asarray(clip_value, dtype=state.h.dtype)
  fixed_drive = state.h @ params.w  # [H]
  return _plastic_step(config, params.replace(w=None), state, x_drive, fixed_drive, clip_value)


def _plastic_step_forward(
  config: PlasticityConfig,
  params: plasticity.PlasticParams,
  state: plasticity.RNNState,
  x_drive: Array,
  fixed_drive: Array,
  clip_value: Array,
):
  """`plasticity.rnn_step` given `fixed_drive = h_tm1 @ W` (same operations and order).

  `params.w` is None here; the plastic part of the drive is written exactly as
  in `plasticity.plastic_drive`, the traces are `plasticity.update_traces`.
  """
  h_tm1, hebb = state.h, state.traces.hebb
  drive = fixed_drive
  if hebb is not None:
    if config.alpha_kind == "full":
      drive = drive + h_tm1 @ (params.alpha * hebb)
    else:
      drive = drive + jnp.reshape(params.alpha, (-1,)) * (h_tm1 @ hebb)
  h = jnp.tanh(x_drive + drive)
  traces, m = plasticity.update_traces(params, state.traces, h_tm1, h, h, config, clip_value)
  return plasticity.RNNState(h=h, traces=traces), (h, m)


_plastic_step = jax.custom_vjp(_plastic_step_forward, nondiff_argnums=(0,))


def _plastic_step_fwd(config, params, state, x_drive, fixed_drive, clip_value):
  outputs = _plastic_step_forward(config, params, state, x_drive, fixed_drive, clip_value)
  _, (h, m) = outputs
  residuals = (
    params,
    state.h,
    state.traces.hebb,
    state.traces.elig,
    h,
    m if config.is_modulated else None,
    clip_value,
  )
  return outputs, residuals


# --------------------------------------------------------------------------
# Backward pieces (all unbatched; elementwise work on [H, P] fuses in XLA).


def _sum_to_shape(x: Array, shape: tuple[int, ...]) -> Array:
  """Reduces an [H, P] cotangent to a broadcast operand's shape ([], [1, P], [H, P])."""
  if x.shape == shape:
    return x
  if len(shape) == 0:
    return jnp.sum(x)
  return jnp.sum(x, axis=0, keepdims=True).reshape(shape)


def _is_row(scale: Array) -> bool:
  """Whether a broadcast operand is [] or [1, P] (constant along the rows)."""
  return jnp.ndim(scale) < 2 or jnp.shape(scale)[0] == 1


def _clip_bwd(z: Array, lo: Array | float, hi: Array | float, g_out: Array) -> tuple[Array, Array]:
  """Cotangents of `jnp.clip(z, lo, hi)` as JAX differentiates it.

  `jnp.clip` is `minimum(hi, maximum(lo, z))`; `maximum`/`minimum` send half
  the cotangent to each operand on a tie.

  Returns:
    (g_z [H, P], g_hi_minus_lo [H, P]): the cotangent of z, and the
    elementwise cotangent of c when lo = -c, hi = c (sum it for g_c).
  """
  one, half, zero = 1.0, 0.5, 0.0
  d_max = jnp.where(z > lo, one, jnp.where(z == lo, half, zero)).astype(z.dtype)
  y = jnp.maximum(lo, z)
  d_min = jnp.where(y < hi, one, jnp.where(y == hi, half, zero)).astype(z.dtype)
  g_z = g_out * d_max * d_min
  g_lo = g_out * (1.0 - d_max) * d_min
  g_hi = g_out * (1.0 - d_min)
  return g_z, g_hi - g_lo


def _trace_rule_bwd(
  rule: str, hebb: Array, product: Array, rate: Array, clip_value: Array, g_new: Array
) -> tuple[Array, Array, Optional[Array], Optional[Array]]:
  """Backward of `plasticity.apply_trace_rule` (clip, decay, soft_clip).

  The cotangents of the product d and the rate r share a factor `g_core`:
  `g_d = g_core * r` and `g_r = g_core * d + g_r_extra` (before reducing g_r
  to the rate's shape), so that neither needs to be materialised.

  Args:
    rule: the trace rule.
    hebb: [H, P] old trace.
    product: [H, P] the product term d (outer(pre, post) or E).
    rate: [], [1, P] or [H, P] rate r.
    clip_value: c.
    g_new: [H, P] cotangent of the new trace.

  Returns:
    (g_hebb [H, P], g_core [H, P], g_r_extra [H, P] or None,
    g_clip_value [] or None).
  """
  if rule == "clip":
    g_z, g_c = _clip_bwd(hebb + rate * product, -clip_value, clip_value, g_new)
    return g_z, g_z, None, jnp.sum(g_c)
  if rule == "decay":
    return g_new * (1.0 - rate), g_new, -g_new * hebb, None
  if rule == "soft_clip":
    delta = rate * product
    relu_pos, relu_neg = jax.nn.relu(delta), jax.nn.relu(-delta)
    soft = hebb + relu_pos * (1.0 - hebb) - relu_neg * (hebb + 1.0)
    g_soft, _ = _clip_bwd(soft, -1.0, 1.0, g_new)
    g_delta = g_soft * (
      jnp.where(delta > 0, 1.0 - hebb, 0.0) + jnp.where(delta < 0, hebb + 1.0, 0.0)
    )
    return g_soft * (1.0 - relu_pos - relu_neg), g_delta, None, None
  raise ValueError(f"_trace_rule_bwd: unsupported rule {rule!r}.")


def _oja_bwd(
  hebb: Array, pre: Array, post: Array, rate: Array, g_new: Array
) -> tuple[Array, Array, Array, Array]:
  """Backward of Oja's rule `hebb + r * post_j * (pre_i - post_j * hebb_ij)`.

  Returns:
    (g_hebb [H, P], g_pre [H], g_post [P], g_rate [H, P] before reduction).
  """
  post_row = post[None, :]
  g_rate_post = g_new * rate
  g_hebb = g_new - g_rate_post * jnp.square(post_row)
  g_rate = g_new * post_row * (pre[:, None] - post_row * hebb)
  g_pre = g_rate_post @ post
  g_post = pre @ g_rate_post - 2.0 * post * jnp.sum(g_rate_post * hebb, axis=0)
  return g_hebb, g_pre, g_post, g_rate


def _outer_bwd(
  pre: Array, post: Array, matrix: Array, scale: Array, pre_matrix: Optional[Array] = None
) -> tuple[Array, Array]:
  """Cotangents of pre [H] and post [P] from `g = matrix * scale` on outer(pre, post).

  With `scale` of shape [] or [1, P] the product `matrix * scale` is never
  formed: `pre @ g = (pre @ matrix) * scale`, `g @ post = matrix @ (scale * post)`.
  `pre_matrix`, if given, is `pre @ matrix` (shared with other uses).
  """
  if _is_row(scale):
    scale_row = jnp.reshape(scale, (-1,))
    if pre_matrix is None:
      pre_matrix = pre @ matrix
    return matrix @ (scale_row * post), pre_matrix * scale_row
  scaled = matrix * scale
  return scaled @ post, pre @ scaled


def _modulation_derivative(m: Array, fn: str) -> Array:
  """f'(s) from m = f(s): [K]."""
  if fn == "tanh":
    return 1.0 - jnp.square(m)
  if fn == "sigmoid":
    return m * (1.0 - m)
  return jnp.ones_like(m)


def _plastic_step_bwd(config: PlasticityConfig, residuals, cotangents):
  params, h_tm1, hebb, elig, h, m, clip_value = residuals
  g_state, (g_h_out, g_m_out) = cotangents
  post_size = h.shape[0]

  g_h = g_state.h + g_h_out  # [P] cotangent of h_t
  g_h_tm1 = jnp.zeros_like(h_tm1)  # [H]
  grads = {}  # PlasticParams field -> cotangent
  g_clip = jnp.zeros_like(clip_value)
  g_hebb_old = g_elig_old = None

  def add_outer(matrix, scale, pre_matrix=None):
    """Accumulates the cotangent `matrix * scale` of outer(h_tm1, h_t)."""
    nonlocal g_h_tm1, g_h
    g_pre, g_post = _outer_bwd(h_tm1, h, matrix, scale, pre_matrix)
    g_h_tm1 = g_h_tm1 + g_pre
    g_h = g_h + g_post

  if config.is_plastic:
    g_hebb_new = g_state.traces.hebb  # [H, P]
    outer = jnp.outer(h_tm1, h)  # recomputed d = outer(h_tm1, h_t)

    # Rate r ([] or [H, P] eta; [1, P] modulated) and product of the Hebb update.
    mask = None
    product_is_outer = config.network != "retromod"
    if config.network == "plastic":
      rate = params.eta
    else:
      rate = plasticity.modulation_rate(
        m, params.fanout_kernel, params.fanout_bias, post_size
      )  # [1, P]
      if config.partial_modulation:
        mask = plasticity.partial_mask(post_size)  # [1, P]
        rate = jnp.where(mask, rate, params.plain_eta)
    if product_is_outer:
      product = outer
    elif mask is not None:
      # Modulated half consolidates E_tm1, plain half is Hebbian: per column.
      product = jnp.where(mask, elig, outer)
    else:
      product = elig

    # Backward of the Hebb rule; g_rate: cotangent of r, reduced to [P] or [H, P].
    if config.rule == "oja":
      g_hebb_old, g_pre, g_post, g_rate_full = _oja_bwd(hebb, h_tm1, h, rate, g_hebb_new)
      g_h_tm1 = g_h_tm1 + g_pre
      g_h = g_h + g_post
      g_rate = g_rate_full if not _is_row(rate) else jnp.sum(g_rate_full, axis=0)
    else:
      g_hebb_old, g_core, g_rate_extra, g_c = _trace_rule_bwd(
        config.rule, hebb, product, rate, clip_value, g_hebb_new
      )
      if g_c is not None:
        g_clip = g_c
      if not _is_row(rate):  # eta [H, P]: elementwise
        g_rate = g_core * product
        if g_rate_extra is not None:
          g_rate = g_rate + g_rate_extra
        add_outer(g_core, rate)
      else:
        if product_is_outer:
          # sum_i g_core_ij h_tm1_i h_j: one matvec shared with the outer term.
          pre_core = h_tm1 @ g_core
          g_rate = pre_core * h
          add_outer(g_core, rate, pre_core)
        else:
          g_rate = jnp.sum(g_core * product, axis=0)
          if mask is not None:
            g_elig_old = jnp.where(mask, g_core * rate, 0.0)
            add_outer(g_core, jnp.where(mask, 0.0, rate))
          else:
            g_elig_old = g_core * rate
        if g_rate_extra is not None:
          g_rate = g_rate + jnp.sum(g_rate_extra, axis=0)

    # Eligibility trace E_t = (1 - eta) E_tm1 + eta d.
    if config.network == "retromod":
      g_elig_new = g_state.traces.elig
      eta = params.eta
      g_elig_old = g_elig_old + (1.0 - eta) * g_elig_new
      if _is_row(eta):
        pre_elig = h_tm1 @ g_elig_new
        grads["eta"] = jnp.sum(pre_elig * h) - jnp.sum(g_elig_new * elig)
        add_outer(g_elig_new, eta, pre_elig)
      else:
        grads["eta"] = g_elig_new * (outer - elig)
        add_outer(g_elig_new, eta)

    # Rate parameters.
    if config.network == "plastic":
      grads["eta"] = _sum_to_shape(g_rate, jnp.shape(params.eta))
    else:
      g_rate_col = g_rate  # [P]
      if mask is not None:
        grads["plain_eta"] = jnp.sum(jnp.where(mask[0], 0.0, g_rate_col))
        g_rate_col = jnp.where(mask[0], g_rate_col, 0.0)
      g_m = g_m_out
      if config.fan_out:
        grads["fanout_kernel"] = jnp.outer(m, g_rate_col)  # [K, P]
        grads["fanout_bias"] = g_rate_col
        g_m = g_m + params.fanout_kernel @ g_rate_col
      else:
        groups = plasticity.modulator_groups(m.shape[0], post_size)
        g_m = g_m + jax.ops.segment_sum(g_rate_col, groups, m.shape[0])
      # m_t = f(h_t @ W_mod + b_mod).
      g_s = g_m * _modulation_derivative(m, config.modulation_fn)  # [K]
      grads["mod_kernel"] = jnp.outer(h, g_s)
      grads["mod_bias"] = g_s
      g_h = g_h + params.mod_kernel @ g_s

  # h_t = tanh(x_drive + fixed_drive + plastic drive).
  g_a = g_h * (1.0 - jnp.square(h))  # [P]
  if config.is_plastic:
    if config.alpha_kind == "full":
      g_h_tm1 = g_h_tm1 + (params.alpha * hebb) @ g_a
      pre_g_a = jnp.outer(h_tm1, g_a)
      grads["alpha"] = pre_g_a * hebb
      g_hebb_old = g_hebb_old + params.alpha * pre_g_a
    else:
      alpha_row = jnp.reshape(params.alpha, (-1,))  # [1] or [P]
      pre_hebb = h_tm1 @ hebb  # [P]
      grads["alpha"] = _sum_to_shape((g_a * pre_hebb)[None, :], jnp.shape(params.alpha))
      g_scaled = alpha_row * g_a  # [P]
      g_h_tm1 = g_h_tm1 + hebb @ g_scaled
      g_hebb_old = g_hebb_old + jnp.outer(h_tm1, g_scaled)

  g_params = plasticity.PlasticParams(
    **{
      field: (None if getattr(params, field) is None else grads[field])
      for field in (
        "w",
        "alpha",
        "eta",
        "mod_kernel",
        "mod_bias",
        "fanout_kernel",
        "fanout_bias",
        "plain_eta",
      )
    }
  )
  g_traces = plasticity.Traces(hebb=g_hebb_old, elig=g_elig_old)
  g_state_old = plasticity.RNNState(h=g_h_tm1, traces=g_traces)
  return g_params, g_state_old, g_a, g_a, g_clip


_plastic_step.defvjp(_plastic_step_fwd, _plastic_step_bwd)
