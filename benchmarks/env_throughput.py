"""Random-action environment throughput under `jit(vmap(...))` + `lax.scan`.

    python -m benchmarks.env_throughput --batch_sizes 30,1024,8192 --num_steps 200

Each timing runs B parallel episodes for `num_steps` steps (auto-reset
included) after a compile-and-warm-up call, and reports env steps per second.
"""

import argparse
import time

import jax

import envs


def make_run(env, params, batch_size: int, num_steps: int):
  """Returns jitted `run(key) -> summed reward` for B episodes of T steps."""

  def step(carry, key):
    obs, state = carry
    key_action, key_step = jax.random.split(key)
    action = jax.random.randint(key_action, (batch_size,), 0, env.num_actions)
    step_keys = jax.random.split(key_step, batch_size)
    obs, state, reward, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
      step_keys, state, action, params
    )
    return (obs, state), reward

  def run(key: jax.Array) -> jax.Array:
    key_reset, key_steps = jax.random.split(key)
    reset_keys = jax.random.split(key_reset, batch_size)
    carry = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, params)
    _, rewards = jax.lax.scan(step, carry, jax.random.split(key_steps, num_steps))
    return rewards.sum()

  return jax.jit(run)


def time_run(run, repeats: int) -> tuple[float, float]:
  """Returns (compile + first call seconds, best of `repeats` seconds)."""
  start = time.perf_counter()
  jax.block_until_ready(run(jax.random.key(0)))
  compile_s = time.perf_counter() - start
  best = float("inf")
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run(jax.random.key(i + 1)))
    best = min(best, time.perf_counter() - start)
  return compile_s, best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--env_ids", default="CueReward-v0,GridMaze-v0")
  parser.add_argument("--batch_sizes", default="30,1024,8192")
  parser.add_argument("--num_steps", type=int, default=200, help="Steps per timed run.")
  parser.add_argument("--repeats", type=int, default=3, help="Timed runs; best is kept.")
  args = parser.parse_args()

  device = jax.devices()[0]
  print(
    f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind}"
    f" x{jax.device_count()}"
  )
  print(f"{'env':<16} {'B':>6} {'T':>5} {'compile s':>10} {'run s':>8} {'steps/s':>12}")
  for env_id in args.env_ids.split(","):
    env, params = envs.make(env_id)
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
      run = make_run(env, params, batch_size, args.num_steps)
      compile_s, run_s = time_run(run, args.repeats)
      steps_per_s = batch_size * args.num_steps / run_s
      print(
        f"{env_id:<16} {batch_size:>6} {args.num_steps:>5} {compile_s:>10.2f}"
        f" {run_s:>8.4f} {steps_per_s:>12,.0f}",
        flush=True,
      )


if __name__ == "__main__":
  main()
