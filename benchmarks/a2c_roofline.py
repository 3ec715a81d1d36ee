"""Roofline of the A2C iteration on this CPU: what the fused kernels move and
compute, what the machine can do, what the iteration takes.

    flock /tmp/bench.lock python -m benchmarks.a2c_roofline
    python -m benchmarks.a2c_roofline --envs=CueReward-v0 --networks=modplast
    (--envs, --networks, --iterations: as benchmarks.a2c_throughput's)

Three parts, all measured in this run except the access counts, which are
read off the kernels' loops (bpm_jax/kernels/plastic_step.cc, see `accesses`):

1. The machine (benchmarks/roofline.cc, compiled here with the kernels'
   flags): the peak fused multiply-add rate and the rate of a
   y[i] = y[i] + s * x[i] loop over working sets from 32 KiB to 64 MiB per
   thread, on 1 thread and on `--threads` threads at once.
2. The work per iteration. The dense layers (input, heads, and the `rnn`'s
   recurrent weights): FLOPs, bound at the FMA peak. The plastic layer: B x T step-episodes, each a few
   passes over [H, H] float arrays (W, alpha, Hebb, E, their cotangents,
   the gradient sums). Bytes = passes x 4 H^2; ops = arithmetic per element
   (an FMA counts 2, a compare 1) x H^2. Lower bounds on time: bytes at the
   measured loop rate for the episode's working set, ops at the FMA peak.
3. The time: `benchmarks.fused_sequence` (the sequence kernels alone, at the
   iteration's B, H, T, random weights; the iteration itself runs the
   forward as T one-step calls in the rollout and only the backward in the
   loss) and `benchmarks.a2c_throughput` (the whole jitted iteration:
   rollout, loss, Adam).

The bounds are a model: each phase at the loop rate measured for the next
larger working set (a read-modify-write loop's rate, also for read-only
streams), or at the FMA peak, whichever is slower.

Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import tempfile

from absl import app, flags

# Its flags serve here too: --envs, --networks, --iterations.
from benchmarks import a2c_throughput
from benchmarks.timing import time_sequence

FLAGS = flags.FLAGS
flags.DEFINE_integer("threads", os.cpu_count() or 1, "Threads of the all-cores figures.")
flags.DEFINE_list(
  "targets",
  [
    "CueReward-v0/rnn=0.010",
    "CueReward-v0/plastic=0.04",
    "CueReward-v0/modplast=0.04",
    "CueReward-v0/retromod=0.06",
    "GridMaze-v0/modplast=0.025",
  ],
  "ENV/NETWORK=S: an iteration time to compare (the rate it would need); the "
  "defaults are the targets of the speed issue (14).",
)

_SOURCE = pathlib.Path(__file__).with_name("roofline.cc")


@dataclasses.dataclass(frozen=True)
class Machine:
  """What benchmarks/roofline.cc measured."""

  gflops: dict[int, float]  # threads -> FMA peak
  gbps: dict[tuple[int, int], float]  # (threads, KiB per thread) -> loop rate

  def loop_gbps(self, threads: int, kib: float) -> float:
    """The loop rate at the smallest measured working set >= kib."""
    sizes = sorted(k for t, k in self.gbps if t == threads)
    size = next((k for k in sizes if k >= kib), sizes[-1])
    return self.gbps[threads, size]


def measure_machine(threads: int) -> Machine:
  """Compiles and runs benchmarks/roofline.cc on 1 and `threads` threads."""
  from bpm_jax import fused_step  # pylint: disable=g-import-not-at-top

  compiler = os.environ.get("CXX", "g++")
  flags_ = [f for f in fused_step._FLAGS if f not in ("-shared", "-fPIC")]  # pylint: disable=protected-access
  with tempfile.TemporaryDirectory() as tmp:
    binary = pathlib.Path(tmp) / "roofline"
    subprocess.run([compiler, *flags_, "-pthread", str(_SOURCE), "-o", str(binary)], check=True)
    counts = sorted({1, threads})
    out = subprocess.run(
      [str(binary), *map(str, counts)], check=True, capture_output=True, text=True
    ).stdout
  gflops, gbps = {}, {}
  for line in out.splitlines():
    kind, *values = line.split()
    if kind == "fma":
      gflops[int(values[0])] = float(values[1])
    elif kind == "rmw":
      gbps[int(values[0]), int(values[1])] = float(values[2])
  return Machine(gflops, gbps)


def accesses(network: str, segment: int, steps: int) -> dict[str, tuple[float, float]]:
  """Passes over [H, H] floats and ops per element, per step-episode, by phase.

  Read off the loops of bpm_jax/kernels/plastic_step.cc (reads + writes of
  an [H, H] array each count one pass; vectors of H are left out):
    forward   StepForward: the matrix-vector product reads W, alpha, Hebb
              (3; ops 4: alpha*Hebb+W, *h, +=); UpdateTraces reads and writes
              Hebb (2; ops 5: h*h, *r, +, clip 2), retromod also E (4; ops 8);
              a checkpoint copy at the first step of each of the ceil(T/k)
              segments (2, retromod 4, per segment).
    recompute the backward's UpdateTraces on the other steps of each
              segment (T - ceil(T/k) of the T steps).
    backward  pass 1 (StepBackward): reads Hebb and the trace cotangent,
              writes the cotangent (3; ops ~14: the clip's value and
              comparisons, the cotangent, three sums), retromod also E and
              its cotangent (6; ops ~24); pass 2 reads alpha, Hebb, W, the
              cotangent and the alpha and W gradient sums and writes the
              last three (9; ops 10).
  """
  retro = network == "retromod"
  update = (4.0, 8.0) if retro else (2.0, 5.0)
  first = -(-steps // segment) / steps  # the fraction of steps that start a segment
  return {
    "forward": (3.0 + update[0] + update[0] * first, 4.0 + update[1]),
    "recompute": (update[0] * (1 - first), update[1] * (1 - first)),
    "backward": ((6.0 if retro else 3.0) + 9.0, (24.0 if retro else 14.0) + 10.0),
  }


def working_set_kib(network: str, size: int, segment: int) -> dict[str, float]:
  """[H, H] arrays one episode's loop keeps touching, per phase, in KiB."""
  traces = 2 if network == "retromod" else 1
  kib = 4 * size * size / 1024
  return {
    "forward": kib * (2 + traces),  # W, alpha, the traces
    "backward": kib * (4 + traces * (1 + segment)),  # + W, alpha grads, cotangents
  }


