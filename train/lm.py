"""Penn Treebank language modelling with plastic LSTMs (SPEC.md §5.7, small model).

Command line:

    python -m train.lm --data_dir=/path/to/ptb --network=retromod \
        --workdir=runs/ptb_retromod   # H matched to 4.8M parameters

    # short run: 1 epoch of 300 minibatches; valid/test scored on their
    # first 40 minibatches only (partial perplexities)
    python -m train.lm --data_dir=... --network=rnn --epochs=1 \
        --max_steps_per_epoch=300 --max_eval_minibatches=40 --workdir=runs/ptb_rnn_short

Library use:

    config = LMTrainConfig(data_dir="/path/to/ptb", network="modplast", epochs=1)
    results = train_and_evaluate(config, workdir)   # {"valid_ppl": ..., "test_ppl": ...}

Settings (Zaremba et al. SmallConfig, Backpropamine A.2): batch B = 20 parallel
streams, truncated BPTT of T = 20 steps, plain SGD with learning rate 1.0 on the
NLL *summed over the T steps* and averaged over the B streams (Zaremba's
`cost = sum(loss) / batch_size`), global gradient-norm clip 5, uniform init
U(-0.1, 0.1), 13 epochs. The learning rate of (1-based) epoch e is
`learning_rate * lr_decay ** max(0, e - decay_after_epoch)`; we use
lr_decay = 0.33 (about the middle of the paper's [0.25, 0.4]) from epoch 6 on
(decay_after_epoch = 5, paper: 4-6). The L2 penalty adds `l2_penalty * theta`
to every gradient (i.e. `l2_penalty / 2 * |theta|^2` in the loss, before the
clip); the paper does not give its value, the default 1e-6 is small.
h, c, Hebb and E are carried from one minibatch to the next (gradient stopped
at the boundary) and reset to zero at the start of each epoch and of each
evaluation. With `retromod`, eta (the rate of the eligibility trace E) is
clipped into [0, 1] after every step (`bound_eta`, default on): SGD at this
learning rate can push it past 2, and E then diverges geometrically over the
carried state.

An epoch runs as a few jitted `lax.scan`s over chunks of `chunk_size`
minibatches (the progress bar advances per chunk; a short last chunk is padded
with skipped steps so one program serves all chunks); `num_seeds` independent
models are trained in one `vmap`ped program on the same minibatches.
Perplexity = exp(mean NLL per token) over all evaluated tokens; valid/test are
cut into B = eval_batch_size streams and T-step minibatches like the training
data, so the last `< B * T + B` tokens of a split are not scored.

Outputs in the workdir: config.json, metrics.csv (+ TensorBoard events), one
orbax checkpoint per epoch in checkpoints/ (`--resume` continues after the
last complete epoch), results.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bpm_jax import lm
from bpm_jax import ptb
from bpm_jax import xla
from bpm_jax.config import NETWORKS
from train import checkpoint as checkpoint_lib
from train import flags as flags_lib
from train.validate import check_float, check_int
from train import metrics as metrics_lib

Array = jax.Array
PyTree = Any

CONFIG_JSON = "config.json"
RESULTS_JSON = "results.json"
CHECKPOINT_DIR = checkpoint_lib.CHECKPOINT_DIR
DEFAULT_HIDDEN_SIZE = 200

# Fields that only steer the run; they may differ between a run and its --resume.
RUN_CONTROL_FIELDS = ("data_dir", "epochs", "chunk_size", "keep_checkpoints", "resume",
                      "progress", "max_eval_minibatches")
CHOICES: dict[str, tuple[str, ...]] = {"network": NETWORKS}


class NonFiniteError(FloatingPointError):
  """A NaN/inf appeared in the training loss or the gradient."""


def _field(default: Any, help_text: str) -> Any:
  """A config field with its flag help text (`metadata["help"]`)."""
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class LMTrainConfig:
  """A PTB training run. Every field is also a flag of `python -m train.lm`."""

  # --- Data.
  data_dir: Optional[str] = _field(
      None, "Directory with ptb.{train,valid,test}.txt or {train,valid,test}.txt "
      "(optionally .gz). Required.")
  # --- Model (bpm_jax.lm.LMConfig).
  network: str = _field("rnn", "rnn (LSTM) | plastic | modplast | retromod.")
  hidden_size: Optional[int] = _field(
      None, "H, units per LSTM layer. Default: matched to --target_params; if "
      "given, it wins over --target_params.")
  target_params: int = _field(
      lm.PAPER_TARGET_PARAMS, "Unless --hidden_size is given, choose H so the model "
      "has this many parameters, plasticity included, within 0.5% (default: the "
      f"paper's equal-size variants); 0: H = {DEFAULT_HIDDEN_SIZE}.")
  embed_size: Optional[int] = _field(None, "E, embedding width (default: tied to H).")
  num_layers: int = _field(2, "Stacked LSTM layers.")
  init_scale: float = _field(0.1, "U(-s, s) init of the weights.")
  clip_value: float = _field(2.0, "Hebbian trace bound c.")
  eta_init: float = _field(0.01, "Initial eta (plastic: per connection; retromod: of E).")
  dropout_rate: float = _field(0.0, "Dropout (Zaremba small config: none).")
  # --- Optimisation.
  batch_size: int = _field(20, "B, parallel training streams.")
  unroll: int = _field(20, "T, truncated-BPTT length.")
  eval_batch_size: int = _field(20, "B of the valid/test evaluation.")
  learning_rate: float = _field(1.0, "SGD step size of the first epochs.")
  lr_decay: float = _field(0.33, "Learning-rate factor per epoch after decay_after_epoch.")
  decay_after_epoch: int = _field(5, "Epochs at the full learning rate.")
  l2_penalty: float = _field(1e-6, "Adds l2_penalty * theta to the gradient.")
  grad_clip_norm: float = _field(5.0, "Global gradient-norm clip.")
  bound_eta: bool = _field(
      True, "retromod: clip the eligibility-trace rate eta into [0, 1] after every "
      "step, so E (a running average of outer(h, g)) stays bounded.")
  # --- Run control.
  epochs: int = _field(13, "Training epochs.")
  max_steps_per_epoch: int = _field(
      0, "If > 0, train on only the first N minibatches of each epoch (short runs).")
  max_eval_minibatches: int = _field(
      0, "If > 0, score only the first N minibatches of valid and test (short "
      "runs; the perplexities are then partial, see results.json).")
  chunk_size: int = _field(100, "Minibatches per jitted host call (lax.scan).")
  seed: int = _field(0, "Model s of num_seeds uses jax.random.key(seed + s).")
  num_seeds: int = _field(1, "S, independent models trained in one vmapped program.")
  keep_checkpoints: int = _field(2, "How many of the latest epoch checkpoints to keep.")
  resume: bool = _field(False, "Continue after the last complete epoch in the workdir.")
  progress: bool = _field(True, "Show a tqdm progress bar (--noprogress: off).")

  def __post_init__(self):
    for name, allowed in CHOICES.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r} is not a known option; "
                         f"choose one of {', '.join(allowed)}.")
    for name in ("num_layers", "batch_size", "unroll", "eval_batch_size", "epochs",
                 "chunk_size", "num_seeds", "keep_checkpoints"):
      check_int(name, getattr(self, name), 1)
    for name in ("target_params", "max_steps_per_epoch", "max_eval_minibatches", "seed",
                 "decay_after_epoch"):
      check_int(name, getattr(self, name), 0)
    for name in ("hidden_size", "embed_size"):
      if getattr(self, name) is not None:
        check_int(name, getattr(self, name), 1)
    for name in ("learning_rate", "grad_clip_norm", "clip_value", "init_scale",
                 "lr_decay"):
      check_float(name, getattr(self, name), positive=True)
    for name in ("l2_penalty", "eta_init", "dropout_rate"):
      check_float(name, getattr(self, name), positive=False)
    if self.dropout_rate >= 1.0:
      raise ValueError(f"dropout_rate={self.dropout_rate!r} must be < 1.")

  def model_config(self, vocab_size: int, hidden_size: Optional[int] = None) -> lm.LMConfig:
    """The LMConfig of this run (hidden size: given, or this config's, or 200)."""
    return lm.LMConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size or self.hidden_size or DEFAULT_HIDDEN_SIZE,
        embed_size=self.embed_size, num_layers=self.num_layers, network=self.network,
        init_scale=self.init_scale, clip_value=self.clip_value,
        dropout_rate=self.dropout_rate, eta_init=self.eta_init)

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

  def hparams(self, epoch: int) -> "HParams":
    return HParams(learning_rate=jnp.float32(self.learning_rate_at(epoch)),
                   l2_penalty=jnp.float32(self.l2_penalty),
                   grad_clip_norm=jnp.float32(self.grad_clip_norm))

  def replace(self, **changes) -> "LMTrainConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "LMTrainConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


