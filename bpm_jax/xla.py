"""XLA compiler options that the plastic networks need on CPU.

XLA:CPU (jaxlib >= 0.10) hands some fusions to YNNPACK. For the plastic
step's sums over the batch axis of [B, H, H] tensors (the alpha and eta
gradients under `vmap`) those fusions are ~35x slower than XLA's own loops,
which makes a whole A2C iteration 3-5x slower (see
`benchmarks/cell_throughput.py --noynn_fusion`). `compiler_options()` turns
them off on CPU and is empty elsewhere:

    jax.jit(fn, compiler_options=xla.compiler_options())

`BPM_JAX_YNN_FUSION=1` in the environment leaves XLA's default alone.

The trainers compile through `compile(jitted_fn, *args, fast=...)` below.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_KEEP_YNN_ENV = "BPM_JAX_YNN_FUSION"


@functools.lru_cache(maxsize=None)
def _ynn_option_supported() -> bool:
  """Whether this jaxlib's XLA knows the YNN fusion option (it errors if not)."""
  try:
    jax.jit(jnp.sin, compiler_options={YNN_FUSION_OPTION: ""}).lower(jnp.float32(0)).compile()
  except Exception:  # pylint: disable=broad-except  # Unknown option: older XLA.
    return False
  return True


def compiler_options(backend: Optional[str] = None, **extra: Any) -> dict[str, Any]:
  """XLA options for `jax.jit(..., compiler_options=...)` on `backend`.

  Args:
    backend: the platform compiled for (default: JAX's default backend).
    **extra: further options, e.g. `xla_backend_optimization_level=0`.

  Returns:
    On CPU with a jaxlib that has YNNPACK fusions: those fusions switched off
    (unless `BPM_JAX_YNN_FUSION=1`), plus `extra`. Elsewhere: `extra`.
  """
  backend = backend or jax.default_backend()
  options: dict[str, Any] = {}
  if backend == "cpu" and os.environ.get(_KEEP_YNN_ENV, "0") != "1" and _ynn_option_supported():
    options[YNN_FUSION_OPTION] = ""
  options.update(extra)
  return options


def compile(fn: Any, *args: Any, fast: bool = False) -> Any:  # pylint: disable=redefined-builtin
  """`fn` (a `jax.jit`ted function) compiled ahead of time for `args`.

  The one way the project compiles a training program: with
  `compiler_options()`, plus XLA backend optimisation level 0 if `fast`
  (about half the compile time, slower steps: tiny runs, tests, CI).
  """
  extra = {"xla_backend_optimization_level": 0} if fast else {}
  return fn.lower(*args).compile(compiler_options=compiler_options(**extra))
