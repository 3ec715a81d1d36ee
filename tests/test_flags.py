"""train.flags.run_main: the shared body of the entry points' `main`."""

import pytest
from absl import app, flags

from train import flags as flags_lib


def _never(config, workdir):
  raise AssertionError("train must not run after a bad flag")


def test_bad_flag_is_a_usage_error_before_any_work():
  def bad_flags(flag_values):
    raise ValueError("--hidden_size=0 is invalid: it must be an integer >= 1.")

  with pytest.raises(app.UsageError, match="--hidden_size=0"):
    flags_lib.run_main(["prog"], bad_flags, _never, (ValueError,))
  with pytest.raises(app.UsageError, match="Unexpected arguments"):
    flags_lib.run_main(["prog", "extra"], bad_flags, _never, (ValueError,))


def _flag_values(workdir):
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "Output directory.", flag_values=fv)
  fv(["prog", f"--workdir={workdir}"])
  return fv


def test_run_errors_print_one_error_line_and_exit_1(capsys, tmp_path):
  fv = _flag_values(tmp_path)
  seen = []

  class Boom(RuntimeError):
    pass

  def train(config, workdir):
    seen.append((config, workdir))
    raise Boom("Non-finite loss at iteration 7")

  with pytest.raises(SystemExit) as info:
    flags_lib.run_main(["prog"], lambda fv: "config", train, (Boom,), fv)
  assert info.value.code == 1 and seen == [("config", str(tmp_path))]
  assert capsys.readouterr().err.strip() == "ERROR: Non-finite loss at iteration 7"
  # Errors outside `run_errors` propagate unchanged (a bug, not a user error).
  with pytest.raises(KeyError):
    flags_lib.run_main(
      ["prog"], lambda fv: "config", lambda c, w: (_ for _ in ()).throw(KeyError("x")), (Boom,), fv
    )
