"""Cue-reward association task (Backpropamine 4.1; SPEC.md 5.1) as a gymnax env.

Per episode, `n_cues` distinct binary cues are drawn and one of them is the
target. The episode is a stream of trials; a trial of length
`L = n_cues // 2 + 3 + randint(n_cues)` is laid out as

    [empty] + shuffle(n_cues // 2 distinct cues + (L - 3 - n_cues // 2) empties)
            + [Go] + [empty]

and only the action taken on the Go step is judged: `+reward` if (target shown
in this trial and action == 1) or (target absent and action == 0), else
`-reward`. Every other step gives 0, or `-action_penalty` for action 1.

Observation at step t (size `cue_bits + 7`, 27 by default), float32:

    [cue bits (cue_bits; zeros when no cue), Go bit,
     1.0 (bias), t / max_steps_in_episode, previous reward, 0.0 (unused),
     previous action one-hot (2; zeros at t = 0)]

The trial structure is sampled inside the jitted step: when a trial ends, the
next trial's length, cues and order are drawn and stored as a fixed-size
schedule of `max_trial_length` stimulus codes (cue index, `EMPTY` or `GO`).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

EMPTY = -1  # Schedule code: no cue shown.
GO = -2  # Schedule code: the response ("Go") cue.
NUM_ACTIONS = 2


@struct.dataclass
class EnvState(environment.EnvState):
  """Cue-reward episode state (unbatched; `vmap` adds a leading B axis)."""

  time: jax.Array  # [] int32, steps taken in the episode.
  cues: jax.Array  # [n_cues, cue_bits] float32, this episode's cues.
  target: jax.Array  # [] int32, index of the rewarded cue.
  schedule: jax.Array  # [max_trial_length] int32, cue index / EMPTY / GO.
  trial_cues: jax.Array  # [n_cues // 2] int32, cues shown in this trial.
  trial_length: jax.Array  # [] int32, L in 5..8 for n_cues = 4.
  trial_step: jax.Array  # [] int32, position within the trial, 0..L-1.
  trial_index: jax.Array  # [] int32, trials started so far minus one.
  prev_action: jax.Array  # [] int32, -1 before the first action.
  prev_reward: jax.Array  # [] float32.


@struct.dataclass
class EnvParams(environment.EnvParams):
  """Numeric settings; traced, so they can be `vmap`ped in a sweep."""

  max_steps_in_episode: int = 120  # Episode length (reference README; paper 200).
  reward: float = 1.0  # Magnitude of the Go-step reward (+reward / -reward).
  action_penalty: float = 0.0  # Subtracted for action 1 on non-Go steps (`wp`).

  @property
  def episode_length(self) -> int:
    return self.max_steps_in_episode


class CueReward(environment.Environment[EnvState, EnvParams]):
  """Cue-reward association; 2 actions, observation `[cue_bits + 7]` float32.

  Args:
    n_cues: number of cues per episode (>= 2); each trial shows `n_cues // 2`.
    cue_bits: bits per cue. Random cues need `2**cue_bits >= n_cues`.
    fixed_cues: Backpropamine appendix A.5 variant. The cues are the same in
      every episode: cue `k` is the one-hot vector `e_k` with values in {0, 1}
      (not {-1, +1}), so it needs `cue_bits >= n_cues`; only the target
      changes between episodes. Otherwise cues are fresh uniform draws from
      {-1, +1}^cue_bits, all distinct, each episode.
  """

  def __init__(self, n_cues: int = 4, cue_bits: int = 20, fixed_cues: bool = False):
    super().__init__()
    _check_int("n_cues", n_cues, 2, "use n_cues >= 2 (the papers use 4)")
    _check_int("cue_bits", cue_bits, 1, "use cue_bits >= 1 (the papers use 20)")
    if fixed_cues and cue_bits < n_cues:
      raise ValueError(
        f"cue_bits={cue_bits} is too small for fixed_cues=True with "
        f"n_cues={n_cues}: one-hot cues need cue_bits >= n_cues; "
        f"use cue_bits={n_cues}."
      )
    if not fixed_cues and 2**cue_bits < n_cues:
      raise ValueError(
        f"cue_bits={cue_bits} is too small for n_cues={n_cues} distinct "
        f"cues (2**cue_bits = {2**cue_bits} < {n_cues}); use "
        f"cue_bits >= {int(np.ceil(np.log2(n_cues)))}."
      )
    self.n_cues = n_cues
    self.cue_bits = cue_bits
    self.fixed_cues = bool(fixed_cues)
    self.cues_per_trial = n_cues // 2
    self.min_trial_length = self.cues_per_trial + 3
    self.max_trial_length = self.cues_per_trial + 3 + n_cues - 1

  @property
  def default_params(self) -> EnvParams:
    return EnvParams()

  def validate_params(self, params: EnvParams) -> EnvParams:
    """Raises ValueError on invalid concrete params; returns them unchanged."""
    return validate_params(params)

  def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
    """Draws the cues, the target and the first trial; obs `[cue_bits + 7]`."""
    # One PRNG call for the first cue draw, the target and the first trial
    # (each PRNG call site costs XLA compile time under vmap).
    key_draws, key_redraws = jax.random.split(key)
    n_cue_words = 0 if self.fixed_cues else self.n_cues * _words_per_row(self.cue_bits)
    n_uniforms = 1 + trial_draw_size(self.n_cues)
    words = _random_words(key_draws, n_cue_words + n_uniforms)
    if self.fixed_cues:
      cues = jnp.eye(self.n_cues, self.cue_bits, dtype=jnp.float32)
    else:
      first = signs_from_bits(words[:n_cue_words].reshape(self.n_cues, -1), self.cue_bits)
      cues = redraw_repeated_cues(first, key_redraws)
    u = _uniform_from_bits(words[n_cue_words:])
    target = _uniform_index(u[0], self.n_cues)
    schedule, trial_cues, trial_length = trial_from_uniform(u[1:], self.n_cues)
    state = EnvState(
      time=jnp.int32(0),
      cues=cues,
      target=target,
      schedule=schedule,
      trial_cues=trial_cues,
      trial_length=trial_length,
      trial_step=jnp.int32(0),
      trial_index=jnp.int32(0),
      prev_action=jnp.int32(-1),
      prev_reward=jnp.float32(0.0),
    )
    return self.get_obs(state, params), state

  def step_env(
    self,
    key: jax.Array,
    state: EnvState,
    action: int | jax.Array,
    params: EnvParams,
  ) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict[str, Any]]:
    """Judges `action` if this step is the Go step, then advances one step.

    Returns obs `[cue_bits + 7]`, state, reward `[]` float32, terminated
    (always False) and info with `is_go`, `target_present`, `trial_index`
    and `trial_step` describing the step just taken.
    """
    action = jnp.asarray(action, jnp.int32)
    is_go = state.schedule[state.trial_step] == GO
    target_present = jnp.any(state.trial_cues == state.target)
    correct = jnp.where(target_present, action == 1, action == 0)
    judged = jnp.where(correct, params.reward, -params.reward)
    penalised = ~is_go & (action == 1)
    reward = jnp.where(is_go, judged, 0.0) - jnp.where(penalised, params.action_penalty, 0.0)
    reward = jnp.asarray(reward, jnp.float32)

    next_step = state.trial_step + 1
    trial_over = next_step >= state.trial_length
    new_trial = self._sample_trial(key)
    old_trial = (state.schedule, state.trial_cues, state.trial_length)
    schedule, trial_cues, trial_length = jax.tree.map(
      lambda new, old: jnp.where(trial_over, new, old), new_trial, old_trial
    )
    next_state = state.replace(
      time=state.time + 1,
      schedule=schedule,
      trial_cues=trial_cues,
      trial_length=trial_length,
      trial_step=jnp.where(trial_over, 0, next_step).astype(jnp.int32),
      trial_index=state.trial_index + trial_over.astype(jnp.int32),
      prev_action=action,
      prev_reward=reward,
    )
    info = {
      "is_go": is_go,
      "target_present": target_present,
      "trial_index": state.trial_index,
      "trial_step": state.trial_step,
    }
    obs, next_state = jax.tree.map(
      jax.lax.stop_gradient, (self.get_obs(next_state, params), next_state)
    )
    return obs, next_state, reward, jnp.array(False), info

  def get_obs(self, state: EnvState, params: EnvParams | None = None, key=None) -> jax.Array:
    """Observation `[cue_bits + 7]` float32 of the stimulus at `state.trial_step`."""
    if params is None:
      params = self.default_params
    stimulus = state.schedule[state.trial_step]
    cue = jnp.where(stimulus >= 0, state.cues[jnp.maximum(stimulus, 0)], 0.0)
    time_frac = state.time / params.max_steps_in_episode
    scalars = jnp.stack(
      [(stimulus == GO).astype(jnp.float32), 1.0, time_frac, state.prev_reward, 0.0]
    )
    prev_action = jax.nn.one_hot(state.prev_action, NUM_ACTIONS)
    return jnp.concatenate([cue, scalars, prev_action]).astype(jnp.float32)

  def _sample_trial(self, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draws one trial: schedule `[max_trial_length]`, cues `[n_cues//2]`, L `[]`."""
    return sample_trial(key, self.n_cues)

  def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
    return jnp.array(False)

  @property
  def name(self) -> str:
    return "CueRewardFixedCues-v0" if self.fixed_cues else "CueReward-v0"

  @property
  def num_actions(self) -> int:
    return NUM_ACTIONS

  @property
  def obs_size(self) -> int:
    return self.cue_bits + 1 + 4 + NUM_ACTIONS

  def action_space(self, params: EnvParams | None = None) -> spaces.Discrete:
    return spaces.Discrete(NUM_ACTIONS)

  def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
    if params is None:
      params = self.default_params
    max_abs_reward = jnp.maximum(params.reward, params.action_penalty)
    cue_low = 0.0 if self.fixed_cues else -1.0
    # Go bit, bias, t / T, previous reward, unused zero.
    scalars_low = jnp.stack([0.0, 1.0, 0.0, -max_abs_reward, 0.0])
    scalars_high = jnp.stack([1.0, 1.0, 1.0, params.reward, 0.0])
    low = jnp.concatenate(
      [jnp.full((self.cue_bits,), cue_low), scalars_low, jnp.zeros(NUM_ACTIONS)]
    )
    high = jnp.concatenate([jnp.ones((self.cue_bits,)), scalars_high, jnp.ones(NUM_ACTIONS)])
    return spaces.Box(
      low.astype(jnp.float32), high.astype(jnp.float32), (self.obs_size,), jnp.float32
    )


