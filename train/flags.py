"""absl flags of the entry points: one flag per config field, and their `main`.

Each training config is a frozen dataclass whose fields carry their help text
in `metadata["help"]`; every field becomes a flag of the same name. The
validators the configs use live in `train.validate`.

    def main(argv):
      flags_lib.run_main(argv, config_from_flags, train_and_evaluate)

    if __name__ == "__main__":
      flags_lib.run_cli(define_flags, main)
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Optional


def define_config_flags(
  config_cls: type,
  choices: dict[str, tuple[str, ...]],
  flag_values,
  default_of: Callable[[dataclasses.Field], Any],
) -> None:
  """Defines `--workdir` and one flag per field of `config_cls`.

  Args:
    config_cls: a dataclass; each field's `metadata["help"]` is its help text.
    choices: allowed values of the enum fields.
    flag_values: an absl FlagValues (None: the global FLAGS).
    default_of: a field's flag default (e.g. None to mean "the paper's").
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  fv = flag_values if flag_values is not None else flags.FLAGS
  flags.DEFINE_string("workdir", None, "Output directory (required).", flag_values=fv)
  definers = {
    "bool": flags.DEFINE_bool,
    "int": flags.DEFINE_integer,
    "Optional[int]": flags.DEFINE_integer,
    "float": flags.DEFINE_float,
    "Optional[float]": flags.DEFINE_float,
    "str": flags.DEFINE_string,
    "Optional[str]": flags.DEFINE_string,
  }
  for field in dataclasses.fields(config_cls):
    name, help_text = field.name, field.metadata.get("help", "")
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    default = default_of(field)
    if name in choices:
      flags.DEFINE_enum(name, default, list(choices[name]), help_text, flag_values=fv)
    elif kind in definers:
      definers[kind](name, default, help_text, flag_values=fv)
    else:
      raise TypeError(f"No flag type for {config_cls.__name__}.{name}: {field.type}")


def require_workdir(flag_values) -> None:
  if flag_values["workdir"].value in (None, ""):
    raise ValueError("--workdir is required: the directory for outputs and checkpoints.")


def saved_config_for_resume(
  flag_values, config_json: str, read: Callable[[str], dict[str, Any]]
) -> dict[str, Any] | None:
  """On --resume, the settings saved in `--workdir`/`config_json`; else None.

  So that `--workdir=DIR --resume` alone continues a run: settings not given
  on the command line come from the run being resumed, not from the defaults.
  Flags that are given still win (and the trainer then refuses a changed
  model setting, naming it).

  Args:
    flag_values: parsed flags with `--workdir` and `--resume`.
    config_json: the config file's name in the workdir.
    read: parses the file at a path into a dict of config fields.
  """
  import os  # pylint: disable=g-import-not-at-top

  if not flag_values["resume"].value:
    return None
  path = os.path.join(flag_values["workdir"].value, config_json)
  if not os.path.exists(path):
    return None
  try:
    return read(path)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(
      f"--resume: could not read the saved settings at {path} ({type(e).__name__}: "
      f"{e}). Repair or delete that file and give every setting as a flag, or "
      "start a fresh --workdir."
    ) from e


@contextlib.contextmanager
def as_flag_errors(config_cls: type) -> Iterator[None]:
  """Re-raises a config's ValueError in flag terms.

  `learning_rate=-1.0 is invalid: ...` becomes `--learning_rate=-1.0 is
  invalid: ...`; other messages become "Invalid combination of flags: ...".
  """
  try:
    yield
  except ValueError as e:
    message = str(e)
    names = {f.name for f in dataclasses.fields(config_cls)}
    if message.split("=", 1)[0] in names:
      raise ValueError(f"--{message}") from e
    raise ValueError(f"Invalid combination of flags: {message}") from e


def run_cli(define_flags: Callable[[], None], main: Callable[[list[str]], None]) -> None:
  """An entry point's `if __name__ == "__main__"`: define the flags, run `main`."""
  from absl import app  # pylint: disable=g-import-not-at-top

  define_flags()
  app.run(main)


def run_main(
  argv: list[str],
  config_from_flags: Callable[[Any], Any],
  train: Callable[[Any, str], Any],
  run_errors: Optional[tuple[type[BaseException], ...]] = None,
  flag_values: Any = None,
) -> None:
  """The body of an entry point's absl `main`.

  Quiets orbax's INFO logging unless --verbosity is given, turns a bad flag
  (ValueError / FileNotFoundError from `config_from_flags`) into a usage
  error before any work, runs `train(config, --workdir)`, and turns the
  `run_errors` it raises (default `train.run.RUN_ERRORS`: NaN, corrupt
  checkpoint, bad data, ...) into one `ERROR:` line on stderr and exit
  status 1. `flag_values`: default `absl.flags.FLAGS`.
  """
  import sys  # pylint: disable=g-import-not-at-top

  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top

  flag_values = flags.FLAGS if flag_values is None else flag_values
  if run_errors is None:
    from train import run as run_lib  # pylint: disable=g-import-not-at-top

    run_errors = run_lib.RUN_ERRORS
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if "verbosity" in flag_values and not flag_values["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  try:
    config = config_from_flags(flag_values)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  try:
    train(config, flag_values["workdir"].value)
  except run_errors as e:
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
