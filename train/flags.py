"""Shared config validation and absl flag definitions for the entry points.

Each training config is a frozen dataclass whose fields carry their help text
in `metadata["help"]`; every field becomes a flag of the same name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
  """ValueError naming the field, the bad value and the allowed ones."""
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is not a known option; choose one of "
                     f"{', '.join(allowed)}.")


def check_int(name: str, value: Any, minimum: int) -> None:
  """ValueError unless `value` is an int >= minimum."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name}={value!r} is invalid: it must be an integer >= {minimum}.")


def check_float(name: str, value: Any, positive: bool) -> None:
  """ValueError unless `value` is a finite number > 0 (positive) or >= 0."""
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value > 0 if positive else value >= 0)
  if not ok:
    bound = "> 0" if positive else ">= 0"
    raise ValueError(f"{name}={value!r} is invalid: it must be a finite number {bound}.")


def define_config_flags(config_cls: type, choices: dict[str, tuple[str, ...]],
                        flag_values, default_of: Callable[[dataclasses.Field], Any]
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
      "bool": flags.DEFINE_bool, "int": flags.DEFINE_integer,
      "Optional[int]": flags.DEFINE_integer, "float": flags.DEFINE_float,
      "Optional[float]": flags.DEFINE_float, "str": flags.DEFINE_string,
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


def saved_config_for_resume(flag_values, config_json: str,
                            read: Callable[[str], dict[str, Any]]) -> dict[str, Any] | None:
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
        "start a fresh --workdir.") from e




def run_main(argv: list[str], config_from_flags: Callable[[Any], Any],
             train: Callable[[Any, str], Any],
             run_errors: tuple[type[BaseException], ...],
             flag_values: Any = None) -> None:
  """The body of an entry point's absl `main`.

  Quiets orbax's INFO logging unless --verbosity is given, turns a bad flag
  (ValueError / FileNotFoundError from `config_from_flags`) into a usage
  error before any work, runs `train(config, --workdir)`, and turns the
  `run_errors` it raises (NaN, corrupt checkpoint, ...) into one `ERROR:` line
  on stderr and exit status 1. `flag_values`: default `absl.flags.FLAGS`.
  """
  import sys  # pylint: disable=g-import-not-at-top
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
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
