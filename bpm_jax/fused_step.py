"""The papers' plastic RNN as fused CPU kernels (C++ through XLA's FFI).

Two entry points, both equal (to float32 rounding) to
`jax.vmap(plasticity.rnn_step)` over a batch of episodes, with hand-written
forward and backward kernels (`bpm_jax/kernels/plastic_step.cc`):

* `rnn_step_fused(params, state, x_drive, config, clip_value)`: one step of B
  episodes (state.h [B, H], traces [B, H, H], x_drive [B, H]); use it inside
  `lax.scan` when each step's input depends on the last output (a rollout).
* `rnn_sequence_fused(params, state, x_drives, config, clip_value)`: T steps
  (x_drives [T, B, H]) in one call per direction. Each episode's [H, H]
  traces stay in its core's cache for all T steps; the forward keeps the old
  traces of every k-th step (`segment`, default `default_segment`) and the
  backward recomputes each segment's traces from them in cache, then walks
  them in reverse. This is what makes A2C training fast (`train.a2c` replays
  each rollout with it).
* `rnn_sequence_recorded(params, state, x_drives, config, clip_value,
  recorded)`: the same sequence when a rollout of `rnn_step_fused` calls
  already ran its forward (`scan_recording` keeps the segment checkpoints):
  only the backward kernel runs.

XLA:CPU's own code for the step streams the [B, H, H] traces through memory
a couple of dozen times per step (README, "Speed notes"). The episodes are
split over XLA's CPU thread pool.

Supported: the configurations of the papers' plastic RNN agents, i.e.
networks `plastic`, `modplast`, `retromod` with alpha `full`, rule `clip`, one
modulator `tanh` without fan-out or partial modulation, scalar eta, float32,
on the CPU. `check_supported(config)` says why anything else is not; use
`step_impl="fast"` there (and on GPU/TPU).

The kernels are compiled with the system C++ compiler (`$CXX`, default `g++`,
with `-march=native`) on first use and cached under `$BPM_JAX_CACHE` (default
`~/.cache/bpm_jax`), keyed by the source, the compiler and flags, the jaxlib
version and the CPU model.

Gradient conventions are those of JAX's autodiff of the reference (see
`bpm_jax.fast_step`): the cotangent through the clip is 1 inside (-c, c), 0.5
on a bound, 0 outside, and the clip value c gets its true cotangent. Sums are
taken in a different order than XLA's, so numbers agree with the reference to
float32 rounding, not bit for bit; the same inputs give the same numbers.

The kernels' operands are passed by name through `Operands`, whose field
order is the one order of both FFI calls (and of the C++ handlers' bindings):

  x h0 hebb0 elig0 w alpha eta w_mod b_mod clip h m hebb_hist elig_hist
  g_h g_m g_hebb g_elig

The forward takes the first ten, the backward all but x, hebb0 and elig0, and
the backward returns the cotangents of the forward's operands in their order.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from bpm_jax import plasticity
from bpm_jax.config import PlasticityConfig

Array = jax.Array

_KERNELS = pathlib.Path(__file__).with_name("kernels")
# One library: the plastic RNN's kernels, the plastic LSTM's (bpm_jax.fused_lstm)
# and the helpers they share.
_SOURCES = (_KERNELS / "plastic_step.cc", _KERNELS / "plastic_lstm.cc")
_HEADERS = (_KERNELS / "common.h",)
# -fno-trapping-math lets GCC turn the clip's comparisons into selects, so the
# backward's trace loops vectorise (with traps assumed, it kept them scalar
# with a branch per comparison once inlined into the sequence kernel: ~2x
# slower when many traces sit at the bound). No value changes: float traps
# are off in XLA anyway; the vector lanes only reorder the loops' row sums.
_FLAGS = (
  "-O3",
  "-march=native",
  "-fno-trapping-math",
  "-fopenmp-simd",
  "-std=c++17",
  "-shared",
  "-fPIC",
)
_NETWORK_CODE = {"plastic": 1, "modplast": 2, "retromod": 3}
_TARGETS = {  # FFI target name -> symbol in the library
  "bpm_plastic_seq_fwd": "BpmPlasticSeqFwd",
  "bpm_plastic_seq_bwd": "BpmPlasticSeqBwd",
  "bpm_plastic_lstm_fwd": "BpmPlasticLstmFwd",
  "bpm_plastic_lstm_bwd": "BpmPlasticLstmBwd",
}


class Operands(NamedTuple):
  """The kernels' operands by name, in THE order of both FFI calls.

  This field order is that of the `.Arg<>()` bindings of both C++ handlers
  (bpm_jax/kernels/plastic_step.cc); each kernel takes the fields it uses in
  this order (`_FWD_OPERANDS`, `_BWD_OPERANDS`), the rest are None. Shapes
  per agent (under `jax.vmap` every operand gets the same leading dims).
  """

  # The forward's operands; the backward returns their cotangents.
  x: Array | None = None  # [T, B, H] input drives x_t W_in + b
  h0: Array | None = None  # [B, H]
  hebb0: Array | None = None  # [B, H, H]
  elig0: Array | None = None  # [B, H, H] (retromod) or a [1] placeholder
  w: Array | None = None  # [H, H]
  alpha: Array | None = None  # [H, H]
  eta: Array | None = None  # [] (0 where unused)
  w_mod: Array | None = None  # [H] (0 where unused)
  b_mod: Array | None = None  # [] (0 where unused)
  clip: Array | None = None  # []
  # The forward's results the backward reads, and the final cotangents.
  h: Array | None = None  # [T, B, H]
  m: Array | None = None  # [T, B]
  # Checkpoints, S = ceil(T / segment): Hebb_tm1 of steps 0, k, 2k, ...
  hebb_hist: Array | None = None  # [S, B, H, H]
  elig_hist: Array | None = None  # [S, B, H, H] (retromod) or [1]
  g_h: Array | None = None  # [T, B, H]
  g_m: Array | None = None  # [T, B]
  g_hebb: Array | None = None  # [B, H, H]: cotangent of the final Hebb
  g_elig: Array | None = None  # [B, H, H] or [1]


_FWD_OPERANDS = Operands._fields[: Operands._fields.index("clip") + 1]
_BWD_OPERANDS = tuple(f for f in Operands._fields if f not in ("x", "hebb0", "elig0"))
_FWD_RESULTS = ("h", "m", "hebb", "elig", "hebb_hist", "elig_hist")
_BWD_RESULTS = tuple(f"g_{f}" for f in _FWD_OPERANDS)
# The backward overwrites the final trace cotangents with the initial ones in
# place (for one step in a scan this saves XLA a copy of [B, H, H] per step).
_BWD_ALIASES = {
  _BWD_OPERANDS.index("g_hebb"): _BWD_RESULTS.index("g_hebb0"),
  _BWD_OPERANDS.index("g_elig"): _BWD_RESULTS.index("g_elig0"),
}


def unsupported_reason(config: PlasticityConfig) -> str | None:
  """Why the fused kernel cannot compute `config`, or None if it can."""
  wanted = {"alpha_kind": "full", "rule": "clip", "eta_kind": "scalar"}
  if config.network not in _NETWORK_CODE:
    return (
      f"network={config.network!r} (the fused kernel covers "
      f"{', '.join(repr(n) for n in _NETWORK_CODE)})"
    )
  for field, value in wanted.items():
    if getattr(config, field) != value:
      return f"{field}={getattr(config, field)!r} (the fused kernel needs {value!r})"
  if config.is_modulated:
    if config.modulation_fn != "tanh":
      return f"modulation_fn={config.modulation_fn!r} (the fused kernel needs 'tanh')"
    if config.fan_out or config.num_modulators != 1 or config.partial_modulation:
      return (
        "fan_out, num_modulators > 1 or partial_modulation (the fused "
        "kernel covers one modulator shared by all synapses)"
      )
  return None


def check_supported(config: PlasticityConfig) -> None:
  """Raises a ValueError naming the setting the fused kernel does not cover."""
  reason = unsupported_reason(config)
  if reason is not None:
    raise ValueError(
      f"step_impl='fused' does not support {reason}; use step_impl='fast', "
      "which covers every configuration."
    )


# What one shard's scratch of recomputed traces (segment - 1 steps of one
# episode's Hebb, and E for retromod) may take: about a core's L2 cache.
SCRATCH_BYTES = 1 << 20
_segment_override = threading.local()


def default_segment(steps: int, size: int, network: str) -> int:
  """The segment length k that `rnn_sequence_fused` uses when not told.

  The largest k whose k - 1 recomputed steps of one episode's traces (Hebb,
  and E for retromod) fit in `SCRATCH_BYTES`, at most T, then evened out over
  the ceil(T / k) segments: cue-reward (H=200, T=120) k=7, retromod 4; maze
  (H=100, T=200) k=25, retromod 14. The checkpoints take ceil(T / k) / T of
  the full history (k=1). Under load on 2 cores every k from 4 to 20 ran
  about as fast, and faster than k=1 (see benchmarks/a2c_throughput.py
  --fused_segments).
  """
  per_step = 4 * size * size * (2 if network == "retromod" else 1)
  k = min(max(steps, 1), 1 + SCRATCH_BYTES // max(per_step, 1))
  segments = -(-max(steps, 1) // k)
  return -(-max(steps, 1) // segments)


@contextlib.contextmanager
def segment_length(segment: int | None) -> Iterator[None]:
  """Within the block, `rnn_sequence_fused` traces with this segment length.

  For callers that do not pass `segment` themselves (the cells, `train.a2c`),
  e.g. `benchmarks/a2c_throughput.py --fused_segments`. It applies when a
  function is traced (jitted or lowered), like any static argument. None:
  `default_segment`; 1: keep every step's old traces (no recomputation).
  """
  previous = getattr(_segment_override, "value", None)
  _segment_override.value = None if segment is None else _check_segment(segment)
  try:
    yield
  finally:
    _segment_override.value = previous


def _check_segment(segment) -> int:
  if isinstance(segment, bool) or int(segment) != segment or segment < 1:
    raise ValueError(f"segment must be an integer >= 1; got {segment!r}.")
  return int(segment)


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("BPM_JAX_CACHE", pathlib.Path.home() / ".cache" / "bpm_jax"))


def _cpu_model() -> str:
  """The CPU's model name and feature flags (what -march=native depends on)."""
  found = {}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        key = line.split(":")[0].strip()
        if key in ("model name", "flags") and key not in found:
          found[key] = line
        if len(found) == 2:
          break
  except OSError:
    pass
  return "".join(found.values()) or platform.machine() + platform.processor()


