"""Omniglot one-shot (SPEC.md §5.6): the loader (envs/omniglot_data) on generated PNG trees,
the synthetic glyphs, the episodes (envs/omniglot) against a NumPy transcription, the Oja
output layer (bpm_jax/omniglot_net) against a NumPy loop, and the episodic trainer on
SyntheticGlyphs-v0."""

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from PIL import Image

import envs
from bpm_jax import omniglot_net
from envs import omniglot_data
from envs.omniglot import Omniglot, SyntheticGlyphs, TaskParams
from train import episodic, episodic_learner, episodic_plots, episodic_train
from train import metrics as metrics_lib
from train import run as run_lib
from train.episodic_config import EpisodicConfig, episodic_defaults

# --------------------------------------------------------------------------
# Generated Omniglot-like trees.

TREE = {  # set -> alphabet -> characters
  "images_background": {"Alpha": ["character01", "character02"], "Beta": ["character01"]},
  "images_evaluation": {"Gamma": ["character01", "character02"]},
}


def drawing(seed, size=105):
  """A 105 x 105 binary drawing (white background, black ink), different per seed."""
  rng = np.random.default_rng(seed)
  image = np.full((size, size), 255, np.uint8)
  for _ in range(3):
    r, c = rng.integers(10, size - 30, 2)
    image[r : r + rng.integers(5, 25), c : c + rng.integers(3, 8)] = 0
  return image


def write_set(folder, set_name, make_png):
  """PNG bytes of every drawing of one set, by relative path (20 per character)."""
  files = {}
  seed = 0 if set_name == "images_background" else 1000
  for alphabet, characters in TREE[set_name].items():
    for character in characters:
      for k in range(omniglot_data.DRAWINGS_PER_CHARACTER):
        seed += 1
        files[f"{alphabet}/{character}/{seed:04d}_{k + 1:02d}.png"] = make_png(seed)
  return files


def png_bytes(seed, mode="1"):
  import io

  buffer = io.BytesIO()
  Image.fromarray(drawing(seed)).convert(mode).save(buffer, format="PNG")
  return buffer.getvalue()


