"""A2C meta-training as pure functions (SPEC.md §5.3): the library part of `train.a2c`.

purejaxrl style: the whole run is one jittable function of (key, hparams).

    config = a2c_defaults("CueReward-v0", network="modplast", iterations=100)
    train = make_train(config)
    state, metrics = jax.jit(train)(jax.random.key(0), config.hparams())
    # seeds x hyperparameters: jax.jit(jax.vmap(jax.vmap(train, (0, None)), (None, 0)))

The pieces are module-level functions of a small static `A2CSpec` (the
config with `step_impl` resolved, the env and its params, the agent's sizes):

    spec = make_spec(config)
    state = init(spec, key, hparams)
    state, metrics = update(spec, state, hparams)          # one iteration
    loss_value, (aux, trajectory) = loss(spec, params, key, hparams)

One iteration runs B fresh episodes in parallel (env reset, zero hidden state
and plastic traces), each exactly `episode_length` steps, then takes one Adam
step on the A2C loss (`train.a2c_loss`) of the whole episode (one BPTT graph).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

import envs
from bpm_jax import fused_step
from bpm_jax.agents import ActorCritic
from train.a2c_config import (
  HPARAM_FIELDS,
  RUN_CONTROL_FIELDS,
  A2CConfig,
  A2CHParams,
  resolve_step_impl,
)
from train.a2c_loss import LossTerms, a2c_loss, policy_terms, regulariser

Array = jax.Array
PyTree = Any


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
    replay: what `replay` needs to skip the forward kernel
      (`fused_step.Recorded`: the layer's h and m, the trace checkpoints and
      final traces), from a rollout with `for_replay=True`; else None.
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
  replay: Any = None


@flax.struct.dataclass
class A2CTrainState:
  """Everything an A2C run needs to continue; all leaves are plain arrays.

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


@dataclasses.dataclass(frozen=True, eq=False)
class A2CSpec:
  """The static part of an A2C run (built by `make_spec`).

  Attributes:
    config: the run's config with run control, seeds and traced
      hyperparameters reset and `step_impl` resolved: equal configs give
      the same compiled programs.
    env, env_params: the environment and its params.
    obs_size: I, observation size.
    num_actions: A.
  """

  config: A2CConfig
  env: Any
  env_params: Any
  obs_size: int
  num_actions: int

  def agent(self, clip_value: Any) -> ActorCritic:
    """The agent module, with the (possibly traced) trace bound `clip_value`."""
    c = self.config
    return ActorCritic(
      num_actions=self.num_actions,
      hidden_size=c.hidden_size,
      config=c.plasticity,
      clip_value=clip_value,
      eta_init=c.eta_init,
      init_scale=c.init_scale,
      step_impl=c.step_impl,
    )


def static_config(config: A2CConfig) -> A2CConfig:
  """`config` with what does not change the compiled program reset, `step_impl` resolved."""
  neutral = A2CConfig()
  fields = tuple(f for f in RUN_CONTROL_FIELDS if f != "step_impl")
  fields += HPARAM_FIELDS + ("seed", "num_seeds")
  return config.replace(
    **{f: getattr(neutral, f) for f in fields}, step_impl=resolve_step_impl(config)
  )


def make_spec(config: A2CConfig) -> A2CSpec:
  """The run's `A2CSpec` (one per static config: shared by runs that differ
  only in run control, seed and hyperparameters)."""
  return _make_spec(static_config(config))


@functools.lru_cache(maxsize=32)
def _make_spec(config: A2CConfig) -> A2CSpec:
  env, env_params = envs.make(config.env, **config.env_kwargs())
  return A2CSpec(
    config=config,
    env=env,
    env_params=env_params,
    obs_size=env.observation_space(env_params).shape[0],
    num_actions=env.action_space(env_params).n,
  )


def replays_rollout(spec: A2CSpec) -> bool:
  """Whether the loss differentiates a replay of the rollout (`step_impl=fused`).

  The rollout samples actions step by step; the fused kernels are fastest
  when they see all T steps at once, so with `fused` the rollout runs without
  gradients and the loss replays its observations through
  `fused_step.rnn_sequence_fused`. The actions, rewards and outputs are the
  same; only the way the gradient is computed changes.
  """
  return spec.config.step_impl == "fused" and spec.config.plasticity.is_plastic


def make_optimizer(hparams: A2CHParams) -> optax.GradientTransformation:
  """clip_by_global_norm then Adam, from (possibly traced) hyperparameters."""
  return optax.chain(
    optax.clip_by_global_norm(hparams.grad_clip_norm),
    optax.adam(hparams.learning_rate, eps=hparams.adam_eps),
  )


def _typed_key(key: Array) -> Array:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


def _all_finite(tree: PyTree) -> Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# --------------------------------------------------------------------------
# The pure functions of a run.


