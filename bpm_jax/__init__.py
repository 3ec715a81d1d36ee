"""bpm-jax: differentiable and neuromodulated plasticity (Backpropamine) in JAX/Flax."""

from bpm_jax.cells import PlasticLSTMCell
from bpm_jax.cells import PlasticRNNCell
from bpm_jax.config import PlasticityConfig
from bpm_jax.plasticity import LSTMState
from bpm_jax.plasticity import PlasticParams
from bpm_jax.plasticity import RNNState
from bpm_jax.plasticity import Traces
from bpm_jax.plasticity import apply_trace_rule
from bpm_jax.plasticity import eligibility_update
from bpm_jax.plasticity import hebbian_update
from bpm_jax.plasticity import init_traces
from bpm_jax.plasticity import lstm_step
from bpm_jax.plasticity import modulation
from bpm_jax.plasticity import modulation_rate
from bpm_jax.plasticity import plastic_drive
from bpm_jax.plasticity import rnn_step
from bpm_jax.plasticity import update_traces

__version__ = "0.1.0"
