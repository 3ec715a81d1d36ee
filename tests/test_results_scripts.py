"""The results/ scripts: collecting A2C runs per agent, window tables, the PTB grid choice."""

import csv
import functools
import json
import os
import sys

import numpy as np
import pytest
from scipy import stats

sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
)
import a2c_figure  # noqa: E402  pylint: disable=g-import-not-at-top
import summary  # noqa: E402  pylint: disable=g-import-not-at-top
from ptb_small import make_table  # noqa: E402  pylint: disable=g-import-not-at-top


def _a2c_workdir(path, network, seed, rewards):
  """A train.a2c-like workdir: config.json and metrics.csv, rewards [agents, iterations]."""
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(dict(network=network, seed=seed, baseline="batch0"), f)
  agents = len(rewards)
  with open(os.path.join(path, "metrics.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["iteration", *(f"reward_seed{a}" for a in range(agents)), "modulation_abs"])
    for i in range(rewards.shape[1]):
      writer.writerow([i, *rewards[:, i], 0.5])
  return str(path)


def test_collect_names_agents_by_seed_and_keeps_m_of_one_agent_runs_only(tmp_path):
  rewards = np.arange(2 * 250, dtype=float).reshape(2, 250)
  three = _a2c_workdir(tmp_path / "run", "modplast", 2, rewards)
  one = _a2c_workdir(tmp_path / "one", "modplast", 7, rewards[:1])
  out = str(tmp_path / "out")
  a2c_figure.collect(three, out)
  a2c_figure.collect(one, out)
  assert sorted(os.listdir(os.path.join(out, "metrics"))) == [
    "modplast_batch0_seed2.csv",
    "modplast_batch0_seed3.csv",
    "modplast_batch0_seed7.csv",
  ]
  it, reward, m = a2c_figure.read_agent(os.path.join(out, "metrics", "modplast_batch0_seed3.csv"))
  np.testing.assert_array_equal(it, [0, 100])  # the last 50 rows make no full block
  np.testing.assert_allclose(reward, [rewards[1, :100].mean(), rewards[1, 100:200].mean()])
  assert m is None  # a 3-agent run's |m| is their mean: not an agent's
  assert (
    a2c_figure.read_agent(os.path.join(out, "metrics", "modplast_batch0_seed7.csv"))[2] is not None
  )
  with pytest.raises(SystemExit, match="no config.json"):
    a2c_figure.collect(str(tmp_path), out)


def test_window_table_gives_medians_counts_and_the_exact_rank_sum_p(tmp_path):
  it = np.arange(25) * 100
  groups = {
    "modplast_batch0": [(f"m{s}", it, np.full(25, 10.0 + s), None) for s in range(3)],
    "plastic_batch0": [(f"p{s}", it[:12], np.full(12, 1.0 + s), None) for s in range(3)],
  }
  means = a2c_figure.window_means(groups["plastic_batch0"], 1000)
  assert means.shape == (3, 1)  # 1200 iterations: one complete window
  text = a2c_figure.table(groups, 1000, [("modplast_batch0", "plastic_batch0")])
  lines = text.splitlines()
  assert lines[2] == "| 0-999 | 11.00 (3) | 2.00 (3) | 0.100 |"  # 3 vs 3: the smallest p
  assert lines[3] == "| 1000-1999 | 11.00 (3) | - | - |"


@pytest.mark.parametrize("n, m", [(2, 2), (3, 3), (3, 5), (4, 4), (5, 5)])
def test_smallest_rank_sum_p_is_what_complete_separation_gives(n, m):
  separated = summary.rank_sum(np.arange(n, dtype=float), np.arange(n, n + m, dtype=float))
  assert summary.smallest_rank_sum_p(n, m) == pytest.approx(separated)
  mixed = summary.rank_sum(np.arange(0, 2 * n, 2.0), np.arange(1, 2 * m + 1, 2.0))
  assert mixed > summary.smallest_rank_sum_p(n, m)


def test_rank_sum_text_drops_nans_and_says_when_a_side_is_too_small():
  a, b = np.array([1.0, 2.0, np.nan, 3.0]), np.array([4.0, 5.0, 6.0])
  assert summary.rank_sum_text(a, b) == "0.100 (n = 3 vs 3; the smallest possible p: 0.100)"
  assert summary.rank_sum_text(a, np.array([4.0, np.nan])) == (
    "n/a (n = 3 vs 1: fewer than 2 on a side)"
  )


def _ptb_entry(network, setting, seed, valid, test=float("nan")):
  """An entry as make_table.read_run makes one (complete when it has a test ppl)."""
  return dict(
    network=network,
    setting=setting,
    seed=seed,
    valid=valid,
    epochs=len(valid),
    complete=not np.isnan(test),
    test=test,
  )


def test_ptb_grid_chooses_on_seed_0_valid_ppl_after_the_screen_epoch():
  entry = functools.partial(_ptb_entry, "rnn")
  default, strong = make_table.DEFAULT_SETTING, (1e-4,) + make_table.DEFAULT_SETTING[1:]
  screen = make_table.SCREEN_EPOCH
  entries = [
    entry(default, 0, [120.0] * screen + [90.0]),  # better only after the screen epoch
    entry(strong, 0, [119.0] * screen),
    entry(default, 1, [100.0] * screen),  # seed 1 never chooses
  ]
  chosen = make_table.choose(entries)
  assert chosen["rnn"] == strong and chosen["plastic"] is None
  assert make_table.folder_name("rnn", strong, 0) == "rnn_l2_0.0001_seed0"
  assert make_table.setting_label(strong) == "l2 0.0001"
  assert [e["seed"] for e in make_table.at_chosen(entries, chosen, "rnn")] == [0]


def _lm_workdir(path, valid):
  """A train.lm-like workdir of one seed: config.json, and metrics.csv with
  training rows between the epoch-end rows of `valid`."""
  os.makedirs(path)
  train = dict(network="plastic", seed=0, num_seeds=1, l2_penalty=1e-4, lr_decay=0.33)
  train.update(decay_after_epoch=5, init_scale=0.1)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(dict(train=train, model=dict(hidden_size=8)), f)
  with open(os.path.join(path, "metrics.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["step", "train_ppl_seed0", "valid_ppl", "valid_ppl_seed0"])
    for epoch, ppl in enumerate(valid):
      writer.writerow([10 * epoch + 5, 300.0, "", ""])
      writer.writerow([10 * epoch + 10, "", ppl, ppl])
  return str(path)


def test_ptb_t_interval_and_figure_with_none_one_and_three_complete_seeds(tmp_path):
  mean, half = make_table.t_interval(np.array([1.0, 2.0, 3.0]))
  assert mean == 2.0 and half == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)
  assert np.isnan(make_table.t_interval(np.array([5.0]))[1])
  assert make_table.interval(np.array([1.0, 2.0, 3.0])) == "2.00 [-0.48, 4.48]"

  setting = make_table.DEFAULT_SETTING
  valid = list(np.linspace(200.0, 110.0, make_table.EPOCHS))
  entries = [_ptb_entry("rnn", setting, s, valid, 104.0 + s) for s in range(3)]
  entries.append(_ptb_entry("plastic", setting, 0, valid, 103.0))
  chosen = dict(rnn=setting, plastic=setting, modplast=None, retromod=None)
  path = str(tmp_path / "curves.png")
  fig = make_table.figure(entries, chosen, path)
  assert os.path.getsize(path) > 10_000
  # Each legend entry once, though plastic's one seed has no interval.
  assert fig.axes[2].get_legend_handles_labels()[1] == ["paper", "seeds", "mean [95% CI]"]


def test_ptb_gap_interval_is_welchs_and_the_order_is_said_plainly():
  a, b = np.array([104.0, 105.0, 103.5]), np.array([103.0, 103.6])
  gap, half = make_table.welch_gap(a, b)
  ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  assert gap == pytest.approx(np.mean(a) - np.mean(b))
  assert (gap - half, gap + half) == pytest.approx((ci.low, ci.high), rel=1e-9)
  assert np.isnan(make_table.welch_gap(a, b[:1])[1])

  empty = np.array([])
  tests = dict(rnn=a, plastic=b, modplast=np.array([105.0]), retromod=empty)
  lines = make_table.ordering_and_gaps(tests)
  # Ours: plastic < rnn < modplast; the paper's: modplast < plastic < rnn.
  assert lines[0].startswith(
    "Order of the mean test perplexities, lowest first: plastic LSTM < LSTM"
  )
  assert lines[0].endswith("modplast < plastic LSTM < LSTM; different).")
  lstm_plastic = f"{gap:+.2f} [{gap - half:+.2f}, {gap + half:+.2f}] (paper +0.46"
  assert any(line.startswith(f"- LSTM - plastic LSTM: {lstm_plastic}") for line in lines)
  assert "- plastic LSTM - modplast: -1.70 (paper +1.15)" in lines  # one modplast seed: no interval
  assert "- modplast - retromod: not yet (paper +0.17)" in lines
  same = dict(rnn=np.array([104.3]), plastic=np.array([103.8]), modplast=empty, retromod=empty)
  assert make_table.ordering_and_gaps(same)[0].endswith("plastic LSTM < LSTM; the same).")


def test_ptb_best_screen_picks_the_lowest_screen_epoch_ppl_once_all_screens_got_there(tmp_path):
  screen = make_table.SCREEN_EPOCH
  low = _lm_workdir(tmp_path / "low", [150.0] * (screen - 1) + [110.0, 130.0])
  high = _lm_workdir(tmp_path / "high", [140.0] * (screen - 1) + [112.0, 100.0])
  assert make_table.best_screen([high, low]) == low  # later epochs do not count
  short = _lm_workdir(tmp_path / "short", [100.0] * (screen - 1))
  with pytest.raises(ValueError, match="not screened yet"):
    make_table.best_screen([low, short])
  with pytest.raises(ValueError, match="no train.lm run"):
    make_table.best_screen([low, str(tmp_path / "missing")])


def test_evaluation_table_takes_each_agents_latest_evaluation_and_the_rank_sum(tmp_path):
  def write(name, network, iteration, seeds_means, policy="sampled"):
    agents = [dict(agent=i, agent_seed=s, mean=m) for i, (s, m) in enumerate(seeds_means)]
    result = dict(network=network, baseline="batch0", iteration=iteration, policy=policy)
    with open(tmp_path / f"evaluation_{name}.json", "w") as f:
      json.dump(dict(result, agents=agents), f)

  write("m", "modplast", 10000, [(0, 30.0), (1, 20.0), (2, 10.0)])
  write("m3", "modplast", 500, [(3, 1.0)])
  write("m3_later", "modplast", 10000, [(3, 40.0)])  # replaces seed 3's earlier one
  write("p", "plastic", 10000, [(0, 5.0), (1, 6.0), (2, 7.0), (3, 8.0)])
  evaluations = a2c_figure.load_evaluations(str(tmp_path))
  assert evaluations[("sampled", "modplast_batch0")][3] == (10000, 40.0)
  text = a2c_figure.evaluation_table(evaluations, [("modplast_batch0", "plastic_batch0")])
  assert (
    "| sampled | modplast_batch0 | 10000 | 0: 30.0, 1: 20.0, 2: 10.0, 3: 40.0 | 25.0 (4) |" in text
  )
  # 4 vs 4 with every modplast agent ahead: the smallest p, 2 / C(8, 4).
  assert (
    f"rank-sum p modplast_batch0 vs plastic_batch0 = {2 / 70:.3f} "
    f"(n = 4 vs 4; the smallest possible p: {2 / 70:.3f})"
  ) in text


def test_ptb_screen_folder_is_where_collect_puts_a_screen(tmp_path, monkeypatch):
  monkeypatch.setattr(make_table, "RUNS", str(tmp_path / "runs"))
  screen = _lm_workdir(tmp_path / "screen", [150.0] * make_table.SCREEN_EPOCH)
  assert make_table.collect(screen) == make_table.screen_folder("plastic", 1e-4)
  assert make_table.screen_folder("plastic", 1e-4).endswith("plastic_l2_0.0001_seed0")
  # At the default L2 the folder name has no setting in it.
  assert make_table.screen_folder("rnn", 1e-6).endswith(os.sep + "rnn_seed0")


def test_ptb_tables_and_readme_copy_are_what_make_table_makes_of_runs():
  """table.md and grid.md are make_table.py's output for the runs/ folders in the
  tree (on a clean checkout: the committed ones), and the top-level README's
  Results quote table.md as it is."""
  entries = make_table.load_runs()
  assert entries, "results/ptb_small/runs/ is empty"
  chosen = make_table.choose(entries)
  here = make_table.HERE
  with open(os.path.join(here, "table.md")) as f:
    table_md = f.read()
  with open(os.path.join(here, "grid.md")) as f:
    assert f.read() == make_table.grid_table(entries, chosen), "rerun make_table.py"
  assert table_md == make_table.table(entries, chosen), "rerun results/ptb_small/make_table.py"
  with open(make_table.README, encoding="utf-8") as f:  # As sync_readme reads it.
    readme = f.read()
  start, end = make_table.readme_table_span(readme)
  assert readme[start:end].strip() == table_md.strip(), (
    "README.md's copy of results/ptb_small/table.md is out of date"
  )


def test_ptb_sync_readme_replaces_only_the_copy_of_the_table(tmp_path):
  path = tmp_path / "README.md"
  before = "# Results" + make_table.README_END + "\n\nPTB. " + make_table.README_MARKER
  after = make_table.README_END + " at the paper's settings.\n"
  path.write_text(before + "| old | table |\n\n- p = 0.5\n" + after)
  assert make_table.sync_readme("| new |\n\n- p = 0.1\n\n", str(path))
  assert path.read_text() == before + "| new |\n\n- p = 0.1\n" + after
  assert not make_table.sync_readme("| new |\n\n- p = 0.1\n", str(path))  # Unchanged.
  path.write_text("# Results without the markers\n")
  with pytest.raises(ValueError, match="no copy of table.md"):
    make_table.sync_readme("| new |", str(path))
