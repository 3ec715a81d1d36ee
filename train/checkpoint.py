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
"""

from __future__ import annotations

import os
from typing import Any, Callable, Collection, Optional

import jax
import orbax.checkpoint as ocp

PyTree = Any


CHECKPOINT_DIR = "checkpoints"  # Under a run's workdir.


def open_run(workdir: str, max_to_keep: int) -> tuple[str, "Checkpointer"]:
  """Creates `workdir`; returns its absolute path and its checkpoint manager."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  return workdir, Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), max_to_keep)


class CheckpointError(RuntimeError):
  """A checkpoint that exists but cannot be read back."""


class Checkpointer:
  """Saves and restores `(state pytree, JSON metadata)` per integer step.

  Args:
    directory: where the step directories live (created if missing).
    max_to_keep: how many of the latest steps to keep.
  """

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=True,
      cleanup_tmp_directories=True,
      enable_async_checkpointing=False,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "metadata")
    )

  def latest_step(self) -> Optional[int]:
    """The newest complete step, or None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def step_to_resume(self, resume: bool, unit: str = "step") -> Optional[int]:
    """The latest step if `resume` (None if none); refuses to overwrite otherwise.

    Args:
      resume: the run's --resume.
      unit: what a step counts, for the message ("iteration", "epoch").

    Raises:
      ValueError: the directory holds checkpoints and `resume` is False.
    """
    latest = self.latest_step()
    if latest is not None and not resume:
      workdir = os.path.dirname(self.directory)
      raise ValueError(
        f"{workdir} already holds checkpoints (latest: {unit} {latest}); pass "
        "--resume to continue that run or choose a fresh --workdir."
      )
    return latest

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: PyTree, metadata: Optional[dict] = None) -> None:
    """Writes `state` (and JSON-serialisable `metadata`) as `step`; waits until done."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata or {})
      ),
      force=True,
    )
    self._manager.wait_until_finished()

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
      CheckpointError: the checkpoint exists but is unreadable or does not
        match `abstract_state`; the message names the path.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"No checkpoint found in {self.directory}.")
    path = self.step_path(step)
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
      raise CheckpointError(
        f"Could not read the checkpoint at {path} ({type(e).__name__}: {e}). "
        f"It is corrupt or was written by a different configuration. Delete "
        f"{path} to fall back to an older checkpoint, or start a fresh "
        f"workdir."
      ) from e
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
      ValueError: checkpoints exist and `resume` is False (see `step_to_resume`).
      CheckpointError: the checkpoint is unreadable (see `restore`).
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


def _check_structure(expected: PyTree, restored: PyTree) -> None:
  exp_leaves, exp_tree = jax.tree.flatten(expected)
  got_leaves, got_tree = jax.tree.flatten(restored)
  if exp_tree != got_tree:
    raise ValueError(f"tree structure {got_tree} differs from the expected {exp_tree}")
  for e, g in zip(exp_leaves, got_leaves):
    if tuple(e.shape) != tuple(g.shape) or e.dtype != g.dtype:
      raise ValueError(f"array {g.shape} {g.dtype} differs from the expected {e.shape} {e.dtype}")