def init(spec: A2CSpec, key: Array, hparams: A2CHParams) -> A2CTrainState:
  """Fresh agent parameters and optimiser state for one agent."""
  key_params, key_train = jax.random.split(_typed_key(key))
  agent = spec.agent(hparams.clip_value)
  params = agent.init(
    key_params, agent.initialize_carry((1,)), jnp.zeros((1, spec.obs_size), jnp.float32)
  )
  return A2CTrainState(
    params=params,
    opt_state=make_optimizer(hparams).init(params),
    key=jax.random.key_data(key_train),
    iteration=jnp.zeros((), jnp.int32),
  )


def rollout(
  spec: A2CSpec,
  params: PyTree,
  key: Array,
  hparams: A2CHParams,
  batch_size: int,
  record: bool = False,
  greedy: bool = False,
  for_replay: bool = False,
) -> Trajectory:
  """B fresh episodes of exactly T steps; differentiable w.r.t. `params`.

  `record`: also keep the env states and infos (for pictures).
  `greedy`: act with the most probable action instead of sampling (evaluation).
  `for_replay`: (`replays_rollout` only) also keep what `replay` needs to
  skip the forward kernel: the layer's h per step and its traces at the
  segment starts (`Trajectory.replay`).
  """
  env, env_params = spec.env, spec.env_params
  agent = spec.agent(hparams.clip_value)
  key_reset, key_steps = jax.random.split(key)
  obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
    jax.random.split(key_reset, batch_size), env_params
  )
  carry = agent.initialize_carry((batch_size,))
  steps = spec.config.episode_length

  def step(step_carry, key_t):
    agent_carry, env_state, obs = step_carry
    agent_carry, (logits, value, m) = agent.apply(params, agent_carry, obs)
    key_action, key_env = jax.random.split(key_t)
    if greedy:
      action = jnp.argmax(logits, axis=-1)  # [B]
    else:
      action = jax.random.categorical(key_action, logits)  # [B]
    # `step_env`, not `step`: every episode is exactly T steps long, so the
    # auto-reset of `env.step` (a full reset per step) is never wanted.
    next_obs, next_env_state, reward, _, info = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(
      jax.random.split(key_env, batch_size), env_state, action, env_params
    )
    out = Trajectory(
      **policy_terms(logits, action),
      value=value,
      reward=reward,
      action=action.astype(jnp.int32),
      modulation=m,
      obs=obs,
      env_state=env_state if record else None,
      info=info if record else None,
      replay=agent_carry.h if for_replay else None,  # h_t [B, H]
    )
    return (agent_carry, next_env_state, next_obs), out

  if spec.config.remat:
    step = jax.checkpoint(step, prevent_cse=False)
  init, keys = (carry, env_state, obs), jax.random.split(key_steps, steps)
  if not for_replay:
    _, trajectory = jax.lax.scan(step, init, keys)
  else:
    segment = fused_step.resolve_segment(steps, spec.config.hidden_size, spec.config.network)
    (final, _, _), trajectory, checkpoints = fused_step.scan_recording(
      step, init, keys, segment, lambda c: c[0].traces
    )
    recorded = fused_step.Recorded(
      h=trajectory.replay,
      m=trajectory.modulation[..., 0],
      hebb_hist=checkpoints[0],
      elig_hist=checkpoints[1],
      final=final.traces,
    )
    trajectory = trajectory.replace(replay=recorded)
  return trajectory


def replay(
  spec: A2CSpec, params: PyTree, trajectory: Trajectory, hparams: A2CHParams
) -> Trajectory:
  """The agent's outputs on the recorded observations, as one sequence call.

  The same numbers as the rollout's (the same kernel arithmetic; the dense
  layers see [T, B, .] at once, which may round differently in the last
  bit), differentiated through one fused sequence kernel instead of T steps.
  """
  agent = spec.agent(hparams.clip_value)
  carry = agent.initialize_carry(trajectory.obs.shape[1:2])
  _, (logits, value, m) = agent.apply(
    params, carry, trajectory.obs, sequence=True, recorded=trajectory.replay
  )
  return trajectory.replace(**policy_terms(logits, trajectory.action), value=value, modulation=m)


def differentiable_rollout(
  spec: A2CSpec, params: PyTree, key: Array, hparams: A2CHParams, batch_size: Optional[int] = None
) -> Trajectory:
  """The episodes of one iteration, differentiable w.r.t. `params` (what `loss` differentiates).

  With `replays_rollout(spec)` the agent acts without gradients and one
  replay of the recorded episodes carries them; otherwise the rollout itself.
  """
  batch_size = spec.config.batch_size if batch_size is None else batch_size
  if replays_rollout(spec):
    trajectory = rollout(
      spec, jax.lax.stop_gradient(params), key, hparams, batch_size, for_replay=True
    )
    return replay(spec, params, trajectory, hparams)
  return rollout(spec, params, key, hparams, batch_size)


def loss_terms(
  trajectory: Trajectory, hparams: A2CHParams, entropy_kind: str, baseline: str
) -> LossTerms:
  """`train.a2c_loss.a2c_loss` of a batch of episodes with the run's hyperparameters."""
  return a2c_loss(
    trajectory.log_prob,
    trajectory.value,
    trajectory.reward,
    regulariser(trajectory, entropy_kind),
    hparams.discount,
    hparams.value_coef,
    hparams.entropy_coef,
    baseline,
  )


