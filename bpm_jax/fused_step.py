"""The papers' plastic RNN as fused CPU kernels (C++ through XLA's FFI).

Two entry points, both equal (to float32 rounding) to
`jax.vmap(plasticity.rnn_step)` over a batch of episodes, with hand-written
forward and backward kernels (`bpm_jax/kernels/plastic_step.cc`):

* `rnn_step_fused(params, state, x_drive, config, clip_value)`: one step of B
  episodes (state.h [B, H], traces [B, H, H], x_drive [B, H]); use it inside
  `lax.scan` when each step's input depends on the last output (a rollout).
* `rnn_sequence_fused(params, state, x_drives, config, clip_value)`: T steps
  (x_drives [T, B, H]) in one call per direction. Each episode's [H, H]
  traces stay in its core's cache for all T steps; the forward writes every
  step's old traces to a history that the backward walks in reverse. This is
  what makes A2C training fast (`train.a2c` replays each rollout with it).

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
"""

from __future__ import annotations

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
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from bpm_jax import plasticity
from bpm_jax.config import PlasticityConfig

Array = jax.Array

_SOURCE = pathlib.Path(__file__).with_name("kernels") / "plastic_step.cc"
_FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared",
          "-fPIC")
_NETWORK_CODE = {"plastic": 1, "modplast": 2, "retromod": 3}
_TARGETS = {  # FFI target name -> symbol in the library
    "bpm_plastic_seq_fwd": "BpmPlasticSeqFwd",
    "bpm_plastic_seq_bwd": "BpmPlasticSeqBwd",
}


def unsupported_reason(config: PlasticityConfig) -> str | None:
  """Why the fused kernel cannot compute `config`, or None if it can."""
  wanted = {"alpha_kind": "full", "rule": "clip", "eta_kind": "scalar"}
  if config.network not in _NETWORK_CODE:
    return (f"network={config.network!r} (the fused kernel covers "
            f"{', '.join(repr(n) for n in _NETWORK_CODE)})")
  for field, value in wanted.items():
    if getattr(config, field) != value:
      return f"{field}={getattr(config, field)!r} (the fused kernel needs {value!r})"
  if config.is_modulated:
    if config.modulation_fn != "tanh":
      return f"modulation_fn={config.modulation_fn!r} (the fused kernel needs 'tanh')"
    if config.fan_out or config.num_modulators != 1 or config.partial_modulation:
      return ("fan_out, num_modulators > 1 or partial_modulation (the fused "
              "kernel covers one modulator shared by all synapses)")
  return None


