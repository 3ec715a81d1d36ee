r"""Agents placed over devices: the agent axis of a run sharded with `shard_map`.

A run of S agents (seeds x settings) is a function vmapped over a leading
agent axis. `over_agents` runs that function with the agents split evenly
over the devices of a 1-D `jax.sharding.Mesh` (axis "agents"): each device
runs `jax.vmap` over its own block of agents. This is `shard_map`, not a
sharded `jit`, because the fused CPU kernels are custom calls that XLA's SPMD
partitioner would replicate rather than split. S need not divide the device
count: the agent axis is padded with copies of the last agent and the copies
are dropped from the outputs.

    mesh = devices.agent_mesh(num_agents)            # None: one device
    fn = devices.over_agents(vmapped_fn, (0, None), num_agents, mesh)
    state, metrics = jax.jit(fn)(state, hparams)     # outputs [S, ...]

An agent's numbers are those of the one-device run to float32 rounding (not
bit for bit: XLA lays out a vmap over 2 agents otherwise than one over 6; the
sampled episodes are the same). `tests/test_devices.py` checks 4 devices
against 1.
With one device (or one agent) `over_agents` returns the function unchanged.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

AXIS = "agents"


def agent_mesh(num_agents: int, devices: Optional[Sequence[jax.Device]] = None) -> Optional[Mesh]:
  """The 1-D mesh that `num_agents` agents are spread over; None for one device.

  `devices` defaults to every device of every process (`jax.devices()`); no
  more devices are used than there are agents.
  """
  devices = list(jax.devices() if devices is None else devices)
  if num_agents < 1:
    raise ValueError(f"num_agents must be >= 1, got {num_agents}.")
  if not devices:
    raise ValueError("No devices to place the agents on.")
  devices = devices[: min(len(devices), num_agents)]
  if len(devices) == 1:
    return None
  return Mesh(np.array(devices), (AXIS,))


def describe(num_agents: int, mesh: Optional[Mesh]) -> str:
  """A log line such as `6 agents on 4 devices (1 process, 2 agents per device, 2 padded)`."""
  num_devices = 1 if mesh is None else mesh.size
  processes = 1 if mesh is None else len({d.process_index for d in mesh.devices.flat})
  per = math.ceil(num_agents / num_devices)
  padded = per * num_devices - num_agents
  agents = "agent" if num_agents == 1 else "agents"
  device_word = "device" if num_devices == 1 else "devices"
  process_word = "process" if processes == 1 else "processes"
  line = f"{num_agents} {agents} on {num_devices} {device_word} ({processes} {process_word}"
  if num_devices > 1:
    line += f", {per} per device"
    if padded:
      line += f", {padded} padding"
  return line + ")"


def _pad(x: jax.Array, size: int) -> jax.Array:
  """`x` with its leading axis padded to `size` by repeating its last entry."""
  n = x.shape[0]
  if n == size:
    return x
  return x[jnp.minimum(jnp.arange(size), n - 1)]


def over_agents(
  fn: Callable, in_axes: Sequence[Optional[int]], num_agents: int, mesh: Optional[Mesh]
) -> Callable:
  """`fn` (vmapped over a leading agent axis) run with its agents split over `mesh`.

  Args:
    fn: takes positional pytree arguments; those with in_axes 0 have a
      leading agent axis of size `num_agents`, those with None are the same
      for every agent. Every output leaf has the leading agent axis.
    in_axes: 0 or None per positional argument.
    num_agents: S, the size of the agent axis.
    mesh: from `agent_mesh`; None returns `fn` itself.

  Returns:
    A function of the same arguments and outputs (to be jitted), whose
    agents run on the mesh's devices, `ceil(S / D)` per device.
  """
  if mesh is None:
    return fn
  if any(axis not in (0, None) for axis in in_axes):
    raise ValueError(f"in_axes must be 0 or None per argument, got {tuple(in_axes)}.")
  size = math.ceil(num_agents / mesh.size) * mesh.size
  in_specs = tuple(P(AXIS) if axis == 0 else P() for axis in in_axes)
  sharded = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(AXIS), check_vma=False)

  def run(*args):
    if len(args) != len(in_axes):
      raise TypeError(f"Expected {len(in_axes)} arguments, got {len(args)}.")
    args = [
      jax.tree.map(lambda x: _pad(x, size), arg) if axis == 0 else arg
      for arg, axis in zip(args, in_axes)
    ]
    outputs = sharded(*args)
    return jax.tree.map(lambda x: x[:num_agents], outputs)

  return run


def mesh_key(mesh: Optional[Mesh]) -> tuple[int, ...]:
  """A hashable name of `mesh` for compile caches: its device ids (() for none)."""
  return () if mesh is None else tuple(int(d.id) for d in mesh.devices.flat)


def placement_key(num_agents: int) -> tuple[int, ...]:
  """`mesh_key` of the mesh `num_agents` agents are placed on (for compile caches)."""
  return mesh_key(agent_mesh(num_agents))


def vmap_over_agents(fn: Callable, in_axes: Sequence[Optional[int]], num_agents: int) -> Callable:
  """`jax.vmap(fn, in_axes)` with its `num_agents` agents split over every device."""
  vmapped = jax.vmap(fn, in_axes=tuple(in_axes))
  return over_agents(vmapped, in_axes, num_agents, agent_mesh(num_agents))
