"""PTB language-model training as pure functions of one model (SPEC.md §5.7).

The library part of `train.lm`; the host loop (`train.lm_train`) vmaps these
over seeds and jits them.

    model = lm.PlasticLSTMLanguageModel(model_config)
    state = init_state(model, key)
    state, carry, metrics = train_step(model, state, carry, inputs, targets, hparams)
    state, carry, metrics = train_chunk(model, state, carry, inputs, targets, active,
                                        hparams)           # lax.scan over C steps
    total_nll = evaluate(model, state.params, inputs, targets, active)

The loss is Zaremba's: the NLL summed over the T steps of a minibatch and
averaged over the B streams. The optimiser is `make_optimizer`: plain SGD on
the gradient plus `l2_penalty * theta`, clipped to a global norm. h, c, Hebb
and E are carried from one minibatch to the next (gradient stopped at the
boundary). With `retromod` and `bound_eta`, eta (the rate of the eligibility
trace E) is clipped into [0, 1] after every step (`project_params`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bpm_jax import lm, ptb
from train.lm_config import LMHParams

Array = jax.Array
PyTree = Any

__all__ = [
  "LMHParams",
  "LMTrainState",
  "Split",
  "evaluate",
  "init_state",
  "init_states",
  "lm_loss",
  "make_optimizer",
  "project_params",
  "sgd_step",
  "train_chunk",
  "train_step",
]


@flax.struct.dataclass
class LMTrainState:
  """Everything to continue a run (plain arrays, checkpointable).

  SGD has no optimiser state (`make_optimizer` is built and initialised inside
  the step), so there is no `opt_state` here.

  Attributes:
    params: model parameters.
    step: [] int32 SGD steps taken.
    key: [2] uint32 raw PRNG key data (dropout), `jax.random.key_data`.
  """

  params: PyTree
  step: Array
  key: Array


def init_state(model: lm.PlasticLSTMLanguageModel, key: Array) -> LMTrainState:
  """Fresh parameters (uniform init) for one model.

  Uses `lazy_init` (no forward computation); called eagerly, its few random
  ops compile once per shape and are shared by all variants and seeds.
  """
  init_key, dropout_key = jax.random.split(key)
  carry = jax.eval_shape(lambda: model.initialize_carry(1))
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  params = model.lazy_init(init_key, carry, tokens)["params"]
  return LMTrainState(
    params=params, step=jnp.zeros((), jnp.int32), key=jax.random.key_data(dropout_key)
  )


def init_states(model: lm.PlasticLSTMLanguageModel, keys: Array) -> LMTrainState:
  """Seed-stacked LMTrainState [S, ...] for keys [S] (eager loop over seeds)."""
  states = [init_state(model, key) for key in keys]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def make_optimizer(hparams: LMHParams) -> optax.GradientTransformation:
  """L2 term, global-norm clip, then SGD, from (possibly traced) hyperparameters.

  theta -= lr * clip(grad + l2 * theta, grad_clip_norm). Stateless.
  """
  return optax.chain(
    optax.add_decayed_weights(hparams.l2_penalty),
    optax.clip_by_global_norm(hparams.grad_clip_norm),
    optax.sgd(hparams.learning_rate),
  )


def sgd_step(params: PyTree, grads: PyTree, hparams: LMHParams) -> tuple[PyTree, Array]:
  """One step of `make_optimizer`: (new params, [] norm of grad + l2 * theta)."""
  optimizer = make_optimizer(hparams)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  norm = optax.tree.norm(jax.tree.map(lambda g, p: g + hparams.l2_penalty * p, grads, params))
  return optax.apply_updates(params, updates), norm


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


def lm_loss(
  params: PyTree,
  model: lm.PlasticLSTMLanguageModel,
  carry: lm.Carry,
  inputs: Array,
  targets: Array,
  dropout_key: Optional[Array] = None,
) -> tuple[Array, tuple[lm.Carry, Array]]:
  """Zaremba's training loss: NLL summed over T, averaged over B.

  Args:
    inputs, targets: [B, T] int32.
    dropout_key: enables dropout when given.

  Returns:
    (loss [], (new carry, mean NLL per token [])).
  """
  deterministic = dropout_key is None
  rngs = None if deterministic else {"dropout": dropout_key}
  carry, logits = model.apply(
    {"params": params}, carry, inputs, deterministic=deterministic, rngs=rngs
  )
  nll = lm.sequence_nll(logits, targets)  # [B, T]
  return jnp.mean(jnp.sum(nll, axis=1)), (carry, jnp.mean(nll))


def train_step(
  model: lm.PlasticLSTMLanguageModel,
  state: LMTrainState,
  carry: lm.Carry,
  inputs: Array,
  targets: Array,
  hparams: LMHParams,
  bound_eta: bool = True,
) -> tuple[LMTrainState, lm.Carry, dict[str, Array]]:
  """One SGD step on a [B, T] minibatch; the carry continues (gradient stopped).

  Returns:
    (state, carry, metrics {nll: [] per token, grad_norm: [] of grad + l2 *
    theta, finite: [] bool}).
  """
  dropout_key = None
  if model.config.dropout_rate > 0:
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
  grad_fn = jax.value_and_grad(lm_loss, has_aux=True)
  (loss, (carry, nll)), grads = grad_fn(state.params, model, carry, inputs, targets, dropout_key)
  params, norm = sgd_step(state.params, grads, hparams)
  params = project_params(params, model.config, bound_eta)
  finite = jnp.isfinite(loss) & jnp.isfinite(norm)
  state = state.replace(params=params, step=state.step + 1)
  metrics = dict(nll=nll, grad_norm=norm, finite=finite)
  return state, jax.lax.stop_gradient(carry), metrics


def train_chunk(
  model: lm.PlasticLSTMLanguageModel,
  state: LMTrainState,
  carry: lm.Carry,
  inputs: Array,
  targets: Array,
  active: Array,
  hparams: LMHParams,
  bound_eta: bool = True,
) -> tuple[LMTrainState, lm.Carry, dict[str, Array]]:
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
      state, carry, metrics = train_step(
        model, state, carry, inputs_t, targets_t, hparams, bound_eta
      )
      return (state, carry), metrics

    def skip(loop):
      zero = jnp.zeros((), jnp.float32)
      return loop, dict(nll=zero, grad_norm=zero, finite=jnp.ones((), bool))

    return jax.lax.cond(active_t, run, skip, loop)

  (state, carry), metrics = jax.lax.scan(body, (state, carry), (inputs, targets, active))
  return state, carry, metrics


def evaluate(
  model: lm.PlasticLSTMLanguageModel, params: PyTree, inputs: Array, targets: Array, active: Array
) -> Array:
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
    """B = `batch_size` streams of `ids`, cut into T = `unroll`-step minibatches."""
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
