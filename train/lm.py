r"""`python -m train.lm`: PTB language modelling with plastic LSTMs (flags only).

    python -m train.lm --data_dir=/path/to/ptb --network=retromod \
        --workdir=runs/ptb_retromod   # H matched to 4.8M parameters

    # short run: 1 epoch of 300 minibatches; valid/test scored on their
    # first 40 minibatches only (partial perplexities)
    python -m train.lm --data_dir=... --network=rnn --epochs=1 \
        --max_steps_per_epoch=300 --max_eval_minibatches=40 --workdir=runs/ptb_rnn_short

    python -m train.lm --workdir=runs/ptb_retromod --resume --epochs=20

One flag per `LMTrainConfig` field (`train.lm_config`, same defaults). The
library: `train.lm_learner` (pure functions: loss, SGD step, evaluation),
`train.lm_train` (the host loop, `train_and_evaluate`).
"""

from __future__ import annotations

import dataclasses
import os

from bpm_jax import ptb
from train import flags as flags_lib
from train import run as run_lib
from train.lm_config import CHOICES, LMTrainConfig
from train.lm_train import load_config, train_and_evaluate


def define_flags(flag_values=None) -> None:
  """Defines `--workdir` and one flag per LMTrainConfig field (same defaults)."""
  flags_lib.define_config_flags(LMTrainConfig, CHOICES, flag_values, lambda field: field.default)


def config_from_flags(flag_values) -> LMTrainConfig:
  """LMTrainConfig from parsed flags, checking the data directory exists.

  With `--resume`, flags not given take the saved run's values (config.json's,
  or the checkpoint's; data directory included), so `--workdir=DIR --resume`
  alone continues it.

  Raises:
    ValueError / FileNotFoundError: naming the flag and what is expected.
  """
  flags_lib.require_workdir(flag_values)
  values = {f.name: flag_values[f.name].value for f in dataclasses.fields(LMTrainConfig)}
  saved = flags_lib.saved_config_for_resume(
    flag_values, run_lib.CONFIG_JSON, lambda path: load_config(os.path.dirname(path)).to_dict()
  )
  if saved is not None:  # --resume: what is not given comes from the saved run.
    values = dict(saved, **{k: v for k, v in values.items() if flag_values[k].present})
  if values["data_dir"] in (None, ""):
    raise ValueError(
      "--data_dir is required: a directory with the Penn Treebank files "
      "ptb.train.txt, ptb.valid.txt, ptb.test.txt (or train.txt, valid.txt, "
      f"test.txt; optionally gzipped, .gz). {ptb.WHERE_TO_GET_PTB}"
    )
  with flags_lib.as_flag_errors(LMTrainConfig):
    config = LMTrainConfig.from_dict(values)
  ptb.find_split_files(config.data_dir)
  return config


def main(argv):
  flags_lib.run_main(argv, config_from_flags, train_and_evaluate)


if __name__ == "__main__":
  flags_lib.run_cli(define_flags, main)
