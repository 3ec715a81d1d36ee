"""bpm-jax: differentiable and neuromodulated plasticity (Backpropamine) in JAX/Flax."""

from bpm_jax.cells import PlasticLSTMCell, PlasticRNNCell
from bpm_jax.config import PlasticityConfig
from bpm_jax.omniglot_net import ConvEmbedding, OmniglotNet
from bpm_jax.plasticity import (
  LSTMState,
  PlasticParams,
  RNNState,
  Traces,
  apply_trace_rule,
  eligibility_update,
  hebbian_update,
  init_traces,
  lstm_step,
  modulation,
  modulation_rate,
  plastic_drive,
  rnn_step,
  update_traces,
)

__version__ = "0.1.0"