# --------------------------------------------------------------------------
# Pure training functions (one model; the host loop vmaps over seeds).


@flax.struct.dataclass
class HParams:
  """Traced numbers of one epoch; every leaf is a [] float32.

  Attributes:
    learning_rate: SGD step size of this epoch.
    l2_penalty: added as `l2_penalty * theta` to the gradient.
    grad_clip_norm: global-norm clip of the gradient (L2 term included).
  """

  learning_rate: Any
  l2_penalty: Any
  grad_clip_norm: Any


@flax.struct.dataclass
class TrainState:
  """Everything to continue a run (plain arrays, checkpointable).

  Attributes:
    params: model parameters.
    step: [] int32 SGD steps taken.
    key: [2] uint32 raw PRNG key data (dropout), `jax.random.key_data`.
  """

  params: PyTree
  step: Array
  key: Array


def init_state(model: lm.PlasticLSTMLanguageModel, key: Array) -> TrainState:
  """Fresh parameters (uniform init) for one model.

  Uses `lazy_init` (no forward computation); called eagerly, its few random
  ops compile once per shape and are shared by all variants and seeds.
  """
  init_key, dropout_key = jax.random.split(key)
  carry = jax.eval_shape(lambda: model.initialize_carry(1))
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  params = model.lazy_init(init_key, carry, tokens)["params"]
  return TrainState(params=params, step=jnp.zeros((), jnp.int32),
                    key=jax.random.key_data(dropout_key))


