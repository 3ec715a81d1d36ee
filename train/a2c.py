"""A2C meta-training of plastic actor-critic agents (SPEC.md §5.3).

Library use (purejaxrl style; the whole run is one jittable function):

    config = a2c_defaults("CueReward-v0", network="modplast", iterations=100)
    train = make_train(config)
    state, metrics = jax.jit(train)(jax.random.key(0), config.hparams())
    # seeds x hyperparameters: jax.jit(jax.vmap(jax.vmap(train, (0, None)), (None, 0)))

Command line (flags not given take the env's paper defaults):

    python -m train.a2c --env=CueReward-v0 --network=modplast \
        --iterations=1000 --workdir=/tmp/cue_modplast

One iteration runs B fresh episodes in parallel (env reset, zero hidden state
and plastic traces), each exactly `episode_length` steps, then takes one Adam
step on the A2C loss of the whole episode (one BPTT graph):

    R_t = r_t + gamma R_{t+1}
    loss = mean_b [ -sum_t log pi(a_t) sg(R_t - V_t)
                    + coef sum_t sum_a pi_t(a)^2        (or -coef H(pi_t))
                    + value_coef sum_t (R_t - V_t)^2 ] / T
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

import envs
from bpm_jax.agents import ActorCritic
from train import checkpoint as checkpoint_lib
from train import flags as flags_lib
from train import metrics as metrics_lib
from train.config import (A2CConfig, BASELINES, CHOICES, HPARAM_FIELDS, HParams,
                          RUN_CONTROL_FIELDS, a2c_defaults)

Array = jax.Array
PyTree = Any

CONFIG_JSON = "config.json"
CURVES_PNG = "curves.png"
CHECKPOINT_DIR = checkpoint_lib.CHECKPOINT_DIR


class NonFiniteError(FloatingPointError):
  """A NaN/inf appeared in the loss, the gradient or the parameters."""


# --------------------------------------------------------------------------
# Pure pieces: returns and loss.


def discounted_returns(rewards: Array, discount: Array | float) -> Array:
  """R_t = r_t + discount * R_{t+1}, with R_T = 0 (reverse `lax.scan`).

  Args:
    rewards: [T, ...] rewards r_t (any trailing batch dims).
    discount: [] gamma.

  Returns:
    [T, ...] returns R_t.
  """

  def backward(next_return, reward_t):
    return_t = reward_t + discount * next_return
    return return_t, return_t

  _, returns = jax.lax.scan(backward, jnp.zeros_like(rewards[0]), rewards, reverse=True)
  return returns


@flax.struct.dataclass
class Trajectory:
  """One batch of episodes, time-major.

  Attributes:
    log_prob: [T, B] log pi(a_t | history) of the sampled actions.
    value: [T, B] value estimates V_t.
    reward: [T, B] rewards r_t.
    concentration: [T, B] sum_a pi_t(a)^2.
    entropy: [T, B] -sum_a pi_t(a) log pi_t(a).
    action: [T, B] int32 sampled actions.
    modulation: [T, B, K] m(t) (zeros for non-modulated networks).
    obs: [T, B, I] the observations the agent acted on.
    env_state: env states seen at each step, leaves [T, B, ...] (only with
      `record=True`, else None).
    info: the env's per-step info dict, leaves [T, B] (with `record=True`).
  """

  log_prob: Array
  value: Array
  reward: Array
  concentration: Array
  entropy: Array
  action: Array
  modulation: Array
  obs: Array
  env_state: Any = None
  info: Any = None


class LossTerms(NamedTuple):
  """Batch means of the loss terms, each divided by T; `loss` is their weighted sum."""

  loss: Array  # [] total = policy_loss + entropy_loss + value_coef * value_loss.
  policy_loss: Array  # [] -sum_t log pi(a_t) sg(A_t) / T.
  value_loss: Array  # [] sum_t A_t^2 / T.
  entropy_loss: Array  # [] coef * sum_t penalty_t / T (penalty: sum pi^2 or -H).


def a2c_loss(log_prob: Array, value: Array, reward: Array, penalty: Array,
             discount: Array | float, value_coef: Array | float,
             entropy_coef: Array | float, baseline: str = "batch0") -> LossTerms:
  """The A2C loss of SPEC.md §5.3 for a batch of whole episodes.

  Args:
    log_prob: [T, B] log pi(a_t).
    value: [T, B] V_t.
    reward: [T, B] r_t.
    penalty: [T, B] per-step regulariser: sum_a pi(a)^2 (concentration) or
      -H(pi) (entropy bonus).
    discount, value_coef, entropy_coef: [] scalars.
    baseline: `batch0` (the reference code, SPEC §5.3 default): every
      episode's advantage is `R_t - V_t` of batch element 0, so only that
      element's value head is trained (towards the batch-mean return) and the
      value gradient reaches the network through one episode; `own`: each
      episode's own `R_t - V_t`.

  Returns:
    LossTerms; `loss` = mean_b (policy + coef * penalty + value_coef * value) / T.
  """
  if not (log_prob.ndim == value.ndim == reward.ndim == penalty.ndim == 2):
    raise ValueError("a2c_loss expects [T, B] arrays, got shapes "
                     f"{log_prob.shape}, {value.shape}, {reward.shape}, {penalty.shape}.")
  if baseline not in BASELINES:
    raise ValueError(f"baseline={baseline!r}; choose one of {', '.join(BASELINES)}.")
  num_steps = reward.shape[0]
  returns = discounted_returns(jax.lax.stop_gradient(reward), discount)
  advantage = returns - (value[:, :1] if baseline == "batch0" else value)
  policy = -jnp.sum(log_prob * jax.lax.stop_gradient(advantage), axis=0)  # [B]
  value_sq = jnp.sum(advantage**2, axis=0)  # [B]
  reg = entropy_coef * jnp.sum(penalty, axis=0)  # [B]
  policy_loss = jnp.mean(policy) / num_steps
  value_loss = jnp.mean(value_sq) / num_steps
  entropy_loss = jnp.mean(reg) / num_steps
  return LossTerms(loss=policy_loss + entropy_loss + value_coef * value_loss,
                   policy_loss=policy_loss, value_loss=value_loss,
                   entropy_loss=entropy_loss)


def regulariser(trajectory: Trajectory, entropy_kind: str) -> Array:
  """[T, B] per-step penalty: sum_a pi(a)^2 (`concentration`) or -H(pi) (`entropy`)."""
  if entropy_kind == "concentration":
    return trajectory.concentration
  if entropy_kind == "entropy":
    return -trajectory.entropy
  raise ValueError(f"entropy_kind={entropy_kind!r}; choose concentration or entropy.")


def policy_terms(logits: Array, action: Array) -> dict[str, Array]:
  """log pi(a), sum_a pi(a)^2 and H(pi) of [..., A] logits at the [...] actions."""
  log_pi = jax.nn.log_softmax(logits)
  pi = jnp.exp(log_pi)
  return dict(log_prob=jnp.take_along_axis(log_pi, action[..., None], axis=-1)[..., 0],
              concentration=jnp.sum(pi**2, axis=-1),
              entropy=-jnp.sum(pi * log_pi, axis=-1))


def replays_rollout(config: A2CConfig) -> bool:
  """Whether the loss differentiates a replay of the rollout (`step_impl=fused`).

  The rollout samples actions step by step; the fused kernels are fastest
  when they see all T steps at once, so with `fused` the rollout runs without
  gradients and the loss replays its observations through
  `fused_step.rnn_sequence_fused`. The actions, rewards and outputs are the
  same; only the way the gradient is computed changes.
  """
  return config.step_impl == "fused" and config.plasticity.is_plastic


def make_optimizer(hparams: HParams) -> optax.GradientTransformation:
  """clip_by_global_norm then Adam, from (possibly traced) hyperparameters."""
  return optax.chain(
      optax.clip_by_global_norm(hparams.grad_clip_norm),
      optax.adam(hparams.learning_rate, eps=hparams.adam_eps))


# --------------------------------------------------------------------------
# Training state and functions.


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue; all leaves are plain arrays.

  Attributes:
    params: agent parameters ({"params": {...}}).
    opt_state: optax state of `make_optimizer`.
    key: [2] uint32 raw PRNG key data (`jax.random.key_data`).
    iteration: [] int32 completed iterations.
  """

  params: PyTree
  opt_state: PyTree
  key: Array
  iteration: Array


