"""Penn Treebank (Mikolov's word-level PTB) reader for language modelling.

SPEC.md §5.7. The reader takes a user-given directory holding the three splits
under either naming scheme, gzipped or not (first match wins, in this order):

    ptb.train.txt  ptb.train.txt.gz  train.txt  train.txt.gz   (same for valid, test)

Conventions (Mikolov / Zaremba et al., `ptb_word_lm` `reader.py`): words are
split on whitespace and `<eos>` is appended at the end of every line; the
vocabulary is built from the training split, sorted by decreasing frequency
then alphabetically (deterministic ids); valid/test must use only training
words (PTB already maps rare words to `<unk>`).

    corpus = ptb.load_corpus("/path/to/ptb")           # ids: [N] int32 per split
    streams = ptb.batchify(corpus.train, batch_size=20)  # [B, N // B]
    inputs, targets = ptb.minibatch_arrays(streams, unroll=20)  # [M, B, T] each

Shapes: B parallel streams (batch), T unroll length, M minibatches per epoch.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import os
from collections.abc import Iterator, Sequence
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]

EOS = "<eos>"
SPLITS: tuple[str, ...] = ("train", "valid", "test")

WHERE_TO_GET_PTB = (
  "Penn Treebank (Mikolov's 10k-word version) is in the `data/` folder of "
  "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz "
  "(files ptb.train.txt, ptb.valid.txt, ptb.test.txt), and in the "
  "`data/ptb` or `data/penn` folder of common repositories (e.g. "
  "tensorflow/models tutorials, salesforce/awd-lstm-lm getdata.sh: "
  "train.txt, valid.txt, test.txt). Either naming scheme, gzipped (.gz) "
  "or not, is accepted."
)


def split_file_names(split: str) -> tuple[str, ...]:
  """Accepted file names of one split, in order of preference."""
  return (f"ptb.{split}.txt", f"ptb.{split}.txt.gz", f"{split}.txt", f"{split}.txt.gz")


def _expected_files_text() -> str:
  return "; ".join(f"{split}: " + " or ".join(split_file_names(split)) for split in SPLITS)


def find_split_files(data_dir: PathLike) -> dict[str, str]:
  """Locates the three split files without reading them.

  Args:
    data_dir: directory holding PTB.

  Returns:
    {split: path} for `train`, `valid`, `test`.

  Raises:
    FileNotFoundError: the directory or one of the splits is missing; the
      message lists the expected file names and where to get PTB.
  """
  if data_dir is None or str(data_dir) == "":
    raise FileNotFoundError(
      "No PTB data directory given. Expected a directory with "
      f"{_expected_files_text()}. {WHERE_TO_GET_PTB}"
    )
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
      f"PTB data directory {data_dir!r} does not exist (or is not a "
      f"directory). Expected a directory with {_expected_files_text()}. "
      f"{WHERE_TO_GET_PTB}"
    )
  files = {}
  missing = []
  for split in SPLITS:
    for name in split_file_names(split):
      path = os.path.join(data_dir, name)
      if os.path.isfile(path):
        files[split] = path
        break
    else:
      missing.append(f"{split} (looked for {', '.join(split_file_names(split))})")
  if missing:
    present = sorted(os.listdir(data_dir))[:20]
    raise FileNotFoundError(
      f"PTB data directory {data_dir!r} lacks the split(s): {'; '.join(missing)}. "
      f"It contains: {present or 'nothing'}. {WHERE_TO_GET_PTB}"
    )
  return files


def read_words(path: PathLike) -> list[str]:
  """Tokens of one file: whitespace-split words, `<eos>` after every line.

  Gzip is recognised by the `.gz` suffix. Raises ValueError for an empty
  (or whitespace-only) file or one that cannot be decoded.
  """
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError, EOFError) as e:
    raise ValueError(
      f"Cannot read PTB file {path!r} ({type(e).__name__}: {e}); "
      "expected a UTF-8 text file, gzipped when named *.gz. "
      f"{WHERE_TO_GET_PTB}"
    ) from e
  if not text.strip():
    raise ValueError(
      f"PTB file {path!r} is empty; expected one sentence per "
      f"line of whitespace-separated words. {WHERE_TO_GET_PTB}"
    )
  words = []
  for line in text.splitlines():
    words.extend(line.split())
    words.append(EOS)
  return words


def build_vocab(words: Sequence[str]) -> tuple[str, ...]:
  """id -> word, sorted by decreasing count, ties broken alphabetically."""
  counts = collections.Counter(words)
  return tuple(w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])))


def words_to_ids(
  words: Sequence[str], word_to_id: dict[str, int], name: str = "words"
) -> np.ndarray:
  """[N] int32 ids; ValueError listing (some of) the words not in the vocabulary."""
  unknown = collections.Counter(w for w in words if w not in word_to_id)
  if unknown:
    examples = ", ".join(repr(w) for w, _ in unknown.most_common(10))
    raise ValueError(
      f"{name}: {sum(unknown.values())} token(s) of {len(unknown)} word type(s) "
      f"are not in the training vocabulary, e.g. {examples}. PTB's valid/test "
      "splits use only training words (rare words are already `<unk>`); check "
      f"that the three files belong together. {WHERE_TO_GET_PTB}"
    )
  return np.fromiter((word_to_id[w] for w in words), dtype=np.int32, count=len(words))


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A tokenised PTB.

  Attributes:
    vocab: id -> word (train vocabulary, `<eos>` included).
    train, valid, test: [N] int32 token ids of each split.
    files: {split: path} the files read.
  """

  vocab: tuple[str, ...]
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  files: dict[str, str]

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  @property
  def word_to_id(self) -> dict[str, int]:
    return {w: i for i, w in enumerate(self.vocab)}

  def split(self, name: str) -> np.ndarray:
    if name not in SPLITS:
      raise ValueError(f"Unknown split {name!r}; choose one of {SPLITS}.")
    return getattr(self, name)

  def decode(self, ids) -> list[str]:
    return [self.vocab[int(i)] for i in np.asarray(ids).reshape(-1)]


