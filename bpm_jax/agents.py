"""Actor-critic agents over the plastic recurrent cell (Backpropamine §4.1-4.2).

    agent = ActorCritic(num_actions=2, hidden_size=200,
                        config=PlasticityConfig("modplast"))
    carry = agent.initialize_carry((B,))
    params = agent.init(key, carry, obs)            # obs [B, I]
    carry, (logits, value, m) = agent.apply(params, carry, obs)

One call is one time step: the recurrent layer updates its hidden state and
plastic traces, then the policy head gives `logits [B, A]`, the value head
`value [B]`, and the modulatory signal `m [B, K]` of the layer is passed
through (zeros for non-modulated networks).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from bpm_jax import plasticity
from bpm_jax.cells import PlasticRNNCell, torch_bias_init, torch_kernel_init, uniform_range
from bpm_jax.config import PlasticityConfig

Array = jax.Array


class ActorCritic(nn.Module):
  """Plastic RNN + policy head Dense(A) + value head Dense(1).

  Attributes:
    num_actions: A.
    hidden_size: H.
    config: plasticity variant of the recurrent layer.
    clip_value: trace bound c; may be a traced [] scalar.
    eta_init: initial eta (0.1 cue-reward, 0.01 maze retromod).
    init_scale: W, alpha ~ U(0, init_scale) (SPEC.md §3.4: 0.01).
    step_impl: plastic step implementation, `reference`, `fast` or `fused`
      (see `cells.PlasticRNNCell`).
  """

  num_actions: int
  hidden_size: int
  config: PlasticityConfig = PlasticityConfig()
  clip_value: Any = 1.0
  eta_init: float = 0.1
  init_scale: float = 0.01
  step_impl: str = "reference"

  def setup(self):
    init = uniform_range(0.0, self.init_scale)
    self.cell = PlasticRNNCell(
      features=self.hidden_size,
      config=self.config,
      clip_value=self.clip_value,
      step_impl=self.step_impl,
      w_init=init,
      alpha_init=init,
      eta_init=self.eta_init,
      plain_eta_init=self.eta_init,
      return_modulation=True,
    )
    bias_init = torch_bias_init(self.hidden_size)
    self.policy = nn.Dense(self.num_actions, kernel_init=torch_kernel_init, bias_init=bias_init)
    self.value = nn.Dense(1, kernel_init=torch_kernel_init, bias_init=bias_init)

  def __call__(
    self, carry: plasticity.RNNState, obs: Array, sequence: bool = False, recorded: Any = None
  ) -> tuple[plasticity.RNNState, tuple[Array, Array, Array]]:
    """One step, or T steps of recorded observations.

    Args:
      carry: RNNState with batch dims [B] (h [B, H], traces [B, H, H]).
      obs: [B, I] observations, or [T, B, I] with `sequence=True`.
      sequence: replay a whole time-major sequence (the outputs get a leading
        T axis); see `PlasticRNNCell.__call__`.
      recorded: `fused` only: the recurrent layer's `fused_step.Recorded` of
        the sequence (no second forward kernel; see `PlasticRNNCell`).

    Returns:
      (new carry, (logits [B, A], value [B], m [B, K])).
    """
    carry, (h, m) = self.cell(carry, obs, sequence, recorded)
    return carry, (self.policy(h), self.value(h)[..., 0], m)

  @nn.nowrap
  def initialize_carry(self, batch_shape: tuple[int, ...]) -> plasticity.RNNState:
    """Zero hidden state and traces for a fresh episode: h [*batch, H], traces [*batch, H, H]."""
    cell = PlasticRNNCell(features=self.hidden_size, config=self.config, parent=None)
    return cell.initialize_carry(None, tuple(batch_shape) + (1,))