def loss(
  spec: A2CSpec, params: PyTree, key: Array, hparams: A2CHParams, batch_size: Optional[int] = None
) -> tuple[Array, tuple[dict, Trajectory]]:
  """The rollout of one iteration and its A2C loss.

  Args:
    batch_size: episodes (default `config.batch_size`).

  Returns:
    (loss [], (metrics {loss terms, reward, modulation_abs}, Trajectory)).
  """
  config = spec.config
  trajectory = differentiable_rollout(spec, params, key, hparams, batch_size)
  terms = loss_terms(trajectory, hparams, config.entropy_kind, config.baseline)
  aux = dict(
    terms._asdict(),
    reward=jnp.mean(jnp.sum(trajectory.reward, axis=0)),
    modulation_abs=jnp.mean(jnp.abs(trajectory.modulation)),
  )
  return terms.loss, (aux, trajectory)


def grads(spec: A2CSpec, params: PyTree, key: Array, hparams: A2CHParams) -> tuple[PyTree, dict]:
  """(gradient of the batch loss, metrics); with `batch_groups` G > 1 the
  mean over G sequential groups of B/G episodes (G-fold less BPTT memory)."""
  groups = spec.config.batch_groups
  group_size = spec.config.batch_size // groups

  def group_grad(group_key):
    g, (aux, _) = jax.grad(loss, argnums=1, has_aux=True)(
      spec, params, group_key, hparams, group_size
    )
    return g, aux

  if groups == 1:
    return group_grad(key)

  def accumulate(total, group_key):
    return jax.tree.map(jnp.add, total, group_grad(group_key)), None

  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(group_grad, key))
  total, _ = jax.lax.scan(accumulate, zeros, jax.random.split(key, groups))
  return jax.tree.map(lambda x: x / groups, total)


def update(spec: A2CSpec, state: A2CTrainState, hparams: A2CHParams) -> tuple[A2CTrainState, dict]:
  """One iteration: rollout, gradient, Adam step (not applied during burn-in).

  Returns:
    (state, metrics: loss terms, reward, modulation_abs, grad_norm, finite).
  """
  key, key_rollout = jax.random.split(_typed_key(state.key))
  g, aux = grads(spec, state.params, key_rollout, hparams)
  updates, opt_state = make_optimizer(hparams).update(g, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  burn_in = spec.config.burn_in
  if burn_in > 0:
    apply = state.iteration >= burn_in
    params, opt_state = jax.tree.map(
      lambda new, old: jnp.where(apply, new, old),
      (params, opt_state),
      (state.params, state.opt_state),
    )
  grad_norm = optax.tree.norm(g)
  metrics = dict(
    aux,
    grad_norm=grad_norm,
    finite=jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm) & _all_finite(params),
  )
  new_state = A2CTrainState(
    params=params, opt_state=opt_state, key=jax.random.key_data(key), iteration=state.iteration + 1
  )
  return new_state, metrics


def run(
  spec: A2CSpec,
  state: A2CTrainState,
  hparams: A2CHParams,
  num_iterations: int,
  frozen: Optional[Array] = None,
) -> tuple[A2CTrainState, dict]:
  """`num_iterations` updates in one `lax.scan`; metrics leaves [N].

  `frozen`: [] bool, or None. Given, an agent keeps its parameters and
  optimiser state where an update is not finite, and from then on (it is
  frozen at its last finite iterate: a diverged agent of a sweep); its key
  and iteration still advance. Finite updates of a live agent are applied
  exactly as without `frozen`. Metrics gain `frozen` [N].
  """
  if frozen is None:
    return jax.lax.scan(lambda s, _: update(spec, s, hparams), state, None, length=num_iterations)

  def body(carry, _):
    old, frozen = carry
    new, metrics = update(spec, old, hparams)
    frozen = frozen | ~metrics["finite"]
    params, opt_state = jax.tree.map(
      lambda n, o: jnp.where(frozen, o, n), (new.params, new.opt_state), (old.params, old.opt_state)
    )
    new = new.replace(params=params, opt_state=opt_state)
    return (new, frozen), dict(metrics, frozen=frozen)

  (state, _), metrics = jax.lax.scan(body, (state, frozen), None, length=num_iterations)
  return state, metrics


def make_train(config: A2CConfig) -> Callable[[Array, A2CHParams], tuple[A2CTrainState, dict]]:
  """`train(key, hparams) -> (final A2CTrainState, metrics [iterations])`.

  The whole run is one pure function: jit it, vmap it over keys (seeds) and
  over `A2CHParams` leaves (sweeps).
  """
  spec = make_spec(config)

  def train(key: Array, hparams: A2CHParams) -> tuple[A2CTrainState, dict]:
    return run(spec, init(spec, key, hparams), hparams, config.iterations)

  return train


def hparams_per_agent(hparams: A2CHParams, num_seeds: int) -> bool:
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
    f"{ {name: tuple(shape) for name, shape in shapes.items()} }."
  )
