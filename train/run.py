"""The run scaffold every trainer shares: one workdir, from opening to cleanup.

A trainer brings its pure step functions, its config and its metric names;
`Run` does the rest the same way for all of them:

    with run_lib.Run.for_config(workdir, config, unit="iteration",
                                run_control=RUN_CONTROL_FIELDS,
                                read_saved=A2CConfig.saved_settings) as run:
      state, metadata = run.restore_or_init(abstract_state, init)   # resume rules
      run.write_config(saved_payload)                               # config.json
      run.open_metrics(fieldnames, keep=lambda row: row["iteration"] < start)
      progress = run.progress(total, start, desc="modplast")
      for chunk ...:
        run.check_finite(finite, describe, write_good)   # NaN/inf: stop, keep last good
        run.write_rows(rows)
        run.save(step, state, metadata)

Opening a run claims its workdir (`claim_workdir`): an exclusive lock for the
run's lifetime (`run.lock`, with `run.lock.json` naming the holder's host and
PID; a second run fails at once, a lock left by a dead process is taken over
with a message), then the workdir rules, all checked before anything is
written:

- fresh run: the directory must be empty, or be a run of ours and
  `--overwrite` given (which deletes that run's files; files that are not
  ours are never deleted: the run refuses, naming them);
- `--resume`: there must be a checkpoint, short of the run's target
  (`iterations`, `epochs`), else `NothingToDo` ("already at 40, nothing to
  do") and nothing changes; the settings are checked against config.json,
  or the checkpoint's own metadata when config.json is missing.

On every exit path (normal, error, Ctrl-C) the progress bar, the metrics
writer, the checkpoint manager and the lock are closed; nothing already saved
is lost. Errors of the file system (full disk, read-only, a file in the way)
become one-line `WorkdirError`s: path, reason, fix.

Also here: `NonFiniteError`, `seed_keys` and `compiled`, the one compile
cache of the trainers (AOT with `bpm_jax.xla.compiler_options()`).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import shutil
import socket
import sys
import time
from typing import (
  Any,
  Callable,
  Collection,
  Hashable,
  Iterator,
  Mapping,
  Optional,
  Sequence,
)

import filelock
import jax
import jax.numpy as jnp
import numpy as np

from bpm_jax import xla
from train import checkpoint as checkpoint_lib
from train import distributed
from train import metrics as metrics_lib

Array = jax.Array
PyTree = Any

CONFIG_JSON = "config.json"
CHECKPOINT_DIR = checkpoint_lib.CHECKPOINT_DIR
LOCK_FILE = "run.lock"  # The lock (filelock); stays as the mark of a run of ours.
LOCK_RECORD = "run.lock.json"  # Its holder (host, PID, start) and what our runs wrote.
PROCESSES_KEY = "processes"  # Checkpoint metadata: processes of a multi-process run (absent: 1).
# What every run of ours may leave in its workdir (fnmatch patterns); a
# trainer adds its own (`outputs`), and the names a run created are recorded.
SCAFFOLD_OUTPUTS: tuple[str, ...] = (
  CONFIG_JSON,
  CONFIG_JSON + ".tmp",
  metrics_lib.METRICS_CSV,
  metrics_lib.METRICS_CSV + ".tmp",
  "events.out.tfevents.*",
  CHECKPOINT_DIR,
  LOCK_FILE,
  LOCK_RECORD,
  LOCK_RECORD + ".tmp",
)
_LOCK_NAMES = (LOCK_FILE, LOCK_RECORD, LOCK_RECORD + ".tmp")


class NonFiniteError(FloatingPointError):
  """A NaN/inf appeared in the loss, the gradient or the parameters."""


class WorkdirError(RuntimeError):
  """The workdir cannot be used: in use, not ours, or an error of the file system."""


class WorkdirBusyError(WorkdirError):
  """Another live run holds the workdir's lock."""


class NothingToDo(Exception):
  """--resume of a run already at (or past) its target; nothing was changed.

  Not an error: an entry point prints the message and exits with status 0.
  """


# What a trainer's entry point reports as one `ERROR:` line (exit status 1).
RUN_ERRORS: tuple[type[BaseException], ...] = (
  NonFiniteError,
  checkpoint_lib.CheckpointError,
  WorkdirError,
  ValueError,
  FileNotFoundError,
)