def init_states(model: lm.PlasticLSTMLanguageModel, keys: Array) -> TrainState:
  """Seed-stacked TrainState [S, ...] for keys [S] (eager loop over seeds)."""
  states = [init_state(model, key) for key in keys]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def sgd_update(params: PyTree, grads: PyTree, hparams: HParams) -> tuple[PyTree, Array]:
  """theta -= lr * clip(grad + l2 * theta, grad_clip_norm); returns (params, norm)."""
  grads = jax.tree.map(lambda g, p: g + hparams.l2_penalty * p, grads, params)
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
  scale = hparams.learning_rate * hparams.grad_clip_norm / jnp.maximum(
      norm, hparams.grad_clip_norm)
  return jax.tree.map(lambda p, g: p - scale * g, params, grads), norm


def project_params(params: PyTree, config: lm.LMConfig, bound_eta: bool) -> PyTree:
  """Keeps `retromod`'s eta in [0, 1] (with `bound_eta`); other params unchanged.

  E_t = (1 - eta) E_tm1 + eta outer(h_tm1, g_t) is bounded by max|outer| <= 1
  only for eta in [0, 2]; SGD at learning rate 1 can push eta past 2, and with
  the state carried over a whole epoch E then grows geometrically to inf.
  """
  if not (bound_eta and config.network == "retromod"):
    return params

  def project(path, leaf):
    name = getattr(path[-1], "key", None)
    return jnp.clip(leaf, 0.0, 1.0) if name == "eta" else leaf

  return jax.tree_util.tree_map_with_path(project, params)


