"""Omniglot characters as [C, 20, 31, 31] arrays (SPEC.md §5.6), and an offline stand-in.

Omniglot (Lake et al.) is not shipped and never downloaded here. The user
gives the folder where the python release of github.com/brendenlake/omniglot
lies; `load_omniglot(data_dir)` finds, in `data_dir` itself or in its
`python/`, `omniglot/python/` or `omniglot-master/python/` subfolder:

    images_background/ALPHABET/CHARACTER/*.png   (or images_background.zip)
    images_evaluation/ALPHABET/CHARACTER/*.png   (or images_evaluation.zip)

(964 + 659 = 1623 characters, 20 drawings of 105 x 105 each). Every drawing is
read as grey / 255 and resized to 31 x 31 (bilinear, without anti-aliasing,
as the reference's `skimage.transform.resize(p, (31, 31))`). The first load
reads ~32k PNGs (a progress bar) and writes them as one array file,
`data_dir/omniglot_31x31.npz`; later loads read that file (and keep the
arrays in memory for the process).

`split_characters` gives the two train/test splits:
- `paper` (the reference): both sets merged, the characters shuffled with a
  fixed seed (`PAPER_SPLIT_SEED`), the last `held_out` (100) for testing.
- `standard` (Lake et al.): `images_background` for training,
  `images_evaluation` for testing.

`synthetic_glyphs(num_classes, seed)` is NOT Omniglot: a procedurally
generated alphabet (each class a few random pen strokes; each of its 20
drawings the strokes jittered, rotated, scaled, shifted and drawn with a
random thickness), in the same layout ([C, 20, 31, 31] float32 in [0, 1],
white background 1, ink 0). It is the test data and the offline demo; its
numbers say nothing about Omniglot.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import zipfile
from typing import Callable, Literal

import numpy as np

IMAGE_SIDE = 31
DRAWINGS_PER_CHARACTER = 20
SETS = ("images_background", "images_evaluation")
SPLITS = ("paper", "standard")
Split = Literal["paper", "standard"]
Part = Literal["train", "test"]
PAPER_HELD_OUT = 100  # The reference's NBTESTCLASSES.
PAPER_SPLIT_SEED = 0  # One fixed shuffle of the merged characters: the same split for every run.
CACHE_FILE = "omniglot_31x31.npz"
CACHE_VERSION = 1
# Where the sets may lie inside the user's data_dir.
RELEASE_ROOTS = ("", "python", os.path.join("omniglot", "python"), "omniglot-master/python")

EXPECTED_LAYOUT = (
  "expected the Omniglot python release: DATA_DIR/images_background/ and "
  "DATA_DIR/images_evaluation/ (or images_background.zip and images_evaluation.zip, or the "
  "repository's omniglot-master/python/ folder inside DATA_DIR), each holding "
  f"ALPHABET/CHARACTER/*.png with {DRAWINGS_PER_CHARACTER} drawings per character. Omniglot "
  "comes from https://github.com/brendenlake/omniglot (python/images_background.zip, "
  "python/images_evaluation.zip); nothing is downloaded here. Offline, the "
  "SyntheticGlyphs-v0 task is a stand-in (not Omniglot)"
)


class OmniglotLayoutError(FileNotFoundError):
  """The data directory is missing, empty or not laid out as the Omniglot release."""


@dataclasses.dataclass(frozen=True)
class OmniglotData:
  """The two sets of the release, resized.

  Attributes:
    background: [964, 20, 31, 31] float32 in [0, 1] (`images_background`).
    background_names: 'ALPHABET/CHARACTER' of each background row.
    evaluation: [659, 20, 31, 31] float32 (`images_evaluation`).
    evaluation_names: 'ALPHABET/CHARACTER' of each evaluation row.
  """

  background: np.ndarray
  background_names: tuple[str, ...]
  evaluation: np.ndarray
  evaluation_names: tuple[str, ...]


# --------------------------------------------------------------------------
# Finding and reading the release.


def _layout_error(data_dir: str, problem: str) -> OmniglotLayoutError:
  return OmniglotLayoutError(f"Omniglot data_dir {data_dir!r}: {problem}; {EXPECTED_LAYOUT}.")


def find_release(data_dir: str) -> dict[str, str]:
  """The path (folder or .zip) of each set in `SETS` under `data_dir`.

  Raises:
    OmniglotLayoutError: `data_dir` is missing or lacks a set.
  """
  if not data_dir or not os.path.isdir(data_dir):
    problem = "no directory given" if not data_dir else "the directory does not exist"
    raise _layout_error(data_dir, problem)
  for root in RELEASE_ROOTS:
    base = os.path.join(data_dir, root)
    found = {}
    for name in SETS:
      folder, archive = os.path.join(base, name), os.path.join(base, name + ".zip")
      if os.path.isdir(folder):
        found[name] = _unnest(folder, name)
      elif os.path.isfile(archive):
        found[name] = archive
    if len(found) == len(SETS):
      return found
    if found:
      missing = sorted(set(SETS) - set(found))
      raise _layout_error(data_dir, f"found {sorted(found)} in {base!r} but not {missing}")
  raise _layout_error(data_dir, "neither images_background nor images_evaluation was found")


def _unnest(folder: str, name: str) -> str:
  """`folder/name` when an unzip tool made `images_background/images_background/...`."""
  entries = [e for e in os.listdir(folder) if not e.startswith((".", "__MACOSX"))]
  inner = os.path.join(folder, name)
  return inner if entries == [name] and os.path.isdir(inner) else folder


def _list_set(path: str) -> list[tuple[str, str, str, Callable[[], bytes]]]:
  """(alphabet, character, file name, reader of the PNG bytes) of every PNG of one set."""
  if path.endswith(".zip"):
    try:
      archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
      raise ValueError(f"{path} is not a readable zip file ({e}); {EXPECTED_LAYOUT}.") from e
    set_name = os.path.basename(path)[: -len(".zip")]
    entries = []
    for info in archive.infolist():
      parts = [p for p in info.filename.split("/") if p]
      if info.is_dir() or not parts or parts[0].startswith(("__MACOSX", ".")):
        continue
      if parts[-1].startswith("."):
        continue
      if parts[0] == set_name:
        parts = parts[1:]
      entries.append((parts, info.filename, functools.partial(archive.read, info.filename)))
  else:
    entries = []
    for folder, dirs, files in os.walk(path):
      dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__MACOSX")))
      rel = os.path.relpath(folder, path)
      prefix = [] if rel == "." else rel.split(os.sep)
      for name in files:
        if name.startswith("."):
          continue
        full = os.path.join(folder, name)
        entries.append((prefix + [name], full, functools.partial(_read_bytes, full)))
  drawings = []
  for parts, where, reader in entries:
    if not parts[-1].lower().endswith(".png"):
      continue  # README files, thumbnails' databases, ...
    if len(parts) != 3:
      raise ValueError(
        f"{where}: a PNG at an unexpected depth (ALPHABET/CHARACTER/FILE.png expected under "
        f"{os.path.basename(path)}); {EXPECTED_LAYOUT}."
      )
    drawings.append((parts[0], parts[1], parts[2], reader))
  return sorted(drawings, key=lambda d: d[:3])


def _read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _decode(data: bytes, where: str) -> np.ndarray:
  """PNG bytes -> [h, w] float64 grey / 255."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(io.BytesIO(data)) as image:
      grey = np.asarray(image.convert("L"), np.float64)
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise ValueError(f"{where} is not a readable PNG ({e}); {EXPECTED_LAYOUT}.") from e
  return grey / 255.0


