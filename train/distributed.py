r"""Several processes, one run: JAX's multi-controller runtime (`jax.distributed`).

A run of S agents on P processes (hosts, or one process per GPU) is one
program: every process starts the same command with its own `--process_id`,
`jax.distributed.initialize` joins them, and `train.devices` spreads the
agents over the devices of all processes (`jax.devices()`), so each process
computes its share. Between chunks the host loop needs every agent's numbers
(metrics, the NaN guard, checkpoints): `to_host` gathers them onto every
process. Process 0 alone touches the workdir (lock, config.json,
metrics.csv, TensorBoard, checkpoints, plots); the others get what it read
(the resumed state and its metadata, whether the workdir could be opened)
through `broadcast`/`broadcast_json`/`announce`. They still read the saved
config on --resume, so the workdir must be on a file system every process
sees (a cluster's shared home or scratch).

    python -m train.sweep ... --coordinator_address=host0:12345 \
        --num_processes=2 --process_id=0      # on host0
    python -m train.sweep ... --coordinator_address=host0:12345 \
        --num_processes=2 --process_id=1      # on host1
    srun python -m train.sweep ... --coordinator_address=auto   # SLURM

With one process every function here is the single-process operation
(`to_host` is `jax.device_get`, `broadcast` the identity) and nothing needs
`jax.distributed`.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any, Optional, Sequence

import jax
import numpy as np

PyTree = Any

AUTO = "auto"  # --coordinator_address=auto: the cluster's environment (SLURM, Open MPI, ...).


FLAGS = ("coordinator_address", "num_processes", "process_id")
_joined: Optional[tuple[Any, ...]] = None  # The arguments jax.distributed was started with.
_refused: Optional[tuple[tuple[Any, ...], str]] = None  # Arguments refused, and why.


def initialize(
  coordinator_address: Optional[str],
  num_processes: Optional[int],
  process_id: Optional[int],
) -> bool:
  """Joins this process to a multi-process run; False (nothing done) for a one-process run.

  Must run before JAX computes anything (importing gymnax already does:
  `initialize_from_argv` runs first). On CPU, cross-process collectives go
  through gloo. A second call with the same arguments does nothing.

  Args:
    coordinator_address: "host:port" of process 0's coordinator; "auto":
      `jax.distributed.initialize()` reads it (and the next two) from the
      cluster's environment; None: one process, unless `num_processes` > 1.
    num_processes: P; None or 1 with no address: one process.
    process_id: this process, 0..P-1.

  Raises:
    ValueError: an incomplete or impossible combination, naming the flags.
  """
  if coordinator_address is None and (num_processes or 1) == 1 and process_id in (None, 0):
    return False
  if coordinator_address != AUTO:
    if coordinator_address is None or num_processes is None or process_id is None:
      raise ValueError(
        "A multi-process run needs --coordinator_address=HOST:PORT (process 0's host), "
        "--num_processes=P and --process_id=0..P-1 on every process; or "
        "--coordinator_address=auto on a cluster that jax.distributed recognises (SLURM, "
        "Open MPI, ...)."
      )
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(
        f"--process_id must be in 0..{num_processes - 1} (--num_processes={num_processes}), "
        f"got {process_id}."
      )
    if ":" not in coordinator_address:
      raise ValueError(
        f"--coordinator_address must be HOST:PORT (e.g. node0:12345), got {coordinator_address!r}."
      )
  global _joined
  arguments = (coordinator_address, num_processes, process_id)
  if _refused is not None and _refused[0] == arguments:
    raise ValueError(_refused[1])  # Found by `initialize_from_argv`, before JAX started.
  if _joined is not None:
    if _joined != arguments:
      raise ValueError(f"jax.distributed already started with {_joined}, not {arguments}.")
    return True
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices' collectives.
  if coordinator_address == AUTO:
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      raise ValueError(
        f"--coordinator_address=auto: jax.distributed could not read the cluster's environment "
        f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}). Start the "
        "processes through the cluster's launcher (e.g. srun), or give "
        "--coordinator_address=HOST:PORT --num_processes=P --process_id=I."
      ) from e
  else:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  _joined = arguments
  return True


def flags_in_argv(argv: Sequence[str]) -> dict[str, str]:
  """The values of `FLAGS` on a command line (`--name=value` or `--name value`), before `--`."""
  argv = list(argv[: argv.index("--")] if "--" in argv else argv)
  found = {}
  for i, arg in enumerate(argv):
    for name in FLAGS:
      if arg.startswith(f"--{name}="):
        found[name] = arg.split("=", 1)[1]
      elif arg == f"--{name}" and i + 1 < len(argv):
        found[name] = argv[i + 1]
  return found


def initialize_from_argv(argv: Optional[Sequence[str]] = None) -> bool:
  """`initialize` from the command line (default `sys.argv`), before anything imports gymnax.

  Called when the `train` package is imported, so that `python -m train.a2c
  --coordinator_address=...` joins its processes before JAX starts. Values
  that do not parse, or do not go together, are left to the entry point's
  flags, which report them as usage errors.
  """
  global _refused
  values = flags_in_argv(sys.argv[1:] if argv is None else argv)
  if not values:
    return False
  try:
    num_processes = values.get("num_processes")
    process_id = values.get("process_id")
    arguments = (
      values.get("coordinator_address"),
      None if num_processes is None else int(num_processes),
      None if process_id is None else int(process_id),
    )
  except ValueError:
    return False
  try:
    return initialize(*arguments)
  except ValueError as e:
    _refused = (arguments, str(e))
    return False


def local_process_flags(num_processes: int) -> list[list[str]]:
  """The command-line flags of each of `num_processes` processes of one run on this machine.

  Process 0's coordinator listens on a free localhost port (tests, benchmarks).
  """
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  return [
    [
      f"--coordinator_address=localhost:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={p}",
    ]
    for p in range(num_processes)
  ]


def process_count() -> int:
  return jax.process_count()


def is_primary() -> bool:
  """Whether this is process 0, the one that writes the workdir."""
  return jax.process_index() == 0


def to_host(tree: PyTree) -> PyTree:
  """`tree` as NumPy arrays holding every agent, on every process.

  Arrays spread over several processes are all-gathered (a collective:
  every process must call this at the same point); the rest are copied.
  """

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(one, tree)


def broadcast(tree: PyTree) -> PyTree:
  """Process 0's `tree` on every process (NumPy); every process passes the same shapes."""
  tree = jax.tree.map(np.asarray, tree)
  if process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def broadcast_json(payload: Any) -> Any:
  """Process 0's JSON-serialisable `payload` on every process (the others pass anything)."""
  if process_count() == 1:
    return payload
  data = np.frombuffer(json.dumps(payload).encode(), np.uint8) if is_primary() else None
  size = int(broadcast(np.int64(0 if data is None else data.size)))
  data = broadcast(np.zeros(size, np.uint8) if data is None else data)
  return json.loads(bytes(data).decode())


def announce(status: int) -> int:
  """Process 0's `status` (an int) on every process."""
  return int(broadcast(np.int64(status)))