def lm_loss(params: PyTree, model: lm.PlasticLSTMLanguageModel, carry: lm.Carry,
            inputs: Array, targets: Array,
            dropout_key: Optional[Array] = None) -> tuple[Array, tuple[lm.Carry, Array]]:
  """Zaremba's training loss: NLL summed over T, averaged over B.

  Args:
    inputs, targets: [B, T] int32.
    dropout_key: enables dropout when given.

  Returns:
    (loss [], (new carry, mean NLL per token [])).
  """
  deterministic = dropout_key is None
  rngs = None if deterministic else {"dropout": dropout_key}
  carry, logits = model.apply({"params": params}, carry, inputs,
                              deterministic=deterministic, rngs=rngs)
  nll = lm.sequence_nll(logits, targets)  # [B, T]
  return jnp.mean(jnp.sum(nll, axis=1)), (carry, jnp.mean(nll))


def train_step(model: lm.PlasticLSTMLanguageModel, state: TrainState, carry: lm.Carry,
               inputs: Array, targets: Array, hparams: HParams,
               bound_eta: bool = True) -> tuple[TrainState, lm.Carry, dict[str, Array]]:
  """One SGD step on a [B, T] minibatch; the carry continues (gradient stopped).

  Returns:
    (state, carry, metrics {nll: [] per token, grad_norm: [], finite: [] bool}).
  """
  dropout_key = None
  if model.config.dropout_rate > 0:
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
  grad_fn = jax.value_and_grad(lm_loss, has_aux=True)
  (loss, (carry, nll)), grads = grad_fn(state.params, model, carry, inputs, targets,
                                        dropout_key)
  params, norm = sgd_update(state.params, grads, hparams)
  params = project_params(params, model.config, bound_eta)
  finite = jnp.isfinite(loss) & jnp.isfinite(norm)
  state = state.replace(params=params, step=state.step + 1)
  metrics = dict(nll=nll, grad_norm=norm, finite=finite)
  return state, jax.lax.stop_gradient(carry), metrics


def train_chunk(model: lm.PlasticLSTMLanguageModel, state: TrainState, carry: lm.Carry,
                inputs: Array, targets: Array, active: Array, hparams: HParams,
                bound_eta: bool = True) -> tuple[TrainState, lm.Carry, dict[str, Array]]:
  """`lax.scan` of `train_step` over C consecutive minibatches.

  Args:
    inputs, targets: [C, B, T] int32.
    active: [C] bool; steps where it is False are skipped (`lax.cond`), so a
      short last chunk padded to C reuses the same compiled program.

  Returns:
    (state, carry, metrics with leaves [C]; zeros at skipped steps).
  """

  def body(loop, batch):
    inputs_t, targets_t, active_t = batch

    def run(loop):
      state, carry = loop
      state, carry, metrics = train_step(model, state, carry, inputs_t, targets_t,
                                         hparams, bound_eta)
      return (state, carry), metrics

    def skip(loop):
      zero = jnp.zeros((), jnp.float32)
      return loop, dict(nll=zero, grad_norm=zero, finite=jnp.ones((), bool))

    return jax.lax.cond(active_t, run, skip, loop)

  (state, carry), metrics = jax.lax.scan(body, (state, carry), (inputs, targets, active))
  return state, carry, metrics


def evaluate(model: lm.PlasticLSTMLanguageModel, params: PyTree, inputs: Array,
             targets: Array, active: Array) -> Array:
  """Total NLL (nats, float32 []) of the targets of the active minibatches.

  State starts at zero and is carried through the M minibatches.

  Args:
    inputs, targets: [M, B, T] int32, consecutive minibatches.
    active: [M] bool; False marks padding (skipped).
  """

  def body(carry, batch):
    inputs_t, targets_t, active_t = batch

    def run(carry):
      carry, logits = model.apply({"params": params}, carry, inputs_t)
      return carry, jnp.sum(lm.sequence_nll(logits, targets_t))

    return jax.lax.cond(active_t, run, lambda c: (c, jnp.zeros((), jnp.float32)), carry)

  carry = model.initialize_carry(inputs.shape[1])
  _, nll = jax.lax.scan(body, carry, (inputs, targets, active))
  return jnp.sum(nll)


# --------------------------------------------------------------------------
# Host loop.