def make_tree(root, layout="flat", mode="1"):
  """An Omniglot-like release under `root` ('flat', 'repository' nesting, or 'zip')."""
  base = os.path.join(root, "omniglot-master", "python") if layout == "repository" else root
  os.makedirs(base, exist_ok=True)
  for set_name in TREE:
    files = write_set(base, set_name, lambda seed: png_bytes(seed, mode))
    if layout == "zip":
      with zipfile.ZipFile(os.path.join(base, set_name + ".zip"), "w") as archive:
        for rel, data in files.items():
          archive.writestr(f"{set_name}/{rel}", data)
    else:
      for rel, data in files.items():
        path = os.path.join(base, set_name, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
          f.write(data)
  return str(root)


def expected_set(set_name):
  """SPEC §5.6 from the text: pixel / 255, resized to 31 x 31 (skimage, as the reference)."""
  from skimage import transform

  files = write_set(None, set_name, lambda seed: seed)
  by_character = {}
  for rel, seed in sorted(files.items()):
    alphabet, character, _ = rel.split("/")
    grey = drawing(seed) / 255.0
    resized = transform.resize(grey, (31, 31), order=1, mode="constant", anti_aliasing=False)
    by_character.setdefault(f"{alphabet}/{character}", []).append(resized)
  return np.array(list(by_character.values())), tuple(by_character)


@pytest.fixture(autouse=True)
def _fresh_loader_cache():
  omniglot_data._load.cache_clear()
  yield
  omniglot_data._load.cache_clear()


@pytest.mark.parametrize("layout, mode", [("flat", "1"), ("repository", "L"), ("zip", "1")])
def test_loader_reads_the_release_layouts(tmp_path, layout, mode):
  data_dir = make_tree(tmp_path, layout, mode)
  data = omniglot_data.load_omniglot(data_dir, progress=False)
  for set_name, images, names in (
    ("images_background", data.background, data.background_names),
    ("images_evaluation", data.evaluation, data.evaluation_names),
  ):
    expected, expected_names = expected_set(set_name)
    assert images.shape == expected.shape and images.dtype == np.float32
    assert names == expected_names
    np.testing.assert_allclose(images, expected, atol=1e-6)
  assert data.background.shape == (3, 20, 31, 31) and data.evaluation.shape == (2, 20, 31, 31)
  assert os.path.isfile(os.path.join(data_dir, omniglot_data.CACHE_FILE))


def test_cache_is_written_once_and_reused(tmp_path):
  data_dir = make_tree(tmp_path)
  first = omniglot_data.load_omniglot(data_dir, progress=False)
  cache = os.path.join(data_dir, omniglot_data.CACHE_FILE)
  stamp = os.path.getmtime(cache)
  # Break every PNG: a second load (new process: memory cache cleared) must read the cache.
  for folder, _, files in os.walk(os.path.join(data_dir, "images_background")):
    for name in files:
      with open(os.path.join(folder, name), "wb") as f:
        f.write(b"not a png")
  omniglot_data._load.cache_clear()
  second = omniglot_data.load_omniglot(data_dir, progress=False)
  np.testing.assert_array_equal(first.background, second.background)
  assert second.evaluation_names == first.evaluation_names
  assert os.path.getmtime(cache) == stamp
  # In one process the arrays are kept in memory (the same object).
  assert omniglot_data.load_omniglot(data_dir, progress=False) is second
  # A stale cache (another version) is rebuilt from the PNGs: now broken, so it says which.
  np.savez(cache, version=np.int64(omniglot_data.CACHE_VERSION + 1))
  omniglot_data._load.cache_clear()
  with pytest.raises(ValueError, match="not a readable PNG"):
    omniglot_data.load_omniglot(data_dir, progress=False)


def test_bad_trees_say_what_is_expected_and_where_omniglot_comes_from(tmp_path):
  where = r"images_background.*github\.com/brendenlake/omniglot"
  with pytest.raises(omniglot_data.OmniglotLayoutError, match=rf"does not exist.*{where}"):
    omniglot_data.load_omniglot(str(tmp_path / "missing"))
  with pytest.raises(omniglot_data.OmniglotLayoutError, match=rf"no directory given.*{where}"):
    omniglot_data.load_omniglot("")
  (tmp_path / "empty").mkdir()
  with pytest.raises(omniglot_data.OmniglotLayoutError, match=rf"neither.*{where}"):
    omniglot_data.load_omniglot(str(tmp_path / "empty"))
  half = tmp_path / "half" / "images_background"
  half.mkdir(parents=True)
  with pytest.raises(omniglot_data.OmniglotLayoutError, match=r"not \['images_evaluation'\]"):
    omniglot_data.load_omniglot(str(tmp_path / "half"))
  (tmp_path / "half" / "images_evaluation").mkdir()
  with pytest.raises(omniglot_data.OmniglotLayoutError, match="holds no PNG drawings"):
    omniglot_data.load_omniglot(str(tmp_path / "half"))

  def broken(name, change):
    data_dir = make_tree(tmp_path / name)
    change(os.path.join(data_dir, "images_background", "Alpha", "character01"))
    omniglot_data._load.cache_clear()
    return data_dir

  short = broken("short", lambda d: os.remove(os.path.join(d, sorted(os.listdir(d))[0])))
  with pytest.raises(ValueError, match=r"without exactly 20 drawings, e\.g\. Alpha/character01"):
    omniglot_data.load_omniglot(short, progress=False)

  def corrupt(d):
    with open(os.path.join(d, sorted(os.listdir(d))[0]), "wb") as f:
      f.write(b"\x89PNG garbage")

  with pytest.raises(ValueError, match=r"0001_01\.png is not a readable PNG"):
    omniglot_data.load_omniglot(broken("corrupt", corrupt), progress=False)

  def deep(d):
    os.makedirs(os.path.join(d, "extra"))
    with open(os.path.join(d, "extra", "x.png"), "wb") as f:
      f.write(png_bytes(1))

  with pytest.raises(ValueError, match="unexpected depth"):
    omniglot_data.load_omniglot(broken("deep", deep), progress=False)
  bad_zip = tmp_path / "zipped"
  bad_zip.mkdir()
  (bad_zip / "images_background.zip").write_bytes(b"not a zip")
  (bad_zip / "images_evaluation.zip").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a readable zip"):
    omniglot_data.load_omniglot(str(bad_zip), progress=False)


def test_splits_paper_and_standard(tmp_path):
  data = omniglot_data.load_omniglot(make_tree(tmp_path), progress=False)
  train, test = omniglot_data.split_characters(data, "standard")
  assert train is data.background and test is data.evaluation
  train, test = omniglot_data.split_characters(data, "paper", held_out=2)
  assert train.shape[0] == 3 and test.shape[0] == 2
  merged = np.concatenate([data.background, data.evaluation])
  order = np.random.default_rng(omniglot_data.PAPER_SPLIT_SEED).permutation(5)
  np.testing.assert_array_equal(np.concatenate([train, test]), merged[order])
  again = omniglot_data.split_characters(data, "paper", held_out=2)  # A fixed shuffle.
  np.testing.assert_array_equal(again[1], test)
  with pytest.raises(ValueError, match="held_out"):
    omniglot_data.split_characters(data, "paper", held_out=5)
  task, params = envs.make("Omniglot-v0", data_dir=str(tmp_path), held_out_classes=2, n_way=2)
  assert isinstance(task, Omniglot) and params.images.shape == (3, 20, 31, 31)
  assert task.params_for_split("test").images.shape == (2, 20, 31, 31)
  config = episodic_defaults(
    "Omniglot-v0", data_dir=str(tmp_path), n_items=2, omniglot_split="standard"
  )
  _, train_params, held_out = config.make_task()
  assert train_params.images.shape[0] == 3 and held_out.images.shape[0] == 2  # Background / eval.


def test_resize_is_the_references_bilinear():
  from skimage import transform

  image = np.random.default_rng(0).random((105, 105))
  expected = transform.resize(image, (31, 31), order=1, mode="constant", anti_aliasing=False)
  np.testing.assert_allclose(omniglot_data.resize(image), expected, atol=1e-6)


def test_synthetic_glyphs_are_deterministic_varied_and_not_omniglot():
  glyphs = omniglot_data.synthetic_glyphs(30, seed=0)
  assert glyphs.shape == (30, 20, 31, 31) and glyphs.dtype == np.float32
  assert glyphs.min() >= 0.0 and glyphs.max() == 1.0 and (glyphs < 0.5).any()
  assert not glyphs.flags.writeable  # Cached in memory: read-only.
  np.testing.assert_array_equal(omniglot_data.synthetic_glyphs(10, seed=0), glyphs[:10])
  assert not np.array_equal(omniglot_data.synthetic_glyphs(10, seed=1), glyphs[:10])
  flat = glyphs.reshape(30, 20, -1)
  within = np.mean([np.abs(flat[c, 0] - flat[c, 1:]).mean() for c in range(30)])
  across = np.mean([np.abs(flat[c, 0] - flat[(c + 1) % 30, 1:]).mean() for c in range(30)])
  assert 0 < within < 0.7 * across  # Drawings of a class differ, but less than classes do.
  assert "NOT Omniglot" in omniglot_data.synthetic_glyphs.__doc__
  assert "not Omniglot" in SyntheticGlyphs.__doc__.replace("NOT", "not")


# --------------------------------------------------------------------------
# Episodes (SPEC §5.6).


def numpy_episode(images, characters, rotations, drawings, orders, test_index):
  """SPEC §5.6 from the text: per shot cycle, one drawing of each of the n characters in
  that cycle's order with its one-hot label (the character's index among the n); then one
  other drawing of the test character without label. Each character rotated by its own
  quarter turns for the whole episode."""
  n = len(characters)
  steps, labels = [], []
  for cycle, order in enumerate(orders):
    for label in order:
      picture = images[characters[label], drawings[label, cycle]]
      steps.append(np.rot90(picture, rotations[label]))
      labels.append(np.eye(n)[label])
  test = images[characters[test_index], drawings[test_index, len(orders)]]
  steps.append(np.rot90(test, rotations[test_index]))
  labels.append(np.zeros(n))
  return np.array(steps), np.array(labels), np.eye(n)[test_index]


@pytest.mark.parametrize("n_way, n_shots", [(5, 1), (3, 2)])
def test_episode_follows_the_spec(n_way, n_shots):
  rng = np.random.default_rng(0)
  images = rng.random((12, 20, 31, 31)).astype(np.float32)  # Asymmetric: rotations show.
  task = SyntheticGlyphs(n_way=n_way, n_shots=n_shots, num_classes=20, held_out_classes=5)
  params = task.validate_params(TaskParams(images=jnp.asarray(images)))
  assert task.episode_length == n_way * n_shots + 1
  keys = jax.random.split(jax.random.key(1), 300)
  batch = jax.jit(jax.vmap(task.sample_episode, in_axes=(0, None)))(keys, params)
  batch = jax.tree.map(np.asarray, batch)
  for k in range(5):
    episode = jax.tree.map(lambda x: x[k], batch)
    assert episode.images.shape == (task.episode_length, 31, 31)
    assert episode.labels.shape == (task.episode_length, n_way)
    assert len(set(episode.characters)) == n_way  # Distinct characters.
    assert all(len(set(row)) == n_shots + 1 for row in episode.drawings)  # "one other drawing"
    assert set(episode.rotations) <= {0, 1, 2, 3}
    orders = episode.labels[:-1].argmax(1).reshape(n_shots, n_way)
    for order in orders:
      assert sorted(order) == list(range(n_way))  # Every label once per cycle.
    expected = numpy_episode(
      images, episode.characters, episode.rotations, episode.drawings, orders, episode.test_index
    )
    np.testing.assert_array_equal(episode.images, expected[0])
    np.testing.assert_array_equal(episode.labels, expected[1])
    np.testing.assert_array_equal(episode.target, expected[2])
  # vmap equals a loop (jit of one episode); rotations and test labels are drawn uniformly.
  sample = jax.jit(task.sample_episode)
  for k in (0, 7):
    np.testing.assert_array_equal(batch.images[k], sample(keys[k], params).images)
  for counts, size in (
    (np.bincount(batch.rotations.ravel(), minlength=4), 4),
    (np.bincount(batch.test_index, minlength=n_way), n_way),
  ):
    assert counts.min() > 0.6 * counts.sum() / size


def test_params_are_checked():
  task = SyntheticGlyphs(num_classes=20, held_out_classes=5)
  with pytest.raises(ValueError, match=r"expected \[C, D, 31, 31\]"):
    task.validate_params(TaskParams(images=jnp.zeros((4, 20, 31, 31))))  # C < n_way.
  with pytest.raises(ValueError, match="n_way"):
    SyntheticGlyphs(n_way=1)
  with pytest.raises(ValueError, match="held-out classes"):
    SyntheticGlyphs(num_classes=20, held_out_classes=3)
  task, params = envs.make("SyntheticGlyphs-v0", num_classes=20, held_out_classes=5)
  assert params.images.shape == (15, 20, 31, 31)
  assert task.params_for_split("test").images.shape == (5, 20, 31, 31)


# --------------------------------------------------------------------------
# The network (SPEC §5.6).


def numpy_output_layer(w, alpha, eta, embeddings, labels, plastic=True):
  """SPEC §5.6 / §2.2 per synapse: y_t = softmax(e_t @ (W + alpha * Hebb_tm1) + 1000 label_t);
  Oja: Hebb_ij += eta * y_j * (e_i - y_j * Hebb_ij); Hebb_0 = 0. Returns the logits [T, n]."""
  e_size, n = w.shape
  hebb = np.zeros((e_size, n))
  out = []
  for e, label in zip(embeddings.astype(np.float64), labels):
    logits = np.zeros(n)
    for j in range(n):
      for i in range(e_size):
        a = alpha if np.ndim(alpha) == 0 else alpha[i, j]
        logits[j] += e[i] * (w[i, j] + (a * hebb[i, j] if plastic else 0.0))
      logits[j] += 1000.0 * label[j]
    y = np.exp(logits - logits.max())
    y /= y.sum()
    if plastic:
      for i in range(e_size):
        for j in range(n):
          hebb[i, j] += eta * y[j] * (e[i] - y[j] * hebb[i, j])
    out.append(logits)
  return np.array(out)


def test_conv_embedding_sizes_and_init():
  assert omniglot_net.embedding_sizes() == [31, 15, 7, 3, 1]
  net = omniglot_net.OmniglotNet()
  variables = net.init(jax.random.key(0), jnp.zeros((6, 31, 31)), jnp.zeros((6, 5)))
  p = variables["params"]
  assert p["embedding"]["conv0"]["kernel"].shape == (3, 3, 1, 64)
  assert p["embedding"]["conv3"]["kernel"].shape == (3, 3, 64, 64)
  assert p["w"].shape == p["alpha"].shape == (64, 5) and p["eta"].shape == ()
  assert 0.0 <= float(p["alpha"].min()) and float(p["alpha"].max()) <= 0.01  # 0.01 U(0, 1)
  assert 0.007 < float(p["w"].std()) < 0.013 and float(p["eta"]) == pytest.approx(0.01)
  bound = 1 / np.sqrt(9 * 64)  # PyTorch's conv default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  assert float(jnp.abs(p["embedding"]["conv2"]["kernel"]).max()) <= bound
  baseline = omniglot_net.OmniglotNet(plastic=False).init(
    jax.random.key(0), jnp.zeros((6, 31, 31)), jnp.zeros((6, 5))
  )["params"]
  assert set(baseline) == {"embedding", "w"}
  single = omniglot_net.OmniglotNet(alpha_kind="single").init(
    jax.random.key(0), jnp.zeros((6, 31, 31)), jnp.zeros((6, 5))
  )["params"]
  assert single["alpha"].shape == () and float(single["alpha"]) == pytest.approx(0.01)
  with pytest.raises(ValueError, match="31 x 31"):
    net.init(jax.random.key(0), jnp.zeros((6, 28, 28)), jnp.zeros((6, 5)))


def test_patch_convolution_is_xlas_convolution():
  """conv_impl="patches" (slices + matmul, fast in XLA:CPU loops) = nn.Conv's lax convolution."""
  images = jax.random.uniform(jax.random.key(0), (7, 31, 31))
  patches, plain = (omniglot_net.ConvEmbedding(conv_impl=impl) for impl in ("patches", "xla"))
  variables = patches.init(jax.random.key(1), images)

  def loss(net):
    return jax.jit(jax.value_and_grad(lambda v: jnp.sum(jnp.square(net.apply(v, images) - 0.1))))

  (value_a, grad_a), (value_b, grad_b) = loss(patches)(variables), loss(plain)(variables)
  assert float(value_a) == pytest.approx(float(value_b), rel=1e-5)
  for a, b in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("plastic, alpha_kind", [(True, "full"), (True, "single"), (False, "full")])
def test_oja_output_layer_matches_numpy_loop(plastic, alpha_kind):
  n, t, features = 3, 4, 6
  keys = jax.random.split(jax.random.key(3), 5)
  labels = jnp.asarray(np.vstack([np.eye(n), np.zeros((1, n))]), jnp.float32)  # Test step last.
  # The layer alone, on O(1) embeddings and parameters: plasticity.plastic_drive + Oja.
  alpha_shape = (features, n) if alpha_kind == "full" else ()
  params = omniglot_net.plasticity.PlasticParams(
    w=jax.random.normal(keys[0], (features, n)),
    alpha=jax.random.uniform(keys[1], alpha_shape) if plastic else None,
    eta=jnp.float32(0.4) if plastic else None,
  )
  embeddings = jnp.tanh(jax.random.normal(keys[2], (t, features)))
  hebb = jnp.zeros((features, n)) if plastic else None
  step = jax.jit(omniglot_net.output_step, static_argnums=4)
  got = []
  for e, label in zip(embeddings, labels):
    hebb, logits = step(params, hebb, e, label, alpha_kind)
    got.append(logits)
  expected = numpy_output_layer(
    np.asarray(params.w),
    np.asarray(params.alpha) if plastic else 0.0,
    float(params.eta) if plastic else 0.0,
    np.asarray(embeddings),
    np.asarray(labels),
    plastic,
  )
  np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-4)
  # The whole network: the conv embedding, then this layer (alpha raised so the trace counts).
  net = omniglot_net.OmniglotNet(
    n_way=n, plastic=plastic, alpha_kind=alpha_kind, eta_init=0.4, features=features
  )
  images = jax.random.uniform(keys[3], (t, 31, 31))
  p = dict(jax.jit(net.init)(jax.random.key(0), images, labels)["params"])
  if plastic:
    p["alpha"] = p["alpha"] * 100.0
  e = omniglot_net.ConvEmbedding(features).apply({"params": p["embedding"]}, images)  # [T, E]
  expected = numpy_output_layer(
    np.asarray(p["w"]),
    np.asarray(p["alpha"]) if plastic else 0.0,
    float(p["eta"]) if plastic else 0.0,
    np.asarray(e),
    np.asarray(labels),
    plastic,
  )
  logits = jax.jit(net.apply)({"params": p}, images, labels)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)
  # The label clamps y on the presentation steps.
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits[:n])), np.eye(n), atol=1e-6)


