"""Plastic-layer parameters for the tests: random ones for the core and
fast-step tests, and `with_plasticity` for Flax params trees (LM, cells)."""

import jax
import jax.numpy as jnp
import numpy as np

from bpm_jax import plasticity
from bpm_jax.config import PlasticityConfig


def random_params(
  config: PlasticityConfig, pre: int, post: int, seed: int = 0, w_scale: float = 0.6
) -> plasticity.PlasticParams:
  """Random parameters large enough that traces, clips and modulation all act."""
  rng = np.random.default_rng(seed)
  alpha_shape = {"full": (pre, post), "per_neuron": (1, post), "single": ()}
  p = dict(w=rng.normal(0, w_scale, (pre, post)))
  if config.is_plastic:
    p["alpha"] = rng.normal(0, 1.0, alpha_shape[config.alpha_kind])
  if config.network in ("plastic", "retromod"):
    shape = () if config.eta_kind == "scalar" else (pre, post)
    p["eta"] = rng.uniform(0.1, 0.6, shape)
  if config.is_modulated:
    k = config.num_modulators
    p["mod_kernel"] = rng.normal(0, 1.0, (pre, k))
    p["mod_bias"] = rng.normal(0, 0.3, (k,))
    if config.fan_out:
      p["fanout_kernel"] = rng.normal(0, 1.0, (k, post))
      p["fanout_bias"] = rng.normal(0, 0.3, (post,))
    if config.partial_modulation:
      p["plain_eta"] = np.asarray(0.3)
  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  p = {k: jnp.asarray(v, dtype) for k, v in p.items()}
  return plasticity.PlasticParams(**p)


def with_plasticity(params, alpha: float = 0.5, eta: float | None = None):
  """A Flax params tree with every `alpha` (and, if given, every `eta`) set to
  one value, so that the Hebbian traces visibly shape the outputs (at init,
  alpha ~ U(0, 0.01) and eta 0.01 barely do)."""
  values = {"alpha": alpha, "eta": eta}
  return jax.tree_util.tree_map_with_path(
    lambda path, x: (
      x if values.get(path[-1].key) is None else jnp.full_like(x, values[path[-1].key])
    ),
    params,
  )
