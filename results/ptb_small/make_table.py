"""Table 1 (small model) of Backpropamine from the PTB runs in this folder.

    # copy finished or partial train.lm workdirs in (results.json, config.json,
    # the epoch rows of metrics.csv), then make the table and figure:
    python results/ptb_small/make_table.py --collect /root/bpm_runs/ptb_rnn_seed0 ...
    python results/ptb_small/make_table.py              # from the folders here only

Each run folder `runs/<network>_seed<k>/` (k: the run's first seed; a run of
`--num_seeds=S` counts as S seeds) holds what `train.lm` wrote. A run counts
as complete when it has trained its 13 epochs and written its test
perplexity; partial runs are listed with their last validation perplexity
and left out of the statistics.

Writes `table.md` (mean test perplexity with a 95% t-interval over seeds per
variant next to the paper's, and two-sided Wilcoxon rank-sum tests, computed
exactly as Mann-Whitney U, for the paper's three comparisons) and
`curves.png` (validation perplexity vs epoch: median and range over seeds).
Validation perplexity only ever chooses settings; test perplexity is reported.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import shutil

import numpy as np
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(HERE, "runs")
NETWORKS = ("rnn", "plastic", "modplast", "retromod")
LABELS = {"rnn": "LSTM", "plastic": "plastic LSTM", "modplast": "modplast", "retromod": "retromod"}
PAPER_TEST_PPL = {"rnn": 104.26, "plastic": 103.80, "modplast": 102.65, "retromod": 102.48}
COMPARISONS = (("rnn", "plastic"), ("plastic", "modplast"), ("modplast", "retromod"))
EPOCHS = 13


def collect(workdir: str) -> str:
  """Copies a train.lm workdir's results into runs/<network>_seed<k>/; returns that folder."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  train = config["train"]
  out = os.path.join(RUNS, f"{train['network']}_seed{train['seed']}")
  os.makedirs(out, exist_ok=True)
  shutil.copy(os.path.join(workdir, "config.json"), out)
  results = os.path.join(workdir, "results.json")
  if os.path.exists(results):
    shutil.copy(results, out)
  # The epoch-end rows (validation) and the test row of metrics.csv.
  with open(os.path.join(workdir, "metrics.csv"), newline="") as f:
    reader = csv.DictReader(f)
    rows = [r for r in reader if r.get("valid_ppl") or r.get("test_ppl")]
    fields = reader.fieldnames
  with open(os.path.join(out, "metrics_epochs.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fields)
    writer.writeheader()
    writer.writerows(rows)
  return out


def load_runs() -> list[dict]:
  """One entry per seed: network, seed, complete, valid per epoch, test ppl, settings."""
  entries = []
  for folder in sorted(glob.glob(os.path.join(RUNS, "*"))):
    with open(os.path.join(folder, "config.json")) as f:
      config = json.load(f)
    train = config["train"]
    num_seeds = int(train.get("num_seeds", 1))
    with open(os.path.join(folder, "metrics_epochs.csv"), newline="") as f:
      rows = list(csv.DictReader(f))
    valid_rows = [r for r in rows if r.get("valid_ppl")]
    test_rows = [r for r in rows if r.get("test_ppl")]
    results = {}
    if os.path.exists(os.path.join(folder, "results.json")):
      with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    for s in range(num_seeds):
      valid = [float(r[f"valid_ppl_seed{s}"]) for r in valid_rows]
      test = float(test_rows[-1][f"test_ppl_seed{s}"]) if test_rows else math.nan
      entries.append(
        dict(
          folder=os.path.relpath(folder, HERE),
          network=train["network"],
          seed=int(train["seed"]) + s,
          epochs=len(valid),
          valid=valid,
          test=test,
          complete=len(valid) >= EPOCHS and not math.isnan(test),
          hidden_size=config["model"]["hidden_size"],
          num_params=config.get("num_params"),
          tokens_per_s=results.get("tokens_per_s"),
          settings=train,
        )
      )
  return entries


def interval(values: np.ndarray) -> str:
  """mean [95% t-interval] (no interval for one value)."""
  mean = float(np.mean(values))
  if len(values) < 2:
    return f"{mean:.2f}"
  half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
  return f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}]"


