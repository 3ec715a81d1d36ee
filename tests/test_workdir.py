"""Safe workdirs (train/run.py, train/flags.py, train/checkpoint.py): one live run per
workdir, no clobbering, honest --resume, settings from the checkpoint, step_impl as
run control, one-line OS errors, --help that shows the project's flags."""

import errno
import json
import os
import random
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from bpm_jax import fused_step
from tests.a2c_tiny import TINY
from train import a2c, a2c_train, lm_config, lm_train
from train import checkpoint as checkpoint_lib
from train import flags as flags_lib
from train import metrics as metrics_lib
from train import run as run_lib
from train.a2c_config import a2c_defaults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**overrides):
  return a2c_defaults("CueReward-v0", **dict(TINY, **overrides))


def parse(*args):
  fv = flags.FlagValues()
  a2c.define_flags(fv)
  fv(["a2c", *args])
  return fv


def tiny_args(**overrides):
  return [f"--{k}={v}" for k, v in dict(TINY, **overrides).items()]


def cli(*args):
  """`python -m train.a2c ARGS` in this process: its exit status (0 if it returned)."""
  try:
    flags_lib.run_main(
      ["a2c"], a2c.config_from_flags, a2c_train.train_and_evaluate, flag_values=parse(*args)
    )
  except SystemExit as e:
    return e.code
  return 0


def snapshot(directory):
  """{relative path: (bytes, mtime)} of every file under `directory`."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = (f.read(), os.stat(path).st_mtime_ns)
  return files


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A tiny run at iteration 2 (its checkpoint 2), copied per test by `run_dir`."""
  workdir = tmp_path_factory.mktemp("finished")
  a2c_train.train_and_evaluate(tiny(), str(workdir))
  return workdir


