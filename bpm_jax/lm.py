"""Word-level language model with plastic / neuromodulated LSTMs (SPEC.md §4, §5.7).

The small model of Backpropamine Table 1 (after Zaremba et al.'s SmallConfig):

    embedding [V, E] -> L stacked PlasticLSTMCell layers of H units -> Dense [H, V]

Four variants, chosen by `LMConfig.network` (see `plasticity_config`):

| network    | LSTM cell path h_tm1 -> g           | trained rate            |
|------------|-------------------------------------|-------------------------|
| `rnn`      | W (a plain LSTM)                    | none                    |
| `plastic`  | W + alpha * Hebb, Hebbian rule      | eta, one per connection |
| `modplast` | W + alpha * Hebb, rate M_t (fan-out)| none (M_t from h_t)     |
| `retromod` | W + alpha * Hebb, M_t gates E       | scalar eta of E         |

All use per-connection alpha, trace clip c = 2.0, modulation fan-out.
The model is batched: tokens [B, T] int32, carry one `LSTMState` per layer with
leading dim B (h, c [B, H]; Hebb, E [B, H, H]); it returns the new carry so that
state (and the Hebbian traces) crosses consecutive minibatches.

    config = LMConfig(vocab_size=10000, hidden_size=200, network="retromod")
    model = PlasticLSTMLanguageModel(config)
    carry = model.initialize_carry(batch_size=20)
    params = model.init(key, carry, tokens)["params"]
    carry, logits = model.apply({"params": params}, carry, tokens)   # [B, T, V]

Parameter matching (SPEC: all four variants have the same parameter count):

    sizes = match_hidden_sizes(4_800_000, vocab_size=10000)
    # {'rnn': 206, 'plastic': 200, 'modplast': 202, 'retromod': 202}  (E tied to H)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bpm_jax import plasticity
from bpm_jax.cells import LSTM_STEP_IMPLS, PlasticLSTMCell, uniform_range
from bpm_jax.config import (
  NETWORKS,
  AlphaKind,
  Network,
  PlasticityConfig,
  _field,
  check_choice,
  check_positive,
)

Array = jax.Array
Carry = tuple[plasticity.LSTMState, ...]

PAPER_TARGET_PARAMS = 4_800_000  # Backpropamine Table 1, small model.
PARAM_TOLERANCE = 0.005  # All variants within 0.5% of the target.

# Names of the parameters that exist only because of plasticity / modulation.
PLASTICITY_PARAM_NAMES = (
  "alpha",
  "eta",
  "mod_kernel",
  "mod_bias",
  "fanout_kernel",
  "fanout_bias",
  "plain_eta",
)


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Shape-level configuration of the language model (static, hashable).

  Attributes:
    vocab_size: V.
    hidden_size: H, units of every LSTM layer.
    embed_size: E, embedding width; None ties it to H (Zaremba et al.: E = H),
      so parameter matching changes the embedding and softmax widths too.
    num_layers: L stacked LSTM layers (paper: 2).
    network: `rnn`, `plastic`, `modplast` or `retromod`.
    init_scale: s, U(-s, s) init of embedding, LSTM weights, softmax kernel
      and bias (LSTM biases start at zero, no forget-gate bias).
    clip_value: trace bound c (SPEC §4: 2.0).
    dropout_rate: dropout on the embedding output, between layers and before
      the softmax (Zaremba's small config: 0, the default).
    plastic_gates: extension: the i, f, o gate paths are plastic too.
    alpha_kind: shape of alpha (`full` for the small model).
    eta_init: initial eta (Hebbian rate of `plastic`, E rate of `retromod`).
  """

  # `metadata["help"]`: the one-line help of `python -m train.lm`'s flag of the
  # same name (`train.lm_config` derives its model fields from these).
  vocab_size: int = dataclasses.field(metadata={"help": "V, vocabulary size."})
  hidden_size: int = _field(200, "H, units per LSTM layer.")
  embed_size: Optional[int] = _field(None, "E, embedding width (default: tied to H).")
  num_layers: int = _field(2, "Stacked LSTM layers.")
  network: Network = _field("rnn", "rnn (LSTM) | plastic | modplast | retromod.")
  init_scale: float = _field(0.1, "U(-s, s) init of the weights.")
  clip_value: float = _field(2.0, "Hebbian trace bound c.")
  dropout_rate: float = _field(0.0, "Dropout (Zaremba small config: none).")
  plastic_gates: bool = _field(False, "Extension: the i, f, o gate paths are plastic too.")
  alpha_kind: AlphaKind = _field(
    "full", "Shape of alpha: full | per_neuron | single (small model: full)."
  )
  eta_init: float = _field(0.01, "Initial eta (plastic: per connection; retromod: of E).")
  step_impl: str = _field(
    "auto",
    "Plastic LSTM step: fused (C++ CPU kernels over all T steps, the cell path's "
    "variants; equal to float32 rounding) | reference (autodiff of "
    "plasticity.lstm_step) | auto (fused where it applies and builds, i.e. on "
    "the CPU, else reference). The plain LSTM (rnn) always runs the reference. "
    "Run control: a resumed run may use another.",
  )

  def __post_init__(self):
    owner = type(self).__name__
    check_positive(owner, "vocab_size", self.vocab_size)
    check_positive(owner, "hidden_size", self.hidden_size)
    if self.embed_size is not None:
      check_positive(owner, "embed_size", self.embed_size)
    check_positive(owner, "num_layers", self.num_layers)
    check_choice(owner, "network", self.network, NETWORKS)
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"{owner}.dropout_rate={self.dropout_rate!r} must be in [0, 1).")
    if not self.init_scale > 0.0:
      raise ValueError(f"{owner}.init_scale={self.init_scale!r} must be > 0.")
    check_choice(owner, "step_impl", self.step_impl, LSTM_STEP_IMPLS)
    config = self.plasticity_config()  # Validates alpha_kind.
    if self.step_impl == "fused" and config.is_plastic:
      from bpm_jax import fused_lstm  # pylint: disable=g-import-not-at-top

      fused_lstm.check_supported(config, self.plastic_gates)

  @property
  def embedding_size(self) -> int:
    return self.hidden_size if self.embed_size is None else self.embed_size

  def plasticity_config(self) -> PlasticityConfig:
    """The cell variant of SPEC §4 for the small model.

    `plastic`: per-connection eta; `modplast`/`retromod`: modulation from h_t
    through a trained fan-out (one rate per postsynaptic neuron), scalar eta of E.
    """
    return PlasticityConfig(
      network=self.network,
      alpha_kind=self.alpha_kind,
      rule="clip",
      fan_out=self.network in ("modplast", "retromod"),
      eta_kind="full" if self.network == "plastic" else "scalar",
    )

  def replace(self, **changes) -> "LMConfig":
    return dataclasses.replace(self, **changes)