def seed_keys(seed: int, num_seeds: int) -> Array:
  """[S] keys; agent/model s is seeded with `jax.random.key(seed + s)`."""
  return jnp.stack([jax.random.key(seed + s) for s in range(num_seeds)])


# --------------------------------------------------------------------------
# Compiling.

_COMPILED: dict[Hashable, Any] = {}


def compiled(
  key: Hashable, build: Callable[[], Callable], *args: Any, fast_compile: bool = False
) -> tuple[Callable, float]:
  """(AOT-compiled `jax.jit(build())` for `args`, seconds spent compiling now).

  The one compile cache of the trainers: keyed by `key` (hashable: the static
  config and whatever else fixes the program), the shapes and dtypes of
  `args` and `fast_compile`, so runs of one program in a process (tests,
  notebooks, resumes, sweeps) compile it once; 0 seconds on a hit.
  `build` returns the function to jit (it is only called on a miss).
  `fast_compile`: XLA backend optimisation level 0 (half the compile time,
  slower steps).
  """
  signature = tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(args))
  cache_key = (key, signature, fast_compile)
  if cache_key in _COMPILED:
    return _COMPILED[cache_key], 0.0
  watch = metrics_lib.Stopwatch()
  fn = build()
  fn = fn if hasattr(fn, "lower") else jax.jit(fn)
  _COMPILED[cache_key] = xla.compile(fn, *args, fast=fast_compile)
  return _COMPILED[cache_key], watch.lap()


# --------------------------------------------------------------------------
# Errors of the file system, in one line.

_FIXES = {
  errno.ENOSPC: "The disk is full: free space, or choose a --workdir on another disk.",
  errno.EDQUOT: "The disk quota is used up: free space, or choose a --workdir on another disk.",
  errno.EACCES: "It is not writable: fix its permissions, or choose another --workdir.",
  errno.EPERM: "It is not writable: fix its permissions, or choose another --workdir.",
  errno.EROFS: "The file system is read-only: choose a --workdir on a writable disk.",
  errno.EEXIST: "A file is in the way: --workdir must be a directory.",
  errno.ENOTDIR: "A file is in the way: --workdir must be a directory.",
  errno.ENOENT: "That path cannot be created: choose another --workdir.",
}


def describe_os_error(
  error: OSError, doing: str, after: str = "", path: Optional[str] = None
) -> str:
  """One line for an OSError: what failed, the path, the reason, the fix.

  Args:
    error: the error (its `filename`, `strerror` and `errno` are used).
    doing: what was being done, e.g. "save the checkpoint of iteration 4 in DIR".
    after: appended, e.g. which checkpoints are kept.
    path: named if the error has no `filename` (a failed `write()` has none).
  """
  path = error.filename or path
  where = f" {path}" if path else ""
  reason = error.strerror or checkpoint_lib.short(error)
  fix = _FIXES.get(error.errno, "Check that path, or choose another --workdir.")
  return f"Could not {doing}{where}: {reason}. {fix}{after}"


def find_os_error(error: BaseException) -> Optional[OSError]:
  """`error` or the first OSError it was raised from; None if there is none.

  Also reads tensorstore's errors (orbax's array writes), which carry the
  OS error only in their text: `... local file "PATH" ... [os_error_code='28']`.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError) and not isinstance(error, filelock.Timeout):
      return error
    code = re.search(r"os_error_code='(\d+)'", str(error))
    if code:
      path = re.search(r'local file "([^"]+)"', str(error))
      number = int(code.group(1))
      return OSError(number, os.strerror(number), path.group(1) if path else None)
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


@contextlib.contextmanager
def os_errors_as(doing: str, path: Optional[str] = None) -> Iterator[None]:
  """Re-raises an OSError of the body as a one-line `WorkdirError` (see `describe_os_error`)."""
  try:
    yield
  except OSError as e:
    raise WorkdirError(describe_os_error(e, doing, path=path)) from e


# --------------------------------------------------------------------------
# Claiming a workdir: the lock and the rules of fresh and resumed runs.


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, payload: Any) -> None:
  """Writes `payload` (sorted keys, indent 2) through a temporary file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(json.dumps(payload, indent=2, sort_keys=True))
  os.replace(tmp, path)