def resize_matrix(size_in: int, size_out: int = IMAGE_SIDE) -> np.ndarray:
  """[size_out, size_in] bilinear interpolation weights (pixel centres aligned).

  `R @ image @ R.T` is `skimage.transform.resize(image, (size_out, size_out), order=1,
  anti_aliasing=False)` when downsampling (the reference's resize of 105 -> 31).
  """
  centres = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
  low = np.floor(centres).astype(int)
  high = np.minimum(low + 1, size_in - 1)
  frac = centres - low
  matrix = np.zeros((size_out, size_in))
  np.add.at(matrix, (np.arange(size_out), low), 1.0 - frac)
  np.add.at(matrix, (np.arange(size_out), high), frac)
  return matrix


def resize(image: np.ndarray, side: int = IMAGE_SIDE) -> np.ndarray:
  """[h, w] -> [side, side] float32 (bilinear, `resize_matrix`)."""
  rows, cols = resize_matrix(image.shape[0], side), resize_matrix(image.shape[1], side)
  return (rows @ image @ cols.T).astype(np.float32)


def read_set(path: str, progress: bool = True) -> tuple[np.ndarray, tuple[str, ...]]:
  """One set (folder or .zip): ([C, 20, 31, 31] float32, 'ALPHABET/CHARACTER' names).

  Raises:
    OmniglotLayoutError: the set holds no PNGs.
    ValueError: a character without exactly 20 drawings, a PNG at the wrong
      depth, an unreadable PNG or zip.
  """
  drawings = _list_set(path)
  if not drawings:
    raise OmniglotLayoutError(f"{path} holds no PNG drawings; {EXPECTED_LAYOUT}.")
  characters: dict[str, list] = {}
  for alphabet, character, name, reader in drawings:
    characters.setdefault(f"{alphabet}/{character}", []).append((name, reader))
  wrong = {k: len(v) for k, v in characters.items() if len(v) != DRAWINGS_PER_CHARACTER}
  if wrong:
    shown = ", ".join(f"{k} ({n})" for k, n in list(wrong.items())[:3])
    raise ValueError(
      f"{path}: {len(wrong)} character(s) without exactly {DRAWINGS_PER_CHARACTER} drawings, "
      f"e.g. {shown}; {EXPECTED_LAYOUT}."
    )
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  images = np.zeros((len(characters), DRAWINGS_PER_CHARACTER, IMAGE_SIDE, IMAGE_SIDE), np.float32)
  bar = tqdm(
    total=len(drawings), desc=f"Omniglot {os.path.basename(path)}", unit="png", disable=not progress
  )
  with bar:
    for c, (character, files) in enumerate(characters.items()):
      for d, (name, reader) in enumerate(files):
        images[c, d] = resize(_decode(reader(), os.path.join(path, character, name)))
      bar.update(len(files))
  return images, tuple(characters)


