"""Omniglot N-way K-shot classification episodes (Differentiable plasticity 4.3; SPEC.md §5.6).

One episode (5-way 1-shot by default, 6 steps): `n_way` characters drawn
from `params.images` without replacement; label k is the k-th of them. Each
character gets one rotation by 0/90/180/270 degrees for the whole episode
(augmentation). Then `n_shots` presentation cycles, each showing one drawing
of every character in a fresh random order together with its one-hot label
(the network clamps its output to it, `1000 * label_t`; `bpm_jax.omniglot_net`),
and finally one other drawing of one of them (uniform), without label. The
target is that character's one-hot label. A character's drawings in one
episode are distinct (n_shots + 1 of its 20).

    task, params = envs.make("SyntheticGlyphs-v0")                 # offline stand-in
    task, params = envs.make("Omniglot-v0", data_dir="~/omniglot")  # the python release
    test_params = task.params_for_split("test")                       # held-out characters
    episode = task.sample_episode(jax.random.key(0), params)
    episode.images  # [6, 31, 31]
    episode.labels  # [6, 5], zeros on the test step
    episode.target  # [5]

`SyntheticGlyphs-v0` draws the characters from `omniglot_data.synthetic_glyphs`:
procedurally generated glyphs, NOT Omniglot (for tests and the offline demo).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import episodes, omniglot_data

ROTATIONS = 4  # Quarter turns.


@struct.dataclass
class TaskParams:
  """The characters episodes are drawn from (traced; one per split)."""

  images: jax.Array  # [C, D, 31, 31] float32 in [0, 1]: C characters x D drawings.


@struct.dataclass
class OneShotEpisode:
  """One classification episode (unbatched; vmap adds a leading B axis).

  T = n_way * n_shots + 1 steps, the last one the unlabelled test.

  Attributes:
    images: [T, 31, 31] float32, the drawing shown at each step (rotated).
    labels: [T, n_way] float32, the one-hot label of each presentation, zeros
      on the test step.
    target: [n_way] float32, the one-hot label of the test drawing's character.
    characters: [n_way] int32, the rows of `params.images` behind labels 0..n_way-1.
    rotations: [n_way] int32, each character's quarter turns (`jnp.rot90` k).
    drawings: [n_way, n_shots + 1] int32, the drawings used: column s < n_shots
      in presentation cycle s, the last one for the test (of `test_index` only).
    test_index: [] int32, the label of the test character.
  """

  images: jax.Array
  labels: jax.Array
  target: jax.Array
  characters: jax.Array
  rotations: jax.Array
  drawings: jax.Array
  test_index: jax.Array


def rotate(image: jax.Array, quarter_turns: jax.Array) -> jax.Array:
  """[S, S] image rotated by `quarter_turns` x 90 degrees counter-clockwise (`np.rot90`)."""
  return jax.lax.switch(
    quarter_turns, [lambda x, k=k: jnp.rot90(x, k) for k in range(ROTATIONS)], image
  )


class OneShotTask:
  """N-way K-shot episodes over a character array; subclasses say where it comes from.

  Args:
    n_way: characters (labels) per episode.
    n_shots: presentation cycles (drawings shown per character).
  """

  image_side = omniglot_data.IMAGE_SIDE

  def __init__(self, n_way: int = 5, n_shots: int = 1):
    episodes.check_int("n_way", n_way, 2, "classify among >= 2 characters (paper 5)")
    episodes.check_int("n_shots", n_shots, 1, "show each character >= 1 time (paper 1)")
    self.n_way = n_way
    self.n_shots = n_shots

  @property
  def episode_length(self) -> int:
    """T = n_way * n_shots presentations + 1 test step."""
    return self.n_way * self.n_shots + 1

  def characters(self, part: omniglot_data.Part) -> np.ndarray:
    """[C, D, 31, 31] float32 characters of the `train` or `test` part."""
    raise NotImplementedError

  def params_for_split(self, split: omniglot_data.Part) -> TaskParams:
    """TaskParams holding the `train` or `test` characters."""
    return self.validate_params(TaskParams(images=jnp.asarray(self.characters(split))))

  @property
  def default_params(self) -> TaskParams:
    return self.params_for_split("train")

  def validate_params(self, params: TaskParams) -> TaskParams:
    """Raises ValueError unless `params.images` is [C >= n_way, D >= n_shots + 1, 31, 31]."""
    shape = tuple(params.images.shape)
    side = self.image_side
    if (
      len(shape) != 4
      or shape[2:] != (side, side)
      or shape[0] < self.n_way
      or shape[1] < self.n_shots + 1
    ):
      raise ValueError(
        f"params.images has shape {shape}; expected [C, D, {side}, {side}] with "
        f"C >= n_way = {self.n_way} characters and D >= n_shots + 1 = {self.n_shots + 1} "
        "drawings each."
      )
    return params

  def sample_episode(self, key: jax.Array, params: TaskParams) -> OneShotEpisode:
    """One episode: images [T, 31, 31], labels [T, n_way], target [n_way] (module docstring)."""
    num_characters, num_drawings = params.images.shape[:2]
    key_chars, key_rot, key_draw, key_order, key_test = jax.random.split(key, 5)
    characters = jax.random.choice(key_chars, num_characters, (self.n_way,), replace=False)
    rotations = jax.random.randint(key_rot, (self.n_way,), 0, ROTATIONS)
    drawings = jax.vmap(lambda k: jax.random.permutation(k, num_drawings)[: self.n_shots + 1])(
      jax.random.split(key_draw, self.n_way)
    )  # [n_way, n_shots + 1]
    orders = jax.vmap(lambda k: jax.random.permutation(k, self.n_way))(
      jax.random.split(key_order, self.n_shots)
    )  # [n_shots, n_way]: the label shown at each presentation.
    test_index = jax.random.randint(key_test, (), 0, self.n_way)
    shown = jnp.concatenate([orders.reshape(-1), test_index[None]])  # [T] labels.
    cycle = np.append(np.repeat(np.arange(self.n_shots), self.n_way), self.n_shots)  # [T]
    images = params.images[characters[shown], drawings[shown, cycle]]  # [T, 31, 31]
    images = jax.vmap(rotate)(images, rotations[shown])
    presented = jnp.arange(self.episode_length) < self.n_way * self.n_shots
    labels = jax.nn.one_hot(shown, self.n_way) * presented[:, None]
    return OneShotEpisode(
      images=images.astype(jnp.float32),
      labels=labels.astype(jnp.float32),
      target=jax.nn.one_hot(test_index, self.n_way, dtype=jnp.float32),
      characters=characters.astype(jnp.int32),
      rotations=rotations.astype(jnp.int32),
      drawings=drawings.astype(jnp.int32),
      test_index=test_index.astype(jnp.int32),
    )


class Omniglot(OneShotTask):
  """Omniglot episodes from the python release in `data_dir` (see `envs.omniglot_data`).

  Args:
    n_way: characters per episode (paper 5).
    n_shots: drawings shown per character (paper 1).
    data_dir: the folder holding images_background/ and images_evaluation/
      (or their zips, or omniglot-master/python/); required.
    split: `paper` (merged, shuffled with a fixed seed, the last
      `held_out_classes` for testing) or `standard` (background / evaluation).
    held_out_classes: test characters of the `paper` split (reference 100).
  """

  def __init__(
    self,
    n_way: int = 5,
    n_shots: int = 1,
    data_dir: str = "",
    split: str = "paper",
    held_out_classes: int = omniglot_data.PAPER_HELD_OUT,
  ):
    super().__init__(n_way, n_shots)
    if split not in omniglot_data.SPLITS:
      raise ValueError(f"split={split!r} is not one of {omniglot_data.SPLITS}.")
    episodes.check_int("held_out_classes", held_out_classes, 1, "hold out >= 1 character")
    self.data_dir = data_dir
    self.split = split
    self.held_out_classes = held_out_classes

  def characters(self, part: omniglot_data.Part) -> np.ndarray:
    return omniglot_data.omniglot_characters(self.data_dir, self.split, part, self.held_out_classes)


class SyntheticGlyphs(OneShotTask):
  """Episodes over procedurally generated glyphs: an offline stand-in, NOT Omniglot.

  Args:
    n_way: characters per episode.
    n_shots: drawings shown per character.
    num_classes: glyph classes generated (`omniglot_data.synthetic_glyphs`).
    held_out_classes: the last ones, kept for testing.
    seed: the generator's seed (the same glyphs for every run).
  """

  def __init__(
    self,
    n_way: int = 5,
    n_shots: int = 1,
    num_classes: int = 1000,
    held_out_classes: int = omniglot_data.PAPER_HELD_OUT,
    seed: int = 0,
  ):
    super().__init__(n_way, n_shots)
    episodes.check_int("num_classes", num_classes, 2, "generate >= 2 glyph classes")
    episodes.check_int("held_out_classes", held_out_classes, 1, "hold out >= 1 class")
    if num_classes - held_out_classes < n_way or held_out_classes < n_way:
      raise ValueError(
        f"num_classes={num_classes} with held_out_classes={held_out_classes}: both the "
        f"training and the held-out classes must number >= n_way = {n_way}."
      )
    self.num_classes = num_classes
    self.held_out_classes = held_out_classes
    self.seed = seed

  def characters(self, part: omniglot_data.Part) -> np.ndarray:
    if part not in ("train", "test"):
      raise ValueError(f"part={part!r} is not one of 'train', 'test'.")
    train, test = omniglot_data.synthetic_split(self.num_classes, self.held_out_classes, self.seed)
    return train if part == "train" else test