class Learner(NamedTuple):
  """The jittable pieces of an A2C run for one config (built by `make_learner`).

  Attributes:
    config: the run's config.
    env, env_params: the environment and its params.
    make_agent: clip_value -> ActorCritic.
    init: (key, hparams) -> TrainState.
    update: (TrainState, hparams) -> (TrainState, metrics of one iteration).
    run: (TrainState, hparams, num_iterations) -> (TrainState, metrics [N]).
    rollout: (params, key, hparams, batch_size, record) -> Trajectory.
    loss: (params, key, hparams[, batch_size]) -> (loss [], (metrics,
      Trajectory)): the rollout of one iteration (default B =
      config.batch_size) and its A2C loss.
    grads: (params, key, hparams) -> (gradient of the loss, metrics); with
      `batch_groups` G > 1, the mean over G groups of B/G episodes.
  """

  config: A2CConfig
  env: Any
  env_params: Any
  make_agent: Callable[[Any], ActorCritic]
  init: Callable[..., TrainState]
  update: Callable[..., tuple[TrainState, dict]]
  run: Callable[..., tuple[TrainState, dict]]
  rollout: Callable[..., Trajectory]
  loss: Callable[..., tuple[Array, tuple[dict, Trajectory]]]
  grads: Callable


def _typed_key(key: Array) -> Array:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


