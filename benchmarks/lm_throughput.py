"""Training throughput of the PTB language model, per variant, at the paper's size.

    python -m benchmarks.lm_throughput                       # random tokens, V = 10000
    python -m benchmarks.lm_throughput --data_dir=/path/to/ptb   # also checks the reader

For each network the hidden size is matched to `--target_params` (Backpropamine
Table 1: ~4.8M parameters, plasticity parameters included), then the training
program of `train.lm_train` (a compiled `lax.scan` of SGD steps, fwd + bwd +
update, B = 20, T = 20, one seed unless `--num_seeds`) is compiled, then timed.
Reported: parameter counts by group, hidden sizes, compile seconds, ms per step
and tokens/s (B * T target tokens per step and model; with `--num_seeds=1,3`
also for several models trained at once, as `train.lm --num_seeds` does).

With `--data_dir`, the reader is first checked against the known PTB facts
(929,589 / 73,760 / 82,430 tokens with `<eos>`, 10,000 words, md5 of the
uncompressed train text) and the timed minibatches are real PTB text.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import platform
import time

import jax
import numpy as np
from absl import app, flags, logging

from bpm_jax import lm, ptb
from bpm_jax.cells import LSTM_STEP_IMPLS, resolve_lstm_step_impl
from bpm_jax.config import NETWORKS
from train import lm_config, lm_learner, lm_train

PTB_TOKENS = {"train": 929_589, "valid": 73_760, "test": 82_430}
PTB_VOCAB = 10_000
PTB_TRAIN_MD5 = "f26c4b92c5fdc7b3f8c7cdcb991d8420"

_NETWORKS = flags.DEFINE_list("networks", list(NETWORKS), "Variants to time.")
_STEP_IMPLS = flags.DEFINE_list(
  "step_impls",
  ["auto"],
  "Plastic LSTM steps to time per plastic variant: auto | reference | fused "
  "(the LSTM always runs the reference).",
)
_TARGET = flags.DEFINE_integer(
  "target_params", lm.PAPER_TARGET_PARAMS, "Parameter count every variant is matched to."
)
_VOCAB = flags.DEFINE_integer("vocab_size", PTB_VOCAB, "V (without --data_dir).")
_BATCH = flags.DEFINE_integer("batch_size", 20, "B.")
_UNROLL = flags.DEFINE_integer("unroll", 20, "T.")
_STEPS = flags.DEFINE_integer("steps", 10, "SGD steps per timed call (one lax.scan).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls; the best is reported.")
_NUM_SEEDS = flags.DEFINE_list(
  "num_seeds",
  ["1"],
  "Models trained at once (vmapped seeds, as `train.lm --num_seeds`), one row per count; "
  "tokens/s counts every model's tokens.",
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "PTB directory (optional).")


def check_ptb(data_dir: str) -> ptb.Corpus:
  """Loads PTB and checks token counts, vocabulary size and the train md5."""
  corpus = ptb.load_corpus(data_dir)
  path = corpus.files["train"]
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    md5 = hashlib.md5(f.read()).hexdigest()
  print(f"PTB at {data_dir}:")
  ok = True
  for split, expected in PTB_TOKENS.items():
    got = len(corpus.split(split))
    ok &= got == expected
    print(
      f"  {split:<5} {got:>9,} tokens (expected {expected:,}) "
      f"{'OK' if got == expected else 'MISMATCH'}"
    )
  ok &= corpus.vocab_size == PTB_VOCAB
  print(
    f"  vocab {corpus.vocab_size:>9,} words  (expected {PTB_VOCAB:,}) "
    f"{'OK' if corpus.vocab_size == PTB_VOCAB else 'MISMATCH'}"
  )
  ok &= md5 == PTB_TRAIN_MD5
  print(f"  train md5 {md5} {'OK' if md5 == PTB_TRAIN_MD5 else 'MISMATCH'}")
  streams = ptb.batchify(corpus.train, 20)
  print(
    f"  B = 20 streams of {streams.shape[1]:,}; "
    f"{ptb.num_minibatches(streams.shape[1], 20):,} minibatches of T = 20 per epoch"
  )
  if not ok:
    raise SystemExit("PTB check failed.")
  return corpus


def _step_name(config: lm.LMConfig) -> str:
  """The step a config runs (`auto` resolved), as the cell resolves it."""
  return resolve_lstm_step_impl(config.step_impl, config.plasticity_config(), config.plastic_gates)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  unknown = sorted(set(_NETWORKS.value) - set(NETWORKS))
  if unknown:
    raise app.UsageError(f"--networks: unknown {unknown}; choose from {NETWORKS}.")
  unknown = sorted(set(_STEP_IMPLS.value) - set(LSTM_STEP_IMPLS))
  if unknown:
    raise app.UsageError(f"--step_impls: unknown {unknown}; choose from {LSTM_STEP_IMPLS}.")
  batch, unroll, steps = _BATCH.value, _UNROLL.value, _STEPS.value
  try:
    seed_counts = [int(n) for n in _NUM_SEEDS.value]
  except ValueError:
    seed_counts = []
  if not seed_counts or min(seed_counts) < 1:
    raise app.UsageError(f"--num_seeds: positive integers, e.g. 1,3; got {_NUM_SEEDS.value}.")
  if _DATA_DIR.value:
    corpus = check_ptb(_DATA_DIR.value)
    vocab_size = corpus.vocab_size
    split = lm_learner.Split.from_ids(corpus.train, batch, unroll).slice(0, steps)
  else:
    vocab_size = _VOCAB.value
    tokens = np.asarray(
      jax.random.randint(jax.random.key(0), (batch * (steps * unroll + 1),), 0, vocab_size),
      np.int32,
    )
    split = lm_learner.Split.from_ids(tokens, batch, unroll).slice(0, steps)

  sizes = lm.match_hidden_sizes(_TARGET.value, vocab_size, networks=_NETWORKS.value)
  configs = [lm.LMConfig(vocab_size=vocab_size, hidden_size=h, network=n) for n, h in sizes.items()]
  print(f"\nParameter counts (target {_TARGET.value:,}, V = {vocab_size}, E = H, 2 layers):")
  print(lm.param_report(configs, _TARGET.value))
  configs = [
    config.replace(step_impl=impl)
    for config in configs
    for impl in (["reference"] if config.network == "rnn" else _STEP_IMPLS.value)
  ]

  print(
    f"\nThroughput: train step (fwd + bwd + SGD), B = {batch}, T = {unroll}, "
    f"{steps} steps per jitted scan, best of {_REPEATS.value}; "
    f"{jax.devices()[0].platform.upper()} ({os.cpu_count()} cores, "
    f"{platform.processor() or platform.machine()}), jax {jax.__version__}"
  )
  print(
    f"{'network':<10}{'step':>10}{'hidden':>7}{'params':>11}{'seeds':>6}{'compile s':>11}"
    f"{'ms/step':>10}{'tokens/s':>10}{'per seed':>10}"
  )
  hparams = lm_config.LMTrainConfig().hparams(1)
  for config, num_seeds in itertools.product(configs, seed_counts):
    state = lm_train.init_states(config, seed=0, num_seeds=num_seeds)
    carry = lm_train.initial_carry(config, batch, num_seeds=num_seeds)
    train_chunk, compile_s = lm_train.compiled_chunk(config, True, state, carry, split, hparams)
    best = float("inf")
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      new_state, _, metrics = train_chunk(
        state, carry, split.inputs, split.targets, split.active, hparams
      )
      jax.block_until_ready(new_state)
      best = min(best, time.perf_counter() - start)
    if not np.all(metrics["finite"]):
      raise SystemExit(f"{config.network}: non-finite loss in the benchmark.")
    print(
      f"{config.network:<10}{_step_name(config):>10}{config.hidden_size:>7}"
      f"{lm.count_params(config):>11,}{num_seeds:>6}"
      f"{compile_s:>11.1f}{1000 * best / steps:>10.1f}"
      f"{num_seeds * batch * unroll * steps / best:>10,.0f}"
      f"{batch * unroll * steps / best:>10,.0f}",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
