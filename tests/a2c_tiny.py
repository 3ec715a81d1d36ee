"""The tiny A2C sizes of the trainer tests (test_a2c, test_sweep).

Every run with them compiles in seconds and runs in milliseconds;
burn_in=0: the updates of these few iterations are applied.
"""

TINY = dict(
  hidden_size=8,
  batch_size=3,
  episode_length=12,
  iterations=2,
  chunk_size=2,
  checkpoint_every=2,
  progress=False,
  fast_compile=True,
  burn_in=0,
)
