"""Configuration of a plastic layer: which variant of SPEC.md §2-4 it computes.

Everything here changes array shapes or the computation graph, so it is static
(hashable, frozen). Numbers a sweep varies (the clip value, learning rates) are
traced arguments elsewhere.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

Network = Literal["rnn", "plastic", "modplast", "retromod"]
AlphaKind = Literal["full", "per_neuron", "single"]
TraceRule = Literal["clip", "decay", "oja", "soft_clip"]
ModulationFn = Literal["tanh", "sigmoid", "identity"]
EtaKind = Literal["scalar", "full"]

NETWORKS: tuple[str, ...] = typing.get_args(Network)
ALPHA_KINDS: tuple[str, ...] = typing.get_args(AlphaKind)
TRACE_RULES: tuple[str, ...] = typing.get_args(TraceRule)
MODULATION_FNS: tuple[str, ...] = typing.get_args(ModulationFn)
ETA_KINDS: tuple[str, ...] = typing.get_args(EtaKind)


# The allowed values of each choice field of PlasticityConfig.
CHOICES: dict[str, tuple[str, ...]] = {
  "network": NETWORKS,
  "alpha_kind": ALPHA_KINDS,
  "rule": TRACE_RULES,
  "modulation_fn": MODULATION_FNS,
  "eta_kind": ETA_KINDS,
}


def _field(default: Any, help_text: str) -> Any:
  return dataclasses.field(default=default, metadata={"help": help_text})


def check_choice(owner: str, field: str, value: Any, allowed: tuple[str, ...]) -> None:
  """Raises a ValueError naming the field, the bad value and the allowed ones."""
  if value not in allowed:
    raise ValueError(
      f"{owner}.{field}={value!r} is not a known option; "
      f"choose one of {', '.join(repr(a) for a in allowed)}."
    )


def check_positive(owner: str, field: str, value: Any) -> None:
  """Raises a ValueError unless `value` is an int >= 1."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{owner}.{field}={value!r} is impossible; it must be an integer >= 1.")


@dataclasses.dataclass(frozen=True)
class PlasticityConfig:
  """Which plasticity variant a layer computes (SPEC.md §2-4).

  Attributes:
    network: `rnn` (no plasticity), `plastic` (Hebbian trace with a trained
      rate eta), `modplast` (simple neuromodulation: the rate is M(t)),
      `retromod` (retroactive neuromodulation: M(t) gates an eligibility trace).
    alpha_kind: plasticity coefficients, one per connection (`full`), one per
      postsynaptic neuron (`per_neuron`) or one for the layer (`single`).
    rule: how the Hebbian trace is kept bounded: `clip` (Backpropamine),
      `decay` (Differentiable plasticity), `oja`, `soft_clip`.
    modulation_fn: nonlinearity f of m(t) = f(h(t) @ W_mod + b_mod).
    fan_out: if True, M(t) = m(t) @ V + u, one rate per postsynaptic neuron
      (a trained K -> P map). If False, with one modulator M(t) = m(t) for every
      synapse; with K > 1 modulators, modulator k gates the k-th contiguous
      block of postsynaptic neurons.
    num_modulators: K, the number of neuromodulatory signals (paper: 1).
    partial_modulation: reference option `fm=0`: the first half of the
      postsynaptic neurons (columns `j < P // 2`) follow the modulated rule,
      the rest a plain Hebbian rule with its own trained scalar rate.
    eta_kind: shape of the trained rate of the `plastic` network and of the
      eligibility-trace rate of `retromod`: `scalar` or `full` (one per
      connection, used by the small plastic LSTM).
  """

  # `metadata["help"]`: the one-line help of the trainers' flag of the same name.
  network: Network = _field("modplast", "Network type: rnn | plastic | modplast | retromod.")
  alpha_kind: AlphaKind = _field("full", "Plasticity coefficients: full | per_neuron | single.")
  rule: TraceRule = _field("clip", "Hebbian trace rule: clip | decay | oja | soft_clip.")
  modulation_fn: ModulationFn = _field(
    "tanh", "f of m(t) = f(h W_mod + b): tanh | sigmoid | identity."
  )
  fan_out: bool = _field(False, "Modulation fan-out M(t) = m(t) V + u per neuron.")
  num_modulators: int = _field(1, "K, neuromodulatory signals (paper: 1).")
  partial_modulation: bool = _field(
    False, "Half the neurons plain Hebbian (reference option fm=0)."
  )
  eta_kind: EtaKind = _field(
    "scalar",
    "Shape of the trained eta (plastic) / eligibility rate (retromod): "
    "scalar | full (one per connection).",
  )

  def __post_init__(self):
    owner = type(self).__name__
    check_choice(owner, "network", self.network, NETWORKS)
    check_choice(owner, "alpha_kind", self.alpha_kind, ALPHA_KINDS)
    check_choice(owner, "rule", self.rule, TRACE_RULES)
    check_choice(owner, "modulation_fn", self.modulation_fn, MODULATION_FNS)
    check_choice(owner, "eta_kind", self.eta_kind, ETA_KINDS)
    check_positive(owner, "num_modulators", self.num_modulators)
    if self.network == "retromod" and self.rule == "oja":
      raise ValueError(
        f"{owner}.rule='oja' cannot be used with network='retromod': Oja's "
        "rule needs the pre- and postsynaptic activities, while retroactive "
        "modulation consolidates an eligibility trace. Use rule='clip', "
        "'decay' or 'soft_clip'."
      )
    if self.partial_modulation and not self.is_modulated:
      raise ValueError(
        f"{owner}.partial_modulation=True needs a modulated network "
        f"('modplast' or 'retromod'), got network={self.network!r}."
      )

  @property
  def is_plastic(self) -> bool:
    """Whether the layer keeps a Hebbian trace."""
    return self.network != "rnn"

  @property
  def is_modulated(self) -> bool:
    """Whether the layer computes a modulatory signal m(t)."""
    return self.network in ("modplast", "retromod")

  @property
  def has_eligibility(self) -> bool:
    """Whether the layer keeps an eligibility trace E."""
    return self.network == "retromod"

  def replace(self, **changes) -> "PlasticityConfig":
    return dataclasses.replace(self, **changes)
