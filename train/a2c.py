r"""`python -m train.a2c`: A2C meta-training from the command line (flags only).

Flags not given take the env's paper defaults (`train.a2c_config.a2c_defaults`):

    python -m train.a2c --env=CueReward-v0 --network=modplast \
        --iterations=1000 --workdir=/tmp/cue_modplast
    python -m train.a2c --workdir=/tmp/cue_modplast --resume --iterations=2000

The library: `train.a2c_learner` (pure functions, `make_train`),
`train.a2c_train` (the host loop, `train_and_evaluate`).
"""

from __future__ import annotations

import dataclasses

from train import flags as flags_lib
from train.a2c_config import CHOICES, PAPER_DEFAULTS, A2CConfig, a2c_defaults, paper_defaults
from train.a2c_train import load_config, train_and_evaluate

# Re-resolved on every resume (`auto`: fused where it builds, else fast), never inherited.
FRESH_ON_RESUME = ("step_impl",)


def default_help(field: dataclasses.Field) -> str | None:
  """A field's default in words: the paper's per env where they differ (`--help`).

  E.g. "200; GridMaze-v0: 100" (the network's own default, modplast).
  """
  if field.name == "env":
    return None  # Its flag has a real default.
  by_env = {env: paper_defaults(env).get(field.name, field.default) for env in PAPER_DEFAULTS}
  first = by_env.pop("CueReward-v0")
  others = [f"{env}: {value}" for env, value in by_env.items() if value != first]
  return "; ".join([str(first), *others])


def define_flags(flag_values=None) -> None:
  """Defines one flag per A2CConfig field (default None: the paper default)."""
  flags_lib.define_config_flags(
    A2CConfig,
    CHOICES,
    flag_values,
    lambda field: "CueReward-v0" if field.name == "env" else None,
    default_help,
  )


def config_from_flags(flag_values) -> A2CConfig:
  """A2CConfig from parsed flags; flags not given take `paper_defaults(env, network)`.

  With `--resume`, flags not given take the saved run's values instead
  (config.json's, or the checkpoint's), so `--workdir=DIR --resume` alone
  continues it; `step_impl` is not inherited (its `auto` is resolved afresh).

  Raises:
    ValueError: an invalid value, naming the flag and what is allowed.
  """
  return flags_lib.config_with_defaults(
    flag_values, A2CConfig, "env", a2c_defaults, load_config, fresh_on_resume=FRESH_ON_RESUME
  )


def main(argv):
  flags_lib.run_main(argv, config_from_flags, train_and_evaluate)


if __name__ == "__main__":
  flags_lib.run_cli(define_flags, main)