def _read_record(workdir: str) -> dict[str, Any]:
  """The lock record of `workdir` ({} if missing or unreadable)."""
  try:
    record = read_json(os.path.join(workdir, LOCK_RECORD))
  except (OSError, ValueError):
    return {}
  return record if isinstance(record, dict) else {}


def _holder(record: Mapping[str, Any]) -> str:
  if not record.get("pid"):
    return "a process that left no record"
  return (
    f"PID {record['pid']} on {record.get('host', '?')} (started {record.get('started', '?')}: "
    f"{' '.join(record.get('argv', [])) or '?'})"
  )


def _listing(names: Sequence[str], limit: int = 5) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  else:
    os.remove(path)


class _Claim:
  """The lock of one workdir, held by this process (see `claim_workdir`)."""

  def __init__(self, workdir: str, lock: Any, outputs: Collection[str]):
    self.workdir = workdir
    self.lock = lock
    self.outputs = set(outputs)  # Names our runs created in the workdir.
    self.start_entries: set[str] = set()  # What the workdir held when the run began.
    self.started = time.strftime("%Y-%m-%d %H:%M:%S")

  def entries(self) -> list[str]:
    return sorted(set(os.listdir(self.workdir)) - set(_LOCK_NAMES))

  def write_record(self, running: bool) -> None:
    """run.lock.json: this process's host and PID, and the outputs recorded so far."""
    self.outputs |= set(self.entries()) - self.start_entries
    _write_json(
      os.path.join(self.workdir, LOCK_RECORD),
      {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": sys.argv,
        "started": self.started,
        "running": running,
        "outputs": sorted(self.outputs),
      },
    )


def _is_ours(name: str, recorded: Collection[str], patterns: Sequence[str]) -> bool:
  return name in recorded or any(fnmatch.fnmatch(name, p) for p in patterns)


def _check_workdir(
  claim: _Claim,
  *,
  had_lock: bool,
  resume: bool,
  overwrite: bool,
  unit: str,
  target: Optional[int],
  outputs: Sequence[str],
) -> None:
  """The rules of a fresh and of a resumed run (the lock is held)."""
  workdir = claim.workdir
  checkpoints = os.path.join(workdir, CHECKPOINT_DIR)
  if resume:
    latest = checkpoint_lib.latest_step(checkpoints)
    if latest is None:
      raise ValueError(checkpoint_lib.no_checkpoint(workdir))
    if target is not None and latest >= target:
      raise NothingToDo(
        f"The run in {workdir} is already at {unit} {latest}, nothing to do "
        f"(--{unit}s={target}; nothing was changed). Pass a larger --{unit}s to continue it."
      )
    return
  entries = claim.entries()
  if not entries:
    return
  patterns = SCAFFOLD_OUTPUTS + tuple(outputs)
  if not (had_lock or os.path.isdir(checkpoints)):  # Not a run of ours.
    raise WorkdirError(
      f"{workdir} is not empty and holds no run of ours ({_listing(entries)}); choose an "
      "empty or new --workdir. Nothing was changed."
    )
  if not overwrite:
    latest = checkpoint_lib.latest_step(checkpoints)
    if latest is not None:
      raise ValueError(checkpoint_lib.already_holds_checkpoints(workdir, unit, latest))
    raise ValueError(
      f"{workdir} holds an earlier run that stopped before its first checkpoint "
      f"({_listing(entries)}); pass --overwrite to replace it or choose a fresh --workdir."
    )
  foreign = [name for name in entries if not _is_ours(name, claim.outputs, patterns)]
  if foreign:
    raise WorkdirError(
      f"--overwrite: {workdir} also holds files that are not from a run of ours "
      f"({_listing(foreign)}); move them away or choose another --workdir. Nothing was changed."
    )
  for name in entries:
    _remove(os.path.join(workdir, name))
  claim.outputs = set()
  print(f"--overwrite: removed the earlier run in {workdir} ({_listing(entries)}).", flush=True)


# The workdirs this process holds: an inner claim of the same workdir (a
# sweep's `train_and_evaluate`) joins the outer one.
_CLAIMS: dict[str, Optional[_Claim]] = {}  # None: held by process 0 of a multi-process run.