def test_the_oja_trace_is_a_one_shot_memory():
  """With W = 0, alpha = 1, eta = 1, Oja's rule leaves Hebb[:, k] = e_k of the drawing shown
  with label k: the untrained plastic network classifies the test drawing by its dot product
  with the stored ones, well above chance on held-out glyphs; without plasticity the labels
  (a fresh assignment per episode) leave the network at chance, 1/5 (alpha = 0: W alone)."""
  task = SyntheticGlyphs(num_classes=40, held_out_classes=10)
  held_out = task.params_for_split("test")
  keys = jax.random.split(jax.random.key(0), 200)
  batch = jax.vmap(task.sample_episode, in_axes=(0, None))(keys, held_out)
  net = omniglot_net.OmniglotNet(eta_init=1.0)
  p = dict(net.init(jax.random.key(1), batch.images[0], batch.labels[0])["params"])
  accuracy_of = jax.jit(
    lambda p: jnp.mean(
      jnp.argmax(
        jax.vmap(lambda i, l: net.apply({"params": p}, i, l)[-1])(batch.images, batch.labels), -1
      )
      == batch.test_index
    )
  )
  accuracy = {
    True: float(accuracy_of(dict(p, w=jnp.zeros_like(p["w"]), alpha=jnp.ones_like(p["alpha"])))),
    False: float(accuracy_of(dict(p, alpha=jnp.zeros_like(p["alpha"])))),  # W only.
  }
  assert accuracy[True] > 0.3  # Chance 0.2; about 0.4 measured (200 episodes: sd ~0.03).
  assert 0.1 < accuracy[False] < 0.3


