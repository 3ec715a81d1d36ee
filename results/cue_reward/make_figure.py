"""Backpropamine Fig. 1 (cue-reward) from the runs collected here.

    python results/cue_reward/make_figure.py --collect ~/bpm_runs/cue_modplast_batch0_seed1 ...
    python results/cue_reward/make_figure.py

Writes curves.png (median and inter-quartile range over agents per network
and baseline; mean |m(t)| per modulated agent) and table.md (1000-iteration
window medians; rank-sum p of modplast against rnn and of the two
baselines). See results/a2c_figure.py.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import a2c_figure  # noqa: E402  pylint: disable=g-import-not-at-top

if __name__ == "__main__":
  a2c_figure.main(
    os.path.dirname(os.path.abspath(__file__)),
    "Cue-reward (H=200, T=120): reward per episode",
    window=1000,
    pairs=[("modplast_batch0", "rnn_batch0"), ("modplast_batch0", "modplast_own")],
  )