def seed_keys(config: LMTrainConfig) -> Array:
  """[S] keys; model s is seeded with `jax.random.key(seed + s)`."""
  return jnp.stack([jax.random.key(config.seed + s) for s in range(config.num_seeds)])


def metric_fieldnames(num_seeds: int) -> list[str]:
  per_seed = [f"{name}_seed{s}" for name in ("train_ppl", "valid_ppl", "test_ppl")
              for s in range(num_seeds)]
  return (["step", "epoch", "learning_rate", "train_ppl", "valid_ppl", "test_ppl",
           "grad_norm", "tokens_per_s"] + per_seed)


@dataclasses.dataclass
class Split:
  """Minibatches of one split (host arrays).

  Attributes:
    inputs, targets: [M, B, T] int32.
    active: [M] bool, False for padding minibatches (see `padded`).
  """

  inputs: np.ndarray
  targets: np.ndarray
  active: np.ndarray

  @classmethod
  def from_ids(cls, ids: np.ndarray, batch_size: int, unroll: int) -> "Split":
    inputs, targets = ptb.minibatch_arrays(ptb.batchify(ids, batch_size), unroll)
    return cls(inputs, targets, np.ones(inputs.shape[0], bool))

  def __len__(self) -> int:
    return int(self.inputs.shape[0])

  def padded(self, length: int) -> "Split":
    """The same minibatches followed by inactive zero ones, M = `length`."""
    extra = length - len(self)
    if extra < 0:
      raise ValueError(f"cannot pad {len(self)} minibatches to {length}.")
    pad = lambda a: np.concatenate([a, np.zeros((extra,) + a.shape[1:], a.dtype)])
    return Split(pad(self.inputs), pad(self.targets), pad(self.active))

  def slice(self, start: int, stop: int) -> "Split":
    return Split(self.inputs[start:stop], self.targets[start:stop], self.active[start:stop])

  @property
  def num_tokens(self) -> int:
    """Scored target tokens (active minibatches only)."""
    return int(self.targets[self.active].size)


class Trainer:
  """Jitted, seed-vmapped functions of one model (use `make_trainer`: cached).

  One program each for init, a chunk of `chunk_size` steps and an evaluation
  of a given number of minibatches, whatever the data.
  """

  def __init__(self, model_config: lm.LMConfig, batch_size: int, num_seeds: int,
               bound_eta: bool):
    self.model = lm.PlasticLSTMLanguageModel(model_config)
    self.batch_size = batch_size
    self.num_seeds = num_seeds
    self.init = functools.partial(init_states, self.model)
    self._train_chunk = jax.jit(jax.vmap(
        functools.partial(train_chunk, self.model, bound_eta=bound_eta),
        in_axes=(0, 0, None, None, None, None)), compiler_options=xla.compiler_options())
    self._evaluate = jax.jit(jax.vmap(functools.partial(evaluate, self.model),
                                      in_axes=(0, None, None, None)),
                             compiler_options=xla.compiler_options())

  def initial_carry(self) -> lm.Carry:
    """[S, B, ...] zero carry of the training streams."""
    carry = self.model.initialize_carry(self.batch_size)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (self.num_seeds,) + x.shape), carry)

  def abstract_state(self, keys: Array) -> TrainState:
    return jax.eval_shape(self.init, keys)

  def train_chunk(self, state: TrainState, carry: lm.Carry, chunk: Split,
                  hparams: HParams) -> tuple[TrainState, lm.Carry, dict[str, np.ndarray]]:
    """Runs the active steps of `chunk`; metrics (host) have leaves [S, C]."""
    state, carry, metrics = self._train_chunk(state, carry, chunk.inputs, chunk.targets,
                                              chunk.active, hparams)
    return state, carry, jax.device_get(metrics)

  def perplexity(self, params: PyTree, split: Split) -> np.ndarray:
    """[S] perplexities of the seed-stacked `params` on `split`."""
    nll = np.asarray(self._evaluate(params, split.inputs, split.targets, split.active),
                     np.float64)
    return np.exp(nll / split.num_tokens)