@functools.lru_cache(maxsize=None)
def library_path() -> pathlib.Path:
  """Compiles the kernel if no cached build matches; returns the .so path."""
  compiler = os.environ.get("CXX", "g++")
  if shutil.which(compiler) is None:
    raise RuntimeError(
      f"step_impl='fused' compiles a C++ kernel, but the compiler {compiler!r} "
      "was not found. Install one (e.g. `apt-get install g++`) or set $CXX, "
      "or use step_impl='fast'."
    )
  include = jax.ffi.include_dir()
  key = hashlib.sha256()
  for source in _SOURCES + _HEADERS:
    key.update(source.read_bytes())
  key.update(" ".join((compiler,) + _FLAGS).encode())
  key.update(importlib.metadata.version("jaxlib").encode())
  key.update(include.encode())
  key.update(_cpu_model().encode())  # -march=native: one build per CPU model
  path = _cache_dir() / f"plastic_step-{key.hexdigest()[:16]}.so"
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  # Build beside the target and rename: concurrent builds never see a half file.
  with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
    tmp_path = pathlib.Path(tmp) / path.name
    command = [compiler, *_FLAGS, f"-I{include}", *map(str, _SOURCES), "-o", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(
        "step_impl='fused': compiling the C++ kernel failed "
        f"({' '.join(command)}):\n{result.stderr[-4000:]}\n"
        "Use step_impl='fast' meanwhile."
      )
    os.replace(tmp_path, path)
  return path


@functools.lru_cache(maxsize=None)
def _register() -> None:
  """Builds/loads the kernels and registers their FFI targets for the CPU."""
  library = ctypes.cdll.LoadLibrary(str(library_path()))
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether the fused kernels can be built and loaded here (CPU backend).

  Warns once with the reason when they cannot (e.g. no compiler).
  """
  if jax.default_backend() != "cpu":
    return False
  try:
    _register()
  except (RuntimeError, OSError) as e:
    warnings.warn(
      f"The fused kernels are not available, using step_impl='fast': {e}",
      RuntimeWarning,
      stacklevel=2,
    )
    return False
  return True


def _check_inputs(
  config: PlasticityConfig,
  state: plasticity.RNNState,
  x: Array,
  params: plasticity.PlasticParams,
  clip_value: Array,
  x_rank: int,
  name: str,
) -> None:
  check_supported(config)
  if jax.default_backend() != "cpu":
    raise ValueError(
      f"step_impl='fused' runs on the CPU only (its kernels are C++), but JAX's "
      f"backend is {jax.default_backend()!r}; use step_impl='fast' there."
    )
  if state.h.ndim != 2 or x.ndim != x_rank or x.shape[-2:] != state.h.shape:
    raise ValueError(
      f"{name}: state.h must be [B, H] and x_drive {'[T, B, H]' if x_rank == 3 else '[B, H]'}; "
      f"got {state.h.shape} and {x.shape}."
    )
  dtypes = {jnp.dtype(a.dtype) for a in jax.tree.leaves((params, state, x))}
  if dtypes != {jnp.dtype(jnp.float32)}:
    raise ValueError(f"step_impl='fused' computes in float32; got dtypes {dtypes}.")
  # The kernels read these buffers by the sizes of h and alpha: check them
  # against each other (AssertionError naming the shapes, as rlax does).
  batch, size = state.h.shape
  chex.assert_shape([params.w, params.alpha], (size, size))
  chex.assert_shape(state.traces.hebb, (batch, size, size))
  if config.has_eligibility:
    chex.assert_equal_shape([state.traces.hebb, state.traces.elig])
  if params.eta is not None:
    chex.assert_rank(params.eta, 0)
  if config.is_modulated:
    chex.assert_shape(params.mod_kernel, (size, 1))
    chex.assert_shape(params.mod_bias, (1,))
  chex.assert_rank(clip_value, 0)
  _register()


def _kernel_params(
  params: plasticity.PlasticParams, config: PlasticityConfig, size: int
) -> tuple[Array, Array, Array]:
  """(eta [], w_mod [H], b_mod []) with zeros where unused."""
  zero = jnp.zeros((), jnp.float32)
  eta = params.eta if params.eta is not None else zero
  if config.is_modulated:
    w_mod, b_mod = params.mod_kernel.reshape((size,)), params.mod_bias.reshape(())
  else:
    w_mod, b_mod = jnp.zeros((size,), jnp.float32), zero
  return eta, w_mod, b_mod


def _forward_operands(
  params: plasticity.PlasticParams,
  state: plasticity.RNNState,
  x: Array,
  config: PlasticityConfig,
  clip_value: Array,
) -> Operands:
  """The forward's operands; E is a [1] placeholder when there is none."""
  eta, w_mod, b_mod = _kernel_params(params, config, state.h.shape[-1])
  elig = state.traces.elig
  return Operands(
    x=x,
    h0=state.h,
    hebb0=state.traces.hebb,
    elig0=jnp.zeros((1,), jnp.float32) if elig is None else elig,
    w=params.w,
    alpha=params.alpha,
    eta=eta,
    w_mod=w_mod,
    b_mod=b_mod,
    clip=clip_value,
  )


def rnn_step_fused(
  params: plasticity.PlasticParams,
  state: plasticity.RNNState,
  x_drive: Array,
  config: PlasticityConfig,
  clip_value: Array | float,
) -> tuple[plasticity.RNNState, tuple[Array, Array]]:
  """`jax.vmap(plasticity.rnn_step)` over B episodes: one step, fused kernels.

  Args:
    params: recurrent plastic parameters, shared by the episodes (w, alpha
      [H, H]; eta []; mod_kernel [H, 1], mod_bias [1] when modulated).
    state: h_tm1 [B, H], Hebb [B, H, H] (and E [B, H, H] for retromod).
    x_drive: [B, H] input drive.
    config: the variant (see `check_supported`).
    clip_value: c, a number or a traced scalar.

  Returns:
    (new state, (h_t [B, H], m_t [B, 1])), as the vmapped reference.
  """
  clip_value = jnp.asarray(clip_value, jnp.float32)
  _check_inputs(config, state, x_drive, params, clip_value, 2, "rnn_step_fused")
  h, m, hebb, elig = _fused(
    config.network, _forward_operands(params, state, x_drive, config, clip_value)
  )
  traces = plasticity.Traces(hebb=hebb, elig=elig if config.has_eligibility else None)
  return plasticity.RNNState(h=h, traces=traces), (h, m[:, None])


def rnn_sequence_fused(
  params: plasticity.PlasticParams,
  state: plasticity.RNNState,
  x_drives: Array,
  config: PlasticityConfig,
  clip_value: Array | float,
  segment: int | None = None,
) -> tuple[plasticity.RNNState, tuple[Array, Array]]:
  """T steps of B episodes in one kernel call per direction.

  Equal (to float32 rounding) to scanning `rnn_step_fused` over x_drives,
  but each episode's traces stay in cache for the whole sequence. The forward
  kernel keeps the old traces of steps 0, k, 2k, ... (k = `segment`) as
  checkpoints, [ceil(T / k), B, H, H], the residual of the backward pass; the
  backward kernel takes the segments last to first, recomputes each one's
  traces from its checkpoint in a per-core scratch of k - 1 steps (the
  forward's arithmetic, so the numbers do not depend on k) and walks them in
  reverse. With k = 1 the checkpoints are every step's old traces (576 MB at
  T=120, B=30, H=200; twice that for retromod), without recomputation. Use it
  when the inputs of all T steps are known in advance (teacher forcing, or
  the replay of a recorded rollout as in `train.a2c` with `step_impl="fused"`).

  Args:
    params: as `rnn_step_fused` (W is applied inside the kernel).
    state: h_0 [B, H], Hebb_0 [B, H, H] (and E_0).
    x_drives: [T, B, H] input drives.
    config: the variant (see `check_supported`).
    clip_value: c.
    segment: k >= 1 (clamped to T); None: that of an enclosing
      `segment_length` block, else `default_segment(T, H, network)`.

  Returns:
    (final state, (h [T, B, H], m [T, B, 1])).
  """
  clip_value = jnp.asarray(clip_value, jnp.float32)
  _check_inputs(config, state, x_drives, params, clip_value, 3, "rnn_sequence_fused")
  segment = resolve_segment(x_drives.shape[0], x_drives.shape[-1], config.network, segment)
  h, m, hebb, elig = _fused_sequence(
    config.network, segment, _forward_operands(params, state, x_drives, config, clip_value)
  )
  traces = plasticity.Traces(hebb=hebb, elig=elig if config.has_eligibility else None)
  return plasticity.RNNState(h=h[-1], traces=traces), (h, m[..., None])


def resolve_segment(steps: int, size: int, network: str, segment: int | None = None) -> int:
  """The segment length k of a T-step sequence: `segment`, else that of an
  enclosing `segment_length` block, else `default_segment`; at most T."""
  if segment is None:
    segment = getattr(_segment_override, "value", None)
  if segment is None:
    segment = default_segment(steps, size, network)
  return min(_check_segment(segment), max(steps, 1))


class Recorded(NamedTuple):
  """What a rollout of one-step calls keeps so that its sequence needs no second forward.

  Shapes as `rnn_sequence_fused`'s, for the T steps of B episodes:
  h [T, B, H] and m [T, B] the step outputs; hebb_hist (and elig_hist for
  retromod, else a [1] placeholder) the old traces of steps 0, k, 2k, ...
  ([ceil(T / k), B, H, H], k = `resolve_segment(T, H, network)`); final the
  traces after step T.
  """

  h: Array
  m: Array
  hebb_hist: Array
  elig_hist: Array
  final: plasticity.Traces


def scan_recording(step, init, xs, segment: int, traces_of):
  """`lax.scan(step, init, xs)` that also keeps the traces of every segment start.

  For a rollout of one-step calls whose sequence `rnn_sequence_recorded`
  differentiates: the T steps run as an outer scan over the full segments
  of k steps (each emits its starting traces, so only ceil(T / k) copies are
  written) and a scan over the T mod k steps left.

  Args:
    step: the scan body, (carry, x_t) -> (carry, y_t).
    init: the initial carry.
    xs: per-step inputs, leaves [T, ...].
    segment: k (`resolve_segment`).
    traces_of: carry -> the plastic layer's `plasticity.Traces` [B, H, H].

  Returns:
    (final carry, ys [T, ...], (hebb_hist, elig_hist)): the old traces of
    steps 0, k, 2k, ... ([ceil(T / k), B, H, H]; elig a [1] placeholder
    without E), as `Recorded` wants them.
  """
  steps = jax.tree.leaves(xs)[0].shape[0]
  full, rest = divmod(steps, segment)

  def one_segment(carry, seg_xs):
    start = traces_of(carry)
    carry, ys = jax.lax.scan(step, carry, seg_xs)
    return carry, (start, ys)

  split = lambda x: x[: full * segment].reshape((full, segment) + x.shape[1:])
  carry, (starts, ys) = jax.lax.scan(one_segment, init, jax.tree.map(split, xs))
  ys = jax.tree.map(lambda y: y.reshape((full * segment,) + y.shape[2:]), ys)
  if rest:
    starts = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), starts, traces_of(carry))
    carry, tail = jax.lax.scan(step, carry, jax.tree.map(lambda x: x[full * segment :], xs))
    ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, tail)
  elig = starts.elig if starts.elig is not None else jnp.zeros((1,), jnp.float32)
  return carry, ys, (starts.hebb, elig)


