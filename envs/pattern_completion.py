"""Pattern memorisation and completion (Differentiable plasticity 4.1; SPEC.md §5.4).

A supervised meta-learning task: one episode is one input sequence and one
target. Each episode draws `n_patterns` fresh binary patterns of
`pattern_size` bits (exactly half +1, half -1), shows them `n_cycles` times,
each cycle in a fresh random order, each pattern for `presentation_steps`
steps followed by `delay_steps` zero steps; then one of them (uniform), with a
random `params.degradation` fraction of its bits set to 0, for `test_steps`
steps. The target is the full test pattern. With the defaults the episode has
`2 * (6 + 4) * 5 + 6 = 106` steps.

Inputs are `[T, N]` float32 with `N = pattern_size + 1`: the last column is
the bias neuron's input, 1 at every step.

    task, params = envs.make("PatternCompletion-v0")
    episode = task.sample_episode(jax.random.key(0), params)
    episode.inputs  # [106, 1001]
    episode.target  # [1000]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from envs import episodes


@struct.dataclass
class TaskParams:
  """Numeric settings (traced; vmappable)."""

  degradation: float = 0.5  # Fraction of the test pattern's bits set to 0 (exactly).


class PatternCompletion(episodes.EpisodicTask):
  """Binary pattern completion; episodes of `[T, pattern_size + 1]` inputs.

  Args:
    pattern_size: bits per pattern (even: exactly half are +1).
    n_patterns: patterns stored per episode.
    n_cycles: presentation cycles, each in a fresh random order.
    presentation_steps: steps each pattern is shown per cycle.
    delay_steps: zero steps after each presentation.
    test_steps: steps the degraded test pattern is shown (the last ones).
  """

  def __init__(
    self,
    pattern_size: int = 1000,
    n_patterns: int = 5,
    n_cycles: int = 2,
    presentation_steps: int = 6,
    delay_steps: int = 4,
    test_steps: int = 6,
  ):
    episodes.check_int(
      "pattern_size", pattern_size, 2, "use an even pattern_size >= 2 (paper 1000)"
    )
    if pattern_size % 2:
      raise ValueError(
        f"pattern_size={pattern_size} is odd; patterns have exactly half +1 bits: use an even size."
      )
    super().__init__(
      item_size=pattern_size,
      n_items=n_patterns,
      n_cycles=n_cycles,
      presentation_steps=presentation_steps,
      delay_steps=delay_steps,
      test_steps=test_steps,
    )
    self.pattern_size = pattern_size

  @property
  def default_params(self) -> TaskParams:
    return TaskParams()

  def validate_params(self, params: TaskParams) -> TaskParams:
    """Raises ValueError on invalid concrete params; returns them unchanged."""
    degradation = episodes.concrete(params.degradation)
    if degradation is not None and not 0.0 <= degradation <= 1.0:
      raise ValueError(f"degradation={degradation} must be in [0, 1] (paper 0.5).")
    return params

  def sample_patterns(self, key: jax.Array) -> jax.Array:
    """[n_patterns, pattern_size] in {-1, +1}, each exactly half +1."""
    balanced = jnp.where(jnp.arange(self.pattern_size) < self.pattern_size // 2, 1.0, -1.0)
    keys = jax.random.split(key, self.n_items)
    return jax.vmap(lambda k: jax.random.permutation(k, balanced))(keys).astype(jnp.float32)

  def sample_episode(self, key: jax.Array, params: TaskParams) -> episodes.Episode:
    """One episode: inputs [T, N], target [pattern_size] (see the module docstring)."""
    key_patterns, key_order, key_test, key_mask = jax.random.split(key, 4)
    patterns = self.sample_patterns(key_patterns)
    test_index = jax.random.randint(key_test, (), 0, self.n_items)
    target = patterns[test_index]
    # Exactly round(degradation * P) bits zeroed, at uniformly random positions.
    n_zero = jnp.round(params.degradation * self.pattern_size).astype(jnp.int32)
    rank = jax.random.permutation(key_mask, self.pattern_size)
    probe = jnp.where(rank < n_zero, 0.0, target)
    return self.assemble(key_order, patterns, probe, target, test_index)