@functools.lru_cache(maxsize=16)
def make_trainer(model_config: lm.LMConfig, batch_size: int, num_seeds: int,
                 bound_eta: bool = True) -> Trainer:
  """A Trainer, cached so repeated runs of one model in a process compile once."""
  return Trainer(model_config, batch_size, num_seeds, bound_eta)


def _check_resume_config(workdir: str, config: LMTrainConfig) -> None:
  path = os.path.join(workdir, CONFIG_JSON)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)["train"]
    checkpoint_lib.check_same_config(path, saved, config.to_dict(), RUN_CONTROL_FIELDS)


def _truncate_metrics(path: str, start_step: int) -> None:
  """Drops CSV rows after `start_step` and any earlier final-test row."""
  metrics_lib.filter_csv(
      path, lambda row: int(float(row["step"])) <= start_step and not row.get("test_ppl"))


def valid_history(path: str, num_seeds: int) -> list[list[float]]:
  """[epochs][S] validation perplexities recorded in a metrics CSV."""
  if not os.path.exists(path):
    return []
  rows = metrics_lib.read_csv(path)
  return [[row[f"valid_ppl_seed{s}"] for s in range(num_seeds)] for row in rows
          if not math.isnan(row.get("valid_ppl", math.nan))]


def train_and_evaluate(config: LMTrainConfig, workdir: str) -> dict[str, Any]:
  """Trains `config.num_seeds` language models on PTB; evaluates valid and test.

  Args:
    config: the run.
    workdir: output directory (config.json, metrics.csv, TensorBoard events,
      checkpoints/, results.json).

  Returns:
    The contents of results.json: "valid_ppl" [S] (last epoch), "test_ppl" [S],
    "valid_ppl_per_epoch" [epochs][S], "hidden_size", "num_params", "steps",
    "tokens_trained"; plus "state", the seed-stacked TrainState.

  Raises:
    FileNotFoundError / ValueError: missing or malformed data (before any
      output is written).
    NonFiniteError: NaN/inf loss or gradient (nothing of that epoch is saved).
    checkpoint_lib.CheckpointError: unreadable checkpoint on --resume.
  """
  ptb.find_split_files(config.data_dir)  # Fail fast, before reading or writing.
  corpus = ptb.load_corpus(config.data_dir)
  model_config = config.resolve_model_config(corpus.vocab_size)
  train_split = Split.from_ids(corpus.train, config.batch_size, config.unroll)
  # Valid and test padded to one length: one compiled evaluation for both.
  valid_split = Split.from_ids(corpus.valid, config.eval_batch_size, config.unroll)
  test_split = Split.from_ids(corpus.test, config.eval_batch_size, config.unroll)
  if config.max_eval_minibatches:
    valid_split = valid_split.slice(0, config.max_eval_minibatches)
    test_split = test_split.slice(0, config.max_eval_minibatches)
  eval_length = max(len(valid_split), len(test_split))
  valid_split, test_split = valid_split.padded(eval_length), test_split.padded(eval_length)
  steps_per_epoch = len(train_split)
  if config.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
  chunk_size = min(config.chunk_size, steps_per_epoch)
  num_params = lm.count_params(model_config)

  trainer = make_trainer(model_config, config.batch_size, config.num_seeds, config.bound_eta)
  workdir, ckpt = checkpoint_lib.open_run(workdir, config.keep_checkpoints)
  writer = None
  progress = None
  try:
    state, metadata = ckpt.restore_or_init(
        config.resume, "epoch",
        check_config=lambda: _check_resume_config(workdir, config),
        abstract_state=lambda: trainer.abstract_state(seed_keys(config)),
        init=lambda: trainer.init(seed_keys(config)))
    start_epoch = 0
    if metadata is not None:
      # Uncommitted arrays like a fresh init, so the compiled programs are reused.
      state = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state)
      start_epoch = int(metadata["epoch"])
    start_step = int(np.asarray(state.step)[0])
    with open(os.path.join(workdir, CONFIG_JSON), "w") as f:
      json.dump({"train": config.to_dict(), "model": dataclasses.asdict(model_config),
                 "num_params": num_params, "network": config.network,
                 "steps_per_epoch": steps_per_epoch}, f, indent=2, sort_keys=True)
    csv_path = os.path.join(workdir, metrics_lib.METRICS_CSV)
    _truncate_metrics(csv_path, start_step)
    writer = metrics_lib.MetricsWriter(workdir, metric_fieldnames(config.num_seeds))

    print(metrics_lib.format_config(
        dict(config.to_dict(), hidden_size=model_config.hidden_size,
             embed_size=model_config.embedding_size, vocab_size=corpus.vocab_size,
             num_params=num_params, steps_per_epoch=steps_per_epoch),
        f"PTB language model ({config.network}). Workdir: {workdir}"), flush=True)
    if start_epoch:
      print(f"Resuming after epoch {start_epoch} (step {start_step}).", flush=True)

    tokens_per_step = config.num_seeds * config.batch_size * config.unroll
    progress = metrics_lib.Progress(config.epochs * steps_per_epoch,
                                    start_epoch * steps_per_epoch, config.progress,
                                    desc=config.network)
    for epoch in range(start_epoch + 1, config.epochs + 1):
      hparams = config.hparams(epoch)
      carry = trainer.initial_carry()
      new_state = state
      rows = []
      done = 0
      while done < steps_per_epoch:
        n = min(chunk_size, steps_per_epoch - done)
        chunk = train_split.slice(done, done + n).padded(chunk_size)
        watch = metrics_lib.Stopwatch()
        new_state, carry, metrics = trainer.train_chunk(new_state, carry, chunk, hparams)
        metrics = jax.tree.map(lambda m: np.asarray(m)[:, :n], metrics)  # leaves [S, n]
        seconds = watch.lap()
        finite = metrics["finite"]
        step = int(np.asarray(new_state.step)[0])
        if not finite.all():
          bad = int(np.argmax(~finite.all(axis=0)))
          bad_seeds = [int(s) for s in np.nonzero(~finite[:, bad])[0]]
          writer.write_rows(rows)
          last = ckpt.latest_step()
          where = (f"the last good checkpoint is epoch {last} in {ckpt.step_path(last)}"
                   if last is not None else "no checkpoint was saved yet")
          raise NonFiniteError(
              f"Non-finite training loss or gradient at epoch {epoch}, minibatch "
              f"{done + bad} (seed index {bad_seeds}, network {config.network}, "
              f"learning rate {float(hparams.learning_rate):.4g}); training stopped "
              f"and this epoch was not saved; {where}. Lower --learning_rate, "
              "--grad_clip_norm or --clip_value.")
        done += n
        train_ppl = np.exp(np.mean(np.asarray(metrics["nll"], np.float64), axis=1))  # [S]
        row = {"step": step, "epoch": epoch - 1 + done / steps_per_epoch,
               "learning_rate": float(hparams.learning_rate),
               "train_ppl": float(np.mean(train_ppl)),
               "grad_norm": float(np.mean(metrics["grad_norm"])),
               "tokens_per_s": tokens_per_step * n / seconds}
        row.update({f"train_ppl_seed{s}": float(p) for s, p in enumerate(train_ppl)})
        rows.append(row)
        progress.update(n, train_ppl=row["train_ppl"], tok_per_s=row["tokens_per_s"])
      state = new_state
      valid_ppl = trainer.perplexity(state.params, valid_split)
      rows[-1].update({"valid_ppl": float(np.mean(valid_ppl))})
      rows[-1].update({f"valid_ppl_seed{s}": float(p) for s, p in enumerate(valid_ppl)})
      writer.write_rows(rows)
      ckpt.save(epoch, state, metadata={"epoch": epoch,
                                        "step": int(np.asarray(state.step)[0]),
                                        "valid_ppl": valid_ppl.tolist()})
      progress.write(f"epoch {epoch}/{config.epochs}: lr {float(hparams.learning_rate):.4g}"
                     f"  train ppl {rows[-1]['train_ppl']:.2f} (last chunk)"
                     f"  valid ppl {_fmt(valid_ppl)}")
    progress.close()
    progress = None

    test_ppl = trainer.perplexity(state.params, test_split)
    history = valid_history(csv_path, config.num_seeds)
    final_valid = (history[-1] if history
                   else trainer.perplexity(state.params, valid_split).tolist())
    step = int(np.asarray(state.step)[0])
    row = {"step": step, "epoch": config.epochs, "test_ppl": float(np.mean(test_ppl))}
    row.update({f"test_ppl_seed{s}": float(p) for s, p in enumerate(test_ppl)})
    writer.write_rows([row])
    results = {"network": config.network, "hidden_size": model_config.hidden_size,
               "num_params": num_params, "steps": step,
               "tokens_trained": step * config.batch_size * config.unroll,
               "valid_ppl": final_valid, "test_ppl": test_ppl.tolist(),
               "valid_tokens_scored": valid_split.num_tokens,
               "test_tokens_scored": test_split.num_tokens,
               "valid_tokens_total": len(corpus.valid), "test_tokens_total": len(corpus.test),
               "valid_ppl_per_epoch": history}
    with open(os.path.join(workdir, RESULTS_JSON), "w") as f:
      json.dump(results, f, indent=2)
    partial = (f" (first {config.max_eval_minibatches} minibatches: "
               f"{valid_split.num_tokens} / {test_split.num_tokens} tokens)"
               if config.max_eval_minibatches else "")
    print(f"{config.network}: valid ppl {_fmt(np.asarray(final_valid))}, "
          f"test ppl {_fmt(test_ppl)}{partial} after {step} steps", flush=True)
    return dict(results, state=state)
  finally:
    if progress is not None:
      progress.close()
    if writer is not None:
      writer.close()
    ckpt.close()