def rnn_sequence_recorded(
  params: plasticity.PlasticParams,
  state: plasticity.RNNState,
  x_drives: Array,
  config: PlasticityConfig,
  clip_value: Array | float,
  recorded: Recorded,
) -> tuple[plasticity.RNNState, tuple[Array, Array]]:
  """`rnn_sequence_fused` whose forward was already run, step by step.

  Returns the recorded outputs and final traces as they are; the gradient is
  `rnn_sequence_fused`'s backward kernel on the recorded checkpoints, with
  respect to params, the initial state and x_drives. The recording must come
  from these params, initial state and drives (a rollout under
  `stop_gradient` of the same params); its own cotangent is zero. It saves
  the forward kernel of a replay (A2C: ~0.06 s of an iteration at the
  cue-reward size).
  """
  clip_value = jnp.asarray(clip_value, jnp.float32)
  _check_inputs(config, state, x_drives, params, clip_value, 3, "rnn_sequence_recorded")
  steps = x_drives.shape[0]
  segment = resolve_segment(steps, x_drives.shape[-1], config.network)
  expected = (-(-steps // segment),) + state.traces.hebb.shape
  if recorded.h.shape != x_drives.shape or recorded.hebb_hist.shape != expected:
    raise ValueError(
      f"rnn_sequence_recorded: the recording (h {recorded.h.shape}, checkpoints "
      f"{recorded.hebb_hist.shape}) does not fit x_drives {x_drives.shape} with segment "
      f"k={segment} (checkpoints {expected}); record with the same segment length."
    )
  ops = _forward_operands(params, state, x_drives, config, clip_value)
  h, m, hebb, elig = _recorded_sequence(config.network, segment, ops, recorded)
  traces = plasticity.Traces(hebb=hebb, elig=elig if config.has_eligibility else None)
  return plasticity.RNNState(h=h[-1], traces=traces), (h, m[..., None])


def _shape(x: Array) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _kernel(
  target: str,
  network: str,
  names: tuple[str, ...],
  operands: Operands,
  out_shapes,
  aliases=None,
  **attrs,
):
  """Calls an FFI target with the `operands` fields `names` (in Operands order).

  Under `jax.vmap` (seeds, sweeps) every operand is broadcast to the same
  leading dims and the kernel loops over those agents itself
  ("broadcast_all"; "sequential" would copy each agent's outputs, e.g. the
  trace checkpoints, into a stacked buffer).

  aliases: {operand index: result index} buffers the kernel updates in place.
  """
  args = [getattr(operands, name) for name in names]
  missing = [name for name, arg in zip(names, args) if arg is None]
  if missing:
    raise ValueError(f"{target}: operands {missing} are missing.")
  attrs = {k: np.int64(v) for k, v in attrs.items()}
  return jax.ffi.ffi_call(
    target, out_shapes, vmap_method="broadcast_all", input_output_aliases=aliases
  )(*args, network=np.int64(_NETWORK_CODE[network]), **attrs)


def _zero_unused(network: str, grads: Operands) -> Operands:
  """Zero cotangents for the placeholders a network does not use (E, eta, w_mod, b_mod)."""
  zero = lambda **fields: {k: jnp.zeros_like(v) for k, v in fields.items()}
  if network != "retromod":
    grads = grads._replace(**zero(elig0=grads.elig0))
  if network == "plastic":
    grads = grads._replace(**zero(w_mod=grads.w_mod, b_mod=grads.b_mod))
  elif network == "modplast":
    grads = grads._replace(**zero(eta=grads.eta))
  return grads


def _sequence_forward(
  network: str, ops: Operands, save_history: bool, segment: int, in_place: bool = False
):
  """(h [T, B, H], m [T, B], traces, E, checkpoints of the old traces or [1]).

  The checkpoints: the old traces of steps 0, k, 2k, ... (k = segment).
  in_place: the new traces overwrite the old ones' buffers (T >= 1).
  """
  segments = -(-ops.x.shape[0] // segment)
  retro = network == "retromod"
  history = lambda trace, keep: jax.ShapeDtypeStruct(
    (segments,) + trace.shape if keep else (1,), trace.dtype
  )
  shapes = {
    "h": _shape(ops.x),
    "m": jax.ShapeDtypeStruct(ops.x.shape[:2], ops.x.dtype),
    "hebb": _shape(ops.hebb0),
    "elig": _shape(ops.elig0),
    "hebb_hist": history(ops.hebb0, save_history),
    "elig_hist": history(ops.elig0, save_history and retro),
  }
  aliases = None
  if in_place:
    aliases = {
      _FWD_OPERANDS.index(name + "0"): _FWD_RESULTS.index(name) for name in ("hebb", "elig")
    }
  return _kernel(
    "bpm_plastic_seq_fwd",
    network,
    _FWD_OPERANDS,
    ops,
    tuple(shapes[name] for name in _FWD_RESULTS),
    aliases,
    save_history=save_history,
    segment=segment,
  )


def _sequence_backward(network: str, ops: Operands, segment: int) -> Operands:
  """The cotangents of the forward's operands (fields x .. clip) of T steps.

  ops: the backward's fields (`_BWD_OPERANDS`), with the checkpoints that
  `_sequence_forward` kept for `segment`.
  """
  shapes = {
    "g_x": _shape(ops.h),
    "g_h0": _shape(ops.h0),
    "g_hebb0": _shape(ops.g_hebb),
    "g_elig0": _shape(ops.g_elig),
  }
  shapes.update(
    {f"g_{f}": _shape(getattr(ops, f)) for f in ("w", "alpha", "eta", "w_mod", "b_mod", "clip")}
  )
  grads = _kernel(
    "bpm_plastic_seq_bwd",
    network,
    _BWD_OPERANDS,
    ops,
    tuple(shapes[name] for name in _BWD_RESULTS),
    _BWD_ALIASES,
    segment=segment,
  )
  return _zero_unused(network, Operands(**dict(zip(_FWD_OPERANDS, grads))))


def _params_of(ops: Operands) -> dict[str, Array]:
  """The operands shared by the episodes (w .. clip), by name."""
  return {f: getattr(ops, f) for f in ("w", "alpha", "eta", "w_mod", "b_mod", "clip")}


# One step: the sequence kernels with T = 1 (ops.x [B, H]), one segment. The
# forward keeps no checkpoint (the residual is the step's input Hebb_tm1
# itself, which the scan saves).


def _step_forward(network: str, ops: Operands):
  # In place: inside a scan (a rollout) XLA then updates the carried traces
  # without a fresh [B, H, H] buffer per step (it copies them first where the
  # old ones are still needed, e.g. as the residual of a differentiated step).
  step_ops = ops._replace(x=ops.x[None])
  h, m, hebb, elig, _, _ = _sequence_forward(network, step_ops, False, 1, in_place=True)
  return h[0], m[0], hebb, elig


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(network: str, ops: Operands):
  return _step_forward(network, ops)


def _fused_fwd(network, ops):
  outputs = _step_forward(network, ops)
  h, m = outputs[0], outputs[1]
  elig_hist = ops.elig0[None] if network == "retromod" else ops.elig0
  residuals = Operands(
    h0=ops.h0,
    h=h[None],
    m=m[None],
    hebb_hist=ops.hebb0[None],
    elig_hist=elig_hist,
    **_params_of(ops),
  )
  return outputs, residuals


def _fused_bwd(network, residuals, cotangents):
  g_h, g_m, g_hebb, g_elig = cotangents
  grads = _sequence_backward(
    network, residuals._replace(g_h=g_h[None], g_m=g_m[None], g_hebb=g_hebb, g_elig=g_elig), 1
  )
  return (grads._replace(x=grads.x[0]),)


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused_sequence(network: str, segment: int, ops: Operands):
  return _sequence_forward(network, ops, False, segment)[:4]


def _fused_sequence_fwd(network, segment, ops):
  h, m, hebb, elig, hebb_hist, elig_hist = _sequence_forward(network, ops, True, segment)
  residuals = Operands(
    h0=ops.h0, h=h, m=m, hebb_hist=hebb_hist, elig_hist=elig_hist, **_params_of(ops)
  )
  return (h, m, hebb, elig), residuals


def _fused_sequence_bwd(network, segment, residuals, cotangents):
  g_h, g_m, g_hebb, g_elig = cotangents
  cotangents = residuals._replace(g_h=g_h, g_m=g_m, g_hebb=g_hebb, g_elig=g_elig)
  return (_sequence_backward(network, cotangents, segment),)


_fused_sequence.defvjp(_fused_sequence_fwd, _fused_sequence_bwd)


def _recorded_outputs(recorded: Recorded, ops: Operands):
  final = recorded.final
  elig = final.elig if final.elig is not None else jnp.zeros_like(ops.elig0)
  return recorded.h, recorded.m, final.hebb, elig


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recorded_sequence(network: str, segment: int, ops: Operands, recorded: Recorded):
  del network, segment
  return _recorded_outputs(recorded, ops)


def _recorded_sequence_fwd(network, segment, ops, recorded):
  del network, segment
  residuals = Operands(
    h0=ops.h0,
    h=recorded.h,
    m=recorded.m,
    hebb_hist=recorded.hebb_hist,
    elig_hist=recorded.elig_hist,
    **_params_of(ops),
  )
  return _recorded_outputs(recorded, ops), (residuals, recorded)


def _recorded_sequence_bwd(network, segment, residuals, cotangents):
  residuals, recorded = residuals
  grads = _fused_sequence_bwd(network, segment, residuals, cotangents)[0]
  return grads, jax.tree.map(jnp.zeros_like, recorded)


_recorded_sequence.defvjp(_recorded_sequence_fwd, _recorded_sequence_bwd)