def check_supported(config: PlasticityConfig) -> None:
  """Raises a ValueError naming the setting the fused kernel does not cover."""
  reason = unsupported_reason(config)
  if reason is not None:
    raise ValueError(
        f"step_impl='fused' does not support {reason}; use step_impl='fast', "
        "which covers every configuration.")


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(
      "BPM_JAX_CACHE", pathlib.Path.home() / ".cache" / "bpm_jax"))


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
        "or use step_impl='fast'.")
  include = jax.ffi.include_dir()
  key = hashlib.sha256()
  key.update(_SOURCE.read_bytes())
  key.update(" ".join((compiler,) + _FLAGS).encode())
  key.update(importlib.metadata.version("jaxlib").encode())
  key.update(include.encode())
  key.update(_cpu_model().encode())       # -march=native: one build per CPU model
  path = _cache_dir() / f"plastic_step-{key.hexdigest()[:16]}.so"
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  # Build beside the target and rename: concurrent builds never see a half file.
  with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
    tmp_path = pathlib.Path(tmp) / path.name
    command = [compiler, *_FLAGS, f"-I{include}", str(_SOURCE), "-o", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(
          "step_impl='fused': compiling the C++ kernel failed "
          f"({' '.join(command)}):\n{result.stderr[-4000:]}\n"
          "Use step_impl='fast' meanwhile.")
    os.replace(tmp_path, path)
  return path


@functools.lru_cache(maxsize=None)
def _register() -> None:
  """Builds/loads the kernels and registers their FFI targets for the CPU."""
  library = ctypes.cdll.LoadLibrary(str(library_path()))
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(
        target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")


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
    warnings.warn(f"The fused kernels are not available, using step_impl='fast': {e}",
                  RuntimeWarning, stacklevel=2)
    return False
  return True


def _check_inputs(config: PlasticityConfig, state: plasticity.RNNState, x: Array,
                  params: plasticity.PlasticParams, x_rank: int, name: str) -> None:
  check_supported(config)
  if jax.default_backend() != "cpu":
    raise ValueError(
        f"step_impl='fused' runs on the CPU only (its kernels are C++), but JAX's "
        f"backend is {jax.default_backend()!r}; use step_impl='fast' there.")
  if state.h.ndim != 2 or x.ndim != x_rank or x.shape[-2:] != state.h.shape:
    raise ValueError(
        f"{name}: state.h must be [B, H] and x_drive {'[T, B, H]' if x_rank == 3 else '[B, H]'}; "
        f"got {state.h.shape} and {x.shape}.")
  dtypes = {jnp.dtype(a.dtype) for a in jax.tree.leaves((params, state, x))}
  if dtypes != {jnp.dtype(jnp.float32)}:
    raise ValueError(f"step_impl='fused' computes in float32; got dtypes {dtypes}.")
  _register()


def _kernel_params(params: plasticity.PlasticParams, config: PlasticityConfig,
                   size: int) -> tuple[Array, Array, Array, Array]:
  """(eta [], w_mod [H], b_mod [], elig placeholder) with zeros where unused."""
  zero = jnp.zeros((), jnp.float32)
  eta = params.eta if params.eta is not None else zero
  if config.is_modulated:
    w_mod, b_mod = params.mod_kernel.reshape((size,)), params.mod_bias.reshape(())
  else:
    w_mod, b_mod = jnp.zeros((size,), jnp.float32), zero
  return eta, w_mod, b_mod


def _elig_or_placeholder(state: plasticity.RNNState) -> Array:
  """E, or a [1] placeholder for the kernels' E slot when there is none."""
  elig = state.traces.elig
  return jnp.zeros((1,), jnp.float32) if elig is None else elig


def rnn_step_fused(params: plasticity.PlasticParams, state: plasticity.RNNState,
                   x_drive: Array, config: PlasticityConfig,
                   clip_value: Array | float
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
  _check_inputs(config, state, x_drive, params, 2, "rnn_step_fused")
  clip_value = jnp.asarray(clip_value, jnp.float32)
  eta, w_mod, b_mod = _kernel_params(params, config, state.h.shape[-1])
  h, m, hebb, elig = _fused(config.network, state.traces.hebb,
                            _elig_or_placeholder(state), state.h, x_drive, params.w,
                            params.alpha, eta, w_mod, b_mod, clip_value)
  traces = plasticity.Traces(hebb=hebb, elig=elig if config.has_eligibility else None)
  return plasticity.RNNState(h=h, traces=traces), (h, m[:, None])


def rnn_sequence_fused(params: plasticity.PlasticParams, state: plasticity.RNNState,
                       x_drives: Array, config: PlasticityConfig,
                       clip_value: Array | float
                       ) -> tuple[plasticity.RNNState, tuple[Array, Array]]:
  """T steps of B episodes in one kernel call per direction.

  Equal (to float32 rounding) to scanning `rnn_step_fused` over x_drives,
  but each episode's traces stay in cache for the whole sequence: the forward
  kernel writes the old traces of every step to a [T, B, H, H] history (the
  residual of the backward pass, 576 MB at T=120, B=30, H=200; twice that for
  retromod) and the backward kernel walks it in reverse. Use it when the
  inputs of all T steps are known in advance (teacher forcing, or the replay
  of a recorded rollout as in `train.a2c` with `step_impl="fused"`).

  Args:
    params: as `rnn_step_fused` (W is applied inside the kernel).
    state: h_0 [B, H], Hebb_0 [B, H, H] (and E_0).
    x_drives: [T, B, H] input drives.
    config: the variant (see `check_supported`).
    clip_value: c.

  Returns:
    (final state, (h [T, B, H], m [T, B, 1])).
  """
  _check_inputs(config, state, x_drives, params, 3, "rnn_sequence_fused")
  clip_value = jnp.asarray(clip_value, jnp.float32)
  eta, w_mod, b_mod = _kernel_params(params, config, state.h.shape[-1])
  h, m, hebb, elig = _fused_sequence(config.network, x_drives, state.h,
                                     state.traces.hebb, _elig_or_placeholder(state),
                                     params.w, params.alpha, eta, w_mod, b_mod,
                                     clip_value)
  traces = plasticity.Traces(hebb=hebb, elig=elig if config.has_eligibility else None)
  return plasticity.RNNState(h=h[-1], traces=traces), (h, m[..., None])


def _shape(x: Array) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _kernel(target: str, network: str, out_shapes, aliases, *args, **attrs):
  """Calls an FFI target.

  Under `jax.vmap` (seeds, sweeps) every operand is broadcast to the same
  leading dims and the kernel loops over those agents itself
  ("broadcast_all"; "sequential" would copy each agent's outputs, e.g. the
  576 MB trace history, into a stacked buffer).

  aliases: {input index: output index} buffers the kernel updates in place.
  """
  attrs = {k: np.int64(v) for k, v in attrs.items()}
  return jax.ffi.ffi_call(target, out_shapes, vmap_method="broadcast_all",
                          input_output_aliases=aliases)(
                              *args, network=np.int64(_NETWORK_CODE[network]), **attrs)


def _zero_unused(network: str, g_elig: Array, g_eta: Array, g_w_mod: Array,
                 g_b_mod: Array) -> tuple[Array, Array, Array, Array]:
  """Zero cotangents for the placeholders a network does not use (E, eta, w_mod, b_mod)."""
  if network != "retromod":
    g_elig = jnp.zeros_like(g_elig)
  if network == "plastic":
    g_w_mod, g_b_mod = jnp.zeros_like(g_w_mod), jnp.zeros_like(g_b_mod)
  elif network == "modplast":
    g_eta = jnp.zeros_like(g_eta)
  return g_elig, g_eta, g_w_mod, g_b_mod


def _sequence_forward(network, x, h0, hebb0, elig0, w, alpha, eta, w_mod, b_mod, clip,
                      save_history):
  """(h [T, B, H], m [T, B], traces, E, histories of the old traces or [1])."""
  steps = x.shape[0]
  retro = network == "retromod"
  history = lambda trace, keep: jax.ShapeDtypeStruct(
      (steps,) + trace.shape if keep else (1,), trace.dtype)
  out_shapes = (_shape(x), jax.ShapeDtypeStruct(x.shape[:2], x.dtype), _shape(hebb0),
                _shape(elig0), history(hebb0, save_history),
                history(elig0, save_history and retro))
  return _kernel("bpm_plastic_seq_fwd", network, out_shapes, None,
                 x, h0, hebb0, elig0, w, alpha, eta, w_mod, b_mod, clip,
                 save_history=save_history)


def _sequence_backward(network, h0, h, m, hebb_hist, elig_hist, w, alpha, eta, w_mod,
                       b_mod, clip, g_h, g_m, g_hebb, g_elig):
  """Cotangents (x, h0, Hebb_0, E_0, w, alpha, eta, w_mod, b_mod, clip) of T steps."""
  out_shapes = tuple(map(_shape, (h, h0, g_hebb, g_elig, w, alpha, eta, w_mod, b_mod,
                                  clip)))
  # The running trace cotangents overwrite the final ones in place (for one
  # step in a scan this saves XLA a copy of [B, H, H] per step).
  (g_x, g_h0, g_hebb0, g_elig0, g_w, g_alpha, g_eta, g_w_mod, g_b_mod,
   g_clip) = _kernel("bpm_plastic_seq_bwd", network, out_shapes, {12: 2, 13: 3},
                     h0, h, m, hebb_hist, elig_hist, w, alpha, eta, w_mod, clip, g_h,
                     g_m, g_hebb, g_elig)
  g_elig0, g_eta, g_w_mod, g_b_mod = _zero_unused(network, g_elig0, g_eta, g_w_mod,
                                                   g_b_mod)
  return (g_x, g_h0, g_hebb0, g_elig0, g_w, g_alpha, g_eta, g_w_mod, g_b_mod, g_clip)


# One step: the sequence kernels with T = 1. The forward keeps no history (the
# residual is the step's input Hebb_tm1 itself, which the scan saves).


def _step_forward(network, hebb, elig, h_tm1, x, w, alpha, eta, w_mod, b_mod, clip):
  h, m, hebb, elig, _, _ = _sequence_forward(network, x[None], h_tm1, hebb, elig, w,
                                             alpha, eta, w_mod, b_mod, clip, False)
  return h[0], m[0], hebb, elig


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(network, hebb, elig, h_tm1, x, w, alpha, eta, w_mod, b_mod, clip):
  return _step_forward(network, hebb, elig, h_tm1, x, w, alpha, eta, w_mod, b_mod, clip)


def _fused_fwd(network, hebb, elig, h_tm1, x, w, alpha, eta, w_mod, b_mod, clip):
  outputs = _step_forward(network, hebb, elig, h_tm1, x, w, alpha, eta, w_mod, b_mod,
                          clip)
  h, m = outputs[0], outputs[1]
  return outputs, (hebb, elig, h_tm1, h, m, w, alpha, eta, w_mod, b_mod, clip)


def _fused_bwd(network, residuals, cotangents):
  hebb, elig, h_tm1, h, m, w, alpha, eta, w_mod, b_mod, clip = residuals
  g_h, g_m, g_hebb, g_elig = cotangents
  elig_hist = elig[None] if network == "retromod" else elig
  (g_x, g_h_tm1, g_hebb_old, g_elig_old, g_w, g_alpha, g_eta, g_w_mod, g_b_mod,
   g_clip) = _sequence_backward(network, h_tm1, h[None], m[None], hebb[None],
                                elig_hist, w, alpha, eta, w_mod, b_mod, clip,
                                g_h[None], g_m[None], g_hebb, g_elig)
  return (g_hebb_old, g_elig_old, g_h_tm1, g_x[0], g_w, g_alpha, g_eta, g_w_mod,
          g_b_mod, g_clip)


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_sequence(network, x, h0, hebb0, elig0, w, alpha, eta, w_mod, b_mod, clip):
  return _sequence_forward(network, x, h0, hebb0, elig0, w, alpha, eta, w_mod, b_mod,
                           clip, False)[:4]


def _fused_sequence_fwd(network, x, h0, hebb0, elig0, w, alpha, eta, w_mod, b_mod,
                        clip):
  h, m, hebb, elig, hebb_hist, elig_hist = _sequence_forward(
      network, x, h0, hebb0, elig0, w, alpha, eta, w_mod, b_mod, clip, True)
  residuals = (h0, h, m, hebb_hist, elig_hist, w, alpha, eta, w_mod, b_mod, clip)
  return (h, m, hebb, elig), residuals


def _fused_sequence_bwd(network, residuals, cotangents):
  return _sequence_backward(network, *residuals, *cotangents)


_fused_sequence.defvjp(_fused_sequence_fwd, _fused_sequence_bwd)