class PlasticLSTMLanguageModel(nn.Module):
  """Embedding -> L PlasticLSTMCell layers -> softmax over the vocabulary.

  Attributes:
    config: the LMConfig.
  """

  config: LMConfig

  @nn.nowrap
  def initialize_carry(self, batch_size: int) -> Carry:
    """Zero state of every layer: h, c [B, H], Hebb (and E) [B, H, P]."""
    cfg = self.config
    carries = []
    for layer in range(cfg.num_layers):
      cell = PlasticLSTMCell(
        features=cfg.hidden_size,
        config=cfg.plasticity_config(),
        plastic_gates=cfg.plastic_gates,
        parent=None,
      )
      carries.append(cell.initialize_carry(None, (batch_size, cfg.hidden_size)))
    return tuple(carries)

  @nn.compact
  def __call__(
    self, carry: Carry, tokens: Array, deterministic: bool = True
  ) -> tuple[Carry, Array]:
    """Runs T steps.

    Args:
      carry: one LSTMState per layer, leading dim B (from `initialize_carry`
        or a previous call).
      tokens: [B, T] int token ids.
      deterministic: disables dropout (needs a `dropout` rng otherwise).

    Returns:
      (new carry, logits [B, T, V] float32).
    """
    cfg = self.config
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, T] ids, got shape {tokens.shape}.")
    if len(carry) != cfg.num_layers:
      raise ValueError(f"carry has {len(carry)} layers, the model {cfg.num_layers}.")
    uniform = uniform_range(-cfg.init_scale, cfg.init_scale)
    dropout = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
    x = nn.Embed(cfg.vocab_size, cfg.embedding_size, embedding_init=uniform, name="embed")(tokens)
    x = dropout(x)
    new_carry = []
    for layer in range(cfg.num_layers):
      cell = PlasticLSTMCell(
        features=cfg.hidden_size,
        config=cfg.plasticity_config(),
        clip_value=cfg.clip_value,
        plastic_gates=cfg.plastic_gates,
        init_scale=cfg.init_scale,
        eta_init=cfg.eta_init,
        step_impl=cfg.step_impl,
        name=f"lstm_{layer}",
      )
      if tokens.shape[1] == 1:  # One step (sampling, abstract init): no time axis.
        layer_carry, out = cell(carry[layer], x[:, 0])
        x = out[:, None]
      else:  # Time-major for the cell's sequence mode.
        layer_carry, out = cell(carry[layer], jnp.swapaxes(x, 0, 1), sequence=True)
        x = jnp.swapaxes(out, 0, 1)
      new_carry.append(layer_carry)
      x = dropout(x)
    logits = nn.Dense(cfg.vocab_size, kernel_init=uniform, bias_init=uniform, name="softmax")(x)
    return tuple(new_carry), logits


