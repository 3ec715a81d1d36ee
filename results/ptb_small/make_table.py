"""Table 1 (small model) of Backpropamine from the PTB runs in this folder.

    # copy finished or partial train.lm workdirs in (results.json, config.json,
    # the epoch rows of metrics.csv), then make the table and figure:
    python results/ptb_small/make_table.py --collect /root/bpm_runs/ptb_rnn_seed0 ...
    python results/ptb_small/make_table.py              # from the folders here only

Each run folder `runs/<network>[_<setting>]_seed<k>/` (k: the run's first
seed; a run of `--num_seeds=S` counts as S seeds; the same seed and setting
twice counts once, the longer run) holds what `train.lm` wrote. A run counts
as complete when it has trained its 13 epochs and written its test
perplexity; partial runs are listed with their last validation perplexity
and left out of the statistics.

The paper searched, per variant and on validation perplexity, the decay factor,
the decay's first epoch, the init scale and L2 (GRID_FIELDS). Runs here that
differ from train.lm's defaults in those settings are named after the
difference (`rnn_l2_1e-05_seed0`). Each variant's setting is the one whose
seed-0 run has the lowest validation perplexity after SCREEN_EPOCH epochs,
among the settings screened so far (`grid.md` lists them); only runs at that
setting enter the table.

Writes `table.md` (mean test perplexity with a 95% t-interval over seeds per
variant next to the paper's, and two-sided Wilcoxon rank-sum tests, computed
exactly as Mann-Whitney U, for the paper's three comparisons, then the order
of the means against the paper's and each comparison's gap with a 95% Welch
interval, against the paper's gap; its speed column is each variant's fastest
run's tokens/s, as runs that shared the machine are slower) and
`curves.png` (left: validation perplexity vs epoch, median and range over
seeds at the chosen settings; middle: the same for every screened setting's
seed 0; right: each seed's test perplexity, the mean with its 95% interval
and the paper's mean).
Validation perplexity only ever chooses settings; test perplexity is reported.
The repository's README.md quotes `table.md` after the line ending in
README_MARKER; the script rewrites that copy too.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import shutil
import sys

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import summary  # noqa: E402  pylint: disable=g-import-not-at-top  (results/summary.py)

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(HERE, "runs")
NETWORKS = ("rnn", "plastic", "modplast", "retromod")
LABELS = {"rnn": "LSTM", "plastic": "plastic LSTM", "modplast": "modplast", "retromod": "retromod"}
PAPER_TEST_PPL = {"rnn": 104.26, "plastic": 103.80, "modplast": 102.65, "retromod": 102.48}
COMPARISONS = (("rnn", "plastic"), ("plastic", "modplast"), ("modplast", "retromod"))
EPOCHS = 13
# The settings the paper searched per variant, and train.lm's defaults.
GRID_FIELDS = ("l2_penalty", "lr_decay", "decay_after_epoch", "init_scale")
DEFAULT_SETTING = (1e-6, 0.33, 5, 0.1)
SHORT = {"l2_penalty": "l2", "lr_decay": "decay", "decay_after_epoch": "from", "init_scale": "init"}
# Settings are compared on the validation perplexity after this epoch (the
# first one at the decayed learning rate by default).
SCREEN_EPOCH = 6
README = os.path.join(os.path.dirname(os.path.dirname(HERE)), "README.md")
README_MARKER = "`results/ptb_small/table.md` now:\n\n"
README_END = "\nGrid maze (Backpropamine Fig. 2)"


def readme_table_span(readme: str) -> tuple[int, int]:
  """[start, end) of README.md's copy of table.md (between README_MARKER and README_END)."""
  start = readme.find(README_MARKER)
  end = readme.find(README_END, start)
  if start < 0 or end < 0:
    raise ValueError(
      f"README.md has no copy of table.md between {README_MARKER!r} and {README_END!r}; "
      "put the markers back (the Results section) or update the constants here."
    )
  return start + len(README_MARKER), end


def sync_readme(text: str, path: str = README) -> bool:
  """Replaces README.md's copy of table.md with `text`; whether it changed."""
  with open(path, encoding="utf-8") as f:
    readme = f.read()
  start, end = readme_table_span(readme)
  new = readme[:start] + text.strip() + "\n" + readme[end:]
  if new == readme:
    return False
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(new)
  os.replace(path + ".tmp", path)  # Whole or not at all.
  return True


def setting_of(train: dict) -> tuple:
  return tuple(type(d)(train[f]) for f, d in zip(GRID_FIELDS, DEFAULT_SETTING))


def changed(setting: tuple) -> list[tuple[str, float]]:
  """(short name, value) of each grid field that differs from the defaults."""
  return [(SHORT[f], v) for f, v, d in zip(GRID_FIELDS, setting, DEFAULT_SETTING) if v != d]


