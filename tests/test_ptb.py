"""Tests of the PTB reader (bpm_jax.ptb) on small generated corpora."""

import gzip
import os

import numpy as np
import pytest

from bpm_jax import ptb

TRAIN = " the cat sat \n a dog ran \n the dog sat on the cat \n"
VALID = " the cat ran \n a dog \n"
TEST = " on the dog \n"


def write_corpus(directory, scheme="ptb", gz=False, texts=None):
  """Writes train/valid/test under `scheme` (`ptb`: ptb.train.txt; `plain`: train.txt)."""
  texts = texts or {"train": TRAIN, "valid": VALID, "test": TEST}
  os.makedirs(directory, exist_ok=True)
  for split, text in texts.items():
    name = f"ptb.{split}.txt" if scheme == "ptb" else f"{split}.txt"
    path = os.path.join(directory, name + (".gz" if gz else ""))
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
      f.write(text)
  return directory


def expected_words(text):
  words = []
  for line in text.splitlines():
    words += line.split() + ["<eos>"]
  return words


@pytest.mark.parametrize("scheme", ["ptb", "plain"])
@pytest.mark.parametrize("gz", [False, True])
def test_round_trip(tmp_path, scheme, gz):
  corpus = ptb.load_corpus(write_corpus(tmp_path, scheme, gz))
  for split, text in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
    ids = corpus.split(split)
    assert ids.dtype == np.int32
    assert corpus.decode(ids) == expected_words(text)
  suffix = ".gz" if gz else ""
  prefix = "ptb." if scheme == "ptb" else ""
  assert corpus.files["train"].endswith(f"{prefix}train.txt{suffix}")


def test_vocab_sorted_by_count_then_word(tmp_path):
  corpus = ptb.load_corpus(write_corpus(tmp_path))
  # Counts in TRAIN: <eos> 3, the 3, cat 2, dog 2, sat 2, a 1, on 1, ran 1.
  assert corpus.vocab == ("<eos>", "the", "cat", "dog", "sat", "a", "on", "ran")
  assert corpus.vocab_size == 8
  assert corpus.word_to_id["the"] == 1


def test_plain_and_gz_give_same_ids(tmp_path):
  a = ptb.load_corpus(write_corpus(tmp_path / "a", "ptb", gz=False))
  b = ptb.load_corpus(write_corpus(tmp_path / "b", "plain", gz=True))
  assert a.vocab == b.vocab
  for split in ptb.SPLITS:
    np.testing.assert_array_equal(a.split(split), b.split(split))


def test_last_line_without_newline_and_blank_lines(tmp_path):
  texts = {"train": "a b\n\nb a", "valid": "a", "test": "b\n"}
  corpus = ptb.load_corpus(write_corpus(tmp_path, texts=texts))
  assert corpus.decode(corpus.train) == ["a", "b", "<eos>", "<eos>", "b", "a", "<eos>"]
  assert corpus.decode(corpus.valid) == ["a", "<eos>"]


def test_missing_directory_error(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError) as info:
    ptb.load_corpus(missing)
  message = str(info.value)
  assert str(missing) in message and "does not exist" in message
  assert "ptb.train.txt" in message and "train.txt.gz" in message
  assert "simple-examples" in message


def test_no_directory_given_error():
  with pytest.raises(FileNotFoundError, match="No PTB data directory given"):
    ptb.find_split_files(None)


def test_missing_split_error(tmp_path):
  write_corpus(tmp_path)
  os.remove(tmp_path / "ptb.valid.txt")
  with pytest.raises(FileNotFoundError) as info:
    ptb.load_corpus(tmp_path)
  message = str(info.value)
  assert "valid" in message and "ptb.valid.txt" in message and "valid.txt.gz" in message
  assert "test (" not in message  # Only the missing split is named.
  assert "simple-examples" in message


def test_empty_file_error(tmp_path):
  write_corpus(tmp_path, texts={"train": TRAIN, "valid": " \n\n", "test": TEST})
  with pytest.raises(ValueError, match="ptb.valid.txt' is empty"):
    ptb.load_corpus(tmp_path)


def test_unknown_words_error(tmp_path):
  write_corpus(tmp_path, texts={"train": TRAIN, "valid": VALID, "test": "the zebra zebra\n"})
  with pytest.raises(ValueError) as info:
    ptb.load_corpus(tmp_path)
  message = str(info.value)
  assert "test" in message and "'zebra'" in message and "2 token(s)" in message


def test_corrupt_gzip_error(tmp_path):
  write_corpus(tmp_path, gz=True)
  with open(tmp_path / "ptb.test.txt.gz", "wb") as f:
    f.write(b"not gzip at all")
  with pytest.raises(ValueError, match="Cannot read PTB file"):
    ptb.load_corpus(tmp_path)


def test_batchify():
  ids = np.arange(23, dtype=np.int32)
  streams = ptb.batchify(ids, 4)
  assert streams.shape == (4, 5)
  np.testing.assert_array_equal(streams[1], np.arange(5, 10))
  with pytest.raises(ValueError, match="too short"):
    ptb.batchify(np.arange(5), 4)
  with pytest.raises(ValueError, match="batch_size"):
    ptb.batchify(ids, 0)


def test_minibatches_shift_by_one_and_cover_the_stream():
  streams = ptb.batchify(np.arange(2 * 23, dtype=np.int32), 2)  # [2, 23]
  inputs, targets = ptb.minibatch_arrays(streams, unroll=5)
  assert inputs.shape == targets.shape == (4, 2, 5)  # (23 - 1) // 5 = 4.
  np.testing.assert_array_equal(targets, inputs + 1)
  # Consecutive minibatches continue each stream.
  np.testing.assert_array_equal(inputs.transpose(1, 0, 2).reshape(2, -1), streams[:, :20])
  batches = list(ptb.iterate_minibatches(streams, 5))
  assert len(batches) == 4
  np.testing.assert_array_equal(batches[2][0], inputs[2])
  np.testing.assert_array_equal(batches[2][1], targets[2])
  with pytest.raises(ValueError, match="too short for unroll"):
    ptb.minibatch_arrays(streams, unroll=30)
