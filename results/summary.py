"""Statistics over seeds shared by the results scripts (a2c_figure.py,
ptb_small/make_table.py)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def pad(curves: list) -> np.ndarray:
  """[curves, longest] float array of the curves, NaN past each one's end."""
  out = np.full((len(curves), max(len(c) for c in curves)), np.nan)
  for i, c in enumerate(curves):
    out[i, : len(c)] = c
  return out


def rank_sum(a: np.ndarray, b: np.ndarray) -> float:
  """Two-sided Wilcoxon rank-sum p (exact, as Mann-Whitney U) of the non-NaN
  values; NaN with fewer than 2 on a side."""
  a, b = a[~np.isnan(a)], b[~np.isnan(b)]
  if len(a) < 2 or len(b) < 2:
    return float("nan")
  return float(stats.mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue)


def smallest_rank_sum_p(n: int, m: int) -> float:
  """The smallest two-sided exact rank-sum p that n against m values can give
  (complete separation, either way: 2 of the C(n + m, n) orderings)."""
  return min(1.0, 2 / math.comb(n + m, n))


def rank_sum_text(a: np.ndarray, b: np.ndarray) -> str:
  """`rank_sum` of the non-NaN values as a line of a table, with the sample
  sizes and the smallest p they allow."""
  a, b = a[~np.isnan(a)], b[~np.isnan(b)]
  p = rank_sum(a, b)
  if np.isnan(p):
    return f"n/a (n = {len(a)} vs {len(b)}: fewer than 2 on a side)"
  floor = smallest_rank_sum_p(len(a), len(b))
  return f"{p:.3f} (n = {len(a)} vs {len(b)}; the smallest possible p: {floor:.3f})"
