"""bpm_jax.xla: the CPU compiler options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpm_jax import xla


def test_cpu_options_turn_off_ynn_fusion_and_keep_extra_options(monkeypatch):
  monkeypatch.delenv("BPM_JAX_YNN_FUSION", raising=False)
  options = xla.compiler_options("cpu", xla_backend_optimization_level=0)
  assert options["xla_backend_optimization_level"] == 0
  if xla._ynn_option_supported():
    assert options[xla.YNN_FUSION_OPTION] == ""


def test_env_variable_keeps_ynn_fusion(monkeypatch):
  monkeypatch.setenv("BPM_JAX_YNN_FUSION", "1")
  assert xla.YNN_FUSION_OPTION not in xla.compiler_options("cpu")


def test_other_backends_get_only_the_extra_options():
  assert xla.compiler_options("gpu") == {}
  assert xla.compiler_options("tpu", foo=1) == {"foo": 1}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU-only option")
def test_options_compile_and_give_the_same_numbers():
  """The batch-axis sum the option exists for: same result with and without it."""
  x = jax.random.normal(jax.random.key(0), (8, 16, 16))
  f = lambda x: jnp.sum(x * x, axis=0)
  np.testing.assert_allclose(
    jax.jit(f, compiler_options=xla.compiler_options())(x), jax.jit(f)(x), rtol=1e-6
  )
