"""Configuration of PTB language-model training (SPEC.md §5.7, small model).

One frozen `LMTrainConfig` describes a whole run; every field is also a flag
of `python -m train.lm` (same name). The model fields are those of
`bpm_jax.lm.LMConfig` (derived, not re-declared) except `vocab_size`, which
comes from the data, and `hidden_size`, which defaults to None: matched to
`target_params`. The numbers of one epoch's SGD step are copied into the
traced `LMHParams` pytree by `LMTrainConfig.hparams(epoch)`.

    config = LMTrainConfig(data_dir="/path/to/ptb", network="modplast", epochs=1)
    model_config = config.resolve_model_config(vocab_size=10000)   # H matched

Settings (Zaremba et al. SmallConfig, Backpropamine A.2): B = 20 streams,
truncated BPTT of T = 20 steps, plain SGD at learning rate 1.0, global
gradient-norm clip 5, U(-0.1, 0.1) init, 13 epochs. The learning rate of
(1-based) epoch e is `learning_rate * lr_decay ** max(0, e - decay_after_epoch)`;
lr_decay = 0.33 (about the middle of the paper's [0.25, 0.4]) from epoch 6 on
(decay_after_epoch = 5, paper: 4-6). The L2 penalty adds `l2_penalty * theta`
to every gradient before the clip (the paper does not give its value; the
default 1e-6 is small).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.struct
import jax.numpy as jnp

from bpm_jax import config as plasticity_config
from bpm_jax import lm
from bpm_jax.cells import LSTM_STEP_IMPLS
from train.config_base import ConfigMixin, derived_fields, field, run_fields
from train.validate import check_fields, check_int

_MODEL_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(lm.LMConfig)}
DEFAULT_HIDDEN_SIZE: int = _MODEL_DEFAULTS["hidden_size"]  # With target_params=0.

# The allowed values of each choice field.
CHOICES: dict[str, tuple[str, ...]] = dict(
  {name: plasticity_config.CHOICES[name] for name in ("network", "alpha_kind")},
  step_impl=LSTM_STEP_IMPLS,
)

# Fields that only steer the run; they may differ between a run and its --resume.
RUN_CONTROL_FIELDS = (
  "data_dir",
  "step_impl",
  "epochs",
  "chunk_size",
  "keep_checkpoints",
  "resume",
  "overwrite",
  "progress",
  "max_eval_minibatches",
)


@flax.struct.dataclass
class LMHParams:
  """Traced numbers of one epoch's SGD step; every leaf is a [] float32.

  Attributes:
    learning_rate: SGD step size of this epoch.
    l2_penalty: added as `l2_penalty * theta` to the gradient.
    grad_clip_norm: global-norm clip of the gradient (L2 term included).
  """

  learning_rate: Any
  l2_penalty: Any
  grad_clip_norm: Any


# vocab_size comes from the data; hidden_size is re-declared below (Optional).
_ModelFields = derived_fields("_ModelFields", lm.LMConfig, exclude=("vocab_size", "hidden_size"))


_RunFields = run_fields(
  "_RunFields",
  "model",
  "Minibatches",
  chunk_size=100,
  keep_checkpoints=2,
  resume_help="Continue after the last complete epoch in the workdir.",
)


@dataclasses.dataclass(frozen=True)
class LMTrainConfig(ConfigMixin, _RunFields, _ModelFields):
  """A PTB training run. Every field is also a flag of `python -m train.lm`.

  The fields embed_size ... eta_init come from `bpm_jax.lm.LMConfig`.
  """

  # --- Data.
  data_dir: Optional[str] = field(
    None,
    "Directory with ptb.{train,valid,test}.txt or {train,valid,test}.txt "
    "(optionally .gz). Required.",
  )
  # --- Model (the other bpm_jax.lm.LMConfig fields are derived).
  hidden_size: Optional[int] = field(
    None,
    "H, units per LSTM layer. Default: matched to --target_params; if "
    "given, it wins over --target_params.",
  )
  target_params: int = field(
    lm.PAPER_TARGET_PARAMS,
    "Unless --hidden_size is given, choose H so the model "
    "has this many parameters, plasticity included, within 0.5% (default: the "
    f"paper's equal-size variants); 0: H = {DEFAULT_HIDDEN_SIZE}.",
  )
  # --- Optimisation (the floats are traced, see LMHParams).
  batch_size: int = field(20, "B, parallel training streams.")
  unroll: int = field(20, "T, truncated-BPTT length.")
  eval_batch_size: int = field(20, "B of the valid/test evaluation.")
  learning_rate: float = field(1.0, "SGD step size of the first epochs.")
  lr_decay: float = field(0.33, "Learning-rate factor per epoch after decay_after_epoch.")
  decay_after_epoch: int = field(5, "Epochs at the full learning rate.")
  l2_penalty: float = field(1e-6, "Adds l2_penalty * theta to the gradient.")
  grad_clip_norm: float = field(5.0, "Global gradient-norm clip.")
  bound_eta: bool = field(
    True,
    "retromod: clip the eligibility-trace rate eta into [0, 1] after every "
    "step, so E (a running average of outer(h, g)) stays bounded.",
  )
  # --- Run control.
  epochs: int = field(13, "Training epochs.")
  max_steps_per_epoch: int = field(
    0, "If > 0, train on only the first N minibatches of each epoch (short runs)."
  )
  max_eval_minibatches: int = field(
    0,
    "If > 0, score only the first N minibatches of valid and test (short "
    "runs; the perplexities are then partial, see results.json).",
  )
  # (and seed, num_seeds, chunk_size, keep_checkpoints, resume, overwrite, progress).

  def __post_init__(self):
    check_fields(
      self,
      CHOICES,
      {
        1: (
          "num_layers",
          "batch_size",
          "unroll",
          "eval_batch_size",
          "epochs",
          "chunk_size",
          "num_seeds",
          "keep_checkpoints",
        ),
        0: (
          "target_params",
          "max_steps_per_epoch",
          "max_eval_minibatches",
          "seed",
          "decay_after_epoch",
        ),
      },
      positive=("learning_rate", "grad_clip_norm", "clip_value", "init_scale", "lr_decay"),
      nonnegative=("l2_penalty", "eta_init", "dropout_rate"),
    )
    for name in ("hidden_size", "embed_size"):
      if getattr(self, name) is not None:
        check_int(name, getattr(self, name), 1)
    if self.dropout_rate >= 1.0:
      raise ValueError(f"dropout_rate={self.dropout_rate!r} must be < 1.")

  def model_config(self, vocab_size: int, hidden_size: Optional[int] = None) -> lm.LMConfig:
    """The LMConfig of this run (hidden size: given, or this config's, or 200)."""
    return self.library_config(
      lm.LMConfig,
      vocab_size=vocab_size,
      hidden_size=hidden_size or self.hidden_size or DEFAULT_HIDDEN_SIZE,
    )

  def resolve_model_config(self, vocab_size: int) -> lm.LMConfig:
    """As `model_config`, with H matched to target_params unless hidden_size is set."""
    base = self.model_config(vocab_size)
    if self.hidden_size is not None or not self.target_params:
      return base
    hidden = lm.match_hidden_size(self.target_params, base, self.network)
    return base.replace(hidden_size=hidden)

  def learning_rate_at(self, epoch: int) -> float:
    """SGD step size of 1-based `epoch`."""
    return self.learning_rate * self.lr_decay ** max(0, epoch - self.decay_after_epoch)

  def hparams(self, epoch: int) -> LMHParams:
    """The traced numbers of `epoch` (1-based) as [] float32 arrays."""
    return LMHParams(
      learning_rate=jnp.float32(self.learning_rate_at(epoch)),
      l2_penalty=jnp.float32(self.l2_penalty),
      grad_clip_norm=jnp.float32(self.grad_clip_norm),
    )


# What a config.json written before a field existed ran with: the LMConfig
# fields the trainer did not expose yet were at LMConfig's defaults.
LMTrainConfig.SAVED_BEFORE_FIELD_EXISTED = {
  name: _MODEL_DEFAULTS[name] for name in ("plastic_gates", "alpha_kind")
}
