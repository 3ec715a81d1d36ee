"""absl flags of the entry points: one flag per config field, and their `main`.

Each training config is a frozen dataclass whose fields carry their help text
in `metadata["help"]`; every field becomes a flag of the same name. The
validators the configs use live in `train.validate`.

    def main(argv):
      flags_lib.run_main(argv, config_from_flags, train_and_evaluate)

    if __name__ == "__main__":
      flags_lib.run_cli(define_flags, main)

`run_cli` gives every entry point the same command line: `--help` (and
`--helpshort`, `-h`) lists the project's own flags with their defaults
(`--helpfull`: absl's and orbax's too), and a bad flag is one `ERROR:` line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import textwrap
from typing import Any, Callable, Collection, Iterator, Optional

# Help flags that print the project's flags (absl's --helpfull lists all).
HELP_ARGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")
# Fields a resumed run never takes from the saved config (the flag, or its default, wins).
NOT_RESUMED = ("overwrite",)


def define_config_flags(
  config_cls: type,
  choices: dict[str, tuple[str, ...]],
  flag_values,
  default_of: Callable[[dataclasses.Field], Any],
  default_help: Optional[Callable[[dataclasses.Field], Optional[str]]] = None,
) -> None:
  """Defines `--workdir` and one flag per field of `config_cls`.

  Args:
    config_cls: a dataclass; each field's `metadata["help"]` is its help text.
    choices: allowed values of the enum fields.
    flag_values: an absl FlagValues (None: the global FLAGS).
    default_of: a field's flag default (e.g. None to mean "the paper's").
    default_help: a field's default in words, appended to its help as
      "Default: ..." (for flags whose default is None, e.g. "200; GridMaze-v0: 100").
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  fv = flag_values if flag_values is not None else flags.FLAGS
  flags.DEFINE_string("workdir", None, "Output directory (required).", flag_values=fv)
  define_distributed_flags(fv)
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
    words = default_help(field) if default_help is not None else None
    if words:
      help_text = f"{help_text} Default: {words}."
    if name in choices:
      flags.DEFINE_enum(name, default, list(choices[name]), help_text, flag_values=fv)
    elif kind in definers:
      definers[kind](name, default, help_text, flag_values=fv)
    else:
      raise TypeError(f"No flag type for {config_cls.__name__}.{name}: {field.type}")