def read_release(data_dir: str, progress: bool = True) -> OmniglotData:
  """Both sets from the PNGs (no cache); see `find_release` for the layout."""
  paths = find_release(data_dir)
  (background, background_names), (evaluation, evaluation_names) = (
    read_set(paths[name], progress) for name in SETS
  )
  return OmniglotData(background, background_names, evaluation, evaluation_names)


def _read_cache(path: str):
  try:
    with np.load(path, allow_pickle=False) as saved:
      if int(saved["version"]) != CACHE_VERSION:
        return None
      data = OmniglotData(
        background=saved["background"],
        background_names=tuple(str(n) for n in saved["background_names"]),
        evaluation=saved["evaluation"],
        evaluation_names=tuple(str(n) for n in saved["evaluation_names"]),
      )
  except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
    return None
  shape = (DRAWINGS_PER_CHARACTER, IMAGE_SIDE, IMAGE_SIDE)
  for images, names in (
    (data.background, data.background_names),
    (data.evaluation, data.evaluation_names),
  ):
    if images.shape[1:] != shape or images.shape[0] != len(names) or not len(names):
      return None
  return data


def _write_cache(path: str, data: OmniglotData) -> None:
  """Atomic write of the arrays; a read-only data_dir only costs the cache (a warning)."""
  partial = f"{path}.{os.getpid()}.partial.npz"
  try:
    np.savez_compressed(
      partial,
      version=np.int64(CACHE_VERSION),
      background=data.background,
      background_names=np.array(data.background_names),
      evaluation=data.evaluation,
      evaluation_names=np.array(data.evaluation_names),
    )
    os.replace(partial, path)
  except OSError as e:
    print(f"Warning: could not write the Omniglot cache {path} ({e}); it is read from PNGs again.")
    if os.path.exists(partial):
      os.remove(partial)


@functools.lru_cache(maxsize=2)
def _load(data_dir: str, progress: bool) -> OmniglotData:
  if not os.path.isdir(data_dir):
    find_release(data_dir)  # Raises the message naming the layout.
  cache = os.path.join(data_dir, CACHE_FILE)
  if os.path.isfile(cache):
    data = _read_cache(cache)
    if data is not None:
      return data
    print(f"Omniglot cache {cache} is unreadable or of another version: reading the PNGs again.")
  data = read_release(data_dir, progress)
  _write_cache(cache, data)
  return data