def dense_gflop(obs_size: int, size: int, actions: int, network: str, step_episodes: int):
  """GFLOP of the dense layers per iteration: input, recurrent W if not
  plastic (the plastic layer's W is in its passes), policy and value heads;
  2 flops per multiply-add forward, 4 backward (the weights' and the inputs'
  cotangents), and with a plastic layer 2 more: the loss replays the
  rollout's dense forward."""
  macs = obs_size * size + size * (actions + 1) + (size * size if network == "rnn" else 0)
  return (6 if network == "rnn" else 8) * macs * step_episodes / 1e9


def plastic_layer(machine: Machine, threads: int, network: str, b: int, n: int, t: int, k: int):
  """Prints the plastic layer's passes, bytes, FLOPs and bounds per phase and
  the kernels' measured times; returns (GB per iteration, bound s)."""
  elements = n * n * b * t
  work = accesses(network, k, t)
  sets = working_set_kib(network, n, k)
  print(
    f"  {'phase':<10} {'passes':>6} {'GB':>6} {'GFLOP':>6} {'set KiB/thr':>11} "
    f"{'GB/s':>5} {'bound s':>8}"
  )
  bounds, gb = {}, {}
  for phase, (passes, ops) in work.items():
    gb[phase] = passes * 4 * elements / 1e9
    gflop = ops * elements / 1e9
    kib = sets["forward" if phase == "forward" else "backward"]
    rate = machine.loop_gbps(threads, kib)
    bounds[phase] = max(gb[phase] / rate, gflop / machine.gflops[threads])
    print(
      f"  {phase:<10} {passes:>6.2f} {gb[phase]:>6.2f} {gflop:>6.2f} {kib:>11.0f} "
      f"{rate:>5.0f} {bounds[phase]:>8.3f}"
    )
  fwd_s, both_s, _ = time_sequence(network, b, n, t, 1.0, 3)
  bwd_s = both_s - fwd_s
  bwd_bound = bounds["recompute"] + bounds["backward"]
  print(
    f"  kernels alone: forward {fwd_s:.3f} s ({gb['forward'] / fwd_s:.0f} GB/s; bound "
    f"{bounds['forward']:.3f}), backward {bwd_s:.3f} s "
    f"({(gb['recompute'] + gb['backward']) / bwd_s:.0f} GB/s; bound {bwd_bound:.3f})"
  )
  return sum(gb.values()), bounds["forward"] + bwd_bound


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  from bpm_jax import fused_step  # pylint: disable=g-import-not-at-top
  from train.a2c_config import a2c_defaults  # pylint: disable=g-import-not-at-top

  threads = FLAGS.threads
  targets = {k: float(v) for k, v in (t.split("=") for t in FLAGS.targets)}
  machine = measure_machine(threads)
  print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; {os.cpu_count()} CPUs")
  print("The machine (benchmarks/roofline.cc):")
  for t in sorted(machine.gflops):
    loops = ", ".join(
      f"{k} KiB {machine.gbps[t, k]:.0f}" for tt, k in sorted(machine.gbps) if tt == t
    )
    print(f"  {t} thread(s): FMA peak {machine.gflops[t]:.1f} GFLOP/s; loop GB/s: {loops}")
  peak = machine.gflops[threads]
  for env in FLAGS.envs:
    for network in FLAGS.networks:
      target = targets.get(f"{env}/{network}")
      config = a2c_defaults(env, network=network, step_impl="fused", iterations=FLAGS.iterations)
      spec = a2c_throughput.a2c_learner.make_spec(config)
      b, n, t = config.batch_size, config.hidden_size, config.episode_length
      dense = dense_gflop(spec.obs_size, n, spec.num_actions, network, b * t)
      k = min(fused_step.default_segment(t, n, network), t) if network != "rnn" else 0
      print(f"\n{env} {network}: B={b} H={n} T={t}" + (f" k={k}" if k else ""))
      print(f"  dense layers: {dense:.2f} GFLOP, bound {dense / peak:.3f} s")
      bound = dense / peak
      plastic_gb = 0.0
      if network != "rnn":
        plastic_gb, plastic_bound = plastic_layer(machine, threads, network, b, n, t, k)
        bound += plastic_bound
      it = a2c_throughput.measure(config)["s_per_it"]
      need = ""
      if target and network == "rnn":
        need = f"; {target} s/it needs {dense / target:.0f} GFLOP/s for the dense layers alone"
      elif target:
        need = f"; {target} s/it needs {plastic_gb / target:.0f} GB/s for the plastic layer alone"
      print(f"  A2C iteration {it:.3f} s/it; bound {bound:.3f} s" + need)


if __name__ == "__main__":
  app.run(main)
