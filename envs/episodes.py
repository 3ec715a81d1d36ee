"""What the supervised episodic tasks share (SPEC.md §5.4-5.5): the episode and its schedule.

An episodic task is a generator of episodes, jittable and vmappable, in the
gymnax style: shape arguments go to the constructor, numbers (and data) to a
params dataclass; `sample_episode(key, params) -> Episode`.

The schedule of both completion tasks: `n_cycles` presentation cycles, each
showing the `n_items` stored items in a fresh random order, each item for
`presentation_steps` steps followed by `delay_steps` zero steps; then the
probe (a degraded copy of one item) for `test_steps` steps. A bias input of 1
is appended to every step.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Episode:
  """One episode of a completion task (unbatched; vmap adds a leading B axis).

  Attributes:
    inputs: [T, N] float32, N = P + 1; the last column is the bias input (1).
    target: [P] float32, the full test item.
    items: [n_items, P] float32, the items stored in this episode.
    probe: [P] float32, the degraded test item shown on the last steps.
    test_index: [] int32, which item is tested.
  """

  inputs: jax.Array
  target: jax.Array
  items: jax.Array
  probe: jax.Array
  test_index: jax.Array


def check_int(name: str, value: Any, minimum: int, fix: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name}={value!r} is invalid: {fix}.")


def concrete(value: Any) -> Optional[float]:
  """A Python float of `value`, or None when it is traced."""
  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


class EpisodicTask:
  """Base of the completion tasks: the presentation schedule and its lengths.

  Args:
    item_size: P, values per item (pattern bits, image pixels).
    n_items: items stored per episode.
    n_cycles: presentation cycles.
    presentation_steps: steps per item presentation.
    delay_steps: zero steps after each presentation.
    test_steps: steps the probe is shown at the end.
  """

  def __init__(
    self,
    item_size: int,
    n_items: int,
    n_cycles: int,
    presentation_steps: int,
    delay_steps: int,
    test_steps: int,
  ):
    check_int("n_items", n_items, 1, "store at least one item per episode")
    check_int("n_cycles", n_cycles, 1, "use at least one presentation cycle")
    check_int("presentation_steps", presentation_steps, 1, "show each item for >= 1 step")
    check_int("delay_steps", delay_steps, 0, "use delay_steps >= 0")
    check_int("test_steps", test_steps, 1, "show the probe for >= 1 step")
    self.item_size = item_size
    self.n_items = n_items
    self.n_cycles = n_cycles
    self.presentation_steps = presentation_steps
    self.delay_steps = delay_steps
    self.test_steps = test_steps

  @property
  def num_neurons(self) -> int:
    """N = P + 1 (the bias neuron)."""
    return self.item_size + 1

  @property
  def episode_length(self) -> int:
    """T = n_cycles * n_items * (presentation + delay) + test steps."""
    per_item = self.presentation_steps + self.delay_steps
    return self.n_cycles * self.n_items * per_item + self.test_steps

  def presentation_slots(self) -> np.ndarray:
    """[T - test_steps] int: the presentation slot shown at each step, -1 for a zero step.

    Slot `c * n_items + k` is the k-th item shown in cycle c.
    """
    per_item = np.concatenate(
      [np.zeros(self.presentation_steps, int), -np.ones(self.delay_steps, int)]
    )
    slots = [np.where(per_item == 0, slot, -1) for slot in range(self.n_cycles * self.n_items)]
    return np.concatenate(slots)

  def assemble(
    self,
    key_order: jax.Array,
    items: jax.Array,
    probe: jax.Array,
    target: jax.Array,
    test_index: jax.Array,
  ) -> Episode:
    """The episode's inputs from its items (in fresh orders per cycle) and probe."""
    orders = jax.vmap(lambda k: jax.random.permutation(k, self.n_items))(
      jax.random.split(key_order, self.n_cycles)
    )  # [n_cycles, n_items]
    slots = jnp.asarray(self.presentation_slots())
    shown = orders.reshape(-1)[jnp.maximum(slots, 0)]  # [T - test_steps]
    presented = jnp.where((slots >= 0)[:, None], items[shown], 0.0)
    test = jnp.broadcast_to(probe, (self.test_steps, self.item_size))
    values = jnp.concatenate([presented, test]).astype(jnp.float32)
    bias = jnp.ones((self.episode_length, 1), jnp.float32)
    return Episode(
      inputs=jnp.concatenate([values, bias], axis=1),
      target=target.astype(jnp.float32),
      items=items.astype(jnp.float32),
      probe=probe.astype(jnp.float32),
      test_index=jnp.asarray(test_index, jnp.int32),
    )
