"""Orbax checkpoints of a training state pytree, with clear errors.

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=3)
    ckpt.save(step, state, metadata={"iteration": step})
    state, metadata = ckpt.restore(abstract_state)   # latest step
    ckpt.close()

Saves are synchronous and atomic (orbax writes into a temporary directory and
renames it when complete); unfinished temporary directories of an interrupted
save are removed when the manager opens. Only the last `max_to_keep` steps are
kept. Typed PRNG keys are not supported in the state: store
`jax.random.key_data(key)` instead.

Two kinds of failure to restore are told apart: a checkpoint that does not
fit this run's state (`CheckpointMismatchError`, from the saved array
metadata: the checkpoint is intact, the settings differ) and one that cannot
be read (`CheckpointError`: corrupt or incomplete).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Callable, Collection, Iterator, Optional

import jax
import orbax.checkpoint as ocp

PyTree = Any


CHECKPOINT_DIR = "checkpoints"  # Under a run's workdir.
_MAX_DETAIL = 200  # Characters of an underlying error quoted in a message.


def open_run(workdir: str, max_to_keep: int) -> tuple[str, "Checkpointer"]:
  """Creates `workdir`; returns its absolute path and its checkpoint manager."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  return workdir, Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), max_to_keep)


class CheckpointError(RuntimeError):
  """A checkpoint that exists but cannot be read back."""


class CheckpointMismatchError(ValueError):
  """An intact checkpoint whose arrays do not fit this run's state (other settings or data)."""


def short(error: BaseException) -> str:
  """`Type: first line of the message`, at most ~200 characters (no tensorstore specs)."""
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ""
  if len(text) > _MAX_DETAIL:
    text = text[: _MAX_DETAIL - 3] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def latest_step(directory: str) -> Optional[int]:
  """The newest complete step in checkpoint `directory`; None if none (nothing is created)."""
  if not os.path.isdir(directory):
    return None
  with Checkpointer(directory, create=False) as ckpt:
    return ckpt.latest_step()


@contextlib.contextmanager
def _quiet_orbax_errors() -> Iterator[None]:
  """Silences orbax's logged tracebacks of a failing save (the error is raised anyway)."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def _drop_closed_loop_noise() -> None:
  """Stops the "Event loop is closed" tracebacks that follow a failed restore.

  When one read of a restore fails, orbax closes its event loop while
  tensorstore still completes the other reads; each completion reports a
  RuntimeError("Event loop is closed") to `sys.unraisablehook` (dozens of
  tracebacks after the one-line error, carrying nothing). Those are dropped;
  every other unraisable error goes to the hook installed before.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_noise", False):
    return

  def hook(unraisable: Any) -> None:
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return
    previous(unraisable)

  hook.drops_closed_loop_noise = True
  sys.unraisablehook = hook