@pytest.fixture
def run_dir(finished, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  return workdir


# --------------------------------------------------------------------------
# 1. One live run per workdir.

_HOLD = """
import sys, time
from train import run
claim = run.claim_workdir(sys.argv[1], resume=False)
claim.__enter__()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_run_fails_at_once_naming_the_pid_and_a_dead_holder_is_taken_over(
  tmp_path, capsys
):
  workdir = tmp_path / "run"
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLD, str(workdir)], cwd=REPO, stdout=subprocess.PIPE, text=True
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(run_lib.WorkdirBusyError, match=rf"in use by another run: PID {holder.pid}"):
      a2c_train.train_and_evaluate(tiny(), str(workdir))
    record = json.loads((workdir / run_lib.LOCK_RECORD).read_text())
    assert record["pid"] == holder.pid and record["running"]  # Untouched by the refused run.
    assert cli(f"--workdir={workdir}", *tiny_args()) == 1
    assert f"PID {holder.pid}" in capsys.readouterr().err
  finally:
    holder.kill()
    holder.wait()
  # The holder died without releasing: its lock is taken over, with a message.
  _, rows = a2c_train.train_and_evaluate(tiny(), str(workdir))
  assert [r["iteration"] for r in rows] == [0, 1]
  err = capsys.readouterr().err
  assert f"Taking over the lock of {workdir}: PID {holder.pid}" in err
  assert "no longer running" in err
  record = json.loads((workdir / run_lib.LOCK_RECORD).read_text())
  assert record["pid"] == os.getpid() and not record["running"]


# --------------------------------------------------------------------------
# 2. Do not clobber what is not ours.


def test_a_fresh_run_refuses_a_directory_of_foreign_files(tmp_path):
  (tmp_path / "config.json").write_text('{"mine": 1}')
  (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
  before = snapshot(tmp_path)
  for overwrite in (False, True):
    with pytest.raises(run_lib.WorkdirError, match=r"holds no run of ours \(config.json"):
      a2c_train.train_and_evaluate(tiny(overwrite=overwrite), str(tmp_path))
    assert snapshot(tmp_path) == before  # Nothing written, nothing deleted, no lock left.


def test_overwrite_replaces_a_run_of_ours_but_never_deletes_foreign_files(run_dir, capsys):
  with pytest.raises(ValueError, match="pass --resume .* --overwrite"):
    a2c_train.train_and_evaluate(tiny(), str(run_dir))
  with pytest.raises(ValueError, match="exclude each other"):
    a2c_train.train_and_evaluate(tiny(resume=True, overwrite=True), str(run_dir))
  (run_dir / "notes.txt").write_text("my notes")
  before = snapshot(run_dir)
  with pytest.raises(run_lib.WorkdirError, match=r"not from a run of ours \(notes.txt\)"):
    a2c_train.train_and_evaluate(tiny(overwrite=True), str(run_dir))
  assert snapshot(run_dir) == before
  os.remove(run_dir / "notes.txt")
  _, rows = a2c_train.train_and_evaluate(tiny(overwrite=True, iterations=4), str(run_dir))
  assert "--overwrite: removed the earlier run" in capsys.readouterr().out
  assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
  assert [r["iteration"] for r in metrics_lib.read_csv(str(run_dir / "metrics.csv"))] == [
    0,
    1,
    2,
    3,
  ]
  assert sorted(os.listdir(run_dir / "checkpoints")) == ["2", "4"]


# --------------------------------------------------------------------------
# 3. --resume says what it does.


def test_resume_without_a_checkpoint_is_an_error(run_dir, tmp_path):
  missing = tmp_path / "typo"
  for run in (
    lambda: a2c.config_from_flags(parse(f"--workdir={missing}", "--resume")),
    lambda: a2c_train.train_and_evaluate(tiny(resume=True), str(missing)),
  ):
    with pytest.raises(ValueError, match=f"no checkpoint in {missing}; drop --resume to start"):
      run()
    assert not missing.exists()
  # The corrupt-checkpoint advice was followed: the only checkpoint is gone.
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.rmtree(run_dir / "checkpoints" / "2")
  with pytest.raises(ValueError, match="no checkpoint in .*; drop --resume"):
    a2c_train.train_and_evaluate(tiny(resume=True, iterations=4), str(run_dir))


def test_resume_at_or_past_the_target_changes_nothing(run_dir, capsys):
  before = snapshot(run_dir)
  for iterations in (1, 2):
    with pytest.raises(run_lib.NothingToDo, match="already at iteration 2, nothing to do"):
      a2c_train.train_and_evaluate(tiny(resume=True, iterations=iterations), str(run_dir))
  assert cli(f"--workdir={run_dir}", "--resume", "--iterations=1") == 0  # Not an error.
  assert "already at iteration 2, nothing to do" in capsys.readouterr().out
  assert snapshot(run_dir) == before


# --------------------------------------------------------------------------
# 4. Resume without config.json: the checkpoint's own settings.


def test_resume_without_config_json_takes_and_checks_the_checkpoints_settings(run_dir):
  os.remove(run_dir / "config.json")
  config = a2c.config_from_flags(parse(f"--workdir={run_dir}", "--resume", "--iterations=4"))
  assert config == tiny(resume=True, iterations=4)  # hidden_size 8 etc., not the defaults.
  with pytest.raises(
    ValueError, match=r"differs from the metadata of the checkpoint .*learning_rate"
  ):
    a2c_train.train_and_evaluate(config.replace(learning_rate=0.5), str(run_dir))
  _, rows = a2c_train.train_and_evaluate(config, str(run_dir))
  assert [r["iteration"] for r in rows] == [2, 3]
  assert a2c_train.load_config(str(run_dir)).iterations == 4  # config.json is back.


def test_a_checkpoint_of_other_shapes_is_a_mismatch_not_corruption(tmp_path):
  with checkpoint_lib.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, {"w": jnp.zeros(3), "b": jnp.zeros(2)}, {"step": 1})
    with pytest.raises(checkpoint_lib.CheckpointMismatchError) as info:
      ckpt.restore({"w": jnp.zeros(4), "b": jnp.zeros(2)})
    message = str(info.value)
    assert "w: saved [3] float32, this run [4] float32" in message and "intact" in message
    assert "corrupt" not in message and "Delete" not in message
    state, metadata = ckpt.restore({"w": jnp.zeros(3), "b": jnp.zeros(2)})
    assert metadata == {"step": 1} and np.asarray(state["w"]).shape == (3,)


def _corpus(directory, num_words):
  rng = random.Random(0)
  words = [f"w{i}" for i in range(num_words)]
  directory.mkdir()
  for split, count in (("train", 60), ("valid", 20), ("test", 20)):
    lines = [" ".join(rng.sample(words, 5)) for _ in range(count)]
    lines[0] = " ".join(words)  # Every word in every split: vocab_size = num_words + <eos>.
    (directory / f"{split}.txt").write_text("\n".join(lines) + "\n")
  return str(directory)


def test_lm_resume_on_another_vocabulary_names_the_field(tmp_path):
  config = lm_config.LMTrainConfig(
    data_dir=_corpus(tmp_path / "ptb", 30),
    network="rnn",
    hidden_size=8,
    batch_size=2,
    unroll=5,
    eval_batch_size=2,
    epochs=1,
    max_steps_per_epoch=1,
    max_eval_minibatches=1,
    chunk_size=1,
    progress=False,
  )
  workdir = str(tmp_path / "run")
  lm_train.train_and_evaluate(config, workdir)
  other = config.replace(data_dir=_corpus(tmp_path / "other", 31), epochs=2, resume=True)
  for config_json in (True, False):  # With config.json, then with the checkpoint's metadata.
    if not config_json:
      os.remove(os.path.join(workdir, "config.json"))
    with pytest.raises(ValueError, match=r"vocab_size: saved 31, now 32") as info:
      lm_train.train_and_evaluate(other, workdir)
    assert "corrupt" not in str(info.value) and "Delete" not in str(info.value)
  assert lm_train.load_config(workdir) == config  # From the checkpoint's metadata.


# --------------------------------------------------------------------------
# 5. step_impl is run control: auto re-resolved on resume, any one allowed.


def test_resume_re_resolves_auto_and_allows_any_step_impl(run_dir, monkeypatch):
  saved = json.loads((run_dir / "config.json").read_text())
  saved["step_impl"] = "fused"  # auto's choice on a machine with the C++ kernels.
  (run_dir / "config.json").write_text(json.dumps(saved))
  monkeypatch.setattr(fused_step, "available", lambda: False)  # A machine without them.
  config = a2c.config_from_flags(parse(f"--workdir={run_dir}", "--resume", "--iterations=4"))
  assert config.step_impl == "auto"
  a2c_train.train_and_evaluate(config, str(run_dir))
  assert a2c_train.load_config(str(run_dir)).step_impl == "fast"
  config = a2c.config_from_flags(
    parse(f"--workdir={run_dir}", "--resume", "--iterations=6", "--step_impl=reference")
  )
  _, rows = a2c_train.train_and_evaluate(config, str(run_dir))
  assert [r["iteration"] for r in rows] == [4, 5]
  assert a2c_train.load_config(str(run_dir)).step_impl == "reference"


# --------------------------------------------------------------------------
# 6. Errors of the OS in one line (path, reason, fix).


def _one_error_line(capsys):
  err = capsys.readouterr().err.strip()
  assert err.startswith("ERROR: ") and "\n" not in err and "Traceback" not in err, err
  return err


def test_a_workdir_that_is_a_file_or_under_proc_is_one_line(tmp_path, capsys):
  (tmp_path / "file").write_text("x")
  assert cli(f"--workdir={tmp_path / 'file'}", *tiny_args()) == 1
  err = _one_error_line(capsys)
  assert f"{tmp_path / 'file'} is a file, not a directory: choose another --workdir" in err
  assert cli("--workdir=/proc/bpm_jax_test/run", *tiny_args()) == 1
  err = _one_error_line(capsys)
  assert "/proc/bpm_jax_test" in err and "choose another --workdir" in err


def test_a_read_only_workdir_is_one_line(tmp_path, capsys, monkeypatch):
  read_only = tmp_path / "ro"
  read_only.mkdir()
  if os.geteuid() != 0:  # chmod does not stop root.
    read_only.chmod(0o555)
    try:
      assert cli(f"--workdir={read_only / 'run'}", *tiny_args()) == 1
      assert "Permission denied. It is not writable" in _one_error_line(capsys)
    finally:
      read_only.chmod(0o755)
  real_makedirs = os.makedirs

  def makedirs(path, *args, **kwargs):
    if str(path).startswith(str(read_only)):
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return real_makedirs(path, *args, **kwargs)

  monkeypatch.setattr(os, "makedirs", makedirs)
  assert cli(f"--workdir={read_only / 'run'}", *tiny_args()) == 1
  err = _one_error_line(capsys)
  assert f"Could not create the workdir {read_only / 'run'}: Permission denied." in err
  assert "not writable" in err


def _tensorstore_full_disk(path):
  return ValueError(
    f'RESOURCE_EXHAUSTED: Error writing local file "{path}": Failed to write 3971 bytes to '
    "file 16: No space left on device [os_error_code='28']"
  )


@pytest.mark.parametrize("kind", ["OSError", "tensorstore"])
def test_a_full_disk_is_one_line_and_keeps_the_checkpoints_written(
  tmp_path, capsys, monkeypatch, kind
):
  """What orbax raises on a full disk: an OSError, or tensorstore's ValueError."""
  real_save = checkpoint_lib.ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 4:
      path = os.path.join(str(self.directory), "4.orbax-checkpoint-tmp", "state", "_sharding")
      if kind == "OSError":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
      raise _tensorstore_full_disk(path)
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint_lib.ocp.CheckpointManager, "save", save)
  workdir = tmp_path / "run"
  assert cli(f"--workdir={workdir}", *tiny_args(iterations=6)) == 1
  err = _one_error_line(capsys)
  assert f"Could not save the checkpoint of iteration 4 in {workdir / 'checkpoints' / '4'}:" in err
  assert "No space left on device. The disk is full" in err
  assert f"kept (latest: iteration 2 in {workdir / 'checkpoints' / '2'}); pass --resume" in err
  monkeypatch.undo()
  assert os.path.isdir(workdir / "checkpoints" / "2")
  _, rows = a2c_train.train_and_evaluate(tiny(resume=True, iterations=6), str(workdir))
  assert [r["iteration"] for r in rows] == [2, 3, 4, 5]