@contextlib.contextmanager
def claim_workdir(
  workdir: str,
  *,
  resume: bool,
  overwrite: bool = False,
  unit: str = "step",
  target: Optional[int] = None,
  outputs: Sequence[str] = (),
) -> Iterator[str]:
  """Holds `workdir` for the body: lock, then the fresh/resume rules; yields its absolute path.

  Re-entrant in one process: claiming a workdir this process already holds
  joins that claim (its checks were made when it was taken).

  Args:
    workdir: the run's directory (created for a fresh run; a missing one on
      --resume is an error and is not created).
    resume: the run's --resume.
    overwrite: the run's --overwrite: replace a run of ours (fresh runs only).
    unit: what a checkpoint step counts, for messages ("iteration", "epoch").
    target: the step the run trains to (`iterations`, `epochs`); on --resume
      at or past it, `NothingToDo`.
    outputs: fnmatch patterns of files the trainer writes besides the
      scaffold's (e.g. "curves.png"); names created while the workdir is
      claimed are recorded as ours as well.

  Raises:
    WorkdirBusyError: another live run holds the lock (naming its PID).
    WorkdirError: a file system error, or the directory holds files that
      are not ours.
    ValueError: a run of ours without --resume / --overwrite, or --resume
      without a checkpoint, or both flags.
    NothingToDo: --resume of a run already at `target`.
  """
  path = os.path.abspath(workdir)
  if path in _CLAIMS:
    yield path
    return
  open_claim = lambda: _open_claim(path, resume, overwrite, unit, target, outputs)
  if distributed.process_count() > 1:  # Process 0 claims; None on the others.
    claim = _on_process_0(open_claim, path, "open the run in")
  else:
    claim = open_claim()
  _CLAIMS[path] = claim
  try:
    yield path
  finally:
    del _CLAIMS[path]
    if claim is not None:
      _close_claim(claim)


# What process 0 tells the others after its part (`distributed.announce`).
_DONE, _FAILED, _NOTHING_TO_DO = 0, 1, 2


def _on_process_0(fn: Callable[[], Any], path: str, doing: str) -> Any:
  """A multi-process run: `fn()` on process 0 alone, the others learn how it went.

  Returns `fn()` on process 0; None on the other processes, which never
  touch the workdir.

  Raises (on every process): what `fn` raised on process 0 (the others:
  `NothingToDo`, or a `WorkdirError` "Process 0 could not {doing} {path}").
  """
  if distributed.is_primary():
    try:
      result = fn()
    except NothingToDo:
      distributed.announce(_NOTHING_TO_DO)
      raise
    except BaseException:
      distributed.announce(_FAILED)
      raise
    distributed.announce(_DONE)
    return result
  status = distributed.announce(_DONE)
  if status == _NOTHING_TO_DO:
    raise NothingToDo(f"Process 0 found nothing to do in {path} (see its output).")
  if status == _FAILED:
    raise WorkdirError(f"Process 0 could not {doing} {path}: its output says why.")
  return None


def note_outputs(workdir: str) -> None:
  """Records the files created so far in a claimed workdir as ours (best effort)."""
  claim = _CLAIMS.get(os.path.abspath(workdir))
  if claim is not None:
    with contextlib.suppress(OSError):
      claim.write_record(running=True)


def _open_claim(
  path: str,
  resume: bool,
  overwrite: bool,
  unit: str,
  target: Optional[int],
  outputs: Sequence[str],
) -> _Claim:
  if resume and overwrite:
    raise ValueError(
      f"--resume and --overwrite exclude each other: --resume continues the run in {path}, "
      "--overwrite replaces it."
    )
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir {path} is a file, not a directory: choose another --workdir.")
  if resume and not os.path.isdir(path):
    raise ValueError(checkpoint_lib.no_checkpoint(path))
  with os_errors_as("create the workdir", path):
    os.makedirs(path, exist_ok=True)
  lock_path = os.path.join(path, LOCK_FILE)
  had_lock = os.path.exists(lock_path)
  lock = filelock.FileLock(lock_path, timeout=0)
  try:
    lock.acquire()
  except filelock.Timeout as e:
    raise WorkdirBusyError(
      f"{path} is in use by another run: {_holder(_read_record(path))}. Wait for it to "
      "end, or choose another --workdir."
    ) from e
  except OSError as e:
    raise WorkdirError(describe_os_error(e, "lock the workdir with")) from e
  try:
    previous = _read_record(path)
    if previous.get("running"):
      print(
        f"Taking over the lock of {path}: {_holder(previous)} held it and is no longer running.",
        file=sys.stderr,
        flush=True,
      )
    claim = _Claim(path, lock, previous.get("outputs", ()))
    with os_errors_as("prepare the workdir", path):
      _check_workdir(
        claim,
        had_lock=had_lock,
        resume=resume,
        overwrite=overwrite,
        unit=unit,
        target=target,
        outputs=outputs,
      )
    claim.start_entries = set(claim.entries())
    with os_errors_as("write", os.path.join(path, LOCK_RECORD)):
      claim.write_record(running=True)
  except BaseException:
    with contextlib.suppress(OSError):
      if not had_lock:  # Leave the directory as it was.
        for name in _LOCK_NAMES:
          if os.path.exists(os.path.join(path, name)):
            os.remove(os.path.join(path, name))
    lock.release()
    raise
  return claim