def test_output_layer_gradients_are_finite_and_match_finite_differences():
  from jax.test_util import check_grads

  n, features = 3, 5
  key = jax.random.split(jax.random.key(2), 4)
  params = omniglot_net.plasticity.PlasticParams(
    w=jax.random.normal(key[0], (features, n)),
    alpha=jax.random.uniform(key[1], (features, n)),
    eta=jnp.float32(0.3),
  )
  embeddings = jax.random.normal(key[2], (4, features))
  labels = jnp.asarray(np.vstack([np.eye(n), np.zeros((1, n))]) * 0.001, jnp.float32)
  target = jnp.eye(n)[1]

  def loss(params):
    def step(hebb, inputs):
      return omniglot_net.output_step(params, hebb, *inputs, "full")

    _, logits = jax.lax.scan(step, jnp.zeros((features, n)), (embeddings, labels))
    return omniglot_net.binary_cross_entropy(logits[-1], target)

  grads = jax.jit(jax.grad(loss))(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads.eta)) > 0 and float(jnp.abs(grads.alpha).max()) > 0
  check_grads(jax.jit(loss), (params,), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)


def test_binary_cross_entropy_is_pytorchs():
  logits = jnp.array([2.0, -1.0, 0.5, 0.0, 3.0])
  target = jnp.eye(5)[2]
  y = np.asarray(jax.nn.softmax(logits), np.float64)
  t = np.asarray(target)
  expected = -np.mean(t * np.log(y) + (1 - t) * np.log(1 - y))
  bce = jax.jit(omniglot_net.binary_cross_entropy)
  assert float(bce(logits, target)) == pytest.approx(expected, 1e-5)
  # A clamped (saturated) output: log 0 is clamped at -100 as in PyTorch, gradients finite.
  saturated = jnp.array([1000.0, 0.0, 0.0, 0.0, 0.0])
  assert float(bce(saturated, target)) == pytest.approx(40.0)
  grad = jax.jit(jax.grad(omniglot_net.binary_cross_entropy))(saturated, target)
  assert np.all(np.isfinite(np.asarray(grad)))


