"""Curves, window tables and rank-sum tests of A2C runs, one CSV per agent.

Shared by results/cue_reward/make_figure.py and results/maze/make_figure.py:

    python results/maze/make_figure.py --collect ~/bpm_runs/maze_modplast_3seeds
    python results/maze/make_figure.py          # from the CSVs in the folder

`--collect WORKDIR` downsamples a `train.a2c` run's metrics.csv to one row
per 100 iterations per agent (the mean reward per episode over those
iterations, and mean |m(t)| for modulated networks) into
`metrics/<network>_<baseline>_seed<k>.csv` (k: the agent's seed, the run's
--seed plus its index; a longer copy replaces a shorter one; |m| only from
one-agent runs, as metrics.csv holds its mean over the agents). The figure is
the papers' style: per group (network and baseline), the median and the
inter-quartile range over agents of the reward per episode against the
iteration. The table gives each group's median over agents of the
per-agent window means, and for each pair in `pairs` a two-sided
Wilcoxon rank-sum test (exact, as Mann-Whitney U) of the two groups'
window means, as the stars of Backpropamine Fig. 2. With 3 agents per
group the smallest possible p is 0.1.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os

import numpy as np
import summary  # results/summary.py: the results scripts' folder is on sys.path

EVERY = 100


def collect(workdir: str, folder: str) -> list[str]:
  """A train.a2c workdir -> one downsampled CSV per agent; returns the paths."""
  for name in ("config.json", "metrics.csv"):
    if not os.path.exists(os.path.join(workdir, name)):
      raise SystemExit(f"{workdir} has no {name}: not a train.a2c workdir (or nothing run yet).")
  if os.path.exists(os.path.join(workdir, "sweep.json")):
    raise SystemExit(
      f"{workdir} is a train.sweep workdir (agents of several settings); collect runs of one "
      "setting."
    )
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(workdir, "metrics.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  if len(rows) < EVERY:
    raise SystemExit(f"{workdir}/metrics.csv has {len(rows)} rows; at least {EVERY} are needed.")
  columns = sorted(
    (k for k in rows[0] if k.startswith("reward_seed")), key=lambda k: int(k[len("reward_seed") :])
  )
  # metrics.csv holds |m| as the mean over a run's agents: kept for one-agent runs only.
  has_m = (
    "modulation_abs" in rows[0]
    and config["network"] in ("modplast", "retromod")
    and len(columns) == 1
  )
  os.makedirs(os.path.join(folder, "metrics"), exist_ok=True)
  blocks = [rows[i : i + EVERY] for i in range(0, len(rows) - EVERY + 1, EVERY)]
  paths = []
  for column in columns:
    seed = int(config["seed"]) + int(column[len("reward_seed") :])
    name = f"{config['network']}_{config.get('baseline', 'own')}_seed{seed}.csv"
    path = os.path.join(folder, "metrics", name)
    if os.path.exists(path) and len(read_agent(path)[0]) > len(blocks):
      continue  # keep the longer copy
    with open(path, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["iteration", "reward"] + (["modulation_abs"] if has_m else []))
      for block in blocks:
        writer.writerow(
          [int(float(block[0]["iteration"])), f"{np.mean([float(r[column]) for r in block]):.4f}"]
          + ([f"{np.mean([float(r['modulation_abs']) for r in block]):.4f}"] if has_m else [])
        )
    paths.append(path)
  return paths


def read_agent(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(iteration, reward, |m| or None) of one agent's CSV."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  it = np.array([int(r["iteration"]) for r in rows])
  reward = np.array([float(r["reward"]) for r in rows])
  m = (
    np.array([float(r["modulation_abs"]) for r in rows])
    if rows and "modulation_abs" in rows[0]
    else None
  )
  return it, reward, m


def load_groups(
  folder: str,
) -> dict[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]]:
  """group ("<network>_<baseline>") -> [(agent, iteration, reward, |m|)]."""
  groups: dict[str, list] = {}
  for path in sorted(glob.glob(os.path.join(folder, "metrics", "*.csv"))):
    agent = os.path.basename(path)[: -len(".csv")]
    group = agent.rsplit("_seed", 1)[0]
    groups.setdefault(group, []).append((agent, *read_agent(path)))
  return groups


def window_means(agents: list, window: int) -> np.ndarray:
  """[agents, windows] mean reward per window of `window` iterations; the
  windows run to the longest agent's last complete one, NaN where an agent
  stopped before a window's end. Rows are 100 iterations apart from 0."""
  per = window // EVERY
  rewards = summary.pad([a[2] for a in agents])
  count = rewards.shape[1] // per
  return rewards[:, : count * per].reshape(len(agents), count, per).mean(axis=2)


