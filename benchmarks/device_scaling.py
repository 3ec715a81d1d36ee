"""A2C agents/s and env-steps/s against the number of devices (`train.devices`).

    flock /tmp/bench.lock python -m benchmarks.device_scaling
    python -m benchmarks.device_scaling --devices=1,2,4,8 --agents=8 --network=plastic
    python -m benchmarks.device_scaling --devices=1 --host_devices=false   # GPUs as they are
    python -m benchmarks.device_scaling --devices=1,2 --processes=1,2      # jax.distributed too

For each device count D this starts a fresh Python process (the number of
CPU host devices is fixed when JAX starts: `--xla_force_host_platform_device_count=D`),
builds one jitted chunk of `--iterations` A2C iterations of `--agents` agents
split over D devices exactly as `train.a2c` does, runs it once to warm up and
once timed, and prints what it measured: seconds per iteration (all agents),
agent-iterations/s, env-steps/s and the speed relative to D=1 of this run.
CPU host devices share the machine's cores: on a 2-core machine D > 2 cannot
be faster than D = 2. With `--host_devices=false` the process sees the
accelerators it has and D is how many of them are used.

`--processes=1,2`: each D is also measured as P local processes of D devices
each (`train.distributed`, gloo on CPU; P x D devices in all), timing the
chunk as `train.a2c` runs it there: the program over every process's
devices, then every agent's metrics gathered onto every process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("devices", ["1", "2", "4"], "Device counts D to measure.")
flags.DEFINE_integer("agents", 4, "Agents (seeds) trained together.", lower_bound=1)
flags.DEFINE_string("env", "CueReward-v0", "Environment.")
flags.DEFINE_string("network", "modplast", "Network type.")
flags.DEFINE_integer("hidden_size", 0, "H (0: the paper's size for the env).", lower_bound=0)
flags.DEFINE_integer("iterations", 3, "Timed iterations (one jitted chunk).", lower_bound=1)
flags.DEFINE_bool("host_devices", True, "Make D CPU host devices (false: use D real devices).")
flags.DEFINE_list("processes", ["1"], "Process counts P (local processes, D devices each).")
flags.DEFINE_string("_child", "", "Internal: measure one D in this process.")


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(num_devices: int, agents: int, env: str, network: str, hidden: int, n: int) -> dict:
  """Times one chunk of `n` iterations of `agents` agents on the first `num_devices` devices
  (of every process, in a multi-process run)."""
  import jax  # pylint: disable=g-import-not-at-top

  from train import a2c_learner, a2c_train, distributed  # pylint: disable=g-import-not-at-top
  from train import devices as devices_lib  # pylint: disable=g-import-not-at-top
  from train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from train.a2c_config import a2c_defaults  # pylint: disable=g-import-not-at-top

  if jax.local_device_count() < num_devices:
    raise SystemExit(f"D={num_devices} asked, but this process has {jax.device_count()} devices.")
  mesh_devices = [  # The first D devices of every process.
    d
    for p in range(jax.process_count())
    for d in [x for x in jax.devices() if x.process_index == p][:num_devices]
  ]
  sizes = dict(hidden_size=hidden) if hidden else {}
  config = a2c_defaults(env, network=network, num_seeds=agents, burn_in=0, **sizes)
  spec = a2c_learner.make_spec(config)
  mesh = devices_lib.agent_mesh(agents, mesh_devices)
  state = a2c_train.init_state(config)
  hparams = config.hparams()
  fn = jax.jit(a2c_train._run_fn(spec, n, False, False, agents, mesh))  # pylint: disable=protected-access
  watch = metrics_lib.Stopwatch()
  compiled = fn.lower(state, hparams).compile()
  compile_s = watch.lap()
  distributed.to_host(compiled(state, hparams)[1])  # As the host loop: metrics on every process.
  watch.lap()
  distributed.to_host(compiled(state, hparams)[1])
  seconds = watch.lap() / n
  return dict(
    devices=len(mesh_devices),
    placement=devices_lib.describe(agents, mesh),
    compile_s=compile_s,
    s_per_it=seconds,
    agent_its_per_s=agents / seconds,
    env_steps_per_s=agents * config.batch_size * config.episode_length / seconds,
    backend=jax.default_backend(),
  )


def _run_children(count: int, processes: int) -> tuple[int, str, str]:
  """Runs `--_child=count` in `processes` local processes; (returncode, stdout, stderr) of the worst."""
  env = dict(os.environ)
  if FLAGS.host_devices:
    env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
    ).strip()
  args = [a for a in sys.argv[1:] if not a.startswith("--_child")]
  command = [sys.executable, "-m", "benchmarks.device_scaling", *args, f"--_child={count}"]
  if processes == 1:
    proc = subprocess.run(command, cwd=_REPO, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr
  from train import distributed  # pylint: disable=g-import-not-at-top

  procs = [
    subprocess.Popen(
      command + flags,
      cwd=_REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for flags in distributed.local_process_flags(processes)
  ]
  outputs = [proc.communicate() for proc in procs]
  failed = [i for i, proc in enumerate(procs) if proc.returncode]
  worst = failed[0] if failed else 0
  return procs[worst].returncode, outputs[0][0], outputs[worst][1]


def main(argv):
  del argv
  if FLAGS._child:  # pylint: disable=protected-access
    num_devices = int(FLAGS._child)  # pylint: disable=protected-access
    result = measure(
      num_devices, FLAGS.agents, FLAGS.env, FLAGS.network, FLAGS.hidden_size, FLAGS.iterations
    )
    from train import distributed  # pylint: disable=g-import-not-at-top

    if distributed.is_primary():
      print("RESULT " + json.dumps(result), flush=True)
    return
  print(
    f"{FLAGS.env} {FLAGS.network}, {FLAGS.agents} agents, {FLAGS.iterations} timed iterations, "
    f"{os.cpu_count()} CPU cores{' (CPU host devices)' if FLAGS.host_devices else ''}"
  )
  header = (
    f"{'P':>2} {'D':>3} {'placement':<50} {'compile s':>9} {'s/it':>8} {'agent-it/s':>11} "
    f"{'env-steps/s':>12} {'vs first':>8}"
  )
  print(header)
  base = None
  for processes in (int(p) for p in FLAGS.processes):
    for count in (int(d) for d in FLAGS.devices):
      returncode, stdout, stderr = _run_children(count, processes)
      lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
      if returncode or not lines:
        print(f"{processes:>2} {count:>3} failed: {stderr.strip().splitlines()[-1:]}")
        continue
      r = json.loads(lines[-1][len("RESULT ") :])
      base = base or r["s_per_it"]
      print(
        f"{processes:>2} {r['devices']:>3} {r['placement']:<50} {r['compile_s']:>9.1f} "
        f"{r['s_per_it']:>8.3f} {r['agent_its_per_s']:>11.2f} {r['env_steps_per_s']:>12.3g} "
        f"{base / r['s_per_it']:>7.2f}x"
      )


if __name__ == "__main__":
  from train import flags as flags_lib  # pylint: disable=g-import-not-at-top

  flags_lib.define_distributed_flags(FLAGS)
  app.run(main)
