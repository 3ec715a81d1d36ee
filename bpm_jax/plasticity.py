"""The plasticity math of SPEC.md §2-4, as pure, unbatched functions.

Every function here handles ONE episode (one stream); batch with `jax.vmap`.
Weight convention (SPEC.md §1): `W[pre, post]`; the Hebbian product is
`outer(pre, post)`; per-neuron quantities index the postsynaptic neuron and
broadcast along rows as shape `[1, P]`.

Shapes: H presynaptic (hidden) neurons, P postsynaptic units of the plastic
path (P = H for the plastic RNN and the LSTM cell path, 4H with plastic LSTM
gates), K modulators.

Flax modules (`bpm_jax.cells`) only declare parameters and call these.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from bpm_jax.config import PlasticityConfig

Array = jax.Array


@flax.struct.dataclass
class PlasticParams:
  """Trained parameters of a plastic path (None where the variant has none).

  Attributes:
    w: [H, P] fixed (slow) weights of the plastic path.
    alpha: [H, P] (`full`), [1, P] (`per_neuron`) or [] (`single`); None for `rnn`.
    eta: [] or [H, P] trained rate: the Hebbian rate of `plastic`, the
      eligibility-trace rate of `retromod`; None otherwise.
    mod_kernel: [H, K] modulation weights W_mod (modulated networks).
    mod_bias: [K] modulation bias b_mod.
    fanout_kernel: [K, P] fan-out V (with `fan_out`).
    fanout_bias: [P] fan-out u (with `fan_out`).
    plain_eta: [] rate of the non-modulated half (`partial_modulation`).
  """

  w: Array
  alpha: Optional[Array] = None
  eta: Optional[Array] = None
  mod_kernel: Optional[Array] = None
  mod_bias: Optional[Array] = None
  fanout_kernel: Optional[Array] = None
  fanout_bias: Optional[Array] = None
  plain_eta: Optional[Array] = None


@flax.struct.dataclass
class Traces:
  """Episode state of a plastic path; zero at every episode start, never trained.

  Attributes:
    hebb: [H, P] Hebbian trace, or None for `rnn`.
    elig: [H, P] eligibility trace E, or None unless `retromod`.
  """

  hebb: Optional[Array] = None
  elig: Optional[Array] = None


def init_traces(
  config: PlasticityConfig, pre_size: int, post_size: int, dtype=jnp.float32
) -> Traces:
  """Zero traces for one episode: hebb [H, P], elig [H, P] (where used)."""
  shape = (pre_size, post_size)
  hebb = jnp.zeros(shape, dtype) if config.is_plastic else None
  elig = jnp.zeros(shape, dtype) if config.has_eligibility else None
  return Traces(hebb=hebb, elig=elig)


# --------------------------------------------------------------------------
# Forward drive.


def plastic_drive(
  pre: Array, w: Array, alpha: Optional[Array], hebb: Optional[Array], alpha_kind: str
) -> Array:
  """`pre @ (W + alpha * Hebb)` without materialising `W + alpha * Hebb`.

  Args:
    pre: [H] presynaptic activity (h_tm1).
    w: [H, P] fixed weights.
    alpha: [H, P], [1, P] or [] plasticity coefficients (None: no plasticity).
    hebb: [H, P] Hebbian trace (None: no plasticity).
    alpha_kind: `full`, `per_neuron` or `single`.

  Returns:
    [P] recurrent drive.
  """
  drive = pre @ w
  if hebb is None:
    return drive
  if alpha_kind == "full":
    return drive + pre @ (alpha * hebb)
  # per_neuron [1, P] or single []: scale after the matrix-vector product.
  return drive + jnp.reshape(alpha, (-1,)) * (pre @ hebb)


# --------------------------------------------------------------------------
# Neuromodulation (SPEC.md §3).

_MODULATION_FNS = {
  "tanh": jnp.tanh,
  "sigmoid": jax.nn.sigmoid,
  "identity": lambda x: x,
}


def modulation(h: Array, mod_kernel: Array, mod_bias: Array, fn: str) -> Array:
  """m_t = f(h_t @ W_mod + b_mod).

  Args:
    h: [H] new hidden state h_t.
    mod_kernel: [H, K].
    mod_bias: [K].
    fn: `tanh`, `sigmoid` or `identity`.

  Returns:
    [K] modulatory signals.
  """
  return _MODULATION_FNS[fn](h @ mod_kernel + mod_bias)


def modulator_groups(num_modulators: int, post_size: int) -> Array:
  """[P] int32: which modulator gates each postsynaptic unit without fan-out.

  Contiguous, near-equal blocks: unit j is gated by modulator
  `j * K // P`. With K = 1 every unit is gated by modulator 0.
  """
  return (jnp.arange(post_size) * num_modulators) // post_size


def modulation_rate(
  m: Array, fanout_kernel: Optional[Array], fanout_bias: Optional[Array], post_size: int
) -> Array:
  """The plasticity rate M_t from the modulatory signals m_t.

  Args:
    m: [K] modulatory signals.
    fanout_kernel: [K, P] or None (no fan-out).
    fanout_bias: [P] or None.
    post_size: P.

  Returns:
    [1, P] per-postsynaptic-neuron rates: `m @ V + u` with fan-out, else
    `m[group(j)]` (= m_t for every synapse when K = 1).
  """
  if fanout_kernel is not None:
    rate = m @ fanout_kernel + fanout_bias
  else:
    rate = m[modulator_groups(m.shape[0], post_size)]
  return rate[None, :]


# --------------------------------------------------------------------------
# Trace rules (SPEC.md §2.2, §3.1, §3.2).


def apply_trace_rule(
  hebb: Array, product: Array, rate: Array, rule: str, clip_value: Array | float
) -> Array:
  """Updates a trace with a product term under `clip`, `decay` or `soft_clip`.

  Args:
    hebb: [H, P] current trace.
    product: [H, P] `outer(pre, post)` (Hebbian) or the eligibility trace E.
    rate: [], [1, P] or [H, P] rate r (eta or M_t).
    rule: `clip`: clip(hebb + r*d, -c, c); `decay`: (1-r)*hebb + r*d;
      `soft_clip`: clip(hebb + relu(r*d)(1-hebb) - relu(-r*d)(hebb+1), -1, 1).
    clip_value: c (traced scalar; only `clip` uses it).

  Returns:
    [H, P] new trace.
  """
  delta = rate * product
  if rule == "clip":
    return jnp.clip(hebb + delta, -clip_value, clip_value)
  if rule == "decay":
    return (1.0 - rate) * hebb + delta
  if rule == "soft_clip":
    soft = hebb + jax.nn.relu(delta) * (1.0 - hebb) - jax.nn.relu(-delta) * (hebb + 1.0)
    return jnp.clip(soft, -1.0, 1.0)
  raise ValueError(
    f"apply_trace_rule: rule={rule!r} is not one of "
    "'clip', 'decay', 'soft_clip' (use hebbian_update for 'oja')."
  )


def hebbian_update(
  hebb: Array, pre: Array, post: Array, rate: Array, rule: str, clip_value: Array | float
) -> Array:
  """Hebb_t from Hebb_tm1 with rate r and `d = outer(pre, post)`.

  Args:
    hebb: [H, P] Hebb_tm1.
    pre: [H] presynaptic activity (h_tm1).
    post: [P] postsynaptic activity (h_t, or the LSTM cell candidate g_t).
    rate: [], [1, P] or [H, P].
    rule: `clip`, `decay`, `soft_clip`, or `oja`:
      `Hebb_ij += r * post_j * (pre_i - post_j * Hebb_ij)`.
    clip_value: c for `clip`.

  Returns:
    [H, P] Hebb_t.
  """
  if rule == "oja":
    return hebb + rate * post[None, :] * (pre[:, None] - post[None, :] * hebb)
  return apply_trace_rule(hebb, jnp.outer(pre, post), rate, rule, clip_value)


def eligibility_update(elig: Array, pre: Array, post: Array, eta: Array) -> Array:
  """E_t = (1 - eta) * E_tm1 + eta * outer(pre, post). Shapes [H, P]."""
  return (1.0 - eta) * elig + eta * jnp.outer(pre, post)


def partial_mask(post_size: int) -> Array:
  """[1, P] bool: True for the modulated half (columns j < P // 2)."""
  return (jnp.arange(post_size) < post_size // 2)[None, :]


def update_traces(
  params: PlasticParams,
  traces: Traces,
  pre: Array,
  post: Array,
  mod_source: Array,
  config: PlasticityConfig,
  clip_value: Array | float,
) -> tuple[Traces, Array]:
  """One step of the trace dynamics of any network type.

  Args:
    params: the path's trained parameters.
    traces: Hebb_tm1 (and E_tm1).
    pre: [H] h_tm1.
    post: [P] h_t (RNN) or g_t (LSTM).
    mod_source: [H] the new hidden state h_t that m_t is computed from.
    config: the variant.
    clip_value: c (traced scalar).

  Returns:
    (new traces, m_t [K]); m_t is zero for non-modulated networks.
  """
  num_mod = config.num_modulators
  if not config.is_plastic:
    return traces, jnp.zeros((num_mod,), post.dtype)
  if config.network == "plastic":
    hebb = hebbian_update(traces.hebb, pre, post, params.eta, config.rule, clip_value)
    return Traces(hebb=hebb), jnp.zeros((num_mod,), post.dtype)

  m = modulation(mod_source, params.mod_kernel, params.mod_bias, config.modulation_fn)
  rate = modulation_rate(m, params.fanout_kernel, params.fanout_bias, post.shape[0])
  if config.network == "modplast":
    if config.partial_modulation:
      rate = jnp.where(partial_mask(post.shape[0]), rate, params.plain_eta)
    hebb = hebbian_update(traces.hebb, pre, post, rate, config.rule, clip_value)
    return Traces(hebb=hebb), m

  # retromod: Hebb is consolidated with the OLD eligibility trace, then E moves.
  hebb = apply_trace_rule(traces.hebb, traces.elig, rate, config.rule, clip_value)
  if config.partial_modulation:
    plain = hebbian_update(traces.hebb, pre, post, params.plain_eta, config.rule, clip_value)
    hebb = jnp.where(partial_mask(post.shape[0]), hebb, plain)
  elig = eligibility_update(traces.elig, pre, post, params.eta)
  return Traces(hebb=hebb, elig=elig), m


# --------------------------------------------------------------------------
# Whole steps.


@flax.struct.dataclass
class RNNState:
  """Carry of the plastic RNN for one episode.

  Attributes:
    h: [H] hidden state.
    traces: Hebb [H, H] (and E [H, H]) where used.
  """

  h: Array
  traces: Traces


def rnn_step(
  params: PlasticParams,
  state: RNNState,
  x_drive: Array,
  config: PlasticityConfig,
  clip_value: Array | float,
  clamp: Optional[Array] = None,
) -> tuple[RNNState, tuple[Array, Array]]:
  """Plastic recurrent step (SPEC.md §2, §3).

  h_t = tanh(x_drive + h_tm1 @ (W + alpha * Hebb_tm1)); then the traces.

  Args:
    params: recurrent plastic parameters (w: [H, H]).
    state: h_tm1 [H] and traces.
    x_drive: [H] input drive `x_t @ W_in + b_in`.
    config: the variant.
    clip_value: c.
    clamp: optional [H] clamped inputs (SPEC.md §5.5): a neuron whose clamp
      value is non-zero takes exactly that value as h_t (before the traces
      are updated, so the Hebbian term sees the clamped activity).

  Returns:
    (new state, (h_t [H], m_t [K])).
  """
  h_tm1 = state.h
  h = jnp.tanh(
    x_drive + plastic_drive(h_tm1, params.w, params.alpha, state.traces.hebb, config.alpha_kind)
  )
  if clamp is not None:
    h = jnp.where(clamp != 0, clamp, h)
  traces, m = update_traces(params, state.traces, h_tm1, h, h, config, clip_value)
  return RNNState(h=h, traces=traces), (h, m)


@flax.struct.dataclass
class LSTMState:
  """Carry of the plastic LSTM for one stream.

  Attributes:
    h: [H] hidden state.
    c: [H] cell state.
    traces: Hebb [H, P] (and E [H, P]) where used; P = H, or 4H with
      plastic gates.
  """

  h: Array
  c: Array
  traces: Traces


def lstm_step(
  params: PlasticParams,
  gate_kernel: Optional[Array],
  state: LSTMState,
  x_drive: Array,
  config: PlasticityConfig,
  clip_value: Array | float,
) -> tuple[LSTMState, tuple[Array, Array]]:
  """Plastic LSTM step (SPEC.md §4).

  Gate order in `x_drive` and in the plastic path: [i, f, o, g].

      g_t = tanh(x_t @ W_xc + b_c + h_tm1 @ (W + alpha * Hebb_tm1))
      i, f, o = sigmoid(x_t @ W_x* + b_* + h_tm1 @ W_h*)
      c_t = f * c_tm1 + i * g_t;  h_t = o * tanh(c_t)

  Hebbian product `outer(h_tm1, g_t)`, modulation from h_t. With plastic gates
  (`gate_kernel is None`, `params.w` of shape [H, 4H]) every gate path is
  plastic and the postsynaptic activity is [i, f, o, g] (activated).

  Args:
    params: plastic-path parameters; w is [H, H] (cell path) or [H, 4H].
    gate_kernel: [H, 3H] non-plastic recurrent weights of i, f, o, or None.
    state: h_tm1 [H], c_tm1 [H], traces.
    x_drive: [4H] input drive `x_t @ W_x + b`.
    config: the variant.
    clip_value: c.

  Returns:
    (new state, (h_t [H], m_t [K])).
  """
  hidden = state.h.shape[0]
  h_tm1 = state.h
  rec = plastic_drive(h_tm1, params.w, params.alpha, state.traces.hebb, config.alpha_kind)
  if gate_kernel is not None:
    rec = jnp.concatenate([h_tm1 @ gate_kernel, rec])
  pre_act = x_drive + rec
  gates = jax.nn.sigmoid(pre_act[: 3 * hidden])
  g = jnp.tanh(pre_act[3 * hidden :])
  i, f, o = gates[:hidden], gates[hidden : 2 * hidden], gates[2 * hidden :]
  c = f * state.c + i * g
  h = o * jnp.tanh(c)
  post = g if gate_kernel is not None else jnp.concatenate([gates, g])
  traces, m = update_traces(params, state.traces, h_tm1, post, h, config, clip_value)
  return LSTMState(h=h, c=c, traces=traces), (h, m)
