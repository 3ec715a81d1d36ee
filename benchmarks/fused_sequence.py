"""The fused sequence kernel alone: forward and forward + backward, against the clip.

    flock /tmp/bench.lock python -m benchmarks.fused_sequence
    python -m benchmarks.fused_sequence --network=retromod --mod_scales=0.01,1

One `rnn_sequence_fused` call over T steps of B episodes (the A2C loss's
replay at the cue-reward size), with random parameters whose modulator
weights are scaled by each `--mod_scales` value: the larger |m(t)|, the more
Hebbian traces sit at the clip bound (the "clipped" column, at the last
step), as in trained modulated agents whose m(t) saturates. Prints seconds
per call (best of `--repeats`) of the forward pass and of the forward and
backward passes (gradient of a loss on every h_t); nothing is asserted.
"""

from __future__ import annotations

import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("network", "modplast", "plastic | modplast | retromod.")
flags.DEFINE_integer("batch_size", 30, "B.", lower_bound=1)
flags.DEFINE_integer("hidden_size", 200, "H.", lower_bound=1)
flags.DEFINE_integer("steps", 120, "T.", lower_bound=1)
flags.DEFINE_list(
  "mod_scales", ["0.01", "1.0"], "Scales of the modulator weights (plastic: of eta = 0.1 x scale)."
)
flags.DEFINE_integer("repeats", 3, "Timed calls; the best is reported.", lower_bound=1)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from bpm_jax import fused_step, plasticity, xla  # pylint: disable=g-import-not-at-top
  from bpm_jax.config import PlasticityConfig  # pylint: disable=g-import-not-at-top

  b, n, t = FLAGS.batch_size, FLAGS.hidden_size, FLAGS.steps
  config = PlasticityConfig(network=FLAGS.network)
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(0, 1, shape), jnp.float32)
  x = normal(t, b, n)
  zeros = plasticity.init_traces(config, n, n, jnp.float32)
  state = plasticity.RNNState(
    h=jnp.zeros((b, n)), traces=jax.tree.map(lambda z: jnp.zeros((b,) + z.shape), zeros)
  )
  clip = jnp.float32(1.0)

  def outputs(params, x):
    return fused_step.rnn_sequence_fused(params, state, x, config, clip)

  forward = lambda params, x: jnp.sum(jnp.sin(outputs(params, x)[1][0]))
  both = jax.value_and_grad(forward)
  print(
    f"{FLAGS.network}, B={b}, H={n}, T={t}, {jax.default_backend()}; best of {FLAGS.repeats} calls"
  )
  print(f"{'mod scale':>9} {'clipped':>8} {'fwd s':>8} {'fwd+bwd s':>10}")
  for scale in (float(s) for s in FLAGS.mod_scales):
    modulated = config.is_modulated
    params = plasticity.PlasticParams(
      w=0.1 * normal(n, n),
      alpha=0.1 * normal(n, n),
      eta=None if config.network == "modplast" else jnp.float32(0.1 * scale),
      mod_kernel=scale * normal(n, 1) if modulated else None,
      mod_bias=scale * normal(1) if modulated else None,
    )
    times = []
    for fn in (forward, both):
      compiled = xla.compile(jax.jit(fn), params, x)
      jax.block_until_ready(compiled(params, x))
      best = float("inf")
      for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, x))
        best = min(best, time.perf_counter() - start)
      times.append(best)
    hebb = outputs(params, x)[0].traces.hebb
    clipped = float(jnp.mean(jnp.abs(hebb) >= clip))
    print(f"{scale:>9g} {clipped:>8.1%} {times[0]:>8.3f} {times[1]:>10.3f}")


if __name__ == "__main__":
  app.run(main)
