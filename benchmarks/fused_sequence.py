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

from absl import app, flags

from benchmarks.timing import time_sequence

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

  b, n, t = FLAGS.batch_size, FLAGS.hidden_size, FLAGS.steps
  print(
    f"{FLAGS.network}, B={b}, H={n}, T={t}, {jax.default_backend()}; best of {FLAGS.repeats} calls"
  )
  print(f"{'mod scale':>9} {'clipped':>8} {'fwd s':>8} {'fwd+bwd s':>10}")
  for scale in (float(s) for s in FLAGS.mod_scales):
    fwd, both, clipped = time_sequence(FLAGS.network, b, n, t, scale, FLAGS.repeats)
    print(f"{scale:>9g} {clipped:>8.1%} {fwd:>8.3f} {both:>10.3f}")


if __name__ == "__main__":
  app.run(main)