def load_corpus(data_dir: PathLike) -> Corpus:
  """Reads and tokenises the three splits of the PTB in `data_dir`."""
  files = find_split_files(data_dir)
  words = {split: read_words(path) for split, path in files.items()}
  vocab = build_vocab(words["train"])
  word_to_id = {w: i for i, w in enumerate(vocab)}
  ids = {
    split: words_to_ids(words[split], word_to_id, f"PTB {split} ({files[split]})")
    for split in SPLITS
  }
  return Corpus(vocab=vocab, files=files, **ids)


# --------------------------------------------------------------------------
# Batching (Zaremba et al. `ptb_producer`).


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
  """Cuts a token stream into B contiguous streams.

  Args:
    ids: [N] token ids.
    batch_size: B.

  Returns:
    [B, N // B]: row b holds tokens `b * (N // B) ... (b + 1) * (N // B) - 1`;
    the last `N % B` tokens are dropped.
  """
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ValueError(f"batchify expects a 1-D token stream, got shape {ids.shape}.")
  if (
    isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1
  ):
    raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1.")
  length = ids.shape[0] // batch_size
  if length < 2:
    raise ValueError(
      f"A stream of {ids.shape[0]} tokens is too short for "
      f"batch_size={batch_size}: each of the {batch_size} streams "
      "needs at least 2 tokens (an input and its target)."
    )
  return ids[: batch_size * length].reshape(batch_size, length)


def num_minibatches(stream_length: int, unroll: int) -> int:
  """M = (L - 1) // T minibatches of T inputs (targets shifted by one)."""
  return (stream_length - 1) // unroll


def minibatch_arrays(streams: np.ndarray, unroll: int) -> tuple[np.ndarray, np.ndarray]:
  """All minibatches of an epoch as arrays (for a `lax.scan` over minibatches).

  Args:
    streams: [B, L] from `batchify`.
    unroll: T, the truncated-BPTT length.

  Returns:
    (inputs, targets), each [M, B, T] with M = (L - 1) // T;
    `targets[m, b, t] = streams[b, m * T + t + 1]`, `inputs[m, b, t] = streams[b, m * T + t]`.
  """
  streams = np.asarray(streams)
  if streams.ndim != 2:
    raise ValueError(f"minibatch_arrays expects [B, L] streams, got shape {streams.shape}.")
  if isinstance(unroll, bool) or not isinstance(unroll, (int, np.integer)) or unroll < 1:
    raise ValueError(f"unroll={unroll!r} must be an integer >= 1.")
  batch, length = streams.shape
  count = num_minibatches(length, unroll)
  if count < 1:
    raise ValueError(
      f"Streams of length {length} are too short for unroll={unroll}: "
      f"need at least {unroll + 1} tokens per stream."
    )
  used = count * unroll
  inputs = streams[:, :used].reshape(batch, count, unroll).transpose(1, 0, 2)
  targets = streams[:, 1 : used + 1].reshape(batch, count, unroll).transpose(1, 0, 2)
  return np.ascontiguousarray(inputs), np.ascontiguousarray(targets)


def iterate_minibatches(
  streams: np.ndarray, unroll: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (inputs [B, T], targets [B, T]) in order, M times."""
  inputs, targets = minibatch_arrays(streams, unroll)
  for m in range(inputs.shape[0]):
    yield inputs[m], targets[m]