def _all_finite(tree: PyTree) -> Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_learner(config: A2CConfig) -> Learner:
  """Builds the environment, the agent and the pure training functions.

  Learners are cached per static part of the config (everything except run
  control, seed and the traced hyperparameters), so runs that differ only in
  those reuse the same functions and hence the same compiled programs.
  """
  return _make_learner(_static_config(config))


def _static_config(config: A2CConfig) -> A2CConfig:
  """`config` with the fields that do not change the compiled program reset."""
  neutral = A2CConfig()
  fields = RUN_CONTROL_FIELDS + HPARAM_FIELDS + ("seed", "num_seeds")
  return config.replace(**{f: getattr(neutral, f) for f in fields})


@functools.lru_cache(maxsize=32)
def _make_learner(config: A2CConfig) -> Learner:
  env, env_params = envs.make(config.env, **config.env_kwargs())
  num_steps = config.episode_length
  obs_size = env.observation_space(env_params).shape[0]
  num_actions = env.action_space(env_params).n

  def make_agent(clip_value: Any) -> ActorCritic:
    return ActorCritic(num_actions=num_actions, hidden_size=config.hidden_size,
                       config=config.plasticity, clip_value=clip_value,
                       eta_init=config.eta_init, init_scale=config.init_scale,
                       step_impl=config.step_impl)

  def rollout(params: PyTree, key: Array, hparams: HParams, batch_size: int,
              record: bool = False) -> Trajectory:
    """B fresh episodes of exactly T steps; differentiable w.r.t. `params`."""
    agent = make_agent(hparams.clip_value)
    key_reset, key_steps = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key_reset, batch_size), env_params)
    carry = agent.initialize_carry((batch_size,))

    def step(step_carry, key_t):
      agent_carry, env_state, obs = step_carry
      agent_carry, (logits, value, m) = agent.apply(params, agent_carry, obs)
      key_action, key_env = jax.random.split(key_t)
      action = jax.random.categorical(key_action, logits)  # [B]
      # `step_env`, not `step`: every episode is exactly T steps long, so the
      # auto-reset of `env.step` (a full reset per step) is never wanted.
      next_obs, next_env_state, reward, _, info = jax.vmap(
          env.step_env, in_axes=(0, 0, 0, None))(
              jax.random.split(key_env, batch_size), env_state, action, env_params)
      out = Trajectory(
          **policy_terms(logits, action), value=value, reward=reward,
          action=action.astype(jnp.int32), modulation=m, obs=obs,
          env_state=env_state if record else None,
          info=info if record else None)
      return (agent_carry, next_env_state, next_obs), out

    if config.remat:
      step = jax.checkpoint(step, prevent_cse=False)
    _, trajectory = jax.lax.scan(step, (carry, env_state, obs),
                                 jax.random.split(key_steps, num_steps))
    return trajectory

  def init(key: Array, hparams: HParams) -> TrainState:
    key_params, key_train = jax.random.split(_typed_key(key))
    agent = make_agent(hparams.clip_value)
    params = agent.init(key_params, agent.initialize_carry((1,)),
                        jnp.zeros((1, obs_size), jnp.float32))
    return TrainState(params=params, opt_state=make_optimizer(hparams).init(params),
                      key=jax.random.key_data(key_train),
                      iteration=jnp.zeros((), jnp.int32))

  def replay(params: PyTree, trajectory: Trajectory, hparams: HParams) -> Trajectory:
    """The agent's outputs on the recorded observations, as one sequence call.

    The same numbers as the rollout's (the same kernel arithmetic; the dense
    layers see [T, B, .] at once, which may round differently in the last
    bit), differentiated through one fused sequence kernel instead of T steps.
    """
    agent = make_agent(hparams.clip_value)
    carry = agent.initialize_carry(trajectory.obs.shape[1:2])
    _, (logits, value, m) = agent.apply(params, carry, trajectory.obs, sequence=True)
    return trajectory.replace(**policy_terms(logits, trajectory.action), value=value,
                              modulation=m)

  def loss(params, key, hparams, batch_size=config.batch_size):
    if replays_rollout(config):
      # Act without gradients, then differentiate one replay of the episode.
      trajectory = rollout(jax.lax.stop_gradient(params), key, hparams, batch_size)
      trajectory = replay(params, trajectory, hparams)
    else:
      trajectory = rollout(params, key, hparams, batch_size)
    penalty = regulariser(trajectory, config.entropy_kind)
    terms = a2c_loss(trajectory.log_prob, trajectory.value, trajectory.reward,
                     penalty, hparams.discount, hparams.value_coef,
                     hparams.entropy_coef, config.baseline)
    aux = dict(terms._asdict(),
               reward=jnp.mean(jnp.sum(trajectory.reward, axis=0)),
               modulation_abs=jnp.mean(jnp.abs(trajectory.modulation)))
    return terms.loss, (aux, trajectory)

  def loss_fn(params, key, hparams, batch_size=config.batch_size):
    loss_value, (aux, _) = loss(params, key, hparams, batch_size)
    return loss_value, aux

  def grads_and_aux(params, key, hparams):
    """Gradient of the batch loss; with G groups, the mean of the G group gradients."""
    groups = config.batch_groups
    if groups == 1:
      return jax.grad(loss_fn, has_aux=True)(params, key, hparams)
    group_grad = jax.grad(functools.partial(loss_fn, batch_size=config.batch_size // groups),
                          has_aux=True)

    def accumulate(total, group_key):
      return jax.tree.map(jnp.add, total, group_grad(params, group_key, hparams)), None

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                         jax.eval_shape(group_grad, params, key, hparams))
    total, _ = jax.lax.scan(accumulate, zeros, jax.random.split(key, groups))
    return jax.tree.map(lambda x: x / groups, total)

  def update(state: TrainState, hparams: HParams) -> tuple[TrainState, dict]:
    key, key_rollout = jax.random.split(_typed_key(state.key))
    grads, aux = grads_and_aux(state.params, key_rollout, hparams)
    updates, opt_state = make_optimizer(hparams).update(grads, state.opt_state,
                                                        state.params)
    params = optax.apply_updates(state.params, updates)
    if config.burn_in > 0:
      apply = state.iteration >= config.burn_in
      params, opt_state = jax.tree.map(lambda new, old: jnp.where(apply, new, old),
                                       (params, opt_state),
                                       (state.params, state.opt_state))
    grad_norm = optax.tree.norm(grads)
    metrics = dict(aux, grad_norm=grad_norm,
                   finite=jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)
                   & _all_finite(params))
    new_state = TrainState(params=params, opt_state=opt_state,
                           key=jax.random.key_data(key), iteration=state.iteration + 1)
    return new_state, metrics

  def run(state: TrainState, hparams: HParams,
          num_iterations: int) -> tuple[TrainState, dict]:
    """`num_iterations` updates in one `lax.scan`; metrics leaves [N]."""
    return jax.lax.scan(lambda s, _: update(s, hparams), state, None,
                        length=num_iterations)

  return Learner(config=config, env=env, env_params=env_params,
                 make_agent=make_agent, init=init, update=update, run=run,
                 rollout=rollout, loss=loss, grads=grads_and_aux)


