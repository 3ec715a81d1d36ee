"""A2C agents/s and env-steps/s against the number of devices (`train.devices`).

    flock /tmp/bench.lock python -m benchmarks.device_scaling
    python -m benchmarks.device_scaling --devices=1,2,4,8 --agents=8 --network=plastic
    python -m benchmarks.device_scaling --devices=1 --host_devices=false   # GPUs as they are

For each device count D this starts a fresh Python process (the number of
CPU host devices is fixed when JAX starts: `--xla_force_host_platform_device_count=D`),
builds one jitted chunk of `--iterations` A2C iterations of `--agents` agents
split over D devices exactly as `train.a2c` does, runs it once to warm up and
once timed, and prints what it measured: seconds per iteration (all agents),
agent-iterations/s, env-steps/s and the speed relative to D=1 of this run.
CPU host devices share the machine's cores: on a 2-core machine D > 2 cannot
be faster than D = 2. With `--host_devices=false` the process sees the
accelerators it has and D is how many of them are used.
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
flags.DEFINE_string("_child", "", "Internal: measure one D in this process.")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(num_devices: int, agents: int, env: str, network: str, hidden: int, n: int) -> dict:
  """Times one chunk of `n` iterations of `agents` agents on the first `num_devices` devices."""
  import jax  # pylint: disable=g-import-not-at-top

  from train import a2c_learner, a2c_train  # pylint: disable=g-import-not-at-top
  from train import devices as devices_lib  # pylint: disable=g-import-not-at-top
  from train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from train.a2c_config import a2c_defaults  # pylint: disable=g-import-not-at-top

  if jax.device_count() < num_devices:
    raise SystemExit(f"D={num_devices} asked, but this process has {jax.device_count()} devices.")
  sizes = dict(hidden_size=hidden) if hidden else {}
  config = a2c_defaults(env, network=network, num_seeds=agents, burn_in=0, **sizes)
  spec = a2c_learner.make_spec(config)
  mesh = devices_lib.agent_mesh(agents, jax.devices()[:num_devices])
  state = a2c_train.init_state(config)
  hparams = config.hparams()
  fn = jax.jit(a2c_train._run_fn(spec, n, False, False, agents, mesh))  # pylint: disable=protected-access
  watch = metrics_lib.Stopwatch()
  compiled = fn.lower(state, hparams).compile()
  compile_s = watch.lap()
  jax.block_until_ready(compiled(state, hparams))
  watch.lap()
  jax.block_until_ready(compiled(state, hparams))
  seconds = watch.lap() / n
  return dict(
    devices=num_devices,
    placement=devices_lib.describe(agents, mesh),
    compile_s=compile_s,
    s_per_it=seconds,
    agent_its_per_s=agents / seconds,
    env_steps_per_s=agents * config.batch_size * config.episode_length / seconds,
    backend=jax.default_backend(),
  )


def main(argv):
  del argv
  if FLAGS._child:  # pylint: disable=protected-access
    num_devices = int(FLAGS._child)  # pylint: disable=protected-access
    result = measure(
      num_devices, FLAGS.agents, FLAGS.env, FLAGS.network, FLAGS.hidden_size, FLAGS.iterations
    )
    print("RESULT " + json.dumps(result), flush=True)
    return
  print(
    f"{FLAGS.env} {FLAGS.network}, {FLAGS.agents} agents, {FLAGS.iterations} timed iterations, "
    f"{os.cpu_count()} CPU cores{' (CPU host devices)' if FLAGS.host_devices else ''}"
  )
  header = f"{'D':>3} {'placement':<46} {'compile s':>9} {'s/it':>8} {'agent-it/s':>11} {'env-steps/s':>12} {'vs D=1':>7}"
  print(header)
  base = None
  for count in (int(d) for d in FLAGS.devices):
    env = dict(os.environ)
    if FLAGS.host_devices:
      env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
      ).strip()
    args = [a for a in sys.argv[1:] if not a.startswith("--_child")]
    proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.device_scaling", *args, f"--_child={count}"],
      cwd=_REPO,
      env=env,
      capture_output=True,
      text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
      print(f"{count:>3} failed: {proc.stderr.strip().splitlines()[-1:]}")
      continue
    r = json.loads(lines[-1][len("RESULT ") :])
    base = base or r["s_per_it"]
    print(
      f"{count:>3} {r['placement']:<46} {r['compile_s']:>9.1f} {r['s_per_it']:>8.3f} "
      f"{r['agent_its_per_s']:>11.2f} {r['env_steps_per_s']:>12.3g} {base / r['s_per_it']:>6.2f}x"
    )


if __name__ == "__main__":
  app.run(main)