# --------------------------------------------------------------------------
# The trainer on SyntheticGlyphs-v0.

TINY = dict(
  num_classes=20,
  held_out_classes=5,
  batch_size=2,
  iterations=6,
  eval_every=3,
  eval_episodes=4,
  log_every=3,
  chunk_size=3,
  checkpoint_every=3,
  progress=False,
  fast_compile=True,
)


def tiny(**overrides):
  return episodic_defaults("SyntheticGlyphs-v0", **dict(TINY, **overrides))


def read_rows(workdir):
  return metrics_lib.read_csv(os.path.join(workdir, metrics_lib.METRICS_CSV))


def test_defaults_and_settings():
  config = tiny()
  assert (config.learning_rate, config.lr_decay_every, config.lr_decay) == (3e-5, 1_000_000, 0.666)
  paper = episodic_defaults("SyntheticGlyphs-v0", num_classes=20, held_out_classes=5)
  assert (paper.iterations, paper.batch_size, paper.eval_episodes) == (5_000_000, 1, 100)
  assert config.adapter.scores == ("loss", "accuracy")
  with pytest.raises(ValueError, match=r"network='lstm' is not available.*plastic, rnn"):
    tiny(network="lstm")
  with pytest.raises(ValueError, match=r"Omniglot-v0 needs --data_dir.*brendenlake"):
    episodic_defaults("Omniglot-v0")
  with pytest.raises(ValueError, match="log_every=4 must divide eval_every=3"):
    tiny(log_every=4)
  with pytest.raises(ValueError, match="omniglot_split"):
    tiny(omniglot_split="random")
  # The step decay: lr x 0.666 every lr_decay_every episodes (count x batch_size).
  schedule = episodic_learner.learning_rate(tiny(lr_decay_every=4, learning_rate=1.0))
  assert [float(schedule(c)) for c in (0, 1, 2, 3, 4)] == pytest.approx(
    [1.0, 1.0, 0.666, 0.666, 0.666**2]
  )
  completion = episodic_defaults("PatternCompletion-v0", pattern_size=20)
  assert episodic_learner.learning_rate(completion) == 3e-4  # Constant: optax.adam(float).