def make_train(config: A2CConfig) -> Callable[[Array, HParams], tuple[TrainState, dict]]:
  """`train(key, hparams) -> (final TrainState, metrics [iterations])`.

  The whole run is one pure function: jit it, vmap it over keys (seeds) and
  over `HParams` leaves (sweeps).
  """
  learner = make_learner(config)

  def train(key: Array, hparams: HParams) -> tuple[TrainState, dict]:
    state = learner.init(key, hparams)
    return learner.run(state, hparams, config.iterations)

  return train


def seed_keys(config: A2CConfig) -> Array:
  """[S] keys; agent s is seeded with `jax.random.key(seed + s)`."""
  return jnp.stack([jax.random.key(config.seed + s) for s in range(config.num_seeds)])


# --------------------------------------------------------------------------
# Host loop: chunks, logging, checkpoints.


def hparams_per_agent(hparams: HParams, num_seeds: int) -> bool:
  """Whether `hparams` holds one value per agent ([S] leaves) or one for all ([]).

  Raises:
    ValueError: leaves of other shapes, naming the field and the shape wanted.
  """
  shapes = {name: jnp.shape(getattr(hparams, name)) for name in HPARAM_FIELDS}
  if all(shape == () for shape in shapes.values()):
    return False
  if all(shape == (num_seeds,) for shape in shapes.values()):
    return True
  raise ValueError(
      f"hparams leaves must all be scalars (one setting for every agent) or all "
      f"have shape ({num_seeds},) (one per agent, num_seeds={num_seeds}); got "
      f"{ {name: tuple(shape) for name, shape in shapes.items()} }.")


