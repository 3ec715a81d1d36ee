"""One run over several processes (`train.distributed`, jax.distributed on localhost).

A 2-process sweep (2 CPU host devices per process, gloo collectives) run from
the command line as a user would, stopped halfway and resumed, against the
same sweep in one process; then the error paths: another process count on
resume, a workdir process 0 cannot open, bad flags.
"""

import csv
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.a2c_tiny import TINY
from train import a2c_train, distributed, sweep
from train import metrics as metrics_lib
from train.a2c_config import a2c_defaults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GRID = [{"learning_rate": 1e-3}, {"learning_rate": 3e-3}]
SEEDS = 3  # Per setting: 6 agents over 4 devices (2 processes x 2), 2 padding.
_FLAGS = {
  "env": "CueReward-v0",
  "network": "modplast",  # The fused CPU kernel (a custom call) in every process.
  **{k: v for k, v in TINY.items() if k not in ("progress", "fast_compile", "iterations")},
}


def _launch(workdir, num_processes, *extra, iterations=2, slurm=False):
  """The tiny sweep (`python -m train.sweep`) on `num_processes` local processes."""
  args = [f"--{k}={v}" for k, v in _FLAGS.items()] + [
    f"--iterations={iterations}",
    f"--num_seeds={SEEDS}",
    "--sweep=learning_rate=1e-3,3e-3",
    "--noprogress",
    "--fast_compile",
    f"--workdir={workdir}",
    *extra,
  ]
  return _launch_module("train.sweep", args, num_processes, slurm)


def _slurm_port() -> int:
  """A free port of the range jax's SLURM support derives from the job id (61440 + id % 4096)."""
  for port in range(61440 + os.getpid() % 4000, 65536):
    with socket.socket() as s:
      try:
        s.bind(("localhost", port))
      except OSError:
        continue
      return port
  raise RuntimeError("No free port in 61440..65535.")


def _launch_module(module, args, num_processes, slurm=False):
  """`python -m module args` on `num_processes` local processes; [(returncode, output)].

  `slurm`: `--coordinator_address=auto` with the environment `srun` gives
  its tasks (one node, localhost) instead of the three flags.
  """
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  port = _slurm_port() if slurm else None
  flags = distributed.local_process_flags(num_processes)

  def process_args(p):
    return ["--coordinator_address=auto"] if slurm else flags[p]

  def process_env(p):
    if not slurm:
      return env
    return dict(
      env,
      SLURM_JOB_ID=str(port - 61440),
      SLURM_STEP_NODELIST="localhost",
      SLURM_NTASKS=str(num_processes),
      SLURM_PROCID=str(p),
      SLURM_LOCALID=str(p),
      SLURM_STEP_NUM_NODES="1",
    )

  procs = [
    subprocess.Popen(
      [sys.executable, "-m", module, *args] + process_args(p),
      cwd=REPO,
      env=process_env(p),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for p in range(num_processes)
  ]
  results = []
  try:
    for proc in procs:
      out, _ = proc.communicate(timeout=300)
      results.append((proc.returncode, out))
  finally:
    for proc in procs:
      proc.kill()
  return results


def _rewards(workdir):
  with open(os.path.join(workdir, "metrics.csv")) as f:
    rows = list(csv.DictReader(f))
  return [[float(row[f"reward_seed{a}"]) for a in range(len(GRID) * SEEDS)] for row in rows]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("distributed") / "sweep")
  first = _launch(workdir, 2)
  resumed = _launch(workdir, 2, "--resume", iterations=4)
  return workdir, first, resumed