def test_configs_saved_before_the_new_fields_resume_as_they_ran():
  saved = episodic_defaults("PatternCompletion-v0", pattern_size=20).to_dict()
  for name in EpisodicConfig.SAVED_BEFORE_FIELD_EXISTED:
    del saved[name]
  config = EpisodicConfig.from_json(json.dumps(saved))
  assert (config.lr_decay_every, config.log_every) == (0, 1)
  assert episodic_learner.learning_rate(config) == config.learning_rate


def test_smoke_run_writes_accuracy_and_resumes(tmp_path):
  workdir = str(tmp_path / "glyphs")
  episodic_train.train_and_evaluate(tiny(iterations=3), workdir)
  episodic_train.train_and_evaluate(tiny(resume=True), workdir)
  saved = read_rows(workdir)
  assert [r["iteration"] for r in saved] == [2, 5]  # One row per log_every = 3 iterations.
  assert {"loss_seed0", "accuracy_median", "eval_accuracy_seed0", "eval_loss_median"} <= set(
    saved[0]
  )
  assert "bit_error_median" not in saved[0]
  for row in saved:
    assert 0.0 <= row["accuracy_median"] <= 1.0 and 0.0 <= row["eval_accuracy_median"] <= 1.0
    assert row["loss_median"] > 0
  assert json.load(open(os.path.join(workdir, run_lib.CONFIG_JSON)))["task"] == "SyntheticGlyphs-v0"
  assert os.path.exists(os.path.join(workdir, episodic_train.CURVES_PNG))
  out = episodic_plots.plot_one_shot([workdir], str(tmp_path / "episodes.png"))
  assert os.path.getsize(out) > 0


