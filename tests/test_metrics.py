"""train.metrics: the plain progress lines of --noprogress runs."""

from train import metrics as metrics_lib


def test_disabled_progress_prints_throttled_lines_with_eta(capsys):
  progress = metrics_lib.Progress(
    total=10, initial=2, enabled=False, desc="modplast", log_every_s=3600.0
  )
  progress.update(3, reward=0.25)  # Within log_every_s of the start: silent.
  assert capsys.readouterr().out == ""
  progress.update(5, reward=0.5)  # The last step always prints.
  line = capsys.readouterr().out.strip()
  assert line.startswith("modplast 10/10 (100%)")
  assert "ETA 0m00s" in line and line.endswith("reward=0.5")


def test_disabled_progress_logs_every_update_when_the_period_is_zero(capsys):
  progress = metrics_lib.Progress(total=100, enabled=False, desc="rnn", log_every_s=0.0)
  progress.update(25)
  progress.update(25)
  lines = capsys.readouterr().out.strip().splitlines()
  assert [l.split()[1] for l in lines] == ["25/100", "50/100"]
