"""The completion tasks (envs/pattern_completion, image_completion, image_data) against
SPEC.md §5.4-5.5 transcribed in NumPy."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import image_data
from envs.image_completion import ImageCompletion, TaskParams
from envs.pattern_completion import PatternCompletion


def numpy_inputs(items, orders, probe, presentation, delay, test):
  """SPEC §5.4-5.5 schedule, from the text: per cycle each item (in that cycle's order)
  for `presentation` steps then `delay` zero steps; the probe for `test` steps; bias 1."""
  size = items.shape[1]
  rows = []
  for order in orders:
    for k in order:
      rows += [items[k]] * presentation + [np.zeros(size)] * delay
  rows += [probe] * test
  values = np.array(rows)
  return np.concatenate([values, np.ones((len(rows), 1))], axis=1)


def recover_orders(task, episode):
  """Each cycle's presentation order, read off the inputs (which item each block shows)."""
  inputs, items = np.asarray(episode.inputs), np.asarray(episode.items)
  block = task.presentation_steps + task.delay_steps
  orders = []
  for c in range(task.n_cycles):
    order = []
    for k in range(task.n_items):
      first = inputs[(c * task.n_items + k) * block, :-1]
      matches = [j for j in range(task.n_items) if np.array_equal(items[j], first)]
      assert len(matches) == 1
      order.append(matches[0])
    orders.append(order)
  return np.array(orders)


def test_pattern_episode_follows_the_spec():
  task, params = envs.make("PatternCompletion-v0")
  assert task.episode_length == 2 * (6 + 4) * 5 + 6 == 106
  episode = jax.jit(task.sample_episode)(jax.random.key(3), params)
  assert episode.inputs.shape == (106, 1001) and episode.inputs.dtype == jnp.float32
  assert episode.target.shape == (1000,)
  items = np.asarray(episode.items)
  assert set(np.unique(items)) == {-1.0, 1.0}
  np.testing.assert_array_equal((items == 1).sum(axis=1), 500)  # Exactly half +1.
  assert len({row.tobytes() for row in items}) == 5
  target, probe = np.asarray(episode.target), np.asarray(episode.probe)
  np.testing.assert_array_equal(target, items[int(episode.test_index)])
  assert (probe == 0).sum() == 500  # Exactly 50% of the bits zeroed ...
  kept = probe != 0
  np.testing.assert_array_equal(probe[kept], target[kept])  # ... the rest unchanged.
  orders = recover_orders(task, episode)
  for order in orders:
    assert sorted(order) == list(range(5))  # Each cycle shows every pattern once.
  expected = numpy_inputs(items, orders, probe, 6, 4, 6)
  np.testing.assert_array_equal(np.asarray(episode.inputs), expected)


def test_pattern_episodes_differ_and_orders_are_fresh_per_cycle():
  task, params = envs.make("PatternCompletion-v0", pattern_size=40, n_patterns=4)
  sample = jax.jit(task.sample_episode)
  episodes = [sample(jax.random.key(k), params) for k in range(20)]
  orders = np.array([recover_orders(task, e) for e in episodes])  # [20, 2, 4]
  assert (orders[:, 0] != orders[:, 1]).any()  # Cycles are ordered independently.
  assert len({int(e.test_index) for e in episodes}) > 1
  batched = jax.vmap(task.sample_episode, in_axes=(0, None))(
    jax.random.split(jax.random.key(0), 3), params
  )
  assert batched.inputs.shape == (3, task.episode_length, 41)


def test_pattern_degradation_param():
  task, params = envs.make("PatternCompletion-v0", pattern_size=40, degradation=0.25)
  episode = task.sample_episode(jax.random.key(0), params)
  assert int((np.asarray(episode.probe) == 0).sum()) == 10
  with pytest.raises(ValueError, match="degradation"):
    envs.make("PatternCompletion-v0", degradation=1.5)


def test_image_episode_follows_the_spec():
  rng = np.random.default_rng(0)
  images = image_data.normalise(rng.normal(size=(10, 1024)))
  task = ImageCompletion()
  assert task.episode_length == 3 * (20 + 2) * 3 + 3 == 201
  params = task.validate_params(TaskParams(images=jnp.asarray(images)))
  halves = set()
  for k in range(12):
    episode = jax.jit(task.sample_episode)(jax.random.key(k), params)
    assert episode.inputs.shape == (201, 1025)
    items = np.asarray(episode.items)
    chosen = [int(np.argmax((images == item).all(axis=1))) for item in items]
    assert len(set(chosen)) == 3  # Three distinct images of the set.
    target, probe = np.asarray(episode.target), np.asarray(episode.probe)
    zero = probe == 0
    assert zero.sum() == 512
    first = bool(zero[:512].all())
    assert first or bool(zero[512:].all())  # One contiguous half erased ...
    np.testing.assert_array_equal(probe[~zero], target[~zero])  # ... the other kept.
    halves.add(first)
    expected = numpy_inputs(items, recover_orders(task, episode), probe, 20, 2, 3)
    np.testing.assert_array_equal(np.asarray(episode.inputs), expected)
  assert halves == {True, False}  # Both halves occur.


def test_normalise_is_the_spec_formula():
  grey = np.random.default_rng(1).uniform(0, 765, size=(4, 1024))
  out = image_data.normalise(grey)
  centred = grey - grey.mean(axis=1, keepdims=True)
  np.testing.assert_allclose(
    out, centred / (1e-8 + np.abs(centred).max(axis=1, keepdims=True)), rtol=1e-6
  )
  np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-6)
  np.testing.assert_allclose(np.abs(out).max(axis=1), 1, rtol=1e-6)
  colour = np.stack([grey[0].reshape(32, 32)] * 3, axis=-1)
  np.testing.assert_allclose(image_data.to_grey(colour), 3 * grey[0].reshape(32, 32))


