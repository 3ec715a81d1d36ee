"""Trainers, their flags and the run scaffold (see WORKSPACE.md).

A command line with --coordinator_address / --num_processes / --process_id
joins its processes here, before any module of the package (or gymnax,
which computes at import) starts JAX: `train.distributed`.
"""

from train import distributed as _distributed

_distributed.initialize_from_argv()