class Checkpointer:
  """Saves and restores `(state pytree, JSON metadata)` per integer step.

  Args:
    directory: where the step directories live.
    max_to_keep: how many of the latest steps to keep.
    create: create `directory` if missing (False: only read).
  """

  def __init__(self, directory: str, max_to_keep: int = 3, create: bool = True):
    self.directory = os.path.abspath(directory)
    extra = {}
    multi_process = jax.process_count() > 1
    if multi_process:
      # A multi-process run: the agents are gathered onto process 0, which alone
      # reads and writes checkpoints (`train.run.Run`); no barriers with the others
      # (orbax refuses `create` with `active_processes`: the directory is made here).
      if create:
        os.makedirs(self.directory, exist_ok=True)
      extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
      )
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=create and not multi_process,
      cleanup_tmp_directories=create,
      enable_async_checkpointing=False,
      **extra,
    )
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "metadata": ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> Optional[int]:
    """The newest complete step, or None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def step_to_resume(self, resume: bool, unit: str = "step") -> Optional[int]:
    """The latest step if `resume`; refuses to overwrite or to resume nothing.

    Args:
      resume: the run's --resume.
      unit: what a step counts, for the message ("iteration", "epoch").

    Raises:
      ValueError: the directory holds checkpoints and `resume` is False, or
        `resume` is True and it holds none.
    """
    latest = self.latest_step()
    workdir = os.path.dirname(self.directory)
    if latest is not None and not resume:
      raise ValueError(already_holds_checkpoints(workdir, unit, latest))
    if latest is None and resume:
      raise ValueError(no_checkpoint(workdir))
    return latest

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: PyTree, metadata: Optional[dict] = None) -> None:
    """Writes `state` (and JSON-serialisable `metadata`) as `step`; waits until done.

    Raises:
      OSError: from the file system (full disk, read-only, ...); the steps
        already written are untouched (an unfinished one is a temporary
        directory, removed when the directory is next opened).
    """
    with _quiet_orbax_errors():
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata or {})
        ),
        force=True,
      )
      self._manager.wait_until_finished()

  def saved_metadata(self, step: Optional[int] = None) -> dict:
    """The JSON metadata saved with `step` (default: the latest), without the state.

    Raises:
      FileNotFoundError: no checkpoint in the directory.
      CheckpointError: the metadata cannot be read.
    """
    step = self._step_or_latest(step)
    try:
      restored = self._manager.restore(
        step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
      )
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(self._unreadable(step, e)) from e
    return dict(restored["metadata"] or {})

  def check_fits(self, abstract_state: PyTree, step: Optional[int] = None) -> None:
    """Compares the arrays saved as `step` with `abstract_state` (names, shapes, dtypes).

    Raises:
      CheckpointMismatchError: they differ; the message names the arrays.
      CheckpointError: the saved array metadata cannot be read.
    """
    step = self._step_or_latest(step)
    try:
      saved_tree = self._manager.item_metadata(step)["state"]
      saved = _named_leaves(saved_tree)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(self._unreadable(step, e)) from e
    now = _named_leaves(jax.tree.map(_abstract, abstract_state))
    problems = [f"{name} missing from the checkpoint" for name in now if name not in saved]
    problems += [f"{name} not in this run's state" for name in saved if name not in now]
    problems += [
      f"{name}: saved {_describe(saved[name])}, this run {_describe(now[name])}"
      for name in now
      if name in saved and _describe(saved[name]) != _describe(now[name])
    ]
    if problems:
      more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
      raise CheckpointMismatchError(
        f"The checkpoint at {self.step_path(step)} does not fit this run's state "
        f"({'; '.join(problems[:3])}{more}): it was written with other settings or "
        "data. It is intact: resume with the settings it was written with, or start a "
        "fresh workdir."
      )

  def restore(self, abstract_state: PyTree, step: Optional[int] = None) -> tuple[PyTree, dict]:
    """Reads `step` (default: the latest) into the structure of `abstract_state`.

    Args:
      abstract_state: a pytree of arrays or `jax.ShapeDtypeStruct`s with the
        saved structure (e.g. from `jax.eval_shape`).
      step: which step; None for the latest.

    Returns:
      (state, metadata).

    Raises:
      FileNotFoundError: no checkpoint in the directory.
      CheckpointMismatchError: the checkpoint does not match `abstract_state`
        (checked first, from the saved array metadata).
      CheckpointError: the checkpoint exists but is unreadable; the message
        names the path.
    """
    step = self._step_or_latest(step)
    self.check_fits(abstract_state, step)
    abstract_state = jax.tree.map(_abstract, abstract_state)
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), metadata=ocp.args.JsonRestore()
        ),
      )
      state, metadata = restored["state"], restored["metadata"]
      _check_structure(abstract_state, state)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(self._unreadable(step, e)) from e
    return state, dict(metadata or {})

  def restore_or_init(
    self,
    resume: bool,
    unit: str,
    check_config: Callable[[], None],
    abstract_state: Callable[[], PyTree],
    init: Callable[[], PyTree],
  ) -> tuple[PyTree, Optional[dict]]:
    """The latest checkpoint on --resume, else a fresh state: a run's opening.

    Args:
      resume: the run's --resume.
      unit: what a step counts, for messages ("iteration", "epoch").
      check_config: called before restoring; raises if the saved run's config
        does not match this one.
      abstract_state: returns the saved structure (see `restore`).
      init: returns a fresh state, used when there is nothing to resume.

    Returns:
      (state, metadata) restored, or (init(), None) for a fresh run.

    Raises:
      ValueError: checkpoints exist and `resume` is False, or `resume` and
        there is none (see `step_to_resume`).
      CheckpointMismatchError / CheckpointError: see `restore`.
    """
    if self.step_to_resume(resume, unit) is None:
      return init(), None
    check_config()
    return self.restore(abstract_state())

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _step_or_latest(self, step: Optional[int]) -> int:
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"No checkpoint found in {self.directory}.")
    return step

  def _unreadable(self, step: int, error: BaseException) -> str:
    _drop_closed_loop_noise()
    path = self.step_path(step)
    return (
      f"Could not read the checkpoint at {path} ({short(error)}); it is corrupt or "
      f"incomplete. Delete {path} to fall back to an older checkpoint, or start a fresh "
      "workdir."
    )


def already_holds_checkpoints(workdir: str, unit: str, latest: int) -> str:
  return (
    f"{workdir} already holds checkpoints (latest: {unit} {latest}); pass --resume to "
    "continue that run, --overwrite to replace it, or choose a fresh --workdir."
  )


def no_checkpoint(workdir: str) -> str:
  return f"--resume: no checkpoint in {workdir}; drop --resume to start afresh."


def check_same_config(
  path: str, saved: dict[str, Any], now: dict[str, Any], ignore: Collection[str] = ()
) -> None:
  """Raises ValueError naming every setting of `now` that differs from `saved`.

  Args:
    path: the saved config's file, for the message.
    saved: the settings the checkpoints were written with.
    now: the settings of the run that resumes them.
    ignore: run-control fields free to change on resume (iterations, ...).
  """
  diff = {k: (saved.get(k), v) for k, v in now.items() if k not in ignore and saved.get(k) != v}
  if diff:
    details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
    raise ValueError(
      f"--resume with a config that differs from {path} ({details}). "
      "Resume with the same settings or use a fresh workdir."
    )


def _abstract(x: Any) -> Any:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _named_leaves(tree: PyTree) -> dict[str, Any]:
  """{"params/cell/w": leaf} of a state pytree or of orbax's saved tree metadata."""
  return {
    "/".join(_key_name(k) for k in path): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _describe(leaf: Any) -> str:
  return f"{list(leaf.shape)} {jax.numpy.dtype(leaf.dtype).name}"


def _check_structure(expected: PyTree, restored: PyTree) -> None:
  exp_leaves, exp_tree = jax.tree.flatten(expected)
  got_leaves, got_tree = jax.tree.flatten(restored)
  if exp_tree != got_tree:
    raise ValueError(f"tree structure {got_tree} differs from the expected {exp_tree}")
  for e, g in zip(exp_leaves, got_leaves):
    if tuple(e.shape) != tuple(g.shape) or e.dtype != g.dtype:
      raise ValueError(f"array {g.shape} {g.dtype} differs from the expected {e.shape} {e.dtype}")