@functools.lru_cache(maxsize=32)
def _init_fn(learner: Learner, per_agent: bool = False) -> Callable:
  """Jitted seed-vmapped `init` (cached: reused by runs of the same learner)."""
  return jax.jit(jax.vmap(learner.init, in_axes=(0, 0 if per_agent else None)))


@functools.lru_cache(maxsize=32)
def _chunk_fn(learner: Learner, num_iterations: int, per_agent: bool = False) -> Callable:
  """Jitted seed-vmapped `run` of `num_iterations` iterations (cached).

  `per_agent`: hparams leaves are [S] (a sweep: one setting per agent).
  """
  return jax.jit(jax.vmap(functools.partial(learner.run, num_iterations=num_iterations),
                          in_axes=(0, 0 if per_agent else None)))


_COMPILED: dict[tuple, Any] = {}


def compile_fn(fn: Callable, config: A2CConfig, *args) -> Callable:
  """AOT-compiles jitted `fn` for `args` with the config's XLA options."""
  return fn.lower(*args).compile(compiler_options=config.compiler_options())


def _compiled(name: str, fn: Callable, learner: Learner, config: A2CConfig,
              *args) -> tuple[Callable, float]:
  """(compiled `fn` for `args`, seconds spent compiling now; 0 if cached).

  Cached per (name, learner, argument shapes, fast_compile), so runs of the
  same program in one process (tests, notebooks, resumes) compile it once.
  """
  signature = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(args))
  key = (name, learner, signature, config.fast_compile)
  if key in _COMPILED:
    return _COMPILED[key], 0.0
  watch = metrics_lib.Stopwatch()
  _COMPILED[key] = compile_fn(fn, config, *args)
  return _COMPILED[key], watch.lap()


def init_state(config: A2CConfig, hparams: Optional[HParams] = None) -> TrainState:
  """The seed-stacked initial TrainState of a run (leaves [S, ...]).

  `hparams` leaves are scalars (all agents) or [S] (one per agent).
  """
  learner = make_learner(config)
  hparams = config.hparams() if hparams is None else hparams
  keys = seed_keys(config)
  per_agent = hparams_per_agent(hparams, config.num_seeds)
  init_fn, _ = _compiled("init", _init_fn(learner, per_agent), learner, config, keys,
                         hparams)
  return init_fn(keys, hparams)


def metric_fieldnames(num_seeds: int) -> list[str]:
  return (["iteration"] + [f"reward_seed{s}" for s in range(num_seeds)]
          + ["reward_median", "loss", "policy_loss", "value_loss", "entropy_loss",
             "grad_norm", "modulation_abs", "env_steps_per_s"])


