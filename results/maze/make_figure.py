"""Backpropamine Fig. 2 (grid maze) from the runs collected here.

    python results/maze/make_figure.py --collect ~/bpm_runs/maze_modplast_3seeds ...
    python results/maze/make_figure.py

Writes curves.png (median and inter-quartile range over agents per network)
and table.md (1000-iteration window medians; rank-sum p of modplast vs
plastic per window, the paper's test). See results/a2c_figure.py.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import a2c_figure  # noqa: E402  pylint: disable=g-import-not-at-top

if __name__ == "__main__":
  a2c_figure.main(
    os.path.dirname(os.path.abspath(__file__)),
    "Grid maze (9x9, H=100, T=200): reward per episode",
    window=1000,
    pairs=[("modplast_batch0", "plastic_batch0"), ("retromod_batch0", "plastic_batch0")],
  )