def test_patches_tile_and_drop_flat_ones():
  grey = np.zeros((64, 96))
  grey[:32, :32] = np.arange(1024).reshape(32, 32)  # One textured tile, five flat ones.
  tiles = image_data.patches(grey)
  assert tiles.shape == (1, 1024)
  np.testing.assert_array_equal(tiles[0], np.arange(1024))


def test_skimage_splits_are_disjoint_photographs():
  pytest.importorskip("skimage")
  train, test = image_data.skimage_images("train"), image_data.skimage_images("test")
  assert train.shape[1] == test.shape[1] == 1024 and len(train) > 1000 and len(test) > 100
  assert not set(image_data.TRAIN_IMAGES) & set(image_data.TEST_IMAGES)
  np.testing.assert_allclose(train.mean(axis=1), 0, atol=1e-5)
  task, params = envs.make("ImageCompletion-v0")
  assert params.images.shape == train.shape


def _write_cifar(directory, files, data):
  os.makedirs(directory, exist_ok=True)
  for name in files:
    with open(os.path.join(directory, name), "wb") as f:
      pickle.dump({b"data": data, b"labels": [0] * len(data)}, f)


def test_cifar_loader_reads_python_batches(tmp_path):
  data = np.random.default_rng(2).integers(0, 256, size=(6, 3072), dtype=np.uint8)
  _write_cifar(tmp_path, image_data.CIFAR_TRAIN_FILES + image_data.CIFAR_TEST_FILES, data)
  images = image_data.cifar10_images(str(tmp_path), "test")
  grey = data.reshape(6, 3, 1024).astype(np.float64).sum(axis=1)
  np.testing.assert_allclose(images, image_data.normalise(grey))
  assert image_data.cifar10_images(str(tmp_path), "train").shape == (30, 1024)
  task, params = envs.make("ImageCompletion-v0", source="cifar10", data_dir=str(tmp_path))
  assert params.images.shape == (30, 1024)


def test_cifar_loader_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    image_data.cifar10_images(str(tmp_path / "nowhere"), "train")
  _write_cifar(tmp_path, ("test_batch",), np.zeros((2, 3072), np.uint8))
  with pytest.raises(FileNotFoundError, match="data_batch_1"):
    image_data.cifar10_images(str(tmp_path), "train")
  with open(tmp_path / "test_batch", "wb") as f:
    f.write(b"not a pickle")
  with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
    image_data.cifar10_images(str(tmp_path), "test")
  _write_cifar(tmp_path / "bad", ("test_batch",), np.zeros((2, 100), np.uint8))
  with pytest.raises(ValueError, match="expected"):
    image_data.cifar10_images(str(tmp_path / "bad"), "test")
  with pytest.raises(ValueError, match="data_dir"):
    image_data.load_images("cifar10", "train", "")


def test_bad_task_arguments():
  with pytest.raises(ValueError, match="odd"):
    PatternCompletion(pattern_size=9)
  with pytest.raises(ValueError, match="n_items"):
    PatternCompletion(n_patterns=0)
  with pytest.raises(ValueError, match="source"):
    ImageCompletion(source="imagenet")
  with pytest.raises(ValueError, match="expected"):
    ImageCompletion().validate_params(TaskParams(images=jnp.zeros((2, 1024))))
  with pytest.raises(ValueError, match="Unknown env_id"):
    envs.make("PatternCompletion-v9")