def test_two_processes_equal_one_and_resume(two_processes, tmp_path):
  workdir, first, resumed = two_processes
  for returncode, out in first + resumed:
    assert returncode == 0, out[-3000:]
  (_, log0), (_, log1) = first
  assert "6 agents on 4 devices (2 processes, 2 per device, 2 padding)" in log0
  assert "6 agents on 4 devices (2 processes, 2 per device, 2 padding)" in log1
  assert "Resuming from the checkpoint at iteration 2." in resumed[1][1]
  # Process 0 alone wrote the workdir: one TensorBoard file per launch, sweep.csv.
  names = os.listdir(workdir)
  assert len([n for n in names if n.startswith("events.out.tfevents")]) == 2
  assert {"sweep.csv", "sweep.png", "sweep.json", "metrics.csv", "curves.png"} <= set(names)

  # The same sweep in this process (1 CPU device), 2 iterations then resumed to 4.
  one = str(tmp_path / "one")
  base = a2c_defaults("CueReward-v0", **dict(TINY, network="modplast")).replace(
    num_seeds=SEEDS, iterations=2
  )
  sweep.run_sweep(base, GRID, one)
  sweep.run_sweep(base.replace(iterations=4, resume=True), GRID, one)

  # Rewards identical; parameters to float32 rounding (XLA lays out a vmap over
  # 2 agents otherwise than over 6, as in tests/test_devices.py).
  assert _rewards(workdir) == _rewards(one)
  assert len(_rewards(one)) == 4
  _, two_state, two_iteration = a2c_train.restore_state(workdir)
  _, one_state, one_iteration = a2c_train.restore_state(one)
  assert two_iteration == one_iteration == 4
  for a, b in zip(jax.tree.leaves(one_state.params), jax.tree.leaves(two_state.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_resume_with_another_process_count_is_a_clear_error(two_processes):
  workdir, _, _ = two_processes
  base = a2c_defaults("CueReward-v0", **dict(TINY, network="modplast"))
  with pytest.raises(ValueError, match=r"written by a run of 2 processes.*--num_processes=2"):
    sweep.run_sweep(base.replace(num_seeds=SEEDS, iterations=6, resume=True), GRID, workdir)


def test_every_process_stops_when_process_0_cannot_open_the_workdir(tmp_path):
  # Launched as srun would (--coordinator_address=auto, SLURM_* variables).
  workdir = tmp_path / "taken"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("not a run of ours")
  (code0, out0), (code1, out1) = _launch(str(workdir), 2, slurm=True)
  assert code0 == 1 and "notes.txt" in out0
  assert code1 == 1 and "Process 0 could not open the run" in out1
  assert sorted(os.listdir(workdir)) == ["notes.txt"]


def test_flags_in_argv_reads_both_spellings_and_stops_at_double_dash():
  argv = ["--coordinator_address=h:1", "--num_processes", "4", "--process_id=2", "--", "--x"]
  assert distributed.flags_in_argv(argv) == {
    "coordinator_address": "h:1",
    "num_processes": "4",
    "process_id": "2",
  }
  assert distributed.flags_in_argv(["--", "--process_id=1"]) == {}


@pytest.mark.parametrize(
  "args,match",
  [
    (("h:1", None, 0), "needs --coordinator_address=HOST:PORT"),
    ((None, 2, 0), "needs --coordinator_address=HOST:PORT"),
    (("h:1", 2, 2), r"--process_id must be in 0..1"),
    (("host", 2, 0), "must be HOST:PORT"),
  ],
)
def test_initialize_names_bad_flags_before_starting_anything(args, match):
  with pytest.raises(ValueError, match=match):
    distributed.initialize(*args)


def test_one_process_needs_no_jax_distributed():
  assert distributed.initialize(None, None, None) is False
  assert distributed.initialize(None, 1, 0) is False
  tree = {"a": np.arange(3.0), "b": jax.numpy.ones(2)}
  host = distributed.to_host(tree)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(host))
  assert distributed.broadcast_json({"x": [1, None]}) == {"x": [1, None]}
  assert distributed.announce(2) == 2


def test_episodic_and_lm_trainers_run_over_two_processes(tmp_path):
  """3 seeds of each over 2 processes equal the same run in this process."""
  from tests.test_episodic import TINY as EPISODIC_TINY  # pylint: disable=g-import-not-at-top
  from tests.test_episodic import tiny as tiny_episodic  # pylint: disable=g-import-not-at-top
  from train import episodic_train, lm_train  # pylint: disable=g-import-not-at-top
  from train.lm_config import LMTrainConfig  # pylint: disable=g-import-not-at-top

  episodic = {k: v for k, v in EPISODIC_TINY.items() if k not in ("progress", "fast_compile")}
  episodic_args = [f"--{k}={v}" for k, v in episodic.items()] + [
    "--task=PatternCompletion-v0",
    "--num_seeds=3",
    "--iterations=10",
    "--noprogress",
    "--fast_compile",
  ]
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  rng = np.random.default_rng(0)
  for split in ("train", "valid", "test"):
    lines = [" ".join(f"w{i}" for i in rng.integers(0, 20, 5)) for _ in range(60)]
    (corpus / f"{split}.txt").write_text("\n".join(lines) + "\n")
  lm = dict(
    network="plastic",
    num_seeds=3,
    epochs=1,
    max_steps_per_epoch=2,
    max_eval_minibatches=2,
    hidden_size=8,
    batch_size=4,
    unroll=5,
    eval_batch_size=2,
    chunk_size=2,
  )
  lm_args = [f"--{k}={v}" for k, v in lm.items()] + [f"--data_dir={corpus}", "--noprogress"]
  for module, args, name in (
    ("train.episodic", episodic_args, "episodic"),
    ("train.lm", lm_args, "lm"),
  ):
    results = _launch_module(module, args + [f"--workdir={tmp_path / name}"], 2)
    for returncode, out in results:
      assert returncode == 0, out[-3000:]
      assert "3 agents on 3 devices (2 processes, 1 per device)" in out

  _, one_rows = episodic_train.train_and_evaluate(
    tiny_episodic(num_seeds=3, iterations=10), str(tmp_path / "episodic_one")
  )
  two_rows = metrics_lib.read_csv(str(tmp_path / "episodic" / "metrics.csv"))
  np.testing.assert_allclose(
    float(two_rows[-1]["eval_loss_median"]), one_rows[-1]["eval_loss_median"], rtol=1e-5
  )
  one = lm_train.train_and_evaluate(
    LMTrainConfig(data_dir=str(corpus), progress=False, **lm), str(tmp_path / "lm_one")
  )
  with open(tmp_path / "lm" / "results.json") as f:
    two = json.load(f)
  np.testing.assert_allclose(two["test_ppl"], one["test_ppl"], rtol=1e-5)
  np.testing.assert_allclose(two["valid_ppl"], one["valid_ppl"], rtol=1e-5)


def test_auto_outside_a_cluster_is_one_error_line(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI_"))}
  workdir = tmp_path / "run"
  proc = subprocess.run(
    [sys.executable, "-m", "train.a2c", f"--workdir={workdir}", "--coordinator_address=auto"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 1
  assert proc.stderr.startswith("ERROR: --coordinator_address=auto: jax.distributed could not")
  assert "Traceback" not in proc.stderr and not workdir.exists()