def _fmt(values: np.ndarray) -> str:
  values = np.asarray(values, np.float64).reshape(-1)
  if values.size == 1:
    return f"{values[0]:.2f}"
  return f"{values.mean():.2f} (seeds {', '.join(f'{v:.2f}' for v in values)})"


# --------------------------------------------------------------------------
# Command line. Flags are defined only when run as a program.


def define_flags(flag_values=None) -> None:
  """Defines `--workdir` and one flag per LMTrainConfig field (same defaults)."""
  flags_lib.define_config_flags(LMTrainConfig, CHOICES, flag_values,
                                lambda field: field.default)


def _read_saved_train_config(path: str) -> dict[str, Any]:
  """The training settings of a run's config.json (its "train" entry)."""
  with open(path) as f:
    saved = json.load(f)["train"]
  known = {f.name for f in dataclasses.fields(LMTrainConfig)}
  return {k: v for k, v in saved.items() if k in known}


def config_from_flags(flag_values) -> LMTrainConfig:
  """LMTrainConfig from parsed flags, checking the data directory exists.

  With `--resume` and a `config.json` in the workdir, flags not given take the
  saved run's values (data directory included), so `--workdir=DIR --resume`
  alone continues it.

  Raises:
    ValueError / FileNotFoundError: naming the flag and what is expected.
  """
  flags_lib.require_workdir(flag_values)
  values = {f.name: flag_values[f.name].value for f in dataclasses.fields(LMTrainConfig)}
  saved = flags_lib.saved_config_for_resume(flag_values, CONFIG_JSON, _read_saved_train_config)
  if saved is not None:  # --resume: what is not given comes from the saved run.
    values = dict(saved, **{k: v for k, v in values.items() if flag_values[k].present})
  if values["data_dir"] in (None, ""):
    raise ValueError(
        "--data_dir is required: a directory with the Penn Treebank files "
        "ptb.train.txt, ptb.valid.txt, ptb.test.txt (or train.txt, valid.txt, "
        f"test.txt; optionally gzipped, .gz). {ptb.WHERE_TO_GET_PTB}")
  try:
    config = LMTrainConfig(**values)
  except ValueError as e:
    raise ValueError(f"--{e}") from e
  ptb.find_split_files(config.data_dir)
  return config


def main(argv):
  flags_lib.run_main(argv, config_from_flags, train_and_evaluate,
                     (NonFiniteError, checkpoint_lib.CheckpointError, ValueError,
                      FileNotFoundError))


def run_cli() -> None:
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run_cli()
