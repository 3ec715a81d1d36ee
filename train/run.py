"""The run scaffold every trainer shares: one workdir, from opening to cleanup.

A trainer brings its pure step functions, its config and its metric names;
`Run` does the rest the same way for all of them:

    with run_lib.Run(workdir, resume=config.resume, unit="iteration",
                     keep_checkpoints=config.keep_checkpoints,
                     settings=config.to_dict(), run_control=RUN_CONTROL_FIELDS,
                     read_saved=A2CConfig.saved_settings) as run:
      state, metadata = run.restore_or_init(abstract_state, init)   # resume rules
      run.write_config(saved_payload)                               # config.json
      run.open_metrics(fieldnames, keep=lambda row: row["iteration"] < start)
      progress = run.progress(total, start, desc="modplast")
      for chunk ...:
        run.check_finite(finite, describe, write_good)   # NaN/inf: stop, keep last good
        run.write_rows(rows)
        run.save(step, state, metadata)

On every exit path (normal, error, Ctrl-C) the progress bar, the metrics
writer and the checkpoint manager are closed; nothing already saved is lost.

Also here: `NonFiniteError`, `seed_keys` and `compiled`, the one compile
cache of the trainers (AOT with `bpm_jax.xla.compiler_options()`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Collection, Hashable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpm_jax import xla
from train import checkpoint as checkpoint_lib
from train import metrics as metrics_lib

Array = jax.Array
PyTree = Any

CONFIG_JSON = "config.json"
CHECKPOINT_DIR = checkpoint_lib.CHECKPOINT_DIR


class NonFiniteError(FloatingPointError):
  """A NaN/inf appeared in the loss, the gradient or the parameters."""


# What a trainer's entry point reports as one `ERROR:` line (exit status 1).
RUN_ERRORS: tuple[type[BaseException], ...] = (
  NonFiniteError,
  checkpoint_lib.CheckpointError,
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
# The run.


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


class Run:
  """A training run in `workdir` (a context manager; see the module docstring).

  Args:
    workdir: output directory (created).
    resume: the run's --resume.
    keep_checkpoints: how many of the latest checkpoints to keep.
    unit: what a checkpoint step counts ("iteration", "epoch"), for messages.
    settings: this run's config as a dict, compared on resume with the saved
      one (config.json) except for `run_control` fields.
    run_control: fields free to change on resume (iterations, progress, ...).
    read_saved: config.json's contents -> the saved settings dict.
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
  ):
    self.workdir = os.path.abspath(workdir)
    self.resume = resume
    self.unit = unit
    self._keep = keep_checkpoints
    self._settings = dict(settings)
    self._run_control = tuple(run_control)
    self._read_saved = read_saved
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
  ) -> "Run":
    """A `Run` of a trainer config (its `resume`, `keep_checkpoints`, `to_dict()`)."""
    return cls(
      workdir,
      resume=config.resume,
      keep_checkpoints=config.keep_checkpoints,
      unit=unit,
      settings=config.to_dict(),
      run_control=run_control,
      read_saved=read_saved,
    )

  # --- Opening.

  def __enter__(self) -> "Run":
    self.workdir, self.ckpt = checkpoint_lib.open_run(self.workdir, self._keep)
    return self

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
    """ValueError naming each setting that differs from the saved run's."""
    saved = self.saved_settings()
    if saved is not None:
      checkpoint_lib.check_same_config(self.config_path, saved, self._settings, self._run_control)

  def restore_or_init(
    self, abstract_state: Callable[[], PyTree], init: Callable[[], PyTree]
  ) -> tuple[PyTree, Optional[dict]]:
    """The latest checkpoint on --resume (config checked first), else `init()`.

    Raises:
      ValueError: checkpoints exist without --resume, or the config differs.
      CheckpointError: the checkpoint is unreadable.
    """
    state, metadata = self.ckpt.restore_or_init(
      self.resume,
      self.unit,
      check_config=self.check_resume_config,
      abstract_state=abstract_state,
      init=init,
    )
    self.resumed = metadata is not None
    return state, metadata

  def write_config(self, payload: Mapping[str, Any]) -> None:
    """Writes config.json (sorted keys, indent 2) through a temporary file."""
    tmp = self.config_path + ".tmp"
    with open(tmp, "w") as f:
      f.write(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, self.config_path)

  def open_metrics(
    self, fieldnames: Sequence[str], keep: Callable[[dict], bool]
  ) -> metrics_lib.MetricsWriter:
    """metrics.csv + TensorBoard. Resumed: only the rows where `keep(row)` stay
    (those up to the checkpoint); fresh: a leftover CSV is removed."""
    if self.resumed:
      metrics_lib.filter_csv(self.metrics_path, keep)
    elif os.path.exists(self.metrics_path):
      os.remove(self.metrics_path)  # Left by a run that stopped before its first checkpoint.
    self.writer = metrics_lib.MetricsWriter(self.workdir, fieldnames)
    return self.writer

  def progress(self, total: int, initial: int, enabled: bool, desc: str) -> metrics_lib.Progress:
    self._progress = metrics_lib.Progress(total, initial, enabled, desc=desc)
    return self._progress

  # --- During the run.

  def write_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
    self.writer.write_rows(rows)

  def save(self, step: int, state: PyTree, metadata: Mapping[str, Any]) -> None:
    self.ckpt.save(step, state, metadata=dict(metadata))

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

  def __exit__(self, *exc) -> None:
    self.close_progress()
    if self.writer is not None:
      self.writer.close()
    if self.ckpt is not None:
      self.ckpt.close()
