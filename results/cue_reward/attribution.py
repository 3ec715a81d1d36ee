"""Which loss term drives |m(t)| up: `train.attribute` over a run's checkpoints, and its figure.

    python results/cue_reward/attribution.py --workdir ~/bpm_runs/cue_modplast_own_3seeds \
        --points init,250,500,750,1000 --agents 0,1,2
    python results/cue_reward/attribution.py          # figure and table from attribution/*.json

Every (agent, point) writes attribution/<run>_agent<k>_<point>.json
(`train.attribute.attribute_workdir`: the expected drift of mean |m| by
one Adam step caused by the policy, concentration and value terms, for the
run's baseline and the other one). From all the JSON files here it writes
attribution.png (that drift times 1000, i.e. per 1000 iterations at the
checkpoint's rate: one row per run, one panel per loss term, every agent's
estimate +- s.e. for both baselines against the iteration; the
initialisation, whose Adam denominator is the steady estimate rather than a
checkpoint's, as diamonds; colour: the agent's seed; symlog axis where
some estimate exceeds 1) and attribution.md (every file's
numbers with their standard errors).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "attribution")
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
PER = 1000  # The figure's unit: drift of |m| per this many iterations.
TERMS = ("policy", "concentration", "value", "total")  # The table's; the figure's too.
BASELINES = ("batch0", "own")


def run_points(workdir: str, points: list[str], agents: list[int], batches: int) -> None:
  from train import attribute  # pylint: disable=g-import-not-at-top

  os.makedirs(OUT, exist_ok=True)
  name = os.path.basename(os.path.normpath(workdir))
  for point in points:
    if point != "init" and not point.isdigit():
      raise SystemExit(f"--points: {point!r} is neither 'init' nor an iteration number.")
  for point in points:
    for agent in agents:
      at_init = point == "init"
      try:
        result = attribute.attribute_workdir(
          workdir, agent, None if at_init else int(point), at_init, batches
        )
      except (ValueError, OSError) as e:
        raise SystemExit(f"ERROR: {workdir} at {point}, agent {agent}: {e}") from e
      result["workdir"] = name  # Not the machine's path.
      path = os.path.join(OUT, f"{name}_agent{agent}_{point}.json")
      with open(path, "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
      print(attribute.format_table(result), flush=True)
      print(f"wrote {os.path.relpath(path, HERE)}", flush=True)


def load() -> list[dict]:
  results = []
  for path in sorted(glob.glob(os.path.join(OUT, "*.json"))):
    with open(path) as f:
      results.append(dict(json.load(f), file=os.path.basename(path)))
  return results


def _cell(entry: dict) -> str:
  return f"{PER * entry['mean']:+.4f} +- {PER * entry['sem']:.4f}"


def table(results: list[dict]) -> str:
  lines = [
    "# Drift of mean |m(t)| per 1000 iterations, by loss term (train.attribute)",
    "",
    "Expected change of mean |m| by one Adam step, times 1000 (estimate +- jackknife "
    "s.e. over the batches); `*`: the other baseline than the run's (same agent). "
    "Modulator and rest together; pathwise + through the actions.",
    "",
    "| run | seed | iteration | mean abs m | baseline | "
    + " | ".join(TERMS)
    + " | value, own - batch0 |",
    "|---|---|---|---|---|" + "---|" * (len(TERMS) + 1),
  ]
  for r in sorted(results, key=lambda r: (r["workdir"], r["agent_seed"], r["iteration"])):
    for baseline in BASELINES:
      tag = baseline if baseline == r["run_baseline"] else f"{baseline}*"
      cells = [_cell(r["drift"][f"{baseline}/{term}/all"]) for term in TERMS]
      # The paired difference, on the run's baseline's row.
      cells.append(
        _cell(r["drift"]["own-batch0/value/all"]) if baseline == r["run_baseline"] else ""
      )
      point = "init" if r["at_init"] else str(r["iteration"])
      lines.append(
        f"| {r['workdir']} | {r['agent_seed']} | {point} | {r['m_abs']:.3f} | {tag} | "
        + " | ".join(cells)
        + " |"
      )
  return "\n".join(lines) + "\n"


def figure(results: list[dict], path: str) -> None:
  """One row per run, one panel per loss term: every agent's drift (+- s.e.)
  against the iteration, filled for own, open for batch0."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  runs = sorted({r["workdir"] for r in results})
  fig, axes = plt.subplots(
    len(runs), len(TERMS), figsize=(4 * len(TERMS), 3.4 * len(runs)), squeeze=False
  )
  for row, run in zip(axes, runs):
    mine = [r for r in results if r["workdir"] == run]
    span = max(r["iteration"] for r in mine) or 1
    for ax, term in zip(row, TERMS):
      for r in mine:
        color = f"C{r['agent_seed']}"
        for baseline, dx, face in (("own", -0.01, color), ("batch0", 0.01, "none")):
          d = r["drift"][f"{baseline}/{term}/all"]
          x = r["iteration"] + dx * span
          ax.errorbar(
            x,
            PER * d["mean"],
            yerr=PER * d["sem"],
            marker="o" if not r["at_init"] else "D",
            mfc=face,
            color=color,
            ls="",
            capsize=2,
          )
      ax.axhline(0, color="grey", lw=0.5)
      if max(abs(PER * r["drift"][f"{b}/{term}/all"]["mean"]) for r in mine for b in BASELINES) > 1:
        ax.set_yscale("symlog", linthresh=0.1)
      ax.set_title(f"{term}" + (f": {run}" if term == TERMS[0] else ""), fontsize=9)
      ax.set_xlabel("iteration (diamond: initialisation)")
    row[0].set_ylabel(f"one step's drift of mean |m| x {PER}")
  handles = [
    plt.Line2D([], [], marker="o", color="k", ls="", label="own"),
    plt.Line2D([], [], marker="o", mfc="none", color="k", ls="", label="batch0"),
  ] + [
    plt.Line2D([], [], marker="s", color=f"C{k}", ls="", label=f"seed {k}")
    for k in sorted({r["agent_seed"] for r in results})
  ]
  axes[0][-1].legend(handles=handles, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", help="a train.a2c workdir of a modulated network")
  parser.add_argument("--points", default="init", help="comma-separated: init and/or iterations")
  parser.add_argument("--agents", default="0", help="comma-separated agent indices")
  parser.add_argument("--batches", type=int, default=20, help="fresh batches per point")
  args = parser.parse_args()
  if args.workdir:
    agents = [int(a) for a in args.agents.split(",")]
    run_points(args.workdir, args.points.split(","), agents, args.batches)
  results = load()
  if not results:
    raise SystemExit(f"No attribution JSON in {OUT}; make some with --workdir.")
  with open(os.path.join(HERE, "attribution.md"), "w") as f:
    f.write(table(results))
  figure(results, os.path.join(HERE, "attribution.png"))
  print(f"wrote attribution.md and attribution.png from {len(results)} files")


if __name__ == "__main__":
  main()