def _close_claim(claim: _Claim) -> None:
  try:
    with contextlib.suppress(OSError):
      claim.write_record(running=False)
  finally:
    claim.lock.release()


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a complete checkpoint (nothing is created)."""
  return checkpoint_lib.latest_step(os.path.join(workdir, CHECKPOINT_DIR)) is not None


def saved_payload(workdir: str) -> tuple[Any, str]:
  """(the run's saved config payload, where it was read): config.json, else the checkpoint.

  Every checkpoint's metadata holds the payload of config.json under
  "config", so a run whose config.json is lost still knows its settings.

  Raises:
    FileNotFoundError: neither config.json nor a checkpoint recording its
      settings.
    CheckpointError: the checkpoint's metadata is unreadable.
  """
  path = os.path.join(workdir, CONFIG_JSON)
  if os.path.exists(path):
    return read_json(path), path
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  latest = checkpoint_lib.latest_step(directory)
  if latest is None:
    raise FileNotFoundError(f"No {CONFIG_JSON} and no checkpoint in {workdir}.")
  with checkpoint_lib.Checkpointer(directory, create=False) as ckpt:
    metadata = ckpt.saved_metadata(latest)
    where = ckpt.step_path(latest)
  if "config" not in metadata:
    raise FileNotFoundError(
      f"No {CONFIG_JSON} in {workdir}, and its checkpoint {where} does not record the run's "
      f"settings: restore {CONFIG_JSON}, or start a fresh --workdir."
    )
  return metadata["config"], f"the metadata of the checkpoint {where}"


def load_config(workdir: str, config_cls: type) -> Any:
  """The `config_cls` (a `ConfigMixin`) saved in `workdir`: config.json's, else the checkpoint's."""
  payload, _ = saved_payload(workdir)
  return config_cls.from_dict(config_cls.saved_settings(payload))


def restore_checkpoint(
  workdir: str, keep_checkpoints: int, abstract_state: PyTree, step: Optional[int] = None
) -> tuple[PyTree, int]:
  """(state, iteration) of a workdir's latest (or `step`) checkpoint, shaped as `abstract_state`."""
  with checkpoint_lib.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), keep_checkpoints) as ckpt:
    state, metadata = ckpt.restore(abstract_state, step)
  return state, int(metadata.get("iteration", int(np.asarray(state.iteration)[0])))


# --------------------------------------------------------------------------
# The run.


