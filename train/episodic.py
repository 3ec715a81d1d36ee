"""`python -m train.episodic`: supervised meta-learning, completion and one-shot tasks (flags only).

Flags not given take the task's reference settings (`train.episodic_config`):

    python -m train.episodic --task=PatternCompletion-v0 --network=plastic \
        --num_seeds=3 --workdir=runs/patterns_plastic        # 2000 episodes
    python -m train.episodic --task=PatternCompletion-v0 --network=rnn --workdir=runs/patterns_rnn
    python -m train.episodic --task=ImageCompletion-v0 --network=plastic \
        --iterations=3000 --workdir=runs/images_plastic
    python -m train.episodic --workdir=runs/images_plastic --resume --iterations=6000
    python -m train.episodic --task=Omniglot-v0 --data_dir=/path/to/omniglot \
        --network=plastic --workdir=runs/omniglot_plastic    # SPEC §5.6: 5M episodes
    python -m train.episodic --task=SyntheticGlyphs-v0 --network=plastic \
        --iterations=20000 --workdir=runs/glyphs_plastic     # generated glyphs, NOT Omniglot

The library: `train.episodic_learner` (pure functions, `make_train`),
`train.episodic_train` (the host loop, `train_and_evaluate`); pictures with
`python -m train.episodic_plots --workdirs=runs/patterns_plastic,runs/patterns_rnn`.
"""

from __future__ import annotations

from train import flags as flags_lib
from train.episodic_config import CHOICES, EpisodicConfig, episodic_defaults
from train.episodic_train import load_config, train_and_evaluate


def define_flags(flag_values=None) -> None:
  """One flag per EpisodicConfig field (default None: the task's reference value)."""
  flags_lib.define_config_flags(
    EpisodicConfig,
    CHOICES,
    flag_values,
    lambda field: "PatternCompletion-v0" if field.name == "task" else None,
  )


def config_from_flags(flag_values) -> EpisodicConfig:
  """EpisodicConfig from parsed flags; flags not given take the task's reference settings.

  With `--resume`, flags not given take the saved run's values instead.

  Raises:
    ValueError: an invalid value, naming the flag and what is allowed.
  """
  return flags_lib.config_with_defaults(
    flag_values, EpisodicConfig, "task", episodic_defaults, load_config
  )


def main(argv):
  flags_lib.run_main(argv, config_from_flags, train_and_evaluate)


if __name__ == "__main__":
  flags_lib.run_cli(define_flags, main)