def test_metrics_rows_are_means_over_log_every_iterations():
  grouper = episodic_train._RowGrouper(3, 7, ("loss", "accuracy"))
  metrics = {"loss": np.arange(10.0).reshape(2, 5), "accuracy": np.ones((2, 5))}  # [S, n]
  rows = grouper.add(0, metrics, 1.0)  # Iterations 0-4: one full group (0-2), 3-4 wait.
  assert [r["iteration"] for r in rows] == [2]
  assert (rows[0]["loss_seed0"], rows[0]["loss_seed1"], rows[0]["loss_median"]) == (1.0, 6.0, 3.5)
  rows = grouper.add(5, {"loss": np.full((2, 3), 9.0), "accuracy": np.zeros((2, 3))}, 1.0)
  assert [r["iteration"] for r in rows] == [5, 7]  # 3-5, then 6-7 (the run's last iteration).
  assert rows[0]["loss_seed0"] == pytest.approx((3 + 4 + 9) / 3)
  assert rows[0]["accuracy_seed0"] == pytest.approx(2 / 3) and rows[1]["accuracy_seed1"] == 0.0
  one = episodic_train._RowGrouper(1, 9, ("loss",)).add(4, {"loss": np.float32([[0.1, 0.2]])}, 2.0)
  assert [(r["iteration"], r["loss_seed0"]) for r in one] == [
    (4, float(np.float32(0.1))),
    (5, float(np.float32(0.2))),
  ]


def test_flags_give_the_one_shot_defaults(tmp_path):
  fv = flags.FlagValues()
  episodic.define_flags(fv)
  fv(
    [
      "prog",
      "--task=SyntheticGlyphs-v0",
      "--num_classes=20",
      "--held_out_classes=5",
      "--network=rnn",
      f"--workdir={tmp_path}",
    ]
  )
  config = episodic.config_from_flags(fv)
  assert (config.task, config.network, config.learning_rate) == ("SyntheticGlyphs-v0", "rnn", 3e-5)
  assert (config.log_every, config.eval_episodes) == (100, 100)
  fv = flags.FlagValues()
  episodic.define_flags(fv)
  fv(
    [
      "prog",
      "--task=SyntheticGlyphs-v0",
      "--network=lstm",
      "--num_classes=20",
      "--held_out_classes=5",
      f"--workdir={tmp_path}",
    ]
  )
  with pytest.raises(ValueError, match="network"):
    episodic.config_from_flags(fv)
