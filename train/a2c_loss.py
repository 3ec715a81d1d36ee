"""The A2C loss of SPEC.md §5.3, written for whole episodes ([T, B], time-major).

    R_t = r_t + gamma R_{t+1}
    A_t = R_t - V_t            (baseline=own) or R_t - V_t[batch element 0] (batch0)
    loss = mean_b [ -sum_t log pi(a_t) sg(A_t)
                    + coef sum_t sum_a pi_t(a)^2        (or -coef H(pi_t))
                    + value_coef sum_t A_t^2 ] / T

Pure functions of arrays (rlax style); `train.a2c_learner` applies them to a
rollout.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from train.a2c_config import BASELINES

Array = jax.Array


def discounted_returns(rewards: Array, discount: Array | float) -> Array:
  """R_t = r_t + discount * R_{t+1}, with R_T = 0 (reverse `lax.scan`).

  Args:
    rewards: [T, ...] rewards r_t (any trailing batch dims).
    discount: [] gamma.

  Returns:
    [T, ...] returns R_t.
  """

  def backward(next_return, reward_t):
    return_t = reward_t + discount * next_return
    return return_t, return_t

  _, returns = jax.lax.scan(backward, jnp.zeros_like(rewards[0]), rewards, reverse=True)
  return returns


class LossTerms(NamedTuple):
  """Batch means of the loss terms, each divided by T; `loss` is their weighted sum."""

  loss: Array  # [] total = policy_loss + entropy_loss + value_coef * value_loss.
  policy_loss: Array  # [] -sum_t log pi(a_t) sg(A_t) / T.
  value_loss: Array  # [] sum_t A_t^2 / T.
  entropy_loss: Array  # [] coef * sum_t penalty_t / T (penalty: sum pi^2 or -H).


def a2c_loss(
  log_prob: Array,
  value: Array,
  reward: Array,
  penalty: Array,
  discount: Array | float,
  value_coef: Array | float,
  entropy_coef: Array | float,
  baseline: str = "batch0",
) -> LossTerms:
  """The A2C loss of SPEC.md §5.3 for a batch of whole episodes.

  Args:
    log_prob: [T, B] log pi(a_t).
    value: [T, B] V_t.
    reward: [T, B] r_t.
    penalty: [T, B] per-step regulariser: sum_a pi(a)^2 (concentration) or
      -H(pi) (entropy bonus).
    discount, value_coef, entropy_coef: [] scalars.
    baseline: `batch0` (the reference code, SPEC §5.3 default): every
      episode's advantage is `R_t - V_t` of batch element 0, so only that
      element's value head is trained (towards the batch-mean return) and the
      value gradient reaches the network through one episode; `own`: each
      episode's own `R_t - V_t`.

  Returns:
    LossTerms; `loss` = mean_b (policy + coef * penalty + value_coef * value) / T.
  """
  if not (log_prob.ndim == value.ndim == reward.ndim == penalty.ndim == 2):
    raise ValueError(
      "a2c_loss expects [T, B] arrays, got shapes "
      f"{log_prob.shape}, {value.shape}, {reward.shape}, {penalty.shape}."
    )
  if baseline not in BASELINES:
    raise ValueError(f"baseline={baseline!r}; choose one of {', '.join(BASELINES)}.")
  num_steps = reward.shape[0]
  returns = discounted_returns(jax.lax.stop_gradient(reward), discount)
  advantage = returns - (value[:, :1] if baseline == "batch0" else value)
  policy = -jnp.sum(log_prob * jax.lax.stop_gradient(advantage), axis=0)  # [B]
  value_sq = jnp.sum(advantage**2, axis=0)  # [B]
  reg = entropy_coef * jnp.sum(penalty, axis=0)  # [B]
  policy_loss = jnp.mean(policy) / num_steps
  value_loss = jnp.mean(value_sq) / num_steps
  entropy_loss = jnp.mean(reg) / num_steps
  return LossTerms(
    loss=policy_loss + entropy_loss + value_coef * value_loss,
    policy_loss=policy_loss,
    value_loss=value_loss,
    entropy_loss=entropy_loss,
  )


def regulariser(trajectory, entropy_kind: str) -> Array:
  """[T, B] per-step penalty: sum_a pi(a)^2 (`concentration`) or -H(pi) (`entropy`).

  `trajectory`: anything with [T, B] `concentration` and `entropy` fields.
  """
  if entropy_kind == "concentration":
    return trajectory.concentration
  if entropy_kind == "entropy":
    return -trajectory.entropy
  raise ValueError(f"entropy_kind={entropy_kind!r}; choose concentration or entropy.")


def policy_terms(logits: Array, action: Array) -> dict[str, Array]:
  """log pi(a), sum_a pi(a)^2 and H(pi) of [..., A] logits at the [...] actions."""
  log_pi = jax.nn.log_softmax(logits)
  pi = jnp.exp(log_pi)
  return dict(
    log_prob=jnp.take_along_axis(log_pi, action[..., None], axis=-1)[..., 0],
    concentration=jnp.sum(pi**2, axis=-1),
    entropy=-jnp.sum(pi * log_pi, axis=-1),
  )
