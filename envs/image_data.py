"""Grey 32x32 images for the image-completion task (SPEC.md §5.5), all offline.

Two sources, both returning `[M, 1024]` float32 images normalised as SPEC
§5.5 (grey = sum of the colour channels; minus the mean; divided by
`1e-8 + max|p|`, so values lie in [-1, 1] with zero mean):

- `skimage` (default): non-overlapping 32x32 patches of the natural
  photographs shipped inside scikit-image (`skimage.data`; nothing is
  downloaded). Training and test images come from different photographs
  (`TRAIN_IMAGES`, `TEST_IMAGES`). Near-constant patches (grey standard
  deviation under 2% of the photograph's range: sky, black background) are
  dropped: after normalisation they would be amplified noise. Patch counts
  per split are printed by `python -m envs.image_data`.
- `cifar10`: the CIFAR-10 python batches (`data_batch_1..5` for training,
  `test_batch` for test) in a directory the user has, as in the paper. (The
  reference scripts train on `data_batch_1..4` and test on `data_batch_5`.)

Episodes draw their images without replacement (the reference draws each
independently, so an episode may repeat one).
"""

from __future__ import annotations

import functools
import os
import pickle
from typing import Literal

import numpy as np

IMAGE_SIDE = 32
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE
Split = Literal["train", "test"]
SOURCES = ("skimage", "cifar10")

# Photographs of `skimage.data` (function names). Disjoint: a test patch never
# comes from a training photograph. (`cat` is `chelsea`, so only one is used.)
TRAIN_IMAGES = (
  "astronaut",
  "camera",
  "coffee",
  "rocket",
  "hubble_deep_field",
  "immunohistochemistry",
  "retina",
  "coins",
  "moon",
  "grass",
  "gravel",
  "brick",
)
TEST_IMAGES = ("chelsea", "stereo_motorcycle", "clock")
MIN_RELATIVE_STD = 0.02

CIFAR_TRAIN_FILES = tuple(f"data_batch_{k}" for k in range(1, 6))
CIFAR_TEST_FILES = ("test_batch",)


def normalise(grey: np.ndarray) -> np.ndarray:
  """[M, 1024] grey images -> zero mean, max |p| = 1 (SPEC §5.5), float32."""
  grey = np.asarray(grey, np.float64)
  centred = grey - grey.mean(axis=1, keepdims=True)
  return (centred / (1e-8 + np.abs(centred).max(axis=1, keepdims=True))).astype(np.float32)


def to_grey(image: np.ndarray) -> np.ndarray:
  """[H, W] or [H, W, C] -> [H, W] float64: the sum of the colour channels (alpha dropped)."""
  image = np.asarray(image, np.float64)
  if image.ndim == 2:
    return image
  return image[..., :3].sum(axis=-1)


def patches(grey: np.ndarray, side: int = IMAGE_SIDE) -> np.ndarray:
  """Non-overlapping [side, side] tiles of a grey image, near-constant ones dropped: [M, side**2]."""
  rows, cols = grey.shape[0] // side, grey.shape[1] // side
  tiles = grey[: rows * side, : cols * side].reshape(rows, side, cols, side)
  tiles = tiles.transpose(0, 2, 1, 3).reshape(rows * cols, side * side)
  spread = max(float(grey.max() - grey.min()), 1e-8)
  return tiles[tiles.std(axis=1) >= MIN_RELATIVE_STD * spread]


def _skimage_photo(name: str) -> np.ndarray:
  try:
    from skimage import data  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      "ImageCompletion's default images come from scikit-image: pip install scikit-image "
      "(or use source='cifar10' with a CIFAR-10 directory)."
    ) from e
  photo = getattr(data, name)()
  return photo[0] if name == "stereo_motorcycle" else photo  # (left, right, disparity)


@functools.lru_cache(maxsize=4)
def skimage_images(split: Split) -> np.ndarray:
  """[M, 1024] normalised patches of the split's scikit-image photographs."""
  names = {"train": TRAIN_IMAGES, "test": TEST_IMAGES}[_check_split(split)]
  grey = np.concatenate([patches(to_grey(_skimage_photo(name))) for name in names])
  return normalise(grey)


def _check_split(split: str) -> str:
  if split not in ("train", "test"):
    raise ValueError(f"split={split!r} is not one of 'train', 'test'.")
  return split


def _read_cifar_batch(path: str) -> np.ndarray:
  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"] if b"data" in batch else batch["data"], np.uint8)
  except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
    raise ValueError(
      f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e}); expected a pickled "
      "dict with 'data' [10000, 3072] uint8 from cifar-10-python.tar.gz."
    ) from e
  if data.ndim != 2 or data.shape[1] != 3 * IMAGE_PIXELS:
    raise ValueError(f"{path}: 'data' has shape {data.shape}; expected [N, 3072] (CIFAR-10).")
  return data


@functools.lru_cache(maxsize=4)
def cifar10_images(data_dir: str, split: Split) -> np.ndarray:
  """[M, 1024] normalised grey CIFAR-10 images of a split, from the python batches in `data_dir`.

  Raises:
    FileNotFoundError: the directory or a batch file is missing (names what is expected).
    ValueError: a batch file is malformed.
  """
  files = {"train": CIFAR_TRAIN_FILES, "test": CIFAR_TEST_FILES}[_check_split(split)]
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
      f"CIFAR-10 directory {data_dir!r} does not exist; pass the folder that holds "
      f"{', '.join(CIFAR_TRAIN_FILES + CIFAR_TEST_FILES)} (cifar-10-batches-py, from "
      "cifar-10-python.tar.gz), or use the default scikit-image source."
    )
  missing = [name for name in files if not os.path.isfile(os.path.join(data_dir, name))]
  if missing:
    raise FileNotFoundError(
      f"{data_dir} lacks the CIFAR-10 python batch file(s) {missing}; expected "
      f"{', '.join(CIFAR_TRAIN_FILES + CIFAR_TEST_FILES)} (cifar-10-batches-py)."
    )
  data = np.concatenate([_read_cifar_batch(os.path.join(data_dir, name)) for name in files])
  grey = data.reshape(-1, 3, IMAGE_PIXELS).astype(np.float64).sum(axis=1)  # Channel planes.
  return normalise(grey)


def load_images(source: str, split: Split, data_dir: str = "") -> np.ndarray:
  """[M, 1024] float32 images of `source` ('skimage' or 'cifar10') and `split`."""
  if source == "skimage":
    return skimage_images(split)
  if source == "cifar10":
    if not data_dir:
      raise ValueError("source='cifar10' needs data_dir: the folder with the CIFAR-10 batches.")
    return cifar10_images(os.path.abspath(data_dir), split)
  raise ValueError(f"source={source!r} is not one of {SOURCES}.")


if __name__ == "__main__":
  for split_name in ("train", "test"):
    names = TRAIN_IMAGES if split_name == "train" else TEST_IMAGES
    counts = [len(patches(to_grey(_skimage_photo(n)))) for n in names]
    print(
      f"{split_name}: {sum(counts)} patches: "
      + ", ".join(f"{n} {c}" for n, c in zip(names, counts))
    )