def sequence_nll(logits: Array, targets: Array) -> Array:
  """[B, T] negative log-likelihood (nats) of `targets` [B, T] under `logits` [B, T, V]."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - picked


# --------------------------------------------------------------------------
# Parameter counting and matching.


def abstract_params(config: LMConfig) -> Any:
  """The parameter pytree of `config` as ShapeDtypeStructs (no FLOPs, no memory)."""
  model = PlasticLSTMLanguageModel(config)
  carry = jax.eval_shape(lambda: model.initialize_carry(1))
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), carry, tokens)
  return variables["params"]


def count_params(config_or_params: Any) -> int:
  """Total number of scalars (an LMConfig is initialised abstractly first)."""
  params = config_or_params
  if isinstance(config_or_params, LMConfig):
    params = abstract_params(config_or_params)
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def param_breakdown(config: LMConfig) -> dict[str, int]:
  """Counts by group: `embed`, `lstm` (non-plastic LSTM weights), `plasticity`
  (alpha, eta, modulation, fan-out), `softmax`, `total`."""
  params = abstract_params(config)
  groups = dict(embed=0, lstm=0, plasticity=0, softmax=0)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [getattr(k, "key", str(k)) for k in path]
    size = math.prod(leaf.shape)
    if names[0] == "embed":
      groups["embed"] += size
    elif names[0] == "softmax":
      groups["softmax"] += size
    elif names[-1] in PLASTICITY_PARAM_NAMES:
      groups["plasticity"] += size
    else:
      groups["lstm"] += size
  groups["total"] = sum(groups.values())
  return groups


@functools.lru_cache(maxsize=1024)
def _count_at(base: LMConfig, network: str, hidden_size: int) -> int:
  return count_params(base.replace(network=network, hidden_size=hidden_size))


def match_hidden_size(
  target_params: int, base: LMConfig, network: str, tolerance: float = PARAM_TOLERANCE
) -> int:
  """Hidden size of `network` whose parameter count is closest to the target.

  The count is a quadratic polynomial in H (every weight is at most H x H,
  H x V or V x E with E = H or fixed): it is fitted exactly from three abstract
  initialisations and solved for the target; the chosen H is then counted by
  initialising it (`jax.eval_shape`), and checked against the tolerance.

  Raises:
    ValueError: no H reaches the target within `tolerance` (relative).
  """
  check_choice("match_hidden_size", "network", network, NETWORKS)
  if (
    isinstance(target_params, bool)
    or not isinstance(target_params, (int, np.integer))
    or target_params < 1
  ):
    raise ValueError(f"target_params={target_params!r} must be an integer >= 1.")
  probes = (8, 16, 32)
  counts = [_count_at(base, network, h) for h in probes]
  coeffs = np.polyfit(np.array(probes, float), np.array(counts, float), 2)
  polynomial = lambda h: int(round(np.polyval(coeffs, h)))
  roots = np.roots(coeffs - np.array([0.0, 0.0, float(target_params)]))
  real = [r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0]
  guess = max(real) if real else 1.0
  candidates = {max(1, int(math.floor(guess)) + d) for d in (-1, 0, 1, 2)}
  best = min(candidates, key=lambda h: (abs(polynomial(h) - target_params), h))
  got = _count_at(base, network, best)
  if got != polynomial(best):  # The quadratic model must be exact.
    raise AssertionError(
      f"parameter count of {network} at H={best} is {got}, "
      f"the quadratic fit says {polynomial(best)}."
    )
  error = abs(got - target_params) / target_params
  if error > tolerance:
    raise ValueError(
      f"match_hidden_size: network={network!r} gets {got} parameters at "
      f"hidden_size={best}, {100 * error:.2f}% from target_params={target_params} "
      f"(tolerance {100 * tolerance:.2f}%). One hidden unit costs about "
      f"{polynomial(best + 1) - got} parameters here; use a larger target or "
      "tolerance."
    )
  return best


def match_hidden_sizes(
  target_params: int,
  vocab_size: int,
  networks: Sequence[str] = NETWORKS,
  tolerance: float = PARAM_TOLERANCE,
  **config_fields: Any,
) -> dict[str, int]:
  """{network: hidden_size} so every variant has ~`target_params` parameters.

  Plasticity and modulation parameters are counted (by initialising the model
  with `jax.eval_shape`). Other LMConfig fields (`num_layers`, `embed_size`,
  ...) can be given as keywords.

  Example: `match_hidden_sizes(4_800_000, 10000)` gives
  `{'rnn': 206, 'plastic': 200, 'modplast': 202, 'retromod': 202}`.
  """
  base = LMConfig(vocab_size=vocab_size, **config_fields)
  return {
    network: match_hidden_size(target_params, base, network, tolerance) for network in networks
  }


def param_report(configs: Sequence[LMConfig], target_params: Optional[int] = None) -> str:
  """A text table of hidden size and parameter counts by group per config."""
  header = (
    f"{'network':<10}{'hidden':>7}{'embed':>7}{'total':>11}{'embedding':>11}"
    f"{'lstm':>10}{'plasticity':>11}{'softmax':>10}"
  )
  if target_params:
    header += f"{'vs target':>11}"
  lines = [header]
  for config in configs:
    counts = param_breakdown(config)
    line = (
      f"{config.network:<10}{config.hidden_size:>7}{config.embedding_size:>7}"
      f"{counts['total']:>11,}{counts['embed']:>11,}{counts['lstm']:>10,}"
      f"{counts['plasticity']:>11,}{counts['softmax']:>10,}"
    )
    if target_params:
      line += f"{100 * (counts['total'] - target_params) / target_params:>+10.3f}%"
    lines.append(line)
  return "\n".join(lines)