def _rows(metrics: dict, start: int, steps_per_s: float) -> list[dict]:
  """Per-iteration CSV rows from chunk metrics with leaves [S, N]."""
  rewards = np.asarray(metrics["reward"])  # [S, N]
  rows = []
  for n in range(rewards.shape[1]):
    row = {"iteration": start + n}
    row.update({f"reward_seed{s}": float(rewards[s, n]) for s in range(rewards.shape[0])})
    row["reward_median"] = float(np.median(rewards[:, n]))
    for name in ("loss", "policy_loss", "value_loss", "entropy_loss", "grad_norm",
                 "modulation_abs"):
      row[name] = float(np.mean(np.asarray(metrics[name])[:, n]))
    row["env_steps_per_s"] = steps_per_s
    rows.append(row)
  return rows


def abstract_state(learner: Learner, num_seeds: int) -> TrainState:
  """Shapes/dtypes of the seed-stacked TrainState (for restoring)."""
  keys = jnp.stack([jax.random.key(s) for s in range(num_seeds)])
  return jax.eval_shape(jax.vmap(learner.init, in_axes=(0, None)), keys,
                        learner.config.hparams())


def load_config(workdir: str) -> A2CConfig:
  with open(os.path.join(workdir, CONFIG_JSON)) as f:
    return A2CConfig.from_json(f.read())


def restore_state(workdir: str, config: Optional[A2CConfig] = None,
                  step: Optional[int] = None) -> tuple[A2CConfig, TrainState, int]:
  """Loads (config, seed-stacked TrainState, iteration) from a workdir's checkpoint."""
  config = config or load_config(workdir)
  learner = make_learner(config)
  with checkpoint_lib.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                                   config.keep_checkpoints) as ckpt:
    state, metadata = ckpt.restore(abstract_state(learner, config.num_seeds), step)
  return config, state, int(metadata.get("iteration", int(np.asarray(state.iteration)[0])))


def _check_resume_config(workdir: str, config: A2CConfig) -> None:
  path = os.path.join(workdir, CONFIG_JSON)
  if os.path.exists(path):
    checkpoint_lib.check_same_config(path, load_config(workdir).to_dict(),
                                     config.to_dict(), RUN_CONTROL_FIELDS)