class Run:
  """A training run in `workdir` (a context manager; see the module docstring).

  Args:
    workdir: output directory (created for a fresh run).
    resume: the run's --resume.
    keep_checkpoints: how many of the latest checkpoints to keep.
    unit: what a checkpoint step counts ("iteration", "epoch"), for messages.
    settings: this run's config as a dict, compared on resume with the saved
      one (config.json, or the checkpoint's metadata) except for
      `run_control` fields.
    run_control: fields free to change on resume (iterations, progress, ...).
    read_saved: config.json's contents -> the saved settings dict.
    overwrite: the run's --overwrite (replace a run of ours; fresh runs only).
    target: the step the run trains to; --resume at or past it raises
      `NothingToDo` before anything changes. None: no such check.
    outputs: fnmatch patterns of the files the trainer writes into the
      workdir besides the scaffold's (see `claim_workdir`).
  """

  def __init__(
    self,
    workdir: str,
    *,
    resume: bool,
    keep_checkpoints: int,
    unit: str,
    settings: Mapping[str, Any],
    run_control: Collection[str] = (),
    read_saved: Callable[[Any], Mapping[str, Any]] = dict,
    overwrite: bool = False,
    target: Optional[int] = None,
    outputs: Sequence[str] = (),
  ):
    self.workdir = os.path.abspath(workdir)
    self.resume = resume
    self.unit = unit
    self._keep = keep_checkpoints
    self._settings = dict(settings)
    self._run_control = tuple(run_control) + ("resume", "overwrite")
    self._read_saved = read_saved
    self._overwrite = overwrite
    self._target = target
    self._outputs = tuple(outputs)
    self._payload: Optional[Mapping[str, Any]] = None
    self._stack: Optional[contextlib.ExitStack] = None
    self.ckpt: Optional[checkpoint_lib.Checkpointer] = None
    self.writer: Optional[metrics_lib.MetricsWriter] = None
    self._progress: Optional[metrics_lib.Progress] = None
    self.resumed = False

  @classmethod
  def for_config(
    cls,
    workdir: str,
    config: Any,
    *,
    unit: str,
    run_control: Collection[str],
    read_saved: Callable[[Any], Mapping[str, Any]],
    target_field: Optional[str] = None,
    extra_settings: Optional[Mapping[str, Any]] = None,
    outputs: Sequence[str] = (),
  ) -> "Run":
    """A `Run` of a trainer config (its `resume`, `overwrite`, `keep_checkpoints`, `to_dict()`).

    Args:
      workdir, unit, run_control, read_saved, outputs: as for `Run`.
      config: the trainer config.
      target_field: the config field the run trains to; default `unit + "s"`
        ("iterations", "epochs") if the config has it.
      extra_settings: settings that come from elsewhere (e.g. the data's
        vocab_size), compared on resume like the config's; `read_saved` must
        return them too.
    """
    target_field = target_field or f"{unit}s"
    return cls(
      workdir,
      resume=config.resume,
      keep_checkpoints=config.keep_checkpoints,
      unit=unit,
      settings=dict(config.to_dict(), **(extra_settings or {})),
      run_control=run_control,
      read_saved=read_saved,
      overwrite=getattr(config, "overwrite", False),
      target=getattr(config, target_field, None),
      outputs=outputs,
    )

  # --- Opening.

  def __enter__(self) -> "Run":
    self._stack = contextlib.ExitStack()
    try:
      self.workdir = self._stack.enter_context(
        claim_workdir(
          self.workdir,
          resume=self.resume,
          overwrite=self._overwrite,
          unit=self.unit,
          target=self._target,
          outputs=self._outputs,
        )
      )
      if self.writes:  # Other processes of a multi-process run leave the workdir alone.
        with os_errors_as("open the checkpoints in", self.workdir):
          self.ckpt = checkpoint_lib.Checkpointer(
            os.path.join(self.workdir, CHECKPOINT_DIR), self._keep
          )
    except BaseException:
      self._stack.close()
      raise
    return self

  @property
  def writes(self) -> bool:
    """Whether this process writes the workdir: always, but for processes 1.. of a multi-process run."""
    return distributed.is_primary()

  @property
  def config_path(self) -> str:
    return os.path.join(self.workdir, CONFIG_JSON)

  @property
  def metrics_path(self) -> str:
    return os.path.join(self.workdir, metrics_lib.METRICS_CSV)

  def saved_settings(self) -> Optional[dict[str, Any]]:
    """The settings in config.json (None if there is none)."""
    if not os.path.exists(self.config_path):
      return None
    return dict(self._read_saved(read_json(self.config_path)))

  def check_resume_config(self) -> None:
    """ValueError naming each setting that differs from the saved run's.

    The saved settings are config.json's, or, if it is missing, those in the
    latest checkpoint's metadata.
    """
    if os.path.exists(self.config_path):
      payload, where = read_json(self.config_path), self.config_path
    else:
      latest = self.ckpt.latest_step()
      metadata = self.ckpt.saved_metadata(latest)
      if "config" not in metadata:  # Written before checkpoints recorded the settings.
        print(
          f"WARNING: {self.workdir} has no {CONFIG_JSON} and its checkpoint does not record "
          "the settings: resuming without checking them.",
          file=sys.stderr,
          flush=True,
        )
        return
      payload = metadata["config"]
      where = f"the metadata of the checkpoint {self.ckpt.step_path(latest)}"
    try:
      saved = dict(self._read_saved(payload))
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(
        f"--resume: could not read the saved settings in {where} "
        f"({checkpoint_lib.short(e)}). Repair or delete that file, or start a fresh --workdir."
      ) from e
    checkpoint_lib.check_same_config(where, saved, self._settings, self._run_control)

  def restore_or_init(
    self, abstract_state: Callable[[], PyTree], init: Callable[[], PyTree]
  ) -> tuple[PyTree, Optional[dict]]:
    """The latest checkpoint on --resume (config checked first), else `init()`.

    With several processes, process 0 reads the checkpoint and sends it to
    the others; `init()` runs on every process (it is one program).

    Raises:
      ValueError: checkpoints exist without --resume, --resume without one,
        the config differs (naming the fields), or the checkpoint was
        written by another number of processes.
      CheckpointMismatchError: the checkpoint does not fit this run's state.
      CheckpointError: the checkpoint is unreadable.
    """
    if distributed.process_count() == 1:
      state, metadata = self.ckpt.restore_or_init(
        self.resume,
        self.unit,
        check_config=self.check_resume_config,
        abstract_state=abstract_state,
        init=init,
      )
    else:
      state, metadata = self._restore_or_init_processes(abstract_state, init)
    if metadata is not None:
      self._check_processes(metadata)
    self.resumed = metadata is not None
    return state, metadata

  def _restore_or_init_processes(
    self, abstract_state: Callable[[], PyTree], init: Callable[[], PyTree]
  ) -> tuple[PyTree, Optional[dict]]:
    """`restore_or_init` of a multi-process run: process 0 reads, every process gets it."""

    def read() -> tuple[Optional[PyTree], Optional[dict]]:
      if self.ckpt.step_to_resume(self.resume, self.unit) is None:
        return None, None
      self.check_resume_config()
      return self.ckpt.restore(abstract_state())

    state, metadata = _on_process_0(read, self.workdir, "restore the run in") or (None, None)
    metadata = distributed.broadcast_json(metadata)
    if metadata is None:
      return init(), None
    if state is None:  # Shapes to receive process 0's state into.
      state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract_state())
    return distributed.broadcast(state), metadata

  def _check_processes(self, metadata: Mapping[str, Any]) -> None:
    saved = int(metadata.get(PROCESSES_KEY, 1))
    if saved != distributed.process_count():
      raise ValueError(
        f"--resume: the checkpoint in {self.workdir} was written by a run of {saved} "
        f"process{'es' if saved > 1 else ''}, this one has {distributed.process_count()}. "
        f"Resume with --num_processes={saved}, or start a fresh --workdir."
      )

  def write_config(self, payload: Mapping[str, Any]) -> None:
    """Writes config.json (sorted keys, indent 2) through a temporary file.

    The payload is also saved in every checkpoint's metadata (under
    "config"), unless the trainer's metadata has its own.
    """
    self._payload = payload
    if not self.writes:
      return
    with os_errors_as("write", self.config_path):
      _write_json(self.config_path, payload)

  def write_json(self, name: str, payload: Any) -> str:
    """Writes `name` in the workdir (atomic; declare it in `outputs`); returns its path."""
    path = os.path.join(self.workdir, name)
    if not self.writes:
      return path
    with os_errors_as("write", path):
      _write_json(path, payload)
    return path

  def open_metrics(
    self, fieldnames: Sequence[str], keep: Callable[[dict], bool]
  ) -> metrics_lib.MetricsWriter:
    """metrics.csv + TensorBoard. Resumed: only the rows where `keep(row)` stay
    (those up to the checkpoint); fresh: a leftover CSV is removed. None on
    the processes that do not write (multi-process runs)."""
    if not self.writes:
      return None
    with os_errors_as("write", self.metrics_path):
      if self.resumed:
        metrics_lib.filter_csv(self.metrics_path, keep)
      elif os.path.exists(self.metrics_path):
        os.remove(self.metrics_path)  # Left by a run that stopped before its first checkpoint.
      self.writer = metrics_lib.MetricsWriter(self.workdir, fieldnames)
    return self.writer

  def progress(self, total: int, initial: int, enabled: bool, desc: str) -> metrics_lib.Progress:
    self._progress = metrics_lib.Progress(total, initial, enabled and self.writes, desc=desc)
    return self._progress

  # --- During the run.

  def write_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
    if not self.writes:
      return
    with os_errors_as("write", self.metrics_path):
      self.writer.write_rows(rows)

  def _kept(self) -> str:
    if not self.writes:
      return " Process 0 reports the checkpoints kept."
    latest = self.ckpt.latest_step()
    if latest is None:
      return " No checkpoint was saved yet."
    return (
      f" The checkpoints already written are kept (latest: {self.unit} {latest} in "
      f"{self.ckpt.step_path(latest)}); pass --resume to continue from there."
    )

  def save(self, step: int, state: PyTree, metadata: Mapping[str, Any]) -> None:
    """Saves checkpoint `step`; a file system error becomes a one-line `WorkdirError`.

    The steps already written stay whole (an unfinished save leaves only a
    temporary directory, removed when the workdir is next opened). With
    several processes every one calls this: the agents are gathered from all
    of them and process 0 writes them.
    """
    metadata = dict(metadata)
    if self._payload is not None:
      metadata.setdefault("config", dict(self._payload))
    if distributed.process_count() > 1:
      metadata[PROCESSES_KEY] = distributed.process_count()
      state = distributed.to_host(state)
      if not self.writes:
        return
    try:
      self.ckpt.save(step, state, metadata=metadata)
    except Exception as e:  # pylint: disable=broad-except
      os_error = find_os_error(e)
      if os_error is None:
        raise
      doing = f"save the checkpoint of {self.unit} {step} in {self.ckpt.step_path(step)}"
      os_error = OSError(os_error.errno, os_error.strerror)  # The step, not orbax's files.
      raise WorkdirError(describe_os_error(os_error, doing, self._kept())) from e
    note_outputs(self.workdir)

  def check_finite(
    self,
    finite: np.ndarray,
    describe: Callable[[int, list[int]], str],
    good_rows: Callable[[int], Sequence[Mapping[str, Any]]],
    lost: str,
    hint: str,
  ) -> None:
    """The NaN/inf guard: stops the run at the first non-finite step.

    Args:
      finite: [S, N] bool, one per agent and step of the chunk just run.
      describe: (first bad step index n, bad agent indices) -> where it
        happened, e.g. "loss, gradient or parameters at iteration 12".
      good_rows: n -> the metric rows before the bad step (written first).
      lost: what was not saved, e.g. "that state was not saved".
      hint: what to try, e.g. "Lower --learning_rate".

    Raises:
      NonFiniteError: naming the step, the agents, the last good checkpoint.
    """
    finite = np.asarray(finite)
    if finite.all():
      return
    bad = int(np.argmax(~finite.all(axis=0)))
    seeds = [int(s) for s in np.nonzero(~finite[:, bad])[0]]
    self.write_rows(good_rows(bad))
    if not self.writes:
      where = "process 0 names the last good checkpoint"
    else:
      last = self.ckpt.latest_step()
      where = (
        f"the last good checkpoint is {self.unit} {last} in {self.ckpt.step_path(last)}"
        if last is not None
        else "no checkpoint was saved yet"
      )
    raise NonFiniteError(
      f"Non-finite {describe(bad, seeds)}; training stopped and {lost}; {where}. {hint}"
    )

  # --- Closing.

  def close_progress(self) -> None:
    if self._progress is not None:
      self._progress.close()
      self._progress = None

  def __exit__(self, exc_type, exc, tb) -> None:
    failing = exc is not None
    try:
      self.close_progress()
      for resource in (self.writer, self.ckpt):
        if resource is None:
          continue
        try:
          resource.close()
        except Exception:  # pylint: disable=broad-except
          if not failing:  # Else the run's own error is the one to report.
            raise
    finally:
      self.writer = self.ckpt = None
      if self._stack is not None:
        self._stack.close()  # Releases the workdir.
        self._stack = None
    if isinstance(exc, OSError) and not isinstance(exc, WorkdirError):
      inside = exc.filename is None or os.path.abspath(str(exc.filename)).startswith(
        self.workdir + os.sep
      )
      if inside:  # A write of the trainer's own (a plot, results.json).
        message = describe_os_error(exc, "write", self._kept_after_close(), self.workdir)
        raise WorkdirError(message) from exc

  def _kept_after_close(self) -> str:
    latest = checkpoint_lib.latest_step(os.path.join(self.workdir, CHECKPOINT_DIR))
    if latest is None:
      return ""
    return f" The checkpoints already written are kept (latest: {self.unit} {latest})."