def table(groups: dict, window: int, pairs: list[tuple[str, str]]) -> str:
  """Markdown: per window, each group's median window mean (n agents) and the pairs' p."""
  means = {g: window_means(agents, window) for g, agents in groups.items()}
  windows = max(m.shape[1] for m in means.values())
  names = sorted(groups)
  pairs = [(a, b) for a, b in pairs if a in groups and b in groups]
  lines = [
    "| iterations | "
    + " | ".join(f"{g} (n)" for g in names)
    + "".join(f" | p {a} vs {b}" for a, b in pairs)
    + " |",
    "|---" * (1 + len(names) + len(pairs)) + "|",
  ]
  for w in range(windows):
    cells = []
    for g in names:
      col = means[g][:, w] if w < means[g].shape[1] else np.array([])
      col = col[~np.isnan(col)]
      cells.append(f"{np.median(col):.2f} ({len(col)})" if len(col) else "-")
    for a, b in pairs:
      get = lambda g: means[g][:, w] if w < means[g].shape[1] else np.array([])  # noqa: E731
      p = summary.rank_sum(get(a), get(b))
      cells.append("-" if np.isnan(p) else f"{p:.3f}")
    lines.append(f"| {w * window}-{(w + 1) * window - 1} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def load_evaluations(folder: str) -> dict:
  """{(policy, group): {agent seed: (iteration, mean reward)}} from the
  folder's train.evaluate JSONs (evaluation*.json); of two evaluations of the
  same agent and policy, the later iteration's."""
  found = {}
  for path in sorted(glob.glob(os.path.join(folder, "evaluation*.json"))):
    with open(path) as f:
      result = json.load(f)
    if "baseline" not in result or any("agent_seed" not in a for a in result["agents"]):
      raise SystemExit(
        f"{path} was written before train.evaluate named the baseline and each agent's "
        "seed; evaluate the run again with --json_out."
      )
    group = f"{result['network']}_{result['baseline']}"
    agents = found.setdefault((result["policy"], group), {})
    for a in result["agents"]:
      seed = a["agent_seed"]
      if seed not in agents or agents[seed][0] < result["iteration"]:
        agents[seed] = (result["iteration"], a["mean"])
  return found


def evaluation_table(evaluations: dict, pairs: list[tuple[str, str]]) -> str:
  """Markdown: per policy and group, each agent's mean reward on fresh
  episodes (by seed), their median, and the pairs' rank-sum p (with the
  sample sizes and the smallest p they allow)."""
  lines = [
    "| policy | group | iteration | reward per agent (seed: mean) | median (n) |",
    "|---|---|---|---|---|",
  ]
  for (policy, group), agents in sorted(evaluations.items()):
    iterations = sorted({it for it, _ in agents.values()})
    per_agent = ", ".join(f"{s}: {m:.1f}" for s, (_, m) in sorted(agents.items()))
    means = [m for _, m in agents.values()]
    lines.append(
      f"| {policy} | {group} | {'/'.join(map(str, iterations))} | {per_agent} | "
      f"{np.median(means):.1f} ({len(means)}) |"
    )
  for policy in sorted({p for p, _ in evaluations}):
    for a, b in pairs:
      if (policy, a) in evaluations and (policy, b) in evaluations:
        get = lambda g: np.array([m for _, m in evaluations[(policy, g)].values()])  # noqa: E731
        lines.append(f"\n{policy}: rank-sum p {a} vs {b} = {summary.rank_sum_text(get(a), get(b))}")
  return "\n".join(lines) + "\n"


def figure(groups: dict, path: str, title: str) -> None:
  """Reward per episode (median and IQR over agents) and mean |m(t)| vs iteration."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  has_m = any(a[3] is not None for agents in groups.values() for a in agents)
  fig = Figure(figsize=(8, 6 if has_m else 4.5))
  axes = fig.subplots(2 if has_m else 1, 1, sharex=True, squeeze=False)[:, 0]
  for i, (group, agents) in enumerate(sorted(groups.items())):
    rewards = summary.pad([a[2] for a in agents])
    it = max((a[1] for a in agents), key=len)
    with np.errstate(all="ignore"):
      median = np.nanmedian(rewards, axis=0)
      low, high = np.nanpercentile(rewards, [25, 75], axis=0)
    label = f"{group} ({len(agents)} agent{'s' * (len(agents) > 1)})"
    axes[0].plot(it, median, color=f"C{i}", lw=1, label=label)
    if len(agents) > 1:
      axes[0].fill_between(it, low, high, color=f"C{i}", alpha=0.25, lw=0)
    if has_m:
      for _, agent_it, _, m in agents:
        if m is not None:
          axes[1].plot(agent_it, m, color=f"C{i}", lw=0.8)
  axes[0].set_ylabel("reward per episode")
  axes[0].axhline(0, color="grey", lw=0.5)
  axes[0].legend(loc="upper left", fontsize=8)
  axes[0].set_title(title)
  if has_m:
    axes[1].set_ylabel("mean |m(t)| (per agent)")
  axes[-1].set_xlabel("iteration (B episodes each)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(folder: str, title: str, window: int, pairs: list[tuple[str, str]]) -> None:
  parser = argparse.ArgumentParser(description=title)
  parser.add_argument("--collect", nargs="*", default=[], help="train.a2c workdirs to copy in")
  args = parser.parse_args()
  for workdir in args.collect:
    for path in collect(workdir, folder):
      print(f"collected {workdir} -> {os.path.relpath(path, folder)}")
  groups = load_groups(folder)
  if not groups:
    raise SystemExit(f"No metrics in {folder}/metrics; collect some with --collect WORKDIR.")
  text = table(groups, window, pairs)
  with open(os.path.join(folder, "table.md"), "w") as f:
    f.write(text)
  figure(groups, os.path.join(folder, "curves.png"), title)
  print(text)
  evaluations = load_evaluations(folder)
  if evaluations:
    text = evaluation_table(evaluations, pairs)
    with open(os.path.join(folder, "evaluation.md"), "w") as f:
      f.write(text)
    print(text)