def test_a_corrupt_checkpoint_message_is_short(run_dir, capsys):
  for root, _, names in os.walk(run_dir / "checkpoints" / "2"):
    for name in names:
      if name == "manifest.ocdbt":
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  assert cli(f"--workdir={run_dir}", "--resume", "--iterations=4") == 1
  message = _one_error_line(capsys)  # No "Event loop is closed" tracebacks either.
  assert f"Could not read the checkpoint at {run_dir / 'checkpoints' / '2'}" in message
  assert "Delete" in message and len(message) < 600


# --------------------------------------------------------------------------
# 7. --help shows the project; flag errors are one line.


def test_help_lists_the_project_flags_and_flag_errors_are_one_line(tmp_path):
  commands = {
    "a2c": ["train.a2c", "--help"],
    "lm": ["train.lm", "--helpshort"],
    "sweep": ["train.sweep", "-h"],
    "bad": ["train.a2c", f"--workdir={tmp_path / 'x'}", "--hidden_size=0"],
  }
  procs = {
    key: subprocess.Popen(
      [sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    for key, args in commands.items()
  }
  done = {}
  for key, proc in procs.items():
    out, err = proc.communicate(timeout=120)
    done[key] = (proc.returncode, out.decode(), err.decode())
  for key in ("a2c", "lm", "sweep"):
    code, out, _ = done[key]
    assert code == 0, done[key]
    lines = out.splitlines()
    assert "--workdir: Output directory (required)." in out
    assert "--[no]resume:" in out and "--[no]overwrite:" in out
    assert not any(
      line.lstrip().startswith(("--flagfile", "--jax_", "--[no]jax")) for line in lines
    )
    assert len(lines) < 150, len(lines)
  a2c_help, lm_help, sweep_help = done["a2c"][1], done["lm"][1], done["sweep"][1]
  assert "--hidden_size: H, recurrent neurons. Default: 200; GridMaze-v0: 100." in a2c_help
  assert "--entropy_coef:" in a2c_help and "GridMaze-v0: 0.03" in a2c_help
  assert (
    "--data_dir:" in lm_help
    and "--batch_size: B, parallel training streams. (default: 20)" in (lm_help)
  )
  assert "--sweep: NAME=V1,V2,..." in sweep_help and "--hidden_size:" in sweep_help
  code, out, err = done["bad"]
  assert (
    code == 1 and err.strip() == "ERROR: --hidden_size=0 is invalid: it must be an integer >= 1."
  )
  assert not (tmp_path / "x").exists()