def train_and_evaluate(config: A2CConfig, workdir: str,
                       hparams: Optional[HParams] = None) -> tuple[TrainState, list[dict]]:
  """Trains `config.num_seeds` agents; writes config, metrics, checkpoints, curves.

  Args:
    config: the run.
    workdir: output directory: config.json, metrics.csv, TensorBoard events,
      checkpoints/, curves.png.
    hparams: traced hyperparameters; default `config.hparams()`. Leaves are
      scalars (every agent) or [num_seeds] (one setting per agent: a sweep,
      see `train/sweep.py`).

  Returns:
    (final seed-stacked TrainState, the metric rows written by this call).

  Raises:
    NonFiniteError: NaN/inf in loss, gradient or parameters (nothing of the
      bad iteration is saved; the last good checkpoint stays).
    checkpoint_lib.CheckpointError: unreadable checkpoint on --resume.
  """
  hparams = config.hparams() if hparams is None else hparams
  per_agent = hparams_per_agent(hparams, config.num_seeds)
  learner = make_learner(config)
  workdir, ckpt = checkpoint_lib.open_run(workdir, config.keep_checkpoints)
  progress = None
  writer = None
  try:
    state, _ = ckpt.restore_or_init(
        config.resume, "iteration",
        check_config=lambda: _check_resume_config(workdir, config),
        abstract_state=lambda: abstract_state(learner, config.num_seeds),
        init=lambda: init_state(config, hparams))
    start = int(np.asarray(state.iteration)[0])
    with open(os.path.join(workdir, CONFIG_JSON), "w") as f:
      f.write(config.to_json())
    csv_path = os.path.join(workdir, metrics_lib.METRICS_CSV)
    if start:
      metrics_lib.truncate_csv(csv_path, start)  # Drop rows past the checkpoint.
    elif os.path.exists(csv_path):
      os.remove(csv_path)  # Left by a run that stopped before its first checkpoint.
    writer = metrics_lib.MetricsWriter(workdir, metric_fieldnames(config.num_seeds))

    print(metrics_lib.format_config(
        config.to_dict(), f"A2C on {config.env} ({config.network}); paper defaults "
        f"of {config.env} unless set. Workdir: {workdir}"), flush=True)
    if start:
      print(f"Resuming from the checkpoint at iteration {start}.", flush=True)

    env_steps = config.num_seeds * config.batch_size * config.episode_length
    progress = metrics_lib.Progress(config.iterations, start, config.progress,
                                    desc=f"{config.network}")
    all_rows = []
    iteration = start
    while iteration < config.iterations:
      next_ckpt = (iteration // config.checkpoint_every + 1) * config.checkpoint_every
      n = min(config.chunk_size, next_ckpt - iteration, config.iterations - iteration)
      fn, compile_seconds = _compiled(f"run{n}", _chunk_fn(learner, n, per_agent), learner,
                                      config, state, hparams)
      if compile_seconds:
        progress.write(f"Compiled the {n}-iteration chunk in {compile_seconds:.1f} s.")
      watch = metrics_lib.Stopwatch()
      new_state, chunk_metrics = fn(state, hparams)
      chunk_metrics = jax.device_get(chunk_metrics)
      seconds = watch.lap()
      rows = _rows(chunk_metrics, iteration, env_steps * n / seconds)
      finite = np.asarray(chunk_metrics["finite"])  # [S, N]
      if not finite.all():
        bad_n = int(np.argmax(~finite.all(axis=0)))
        bad_seeds = [int(s) for s in np.nonzero(~finite[:, bad_n])[0]]
        writer.write_rows(rows[:bad_n])
        last = ckpt.latest_step()
        where = (f"the last good checkpoint is iteration {last} in {ckpt.step_path(last)}"
                 if last is not None else "no checkpoint was saved yet")
        raise NonFiniteError(
            f"Non-finite loss, gradient or parameters at iteration {iteration + bad_n} "
            f"(seed index {bad_seeds}); training stopped and that state was not "
            f"saved; {where}. Lower --learning_rate or --grad_clip_norm, or check "
            "the hyperparameters.")
      state = new_state
      writer.write_rows(rows)
      all_rows += rows
      iteration += n
      progress.update(n, median_reward=rows[-1]["reward_median"],
                      env_steps_per_s=rows[-1]["env_steps_per_s"])
      if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
        ckpt.save(iteration, state, metadata={"iteration": iteration,
                                              "config": config.to_dict()})
    progress.close()
    progress = None
    if all_rows or os.path.exists(os.path.join(workdir, metrics_lib.METRICS_CSV)):
      from train import plot  # pylint: disable=g-import-not-at-top
      plot.plot_workdirs([workdir], os.path.join(workdir, CURVES_PNG))
    return state, all_rows
  finally:
    if progress is not None:
      progress.close()
    if writer is not None:
      writer.close()
    ckpt.close()


# --------------------------------------------------------------------------
# Command line. Flags are defined only when run as a program.


def define_flags(flag_values=None) -> None:
  """Defines one flag per A2CConfig field (default None: the paper default)."""
  flags_lib.define_config_flags(
      A2CConfig, CHOICES, flag_values,
      lambda field: "CueReward-v0" if field.name == "env" else None)


def config_from_flags(flag_values) -> A2CConfig:
  """A2CConfig from parsed flags; flags not given take `paper_defaults(env, network)`.

  With `--resume` and a `config.json` in the workdir, flags not given take the
  saved run's values instead, so `--workdir=DIR --resume` alone continues it.

  Raises:
    ValueError: an invalid value, naming the flag and what is allowed.
  """
  given = {}
  for field in dataclasses.fields(A2CConfig):
    value = flag_values[field.name].value
    if value is not None and field.name != "env":
      given[field.name] = value
  flags_lib.require_workdir(flag_values)
  saved = flags_lib.saved_config_for_resume(
      flag_values, CONFIG_JSON, lambda path: load_config(os.path.dirname(path)).to_dict())
  try:
    if saved is not None:  # --resume: what is not given comes from the saved run.
      if flag_values["env"].present:
        given["env"] = flag_values["env"].value
      return A2CConfig.from_dict(dict(saved, **given))
    return a2c_defaults(flag_values["env"].value, **given)
  except ValueError as e:
    message = str(e)
    names = {f.name for f in dataclasses.fields(A2CConfig)}
    if message.split("=", 1)[0] in names:
      raise ValueError(f"--{message}") from e  # "--learning_rate=-1.0 is invalid: ..."
    raise ValueError(f"Invalid combination of flags: {message}") from e


def main(argv):
  flags_lib.run_main(argv, config_from_flags, train_and_evaluate,
                     (NonFiniteError, checkpoint_lib.CheckpointError, ValueError))


def run_cli() -> None:
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run_cli()