def rank_sum(a: np.ndarray, b: np.ndarray) -> str:
  if len(a) < 2 or len(b) < 2:
    return "n/a (fewer than 2 seeds)"
  p = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue
  return f"{p:.3f} (n = {len(a)} vs {len(b)})"


def table(entries: list[dict]) -> str:
  lines = [
    "| variant | H | params | complete seeds | test ppl, mean [95% CI] | paper | "
    "valid ppl (last epoch) | tokens/s |",
    "|---|---|---|---|---|---|---|---|",
  ]
  tests = {}
  for network in NETWORKS:
    runs = [e for e in entries if e["network"] == network]
    done = [e for e in runs if e["complete"]]
    tests[network] = np.array([e["test"] for e in done])
    if not runs:
      lines.append(
        f"| {LABELS[network]} | - | - | 0 | not run | {PAPER_TEST_PPL[network]} | - | - |"
      )
      continue
    partial = [e for e in runs if not e["complete"]]
    test = interval(tests[network]) if done else "-"
    valid = ", ".join(f"{e['valid'][-1]:.2f}" for e in done) if done else "-"
    if partial:
      valid += "; partial: " + ", ".join(
        f"seed {e['seed']} {e['valid'][-1]:.2f} after {e['epochs']} epochs"
        if e["valid"]
        else f"seed {e['seed']} no epoch yet"
        for e in partial
      )
    speed = [e["tokens_per_s"] for e in runs if e["tokens_per_s"]]
    lines.append(
      f"| {LABELS[network]} | {runs[0]['hidden_size']} | {runs[0]['num_params']:,} | "
      f"{len(done)} | {test} | {PAPER_TEST_PPL[network]} | {valid} | "
      f"{f'{np.mean(speed):,.0f}' if speed else '-'} |"
    )
  lines += ["", "Two-sided Wilcoxon rank-sum tests of the test perplexities (exact):", ""]
  for a, b in COMPARISONS:
    lines.append(f"- {LABELS[a]} vs {LABELS[b]}: p = {rank_sum(tests[a], tests[b])}")
  return "\n".join(lines) + "\n"


def figure(entries: list[dict], path: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(7, 4.5))
  ax = fig.add_subplot()
  for network in NETWORKS:
    curves = [e["valid"] for e in entries if e["network"] == network and e["valid"]]
    if not curves:
      continue
    length = max(len(c) for c in curves)
    padded = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
      padded[i, : len(c)] = c
    epochs = np.arange(1, length + 1)
    median = np.nanmedian(padded, axis=0)
    ax.plot(epochs, median, marker="o", ms=3, label=f"{LABELS[network]} ({len(curves)} seeds)")
    ax.fill_between(epochs, np.nanmin(padded, axis=0), np.nanmax(padded, axis=0), alpha=0.2)
  ax.set_xlabel("epoch")
  ax.set_ylabel("validation perplexity")
  ax.set_yscale("log")
  ax.set_title("PTB small model (4.8M parameters): median and range over seeds")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--collect", nargs="*", default=[], help="train.lm workdirs to copy in")
  args = parser.parse_args()
  for workdir in args.collect:
    print(f"collected {workdir} -> {collect(workdir)}")
  entries = load_runs()
  if not entries:
    raise SystemExit(f"No runs in {RUNS}; collect some with --collect WORKDIR.")
  text = table(entries)
  with open(os.path.join(HERE, "table.md"), "w") as f:
    f.write(text)
  figure(entries, os.path.join(HERE, "curves.png"))
  print(text)


if __name__ == "__main__":
  main()