def define_distributed_flags(flag_values) -> None:
  """--coordinator_address, --num_processes, --process_id: one run over several processes."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process run (jax.distributed): HOST:PORT of process 0, the same on every process; "
    "'auto': read it, --num_processes and --process_id from the cluster's environment "
    "(SLURM, Open MPI, ...). Unset: one process.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "num_processes",
    None,
    "Multi-process run: the number of processes P (each runs its share of the agents).",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "process_id",
    None,
    "Multi-process run: this process, 0..P-1 (process 0 writes the workdir).",
    lower_bound=0,
    flag_values=flag_values,
  )


def initialize_distributed(flag_values) -> None:
  """Starts jax.distributed from the flags of `define_distributed_flags` (if defined and set)."""
  if "coordinator_address" not in flag_values:
    return
  from train import distributed  # pylint: disable=g-import-not-at-top

  distributed.initialize(
    flag_values["coordinator_address"].value,
    flag_values["num_processes"].value,
    flag_values["process_id"].value,
  )


def require_workdir(flag_values) -> None:
  if flag_values["workdir"].value in (None, ""):
    raise ValueError("--workdir is required: the directory for outputs and checkpoints.")


def saved_config_for_resume(
  flag_values,
  config_json: str,
  read: Callable[[str], dict[str, Any]],
  fresh_on_resume: Collection[str] = (),
) -> dict[str, Any] | None:
  """On --resume, the settings saved in `--workdir`; else None.

  So that `--workdir=DIR --resume` alone continues a run: settings not given
  on the command line come from the run being resumed, not from the defaults.
  Flags that are given still win (and the trainer then refuses a changed
  model setting, naming it). The settings are config.json's or, when it is
  missing, those the latest checkpoint recorded (`read` falls back to them).

  Args:
    flag_values: parsed flags with `--workdir` and `--resume`.
    config_json: the config file's name in the workdir.
    read: the workdir's `config_json` path -> its dict of config fields.
    fresh_on_resume: fields never taken from the saved run (its flag or the
      default wins), e.g. `step_impl`, whose `auto` is resolved afresh on
      each machine; `overwrite` always is.

  Raises:
    ValueError: --resume of a workdir with neither config.json nor a
      checkpoint, or unreadable saved settings.
  """
  import os  # pylint: disable=g-import-not-at-top

  from train import run as run_lib  # pylint: disable=g-import-not-at-top

  if not flag_values["resume"].value:
    return None
  workdir = flag_values["workdir"].value
  path = os.path.join(workdir, config_json)
  if not os.path.exists(path) and not run_lib.has_checkpoint(workdir):
    raise ValueError(run_lib.checkpoint_lib.no_checkpoint(os.path.abspath(workdir)))
  try:
    saved = read(path)
  except (OSError, ValueError, KeyError, TypeError, run_lib.checkpoint_lib.CheckpointError) as e:
    where = path if os.path.exists(path) else f"the checkpoints of {workdir}"
    raise ValueError(
      f"--resume: could not read the saved settings at {where} ({type(e).__name__}: "
      f"{e}). Repair or delete that file and give every setting as a flag, or "
      "start a fresh --workdir."
    ) from e
  return {k: v for k, v in saved.items() if k not in set(NOT_RESUMED) | set(fresh_on_resume)}


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


# --------------------------------------------------------------------------
# --help.


def _default_words(flag) -> Optional[str]:
  if flag.default is None:
    return None
  if flag.boolean:
    return "true" if flag.default else "false"
  if isinstance(flag.default, (list, tuple)):
    return ",".join(str(v) for v in flag.default)
  return str(flag.default)


def help_text(flag_values, names: Collection[str], doc: Optional[str]) -> str:
  """The `--help` page: `doc` (the entry point's docstring), then the flags `names`.

  Each flag (in the order given) with its help, its choices and its default;
  `--helpfull` is named for the rest (absl's, orbax's, JAX's).
  """
  lines = [textwrap.dedent(doc).strip(), ""] if doc else []
  lines.append("Flags (--helpfull also lists those of absl, JAX and orbax):")
  for name in names:
    flag = flag_values[name]
    head = f"--[no]{name}" if flag.boolean else f"--{name}"  # Enum help starts with <a|b>.
    text = f"{head}: {flag.help}"
    words = _default_words(flag)
    if words is not None:
      text += f" (default: {words})"
    lines.append(textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="      "))
  return "\n".join(lines) + "\n"


def config_with_defaults(
  flag_values,
  config_cls: type,
  selector: str,
  defaults: Callable[..., Any],
  load_saved: Callable[[str], Any],
  fresh_on_resume: tuple[str, ...] = (),
) -> Any:
  """A trainer config from parsed flags whose defaults depend on one selector flag.

  Flags not given (None) take `defaults(<selector value>, **given)` (e.g. the
  paper settings of `--env` / `--task`). With `--resume`, they take the saved
  run's values instead (config.json's, or the checkpoint's: `load_saved(workdir)`
  returns the saved config), except `fresh_on_resume` fields.

  Raises:
    ValueError: an invalid value, naming the flag and what is allowed.
  """
  import os  # pylint: disable=g-import-not-at-top

  from train import run as run_lib  # pylint: disable=g-import-not-at-top

  given = {}
  for field in dataclasses.fields(config_cls):
    value = flag_values[field.name].value
    if value is not None and field.name != selector:
      given[field.name] = value
  require_workdir(flag_values)
  saved = saved_config_for_resume(
    flag_values,
    run_lib.CONFIG_JSON,
    lambda path: load_saved(os.path.dirname(path)).to_dict(),
    fresh_on_resume=fresh_on_resume,
  )
  with as_flag_errors(config_cls):
    if saved is not None:  # --resume: what is not given comes from the saved run.
      if flag_values[selector].present:
        given[selector] = flag_values[selector].value
      return config_cls.from_dict(dict(saved, **given))
    return defaults(flag_values[selector].value, **given)


def run_cli(define_flags: Callable[[], None], main: Callable[[list[str]], None]) -> None:
  """An entry point's `if __name__ == "__main__"`: define the flags, run `main`.

  `--help` / `--helpshort` / `-h` print the entry point's docstring and the
  flags `define_flags` defined (exit status 0); an `app.UsageError` of
  `main` (a bad flag) is one `ERROR:` line on stderr, exit status 1.
  """
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  before = set(flags.FLAGS)
  define_flags()
  ours = [name for name in flags.FLAGS if name not in before]
  argv = sys.argv[1 : sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
  if any(arg in HELP_ARGS for arg in argv):
    doc = getattr(sys.modules.get("__main__"), "__doc__", None)
    sys.stdout.write(help_text(flags.FLAGS, ours, doc))
    sys.exit(0)

  def one_line_usage_errors(argv: list[str]) -> None:
    try:
      main(argv)
    except app.UsageError as e:
      print(f"ERROR: {e}", file=sys.stderr, flush=True)
      sys.exit(1)

  app.run(one_line_usage_errors)


def _start(argv: list[str], flag_values: Any) -> Any:
  """An entry point's first steps: no positional arguments; orbax's INFO
  logging (every save and restore) quiet unless --verbosity is given.
  Returns `flag_values` (default `absl.flags.FLAGS`)."""
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top

  flag_values = flags.FLAGS if flag_values is None else flag_values
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if "verbosity" in flag_values and not flag_values["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  return flag_values


def run_tool(argv: list[str], body: Callable[[Any], Any], flag_values: Any = None) -> None:
  """The body of an analysis tool's absl `main` (train.evaluate, inspect, attribute).

  Refuses positional arguments, quiets orbax's INFO logging unless
  --verbosity is given, runs `body(flag_values)` and turns the run errors it
  raises (`train.run.RUN_ERRORS`: a missing or corrupt run, bad values, ...)
  and any OSError into one `ERROR:` line on stderr and exit status 1.
  `flag_values`: default `absl.flags.FLAGS`.
  """
  from train import run as run_lib  # pylint: disable=g-import-not-at-top

  flag_values = _start(argv, flag_values)
  try:
    body(flag_values)
  except run_lib.RUN_ERRORS + (OSError,) as e:
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


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
  checkpoint, a workdir in use or not ours, bad data, ...) and any OSError
  into one `ERROR:` line on stderr and exit status 1. `train.run.NothingToDo`
  (--resume of a finished run) prints its message; exit status 0.
  `flag_values`: default `absl.flags.FLAGS`.
  """
  from absl import app  # pylint: disable=g-import-not-at-top

  from train import run as run_lib  # pylint: disable=g-import-not-at-top

  flag_values = _start(argv, flag_values)
  if run_errors is None:
    run_errors = run_lib.RUN_ERRORS
  try:
    initialize_distributed(flag_values)
    config = config_from_flags(flag_values)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  try:
    train(config, flag_values["workdir"].value)
  except run_lib.NothingToDo as e:
    print(e, flush=True)
  except run_errors as e:
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  except OSError as e:  # From outside the run scaffold (e.g. a sweep's summary).
    print(f"ERROR: {run_lib.describe_os_error(e, 'access')}", file=sys.stderr, flush=True)
    sys.exit(1)
