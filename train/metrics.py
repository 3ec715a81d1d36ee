"""Run outputs shared by the training loops: CSV, TensorBoard, progress bar.

    writer = MetricsWriter(workdir, ["iteration", "reward_median", "loss"])
    writer.write_rows([{"iteration": 0, "reward_median": 1.0, "loss": 0.3}])
    writer.close()

`MetricsWriter` appends to `<workdir>/metrics.csv` (one row per step, the
header fixed at creation) and mirrors every numeric column to TensorBoard
(tensorboardX) under the same name. On resume, `truncate_csv` drops the rows
past the restored step first, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

METRICS_CSV = "metrics.csv"


def read_csv(path: str) -> list[dict[str, float]]:
  """Rows of a metrics CSV as dicts of floats (empty cells become NaN)."""
  with open(path, newline="") as f:
    return [
      {k: (float(v) if v not in ("", None) else math.nan) for k, v in row.items()}
      for row in csv.DictReader(f)
    ]


def filter_csv(path: str, keep: Callable[[dict], bool]) -> int:
  """Rewrites the CSV at `path` with only the rows where `keep(row)`; returns their count.

  A missing file is left missing (0). The rewrite goes through a temporary
  file and `os.replace`, so an interruption leaves the old file whole.
  """
  if not os.path.exists(path):
    return 0
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    fieldnames = reader.fieldnames or []
    rows = [row for row in reader if keep(row)]
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)
  return len(rows)


def truncate_csv(path: str, max_step: int, step_key: str = "iteration") -> int:
  """Keeps only the rows with `step_key < max_step`; returns how many were kept."""
  return filter_csv(path, lambda row: int(float(row[step_key])) < max_step)


class MetricsWriter:
  """Appends metric rows to `metrics.csv` and TensorBoard event files.

  Args:
    workdir: output directory (created if missing).
    fieldnames: CSV columns, in order; the first is the step column.
    tensorboard: also write tensorboardX events into `workdir`.
    filename: CSV file name.
  """

  def __init__(
    self,
    workdir: str,
    fieldnames: Sequence[str],
    tensorboard: bool = True,
    filename: str = METRICS_CSV,
  ):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, filename)
    self.fieldnames = list(fieldnames)
    self.step_key = self.fieldnames[0]
    if os.path.exists(self.path):
      with open(self.path, newline="") as f:
        existing = next(csv.reader(f), None)
      if existing and existing != self.fieldnames:
        raise ValueError(
          f"{self.path} has columns {existing}, but this run writes "
          f"{self.fieldnames}; use a fresh workdir."
        )
      new_file = not existing
    else:
      new_file = True
    self._file = open(self.path, "a", newline="")
    self._csv = csv.DictWriter(self._file, fieldnames=self.fieldnames)
    if new_file:
      self._csv.writeheader()
      self._file.flush()
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self._tb = SummaryWriter(logdir=workdir)

  def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
    """Writes rows (dicts keyed by the field names); flushes once."""
    for row in rows:
      self._csv.writerow({k: _plain(row.get(k, "")) for k in self.fieldnames})
      if self._tb is not None:
        step = int(row[self.step_key])
        for key, value in row.items():
          plain = _plain(value)
          if key != self.step_key and isinstance(plain, (int, float)) and math.isfinite(plain):
            self._tb.add_scalar(key, float(value), step)  # NaN (diverged, no eval): CSV only.
    self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _plain(value: Any) -> Any:
  """NumPy/JAX scalars to Python numbers (CSV- and TensorBoard-friendly)."""
  if hasattr(value, "item"):
    return value.item()
  return value


class Progress:
  """tqdm bar over steps with an ETA and a few live numbers.

  Disabled (`--noprogress`, e.g. output sent to a log file), it prints a plain
  line instead, at most every `log_every_s` seconds and at the end:
  `modplast 1200/12000 (10%) 3.1 it/s, ETA 58m04s reward=0.4`.

  Args:
    total: number of steps of the whole run.
    initial: steps already done (resume).
    enabled: False: plain log lines instead of a bar.
    desc: bar label.
    log_every_s: seconds between the log lines when disabled.
  """

  def __init__(
    self,
    total: int,
    initial: int = 0,
    enabled: bool = True,
    desc: str = "",
    log_every_s: float = 60.0,
  ):
    self._bar = None
    self._total, self._done, self._desc = total, initial, desc
    self._initial = initial
    self._log_every_s = log_every_s
    self._start = self._last_log = time.perf_counter()
    if enabled:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

      self._bar = tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True)

  def update(self, steps: int, **postfix: float) -> None:
    numbers = {k: f"{v:.3g}" for k, v in postfix.items()}
    if self._bar is not None:
      self._bar.set_postfix(numbers, refresh=False)
      self._bar.update(steps)
      return
    self._done += steps
    now = time.perf_counter()
    if now - self._last_log < self._log_every_s and self._done < self._total:
      return
    self._last_log = now
    rate = (self._done - self._initial) / max(now - self._start, 1e-9)
    eta = (self._total - self._done) / rate if rate > 0 else float("inf")
    eta_text = (
      (
        f"{int(eta // 3600)}h{int(eta % 3600 // 60):02d}m"
        if eta >= 3600
        else f"{int(eta // 60)}m{int(eta % 60):02d}s"
      )
      if math.isfinite(eta)
      else "?"
    )
    extra = " ".join(f"{k}={v}" for k, v in numbers.items())
    print(
      f"{self._desc} {self._done}/{self._total} "
      f"({100 * self._done / max(self._total, 1):.0f}%) {rate:.3g} it/s, "
      f"ETA {eta_text} {extra}".rstrip(),
      flush=True,
    )

  def write(self, message: str) -> None:
    if self._bar is None:
      print(message, flush=True)
    else:
      self._bar.write(message)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class Stopwatch:
  """Wall-clock seconds since creation or the last `lap()`."""

  def __init__(self):
    self._start = time.perf_counter()

  def lap(self) -> float:
    now = time.perf_counter()
    elapsed, self._start = now - self._start, now
    return elapsed


def format_config(values: Mapping[str, Any], title: Optional[str] = None) -> str:
  """A readable `name = value` listing (printed at the start of a run)."""
  width = max((len(k) for k in values), default=0)
  lines = [title] if title else []
  lines += [f"  {k:<{width}} = {v!r}" for k, v in values.items()]
  return "\n".join(lines)