def sample_distinct_cues(key: jax.Array, n_cues: int, cue_bits: int) -> jax.Array:
  """Uniform draw of `n_cues` distinct cues in {-1, +1}: `[n_cues, cue_bits]` float32."""
  key_first, key_redraws = jax.random.split(key)
  return redraw_repeated_cues(random_signs(key_first, n_cues, cue_bits), key_redraws)


def redraw_repeated_cues(cues: jax.Array, key: jax.Array) -> jax.Array:
  """Redraws every cue equal to an earlier one until all differ.

  Rejection sampling in a `while_loop` (with 20 bits it almost never runs).
  The rule depends only on which draws are equal, so for uniform `cues`
  `[n_cues, cue_bits]` the result is uniform over ordered tuples of distinct
  cues.
  """
  init = (cues, key, jnp.int32(0), _repeats(cues))
  cues, _, _, _ = jax.lax.while_loop(_any_repeats, _redraw_repeats, init)
  return cues


# Loop functions at module level (no closures), so eager calls hit JAX's caches.
def _any_repeats(carry: tuple[jax.Array, ...]) -> jax.Array:
  return jnp.any(carry[3])


def _redraw_repeats(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  cues, key, iteration, repeated = carry
  n_cues, cue_bits = cues.shape
  fresh = random_signs(jax.random.fold_in(key, iteration), n_cues, cue_bits)
  cues = jnp.where(repeated[:, None], fresh, cues)
  return cues, key, iteration + 1, _repeats(cues)


def _repeats(cues: jax.Array) -> jax.Array:
  """`[n_cues]` bool: cue i equals some cue j < i."""
  n_cues = cues.shape[0]
  earlier = jnp.tril(jnp.ones((n_cues, n_cues), bool), k=-1)  # [i, j]: j < i.
  same = jnp.all(cues[:, None, :] == cues[None, :, :], axis=-1)
  return jnp.any(same & earlier, axis=1)


def random_signs(key: jax.Array, n_rows: int, n_bits: int) -> jax.Array:
  """Independent fair {-1, +1} entries `[n_rows, n_bits]` float32."""
  words = _random_words(key, n_rows * _words_per_row(n_bits))
  return signs_from_bits(words.reshape(n_rows, -1), n_bits)


def signs_from_bits(words: jax.Array, n_bits: int) -> jax.Array:
  """Maps the first `n_bits` bits of each row of uint32 `words` `[n, W]` to
  {-1, +1}: `[n, n_bits]` float32 (one PRNG word per 32 entries)."""
  index = jnp.arange(n_bits)
  bits = (words[:, index // 32] >> (index % 32).astype(jnp.uint32)) & 1
  return jnp.where(bits == 1, 1.0, -1.0).astype(jnp.float32)


def trial_draw_size(n_cues: int) -> int:
  """Number of uniforms `trial_from_uniform` consumes."""
  return 1 + n_cues + (n_cues // 2 + n_cues - 1)


def sample_trial(key: jax.Array, n_cues: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws one trial's layout (SPEC 5.1); see `trial_from_uniform`."""
  u = _uniform_from_bits(_random_words(key, trial_draw_size(n_cues)))
  return trial_from_uniform(u, n_cues)


def trial_from_uniform(u: jax.Array, n_cues: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Maps uniforms `u` `[trial_draw_size(n_cues)]` in [0, 1) to a trial layout.

  Returns:
    schedule: `[n_cues // 2 + n_cues + 2]` int32 stimulus codes: EMPTY, then
      the shuffled middle segment, GO, EMPTY; entries at positions >= L are
      EMPTY padding.
    trial_cues: `[n_cues // 2]` int32, the distinct cues shown (random order).
    length: `[]` int32, `L = n_cues // 2 + 3 + randint(n_cues)`.
  """
  if u.shape != (trial_draw_size(n_cues),):
    raise ValueError(f"u must have shape ({trial_draw_size(n_cues)},), got {u.shape}.")
  n_shown = n_cues // 2
  n_middle_max = n_shown + n_cues - 1
  length = n_shown + 3 + _uniform_index(u[0], n_cues)
  trial_cues = _argsort(u[1 : 1 + n_cues])[:n_shown]
  # Middle segment: the shown cues and L - 3 - n_shown empties in random order.
  # Slots >= L - 3 get sort key 2 so the shuffle stays inside the segment.
  n_middle = length - 3
  slots = jnp.arange(n_middle_max)
  middle = jnp.concatenate([trial_cues, jnp.full((n_middle_max - n_shown,), EMPTY)])
  sort_keys = jnp.where(slots < n_middle, u[1 + n_cues :], 2.0)
  middle = middle[_argsort(sort_keys)]
  position = jnp.arange(n_middle_max + 3)
  schedule = jnp.where(
    (position >= 1) & (position <= n_middle),
    middle[jnp.clip(position - 1, 0, n_middle_max - 1)],
    jnp.where(position == n_middle + 1, GO, EMPTY),
  )
  return schedule.astype(jnp.int32), trial_cues, length


def _argsort(x: jax.Array) -> jax.Array:
  """`argsort` of a short vector `[n]` (ties by index) as O(n^2) compares.

  For n <= 10 this is much faster than XLA's sort under `vmap` on CPU.
  """
  index = jnp.arange(x.shape[0])
  smaller = x[None, :] < x[:, None]  # [i, j]: x[j] < x[i].
  tie_before = (x[None, :] == x[:, None]) & (index[None, :] < index[:, None])
  before = smaller | tie_before
  rank = jnp.sum(before, axis=1)  # [n] final position of each element.
  return jnp.argmax(rank[None, :] == index[:, None], axis=1).astype(jnp.int32)


def _random_words(key: jax.Array, n: int) -> jax.Array:
  """`n` random uint32 words `[n]`.

  Draws a power-of-two count (>= 8) and slices: under `vmap`, XLA on CPU
  compiles those PRNG calls several times faster than odd sizes such as 10.
  """
  return jax.random.bits(key, (max(8, 1 << (n - 1).bit_length()),), jnp.uint32)[:n]


def _words_per_row(n_bits: int) -> int:
  return -(-n_bits // 32)


def _uniform_from_bits(words: jax.Array) -> jax.Array:
  """uint32 `words` -> float32 uniforms in [0, 1) (as `jax.random.uniform`)."""
  mantissa = (words >> 9) | jnp.uint32(0x3F800000)
  return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0


def _uniform_index(u: jax.Array, n: int) -> jax.Array:
  """Maps a uniform `u` in [0, 1) to an int32 index uniform in 0..n-1."""
  return jnp.minimum(jnp.floor(u * n), n - 1).astype(jnp.int32)


def validate_params(params: EnvParams) -> EnvParams:
  """Raises ValueError on invalid concrete `EnvParams`; returns them unchanged.

  Traced params (inside `jit`/`vmap`) cannot be checked; call this on the
  concrete params before tracing (`envs.make` does).
  """
  _check_positive_length(params.max_steps_in_episode)
  for field in ("reward", "action_penalty"):
    value = np.asarray(getattr(params, field))
    if not np.all(np.isfinite(value)) or np.any(value < 0):
      raise ValueError(
        f"{field} must be finite and >= 0, got {value!r}; rewards and "
        "penalties are magnitudes (the sign is applied by the task)."
      )
  return params


def _check_int(name: str, value: Any, minimum: int, fix: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; {fix}.")


def _check_positive_length(value: Any) -> None:
  array = np.asarray(value)
  if not np.issubdtype(array.dtype, np.integer) or np.any(array < 1):
    raise ValueError(
      f"max_steps_in_episode must be a positive integer, got {value!r}; "
      "use e.g. max_steps_in_episode=120."
    )