def setting_label(setting: tuple) -> str:
  """ "default" or what differs from it, e.g. "l2 1e-05"."""
  return ", ".join(f"{name} {v:g}" for name, v in changed(setting)) or "default"


def folder_name(network: str, setting: tuple, seed: int) -> str:
  return network + "".join(f"_{name}_{v:g}" for name, v in changed(setting)) + f"_seed{seed}"


def screen_folder(network: str, l2_penalty: float) -> str:
  """Where `collect` puts the seed-0 run of `network` at this L2 and the
  other settings' defaults (an L2 screen, once collected)."""
  return os.path.join(RUNS, folder_name(network, (l2_penalty, *DEFAULT_SETTING[1:]), 0))


def collect(workdir: str) -> str:
  """Copies a train.lm workdir's results into runs/<network>_seed<k>/; returns that folder."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  train = config["train"]
  out = os.path.join(RUNS, folder_name(train["network"], setting_of(train), train["seed"]))
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


def read_run(folder: str) -> list[dict]:
  """One entry per seed of a run folder here or a train.lm workdir: network,
  seed, complete, valid per epoch, test ppl, settings."""
  entries = []
  with open(os.path.join(folder, "config.json")) as f:
    config = json.load(f)
  train = config["train"]
  num_seeds = int(train.get("num_seeds", 1))
  metrics = os.path.join(folder, "metrics_epochs.csv")
  if not os.path.exists(metrics):  # a workdir: every row, the epoch ends among them
    metrics = os.path.join(folder, "metrics.csv")
  with open(metrics, newline="") as f:
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
        setting=setting_of(train),
      )
    )
  return entries


def load_runs() -> list[dict]:
  """read_run of every folder in runs/, one entry per (network, setting, seed):
  the longest."""
  entries = [e for folder in sorted(glob.glob(os.path.join(RUNS, "*"))) for e in read_run(folder)]
  longest = {}
  for e in entries:
    key = (e["network"], e["setting"], e["seed"])
    if key not in longest or (e["complete"], e["epochs"]) > (
      longest[key]["complete"],
      longest[key]["epochs"],
    ):
      longest[key] = e
  return list(longest.values())


def t_interval(values: np.ndarray) -> tuple[float, float]:
  """(mean, half-width of the 95% t-interval); the half-width is NaN for one value."""
  mean = float(np.mean(values))
  if len(values) < 2:
    return mean, math.nan
  return mean, stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))


def interval(values: np.ndarray) -> str:
  """mean [95% t-interval] (no interval for one value)."""
  mean, half = t_interval(values)
  if math.isnan(half):
    return f"{mean:.2f}"
  return f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}]"


def screen_ppl(entry: dict) -> float | None:
  """What a setting is chosen on: the validation perplexity of its seed 0
  after SCREEN_EPOCH epochs (None for other seeds or before that epoch)."""
  if entry["seed"] != 0 or entry["epochs"] < SCREEN_EPOCH:
    return None
  return entry["valid"][SCREEN_EPOCH - 1]


def best_screen(workdirs: list[str]) -> str:
  """The workdir whose seed-0 run has the lowest validation perplexity after
  SCREEN_EPOCH epochs (the rule of `choose`), once every one got that far."""
  screens = {}
  for workdir in workdirs:
    if not os.path.exists(os.path.join(workdir, "config.json")):
      raise ValueError(f"{workdir}: no train.lm run there (no config.json).")
    try:
      ppls = [p for p in map(screen_ppl, read_run(workdir)) if p is not None]
    except (OSError, KeyError, ValueError) as e:
      raise ValueError(f"{workdir}: cannot read its config or metrics ({e!r}).") from e
    if not ppls:
      raise ValueError(
        f"{workdir}: not screened yet (seed 0 must reach epoch {SCREEN_EPOCH}); "
        "run or resume it first."
      )
    screens[workdir] = ppls[0]
  if not screens:
    raise ValueError("No screens given.")
  return min(screens, key=screens.get)


def choose(entries: list[dict]) -> dict:
  """network -> the setting with the lowest seed-0 validation perplexity after
  SCREEN_EPOCH epochs (None while no seed 0 got that far)."""
  chosen = {}
  for network in NETWORKS:
    screened = [e for e in entries if e["network"] == network and screen_ppl(e) is not None]
    best = min(screened, key=screen_ppl, default=None)
    chosen[network] = best["setting"] if best else None
  return chosen


def grid_table(entries: list[dict], chosen: dict) -> str:
  lines = [
    f"| variant | setting | seed | valid ppl after epoch {SCREEN_EPOCH} | last valid ppl "
    "(epoch) | chosen |",
    "|---|---|---|---|---|---|",
  ]
  for network in NETWORKS:
    for e in sorted(
      (e for e in entries if e["network"] == network and e["seed"] == 0),
      key=lambda e: e["setting"],
    ):
      screen = f"{e['valid'][SCREEN_EPOCH - 1]:.2f}" if e["epochs"] >= SCREEN_EPOCH else "-"
      last = f"{e['valid'][-1]:.2f} ({e['epochs']})" if e["valid"] else "-"
      mark = "yes" if e["setting"] == chosen[network] else ""
      lines.append(
        f"| {LABELS[network]} | {setting_label(e['setting'])} | {e['seed']} | {screen} | "
        f"{last} | {mark} |"
      )
  return "\n".join(lines) + "\n"


def at_chosen(entries: list[dict], chosen: dict, network: str) -> list[dict]:
  """The network's runs at its chosen setting; before any choice, at the
  setting of its longest run (shown as "not chosen yet")."""
  runs = [e for e in entries if e["network"] == network]
  setting = chosen[network]
  if setting is None and runs:
    setting = max(runs, key=lambda e: e["epochs"])["setting"]
  return [e for e in runs if e["setting"] == setting]


def table(entries: list[dict], chosen: dict) -> str:
  lines = [
    "| variant | setting | H | params | complete seeds | test ppl, mean [95% CI] | paper | "
    "valid ppl (last epoch) | tokens/s (fastest run) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  tests = {}
  for network in NETWORKS:
    runs = at_chosen(entries, chosen, network)
    done = [e for e in runs if e["complete"]]
    tests[network] = np.array([e["test"] for e in done])
    if not runs:
      lines.append(
        f"| {LABELS[network]} | - | - | - | 0 | not run | {PAPER_TEST_PPL[network]} | - | - |"
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
      f"| {LABELS[network]} | {setting_label(runs[0]['setting'])}"
      f"{'' if chosen[network] else ' (not chosen yet)'} | {runs[0]['hidden_size']} | "
      f"{runs[0]['num_params']:,} | "
      f"{len(done)} | {test} | {PAPER_TEST_PPL[network]} | {valid} | "
      f"{f'{max(speed):,.0f}' if speed else '-'} |"
    )
  lines += ["", "Two-sided Wilcoxon rank-sum tests of the test perplexities (exact):", ""]
  for a, b in COMPARISONS:
    lines.append(f"- {LABELS[a]} vs {LABELS[b]}: p = {summary.rank_sum_text(tests[a], tests[b])}")
  return "\n".join(lines + ["", *ordering_and_gaps(tests)]) + "\n"


def welch_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  """(mean(a) - mean(b), half-width of its 95% Welch t-interval); the
  half-width is NaN with fewer than 2 values on a side."""
  gap = float(np.mean(a) - np.mean(b))
  if len(a) < 2 or len(b) < 2:
    return gap, math.nan
  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  if va + vb == 0:
    return gap, 0.0
  dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  return gap, float(stats.t.ppf(0.975, dof) * math.sqrt(va + vb))


def ordering_and_gaps(tests: dict) -> list[str]:
  """Lines saying whether the paper's order of the variants and its gaps
  (each comparison's first variant minus the second, in mean test perplexity)
  are reproduced, from each variant's complete seeds."""
  have = [n for n in NETWORKS if len(tests[n])]
  ours = sorted(have, key=lambda n: np.mean(tests[n]))
  paper = sorted(have, key=PAPER_TEST_PPL.get)
  lines = [
    "Order of the mean test perplexities, lowest first: "
    + " < ".join(LABELS[n] for n in ours)
    + f" (the paper's, of the same variants: {' < '.join(LABELS[n] for n in paper)}; "
    + ("the same" if ours == paper else "different")
    + ").",
    "",
    "Gaps in mean test perplexity (first minus second; positive: the second is better), "
    "with a 95% Welch interval:",
    "",
  ]
  for a, b in COMPARISONS:
    paper_gap = PAPER_TEST_PPL[a] - PAPER_TEST_PPL[b]
    if not (len(tests[a]) and len(tests[b])):
      lines.append(f"- {LABELS[a]} - {LABELS[b]}: not yet (paper {paper_gap:+.2f})")
      continue
    gap, half = welch_gap(tests[a], tests[b])
    ci = inside = ""
    if not math.isnan(half):
      ci = f" [{gap - half:+.2f}, {gap + half:+.2f}]"
      inside = f"; the paper's gap is {'inside' if abs(paper_gap - gap) <= half else 'outside'} it"
    lines.append(f"- {LABELS[a]} - {LABELS[b]}: {gap:+.2f}{ci} (paper {paper_gap:+.2f}{inside})")
  return lines


def perplexity_panel(ax, entries: list[dict], chosen: dict) -> None:
  """Table 1 as a picture: each complete seed's test perplexity, the mean with
  its 95% t-interval, and the paper's mean (a line under them), per variant."""
  labelled = set()

  def label(name: str) -> str | None:
    if name in labelled:
      return None
    labelled.add(name)
    return name

  for i, network in enumerate(NETWORKS):
    ax.hlines(
      PAPER_TEST_PPL[network], i - 0.35, i + 0.35, colors="k", lw=2, zorder=1, label=label("paper")
    )
    tests = np.array([e["test"] for e in at_chosen(entries, chosen, network) if e["complete"]])
    if not len(tests):
      continue
    offsets = np.linspace(-0.08, 0.08, len(tests)) if len(tests) > 1 else np.zeros(1)
    ax.plot(
      i - 0.15 + offsets, tests, "o", color=f"C{i}", ms=5, alpha=0.8, zorder=2, label=label("seeds")
    )
    mean, half = t_interval(tests)
    ax.errorbar(
      i + 0.15,
      mean,
      yerr=None if math.isnan(half) else half,
      fmt="s",
      color=f"C{i}",
      capsize=4,
      zorder=2,
      label=label("mean [95% CI]"),
    )
  names = [
    LABELS[n]
    + ("\n(not chosen yet)" if chosen[n] is None and at_chosen(entries, chosen, n) else "")
    for n in NETWORKS
  ]
  ax.set_xticks(range(len(NETWORKS)), names, fontsize=8)
  ax.set_xlim(-0.6, len(NETWORKS) - 0.4)
  ax.set_ylabel("test perplexity")
  ax.set_title("test perplexity: seeds, mean, paper")
  ax.grid(True, axis="y", alpha=0.3)
  ax.legend(fontsize=7)


def figure(entries: list[dict], chosen: dict, path: str):
  """Writes curves.png (see the module docstring) to `path`; returns the Figure."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import FuncFormatter  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(17, 4.8))
  ax, grid_ax, test_ax = fig.subplots(1, 3, gridspec_kw=dict(width_ratios=(1, 1, 0.6)))
  grid_ax.sharey(ax)
  for network in NETWORKS:
    curves = [e["valid"] for e in at_chosen(entries, chosen, network) if e["valid"]]
    if not curves:
      continue
    padded = summary.pad(curves)
    epochs = np.arange(1, padded.shape[1] + 1)
    median = np.nanmedian(padded, axis=0)
    seeds = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}"
    ax.plot(epochs, median, marker="o", ms=3, label=f"{LABELS[network]} ({seeds})")
    ax.fill_between(epochs, np.nanmin(padded, axis=0), np.nanmax(padded, axis=0), alpha=0.2)
  for i, network in enumerate(NETWORKS):
    for e in (e for e in entries if e["network"] == network and e["seed"] == 0 and e["valid"]):
      grid_ax.plot(
        np.arange(1, e["epochs"] + 1),
        e["valid"],
        color=f"C{i}",
        marker="o",
        ms=2,
        lw=2 if e["setting"] == chosen[network] else 0.8,
        label=f"{LABELS[network]}: {setting_label(e['setting'])}",
      )
  ax.set_title("chosen settings: median and range over seeds")
  grid_ax.set_title(f"screened settings, seed 0 (chosen after epoch {SCREEN_EPOCH}: bold)")
  for a in (ax, grid_ax):
    a.set_xlabel("epoch")
    a.set_yscale("log")
    a.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=7)
  ax.set_ylabel("validation perplexity")
  perplexity_panel(test_ax, entries, chosen)
  fig.suptitle("PTB small model (4.8M parameters)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return fig


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--collect", nargs="*", default=[], help="train.lm workdirs to copy in")
  parser.add_argument(
    "--best_screen",
    nargs="+",
    metavar="WORKDIR",
    help="only print which of these train.lm workdirs (one variant's screens) the rule "
    "chooses; exit status 3 while one of them has not reached the screen epoch",
  )
  args = parser.parse_args()
  if args.best_screen:
    try:
      print(best_screen(args.best_screen))
    except ValueError as e:
      print(f"make_table.py --best_screen: {e}", file=sys.stderr)
      sys.exit(3)
    return
  for workdir in args.collect:
    print(f"collected {workdir} -> {collect(workdir)}")
  entries = load_runs()
  if not entries:
    raise SystemExit(f"No runs in {RUNS}; collect some with --collect WORKDIR.")
  chosen = choose(entries)
  text = table(entries, chosen)
  grid = grid_table(entries, chosen)
  with open(os.path.join(HERE, "table.md"), "w") as f:
    f.write(text)
  with open(os.path.join(HERE, "grid.md"), "w") as f:
    f.write(grid)
  if sync_readme(text):
    print(f"updated the copy of table.md in {README}")
  figure(entries, chosen, os.path.join(HERE, "curves.png"))
  print(text)
  print(grid)


if __name__ == "__main__":
  main()
