"""BPTT throughput and memory of the plastic RNN: step implementations x batching.

    python -m benchmarks.cell_throughput --hidden_sizes=100,200
    python -m benchmarks.cell_throughput --impls=fast --strategies=vmap,sharded \\
        --host_devices=2
    python -m benchmarks.cell_throughput --isolate     # + peak RSS per config
    python -m benchmarks.cell_throughput --noynn_fusion

What is timed: one forward + backward pass (`jax.value_and_grad` of a simple
loss of the outputs, mean over B of `mean_t |h_t @ W_out|^2 + |m_t|^2`) of a
T-step episode batch through the plastic RNN (input projection, `lax.scan` of
the step over T, readout), jitted, after a compile-and-warm-up call; the
median of `--reps` calls is reported as env-steps/s = B * T / seconds.

Step implementations (`--impls`):
  reference        autodiff of `plasticity.rnn_step`: saves several
                   [B, H, H] arrays per step (alpha * Hebb, the clip mask,
                   outer(h_tm1, h_t), ...).
  reference_remat  the same with `jax.checkpoint` around the scan body: saves
                   only the carry (h, Hebb, E) per step, recomputes the step
                   forward in the backward pass.
  fast             `fast_step.rnn_step_fast` (custom VJP): saves h_tm1, h_t,
                   m_t, Hebb_tm1 (and E_tm1) per step, a hand-written backward.
  fast_remat       `jax.checkpoint` around the fast body. Not meaningful for
                   memory: the fast step already saves only the old carry, so
                   remat only adds a forward recomputation (kept to show that).

Batching strategies (`--strategies`):
  vmap      the step is vmapped over B inside one scan over T; the traces are
            [B, H, H] (B * 160 KB at H = 200: out of cache).
  episodes  `lax.scan` over the B episodes, each one an unbatched scan over T
            with its own fwd + bwd, gradients summed in the carry: one
            episode's [H, H] trace stays cache-resident, and the saved
            residuals are those of ONE episode (B times less memory).
  sharded   `vmap` with the batch sharded over `--host_devices` CPU devices
            (`jax_num_cpu_devices`; same as
            `XLA_FLAGS=--xla_force_host_platform_device_count=N`), each device
            running on its own thread.

Memory: `temp MB` is the compiled executable's `memory_analysis()` temporary
buffer size (the saved residuals dominate it); with `--isolate` each config
runs in a fresh subprocess and its peak RSS (`ru_maxrss`, which includes the
~0.3-0.5 GB of the Python + JAX runtime) is reported as well.

XLA:CPU's YNNPACK fusions (on by default in jaxlib 0.10) are pathologically
slow for the reduction over the batch axis that `vmap` inserts for the
gradient of a shared [H, H] parameter (alpha): `jnp.sum(x * y, axis=0)` on
[30, 200, 200] takes ~42 ms with them and ~1.2 ms without (~0.5 vs 0.3 ms at
H = 100), which makes the `vmap` strategy 2-3x slower at H = 200 for every
step implementation. `--noynn_fusion` compiles with
`compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""}`; the same
for a whole program: `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`.

The allocator matters on CPU: XLA's CPU runtime allocates and frees its large
temporaries (the stacked residuals: ~1 GB for `fast`, ~4.6 GB for `reference`
at H = 200, B = 30) through malloc on every call; glibc serves blocks that big
with fresh mmaps, so every call page-faults them in again (zero-filling the
960 MB residual buffer alone takes ~0.4 s of the ~1.5 s of a `fast` call), and
fragmentation inflates the RSS. jemalloc (or tcmalloc) keeps and reuses them. To compare, preload it:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python -m benchmarks.cell_throughput

(Debian/Ubuntu package `libjemalloc2`; on the machine these numbers were taken
on it was not installed (`apt-cache policy libjemalloc2`: candidate 5.3.0-1),
so the figures in the docs use glibc malloc.) Alternatively
`MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_` tune glibc itself.

Measured (2-core AMD EPYC VM shared with other jobs, so +-20%; B = 30,
T = 200, --noynn_fusion, env-steps/s and temp MB):

    H=200      reference        reference_remat  fast
    modplast   vmap 1.3k 4.6GB  2.4k 958MB       4.1k 953MB
               episodes 1.7k    2.7k             4.7k (32 MB)
    retromod   vmap 0.95k 5.6GB 1.4k 1.9GB       1.7k 1.9GB
               episodes 1.3k    1.8k             2.4k (63 MB)

Shapes: B batch (episodes), T steps, H hidden, I inputs, A actions, K modulators.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from bpm_jax import cells, fast_step, plasticity, xla
from bpm_jax.config import NETWORKS, PlasticityConfig

YNN_FUSION_OPTION = xla.YNN_FUSION_OPTION
IMPLS = ("reference", "reference_remat", "fast", "fast_remat")
STRATEGIES = ("vmap", "episodes", "sharded")

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["30"], "B values.")
_HIDDEN_SIZES = flags.DEFINE_list("hidden_sizes", ["100", "200"], "H values.")
_NETWORKS = flags.DEFINE_list("networks", list(NETWORKS), "Network types.")
_IMPLS = flags.DEFINE_list(
  "impls", ["reference", "reference_remat", "fast"], f"Step implementations, of {', '.join(IMPLS)}."
)
_STRATEGIES = flags.DEFINE_list(
  "strategies", ["vmap", "episodes"], f"Batching strategies, of {', '.join(STRATEGIES)}."
)
_STEPS = flags.DEFINE_integer("steps", 200, "T, steps per episode.")
_REPS = flags.DEFINE_integer("reps", 5, "Timed calls after the warm-up; median kept.")
_NUM_INPUTS = flags.DEFINE_integer("num_inputs", 27, "I (27: cue-reward observation).")
_NUM_ACTIONS = flags.DEFINE_integer("num_actions", 2, "A, readout size.")
_CLIP_VALUE = flags.DEFINE_float("clip_value", 1.0, "Trace bound c.")
_HOST_DEVICES = flags.DEFINE_integer(
  "host_devices",
  1,
  "CPU devices to expose (jax_num_cpu_devices); the `sharded` strategy shards the batch over them.",
)
_ISOLATE = flags.DEFINE_bool(
  "isolate", False, "Run every config in a fresh subprocess and report its peak RSS."
)
_YNN_FUSION = flags.DEFINE_bool(
  "ynn_fusion",
  True,
  "Leave XLA:CPU's YNNPACK fusions on (its default). "
  "--noynn_fusion compiles with xla_cpu_experimental_ynn_fusion_type='' (see the "
  "module docstring: its reduce over the batch axis is pathologically slow at H=200).",
)
_CHILD = flags.DEFINE_string(
  "child", None, "Internal: one config as JSON; prints a JSON result line."
)


def init_params(
  config: PlasticityConfig, hidden_size: int, num_inputs: int, num_actions: int, seed: int = 0
) -> dict[str, Any]:
  """Parameters as `PlasticRNNCell` initialises them, plus a readout.

  Returns:
    {"input_kernel": [I, H], "input_bias": [H], "plastic": PlasticParams
    (w [H, H], ...), "readout": [H, A]}.
  """
  cell = cells.PlasticRNNCell(features=hidden_size, config=config)
  key_cell, key_out = jax.random.split(jax.random.key(seed))
  x = jnp.zeros((1, num_inputs))
  variables = cell.init(key_cell, cell.initialize_carry(key_cell, x.shape), x)
  cell_params = dict(variables["params"])
  dense = cell_params.pop("input")
  readout = jax.random.uniform(
    key_out, (hidden_size, num_actions), jnp.float32, -(hidden_size**-0.5), hidden_size**-0.5
  )
  return dict(
    input_kernel=dense["kernel"],
    input_bias=dense["bias"],
    plastic=plasticity.PlasticParams(**cell_params),
    readout=readout,
  )


def episode_loss(
  params: dict[str, Any],
  xs: jax.Array,
  clip_value: jax.Array,
  config: PlasticityConfig,
  step: Callable,
  remat: bool,
  sharding: NamedSharding | None = None,
) -> jax.Array:
  """Mean loss of the episodes in `xs`: [T, I] (one episode) or [T, B, I].

  With a batch axis the step is vmapped over it. `sharding` (batch axis 0 of
  the state) constrains the carry to stay sharded over devices.
  """
  hidden = params["input_bias"].shape[0]
  batch_shape = xs.shape[1:-1]
  x_drives = xs @ params["input_kernel"] + params["input_bias"]  # [T, (B,) H]
  state = plasticity.RNNState(
    h=jnp.zeros((hidden,), xs.dtype),
    traces=plasticity.init_traces(config, hidden, hidden, xs.dtype),
  )
  state = jax.tree.map(lambda a: jnp.broadcast_to(a, batch_shape + a.shape), state)
  if sharding is not None:
    state = jax.lax.with_sharding_constraint(state, sharding)
  batched_step = step
  for _ in batch_shape:
    batched_step = jax.vmap(batched_step, in_axes=(None, 0, 0, None, None))

  def body(state, x_drive):
    state, (h, m) = batched_step(params["plastic"], state, x_drive, config, clip_value)
    return state, (h, m)

  if remat:
    body = jax.checkpoint(body)
  _, (hs, ms) = lax.scan(body, state, x_drives)  # [T, (B,) H], [.., K]
  logits = hs @ params["readout"]
  per_step = jnp.sum(jnp.square(logits), -1) + jnp.sum(jnp.square(ms), -1)
  return jnp.mean(per_step)


def make_grad_fn(
  config: PlasticityConfig, impl: str, strategy: str, mesh: jax.sharding.Mesh | None
) -> Callable:
  """`(params, xs [B, T, I], clip_value) -> (loss, grads)`, not yet jitted."""
  step = fast_step.rnn_step_fast if impl.startswith("fast") else plasticity.rnn_step
  remat = impl.endswith("_remat")

  if strategy == "episodes":
    one_episode = jax.value_and_grad(
      functools.partial(episode_loss, config=config, step=step, remat=remat)
    )

    def grad_fn(params, xs, clip_value):
      def accumulate(total, x_episode):
        loss, grads = one_episode(params, x_episode, clip_value)
        return jax.tree.map(jnp.add, total, grads), loss

      zeros = jax.tree.map(jnp.zeros_like, params)
      grads, losses = lax.scan(accumulate, zeros, xs)
      batch = xs.shape[0]
      return jnp.mean(losses), jax.tree.map(lambda g: g / batch, grads)

    return grad_fn

  sharding = None
  if strategy == "sharded":
    sharding = NamedSharding(mesh, PartitionSpec("batch"))

  def loss_fn(params, xs, clip_value):
    return episode_loss(params, jnp.swapaxes(xs, 0, 1), clip_value, config, step, remat, sharding)

  return jax.value_and_grad(loss_fn)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
  """Compiles and times one config; returns the spec with the measurements."""
  config = PlasticityConfig(network=spec["network"])
  batch, hidden, steps = spec["batch"], spec["hidden"], spec["steps"]
  params = init_params(config, hidden, spec["num_inputs"], spec["num_actions"])
  xs = jax.random.normal(jax.random.key(1), (batch, steps, spec["num_inputs"]))
  clip_value = jnp.asarray(spec["clip_value"], jnp.float32)
  mesh = None
  if spec["strategy"] == "sharded":
    devices = jax.devices()
    if len(devices) < 2 or batch % len(devices):
      raise ValueError(
        f"strategy 'sharded' needs --host_devices >= 2 dividing B={batch};"
        f" have {len(devices)} devices."
      )
    mesh = jax.make_mesh((len(devices),), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    xs = jax.device_put(xs, NamedSharding(mesh, PartitionSpec("batch")))
  compiler_options = {} if spec["ynn_fusion"] else {YNN_FUSION_OPTION: ""}
  grad_fn = jax.jit(
    make_grad_fn(config, spec["impl"], spec["strategy"], mesh), compiler_options=compiler_options
  )

  start = time.perf_counter()
  compiled = grad_fn.lower(params, xs, clip_value).compile()
  jax.block_until_ready(compiled(params, xs, clip_value))
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  temp_bytes = getattr(memory, "temp_size_in_bytes", float("nan"))
  times = []
  for _ in range(spec["reps"]):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, xs, clip_value))
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  return dict(
    spec,
    compile_s=compile_s,
    seconds=seconds,
    steps_per_s=batch * steps / seconds,
    temp_mb=temp_bytes / 2**20,
    rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  )


def measure_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
  """Runs `measure(spec)` in a fresh interpreter (for a per-config peak RSS)."""
  command = [
    sys.executable,
    "-m",
    "benchmarks.cell_throughput",
    f"--host_devices={_HOST_DEVICES.value}",
    "--child",
    json.dumps(spec),
  ]
  result = subprocess.run(
    command, capture_output=True, text=True, check=False, env=dict(os.environ)
  )
  lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
  if result.returncode or not lines:
    raise RuntimeError(f"child failed for {spec}:\n{result.stderr[-2000:]}")
  return json.loads(lines[-1])


HEADER = (
  f"{'network':<9} {'H':>4} {'B':>3} {'impl':<16} {'strategy':<9} {'ynn':>3} "
  f"{'compile s':>9} {'s/iter':>7} {'env-steps/s':>11} {'temp MB':>8}"
  f" {'peak RSS MB':>11}"
)


def format_row(row: dict[str, Any]) -> str:
  rss = f"{row['rss_mb']:>11.0f}" if row.get("isolated") else f"{'-':>11}"
  return (
    f"{row['network']:<9} {row['hidden']:>4} {row['batch']:>3} {row['impl']:<16} "
    f"{row['strategy']:<9} {'on' if row['ynn_fusion'] else 'off':>3} "
    f"{row['compile_s']:>9.1f} {row['seconds']:>7.3f} "
    f"{row['steps_per_s']:>11,.0f} {row['temp_mb']:>8.1f} {rss}"
  )


def main(argv: list[str]) -> None:
  del argv
  if _HOST_DEVICES.value > 1:
    jax.config.update("jax_num_cpu_devices", _HOST_DEVICES.value)
  if _CHILD.value:
    print(json.dumps(measure(json.loads(_CHILD.value))), flush=True)
    return
  for impl in _IMPLS.value:
    if impl not in IMPLS:
      raise ValueError(f"--impls: {impl!r} is not one of {IMPLS}.")
  for strategy in _STRATEGIES.value:
    if strategy not in STRATEGIES:
      raise ValueError(f"--strategies: {strategy!r} is not one of {STRATEGIES}.")
  print(
    f"jax {jax.__version__}, backend {jax.default_backend()}, "
    f"{len(jax.devices())} device(s), {os.cpu_count()} CPU core(s), "
    f"T={_STEPS.value}, reps={_REPS.value}, "
    f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '(none)')}"
  )
  print(HEADER, flush=True)
  for hidden in map(int, _HIDDEN_SIZES.value):
    for batch in map(int, _BATCH_SIZES.value):
      for network in _NETWORKS.value:
        for strategy in _STRATEGIES.value:
          for impl in _IMPLS.value:
            spec = dict(
              network=network,
              hidden=hidden,
              batch=batch,
              impl=impl,
              strategy=strategy,
              steps=_STEPS.value,
              reps=_REPS.value,
              num_inputs=_NUM_INPUTS.value,
              num_actions=_NUM_ACTIONS.value,
              clip_value=_CLIP_VALUE.value,
              ynn_fusion=_YNN_FUSION.value,
            )
            if _ISOLATE.value:
              row = dict(measure_in_subprocess(spec), isolated=True)
            else:
              row = measure(spec)
            print(format_row(row), flush=True)


if __name__ == "__main__":
  app.run(main)