def load_omniglot(data_dir: str, progress: bool = True) -> OmniglotData:
  """Both sets of the release in `data_dir`, from `data_dir/omniglot_31x31.npz` once written.

  Raises:
    OmniglotLayoutError (a FileNotFoundError): missing, empty or incomplete
      directory (the message says what is expected and where Omniglot comes from).
    ValueError: a malformed set (wrong drawing counts, unreadable PNG or zip).
  """
  if not data_dir:
    raise _layout_error(data_dir, "no directory given (--data_dir)")
  return _load(os.path.abspath(data_dir), progress)


def split_characters(
  data: OmniglotData, split: Split = "paper", held_out: int = PAPER_HELD_OUT
) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) characters, each [C, 20, 31, 31], of the `paper` or `standard` split."""
  if split == "standard":
    return data.background, data.evaluation
  if split != "paper":
    raise ValueError(f"split={split!r} is not one of {SPLITS}.")
  merged = np.concatenate([data.background, data.evaluation])
  if not 1 <= held_out < len(merged):
    raise ValueError(f"held_out={held_out} must be in [1, {len(merged) - 1}] (paper: 100).")
  order = np.random.default_rng(PAPER_SPLIT_SEED).permutation(len(merged))
  return merged[order[:-held_out]], merged[order[-held_out:]]


def omniglot_characters(
  data_dir: str,
  split: Split,
  part: Part,
  held_out: int = PAPER_HELD_OUT,
  progress: bool = True,
) -> np.ndarray:
  """[C, 20, 31, 31] float32: the `train` or `test` characters of a split."""
  if part not in ("train", "test"):
    raise ValueError(f"part={part!r} is not one of 'train', 'test'.")
  train, test = split_characters(load_omniglot(data_dir, progress), split, held_out)
  return train if part == "train" else test


# --------------------------------------------------------------------------
# The offline stand-in: procedurally generated glyphs (NOT Omniglot).

MAX_STROKES = 4
POINTS_PER_STROKE = 5  # Samples of each quadratic Bezier stroke (4 segments).
RENDER_CHUNK = 128  # Drawings per rendering pass (temporaries stay in cache).


def _bezier(control: np.ndarray) -> np.ndarray:
  """[..., 3, 2] control points -> [..., POINTS_PER_STROKE, 2] points of the quadratic curve."""
  t = np.linspace(0.0, 1.0, POINTS_PER_STROKE, dtype=np.float32)[:, None]
  p0, p1, p2 = control[..., 0:1, :], control[..., 1:2, :], control[..., 2:3, :]
  return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _render(points: np.ndarray, thickness: np.ndarray, side: int) -> np.ndarray:
  """Anti-aliased polylines, ink 0 on white 1.

  Args:
    points: [N, S, K, 2] float32 stroke polylines in [-1, 1]^2 (x right, y down).
    thickness: [N] float32 half-width of the pen, in the same units.
    side: output side.

  Returns:
    [N, side, side] float32: 1 - clip((thickness - distance to the strokes) / pixel + 1/2, 0, 1).
  """
  n = points.shape[0]
  pixel = np.float32(2.0 / side)
  centres = ((np.arange(side) + 0.5) * pixel - 1.0).astype(np.float32)
  grid_x, grid_y = (g.reshape(1, -1, 1) for g in np.meshgrid(centres, centres, indexing="xy"))
  start = points[:, :, :-1].reshape(n, 1, -1, 2)  # [N, 1, segments, 2]
  vector = (points[:, :, 1:] - points[:, :, :-1]).reshape(n, 1, -1, 2)
  vx, vy = vector[..., 0], vector[..., 1]
  ox, oy = grid_x - start[..., 0], grid_y - start[..., 1]  # [N, side**2, segments]
  t = np.clip((ox * vx + oy * vy) / np.maximum(vx * vx + vy * vy, 1e-12), 0.0, 1.0)
  dx, dy = ox - t * vx, oy - t * vy
  distance = np.sqrt((dx * dx + dy * dy).min(-1))  # [N, side**2]
  ink = np.clip((thickness[:, None] - distance) / pixel + 0.5, 0.0, 1.0)
  return (1.0 - ink).reshape(n, side, side)


def _glyph_draws(seed: int, num_classes: int, drawings: int) -> dict[str, np.ndarray]:
  """Every random number of the glyphs, class by class (class k's from `default_rng([seed, k])`:
  the same for any `num_classes` and any rendering chunk)."""
  s = MAX_STROKES
  per_class = []
  for k in range(num_classes):
    rng = np.random.default_rng([seed, k])
    per_class.append(
      dict(
        strokes=rng.integers(1, s + 1),  # [] strokes of the class.
        control=rng.uniform(-0.7, 0.7, (s, 3, 2)),  # The class's prototype.
        jitter=rng.normal(0.0, 0.05, (drawings, s, 3, 2)),
        angle=rng.uniform(-0.2, 0.2, drawings),
        scale=rng.uniform(0.85, 1.1, drawings),
        shift=rng.uniform(-0.08, 0.08, (drawings, 2)),
        thickness=rng.uniform(0.05, 0.1, drawings),
      )
    )
  return {name: np.stack([d[name] for d in per_class]) for name in per_class[0]}


@functools.lru_cache(maxsize=4)
def synthetic_glyphs(
  num_classes: int = 1000,
  seed: int = 0,
  drawings: int = DRAWINGS_PER_CHARACTER,
  side: int = IMAGE_SIDE,
) -> np.ndarray:
  """[num_classes, drawings, side, side] float32 glyphs in [0, 1] (ink 0). NOT Omniglot.

  Each class: 1-4 quadratic Bezier strokes with control points in
  [-0.7, 0.7]^2; each drawing: the control points jittered (N(0, 0.05)),
  rotated by U(-0.2, 0.2) rad, scaled by U(0.85, 1.1), shifted by U(-0.08,
  0.08) and drawn with a half-width of U(0.05, 0.1) (1.5 to 3 pixels wide at
  31 x 31). Deterministic: class k depends only on (seed, k), so a larger
  `num_classes` adds classes and keeps the others. Read-only (cached in memory).
  """
  for name, value, minimum in (("num_classes", num_classes, 1), ("drawings", drawings, 1)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
      raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
  draws = _glyph_draws(seed, num_classes, drawings)
  control = draws["control"][:, None] + draws["jitter"]  # [C, D, S, 3, 2]
  cos, sin = np.cos(draws["angle"]), np.sin(draws["angle"])
  rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # [C, D, 2, 2]
  control = (
    np.einsum("cdij,cdspj->cdspi", rotation, control) * draws["scale"][..., None, None, None]
  )
  control = control + draws["shift"][:, :, None, None, :]
  points = _bezier(control.astype(np.float32))  # [C, D, S, K, 2]
  thickness = draws["thickness"].astype(np.float32)  # [C, D]
  out = np.empty((num_classes, drawings, side, side), np.float32)
  for strokes in range(1, MAX_STROKES + 1):  # Classes grouped by stroke count: no masked strokes.
    classes = np.flatnonzero(draws["strokes"] == strokes)
    group = points[classes, :, :strokes].reshape((-1, strokes) + points.shape[-2:])
    pens = thickness[classes].reshape(-1)
    images = np.concatenate(
      [
        _render(group[i : i + RENDER_CHUNK], pens[i : i + RENDER_CHUNK], side)
        for i in range(0, len(group), RENDER_CHUNK)
      ]
      or [np.zeros((0, side, side), np.float32)]
    )
    out[classes] = images.reshape(len(classes), drawings, side, side)
  out.setflags(write=False)
  return out


def synthetic_split(
  num_classes: int = 1000, held_out: int = PAPER_HELD_OUT, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) glyph classes: the last `held_out` of `synthetic_glyphs(num_classes, seed)`."""
  if not 1 <= held_out < num_classes:
    raise ValueError(
      f"held_out_classes={held_out} must be in [1, num_classes - 1] with num_classes={num_classes}."
    )
  glyphs = synthetic_glyphs(num_classes, seed)
  return glyphs[:-held_out], glyphs[-held_out:]


if __name__ == "__main__":
  import sys
  import time

  if len(sys.argv) > 1:  # python -m envs.omniglot_data /path/to/omniglot: read (and cache) it.
    loaded = load_omniglot(sys.argv[1])
    print(f"background {loaded.background.shape}, evaluation {loaded.evaluation.shape}")
  else:
    begin = time.perf_counter()
    glyphs = synthetic_glyphs(1000)
    print(f"synthetic glyphs (not Omniglot) {glyphs.shape} in {time.perf_counter() - begin:.1f} s")
