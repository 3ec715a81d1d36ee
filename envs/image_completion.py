"""Natural image memorisation and completion (Differentiable plasticity 4.2; SPEC.md §5.5).

Each episode draws `n_images` distinct images from `params.images` (the data
set is a traced params field, so training and test images are two params of
one task), shows them `n_cycles` times in fresh random orders, each for
`presentation_steps` steps followed by `delay_steps` zero steps; then one of
them (uniform) with one contiguous half of its pixels set to 0 (the first or
the last half, 50/50) for `test_steps` steps. The target is the full image.
Defaults: `3 * (20 + 2) * 3 + 3 = 201` steps, inputs `[201, 1025]` (1024
pixels + the bias input 1). The network clamps each neuron whose input is
non-zero (SPEC §5.5; `bpm_jax.completion`).

    task, params = envs.make("ImageCompletion-v0")       # scikit-image photographs
    test_params = task.params_for_split("test")            # other photographs
    episode = task.sample_episode(jax.random.key(0), params)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from envs import episodes, image_data


@struct.dataclass
class TaskParams:
  """The images episodes are drawn from (traced; a data set per split)."""

  images: jax.Array  # [M, 1024] float32, normalised (SPEC §5.5).


class ImageCompletion(episodes.EpisodicTask):
  """Grey-image completion; episodes of `[T, 1025]` inputs.

  Args:
    n_images: images stored per episode.
    n_cycles: presentation cycles, each in a fresh random order.
    presentation_steps: steps each image is shown per cycle.
    delay_steps: zero steps after each presentation.
    test_steps: steps the half-erased test image is shown (the last ones).
    source: `skimage` (photographs shipped with scikit-image) or `cifar10`.
    data_dir: the CIFAR-10 python batches' folder (source `cifar10`).
  """

  def __init__(
    self,
    n_images: int = 3,
    n_cycles: int = 3,
    presentation_steps: int = 20,
    delay_steps: int = 2,
    test_steps: int = 3,
    source: str = "skimage",
    data_dir: str = "",
  ):
    super().__init__(
      item_size=image_data.IMAGE_PIXELS,
      n_items=n_images,
      n_cycles=n_cycles,
      presentation_steps=presentation_steps,
      delay_steps=delay_steps,
      test_steps=test_steps,
    )
    if source not in image_data.SOURCES:
      raise ValueError(f"source={source!r} is not one of {image_data.SOURCES}.")
    self.source = source
    self.data_dir = data_dir

  def params_for_split(self, split: image_data.Split) -> TaskParams:
    """TaskParams holding the `train` or `test` images of this task's source."""
    images = image_data.load_images(self.source, split, self.data_dir)
    return self.validate_params(TaskParams(images=jnp.asarray(images)))

  @property
  def default_params(self) -> TaskParams:
    return self.params_for_split("train")

  def validate_params(self, params: TaskParams) -> TaskParams:
    """Raises ValueError unless `params.images` is [M >= n_images, 1024]."""
    shape = tuple(params.images.shape)
    if len(shape) != 2 or shape[1] != self.item_size or shape[0] < self.n_items:
      raise ValueError(
        f"params.images has shape {shape}; expected [M, {self.item_size}] with "
        f"M >= n_images = {self.n_items}."
      )
    return params

  def sample_episode(self, key: jax.Array, params: TaskParams) -> episodes.Episode:
    """One episode: inputs [T, 1025], target [1024] (see the module docstring)."""
    key_images, key_order, key_test, key_half = jax.random.split(key, 4)
    chosen = jax.random.choice(key_images, params.images.shape[0], (self.n_items,), replace=False)
    images = params.images[chosen]
    test_index = jax.random.randint(key_test, (), 0, self.n_items)
    target = images[test_index]
    first_half = jnp.arange(self.item_size) < self.item_size // 2
    erase_first = jax.random.bernoulli(key_half)
    erased = jnp.where(erase_first, first_half, ~first_half)
    probe = jnp.where(erased, 0.0, target)
    return self.assemble(key_order, images, probe, target, test_index)
