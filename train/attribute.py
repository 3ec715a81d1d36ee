r"""Which A2C loss term moves the modulation: the drift of mean |m(t)| split by loss term.

    python -m train.attribute --workdir=DIR [--step=S] [--seed_index=K] [--batches=20]
    python -m train.attribute --workdir=DIR --init     # the run's agent before training

The A2C loss is a sum of terms, L = policy + concentration + value (SPEC
§5.3, weights included), so its gradient is g = sum_k g_k, and after the
grad-norm clip (factor c = min(1, clip / |g|), the same for every term) so is
the clipped one. Adam moves the parameters by -lr mu_hat / D, mu the moving
average of c g and D = sqrt(nu_hat) + eps. Where the gradient's statistics
change slowly over the ~10 iterations mu averages (momentum only delays),
the expected step is -lr E[c g] / D: one part per loss term. To first order
a step changes the expected mean |m(t)| E|m| by grad E|m| . step, so

    drift_k = grad E|m| . (-lr E[c g_k] / D)          per iteration

is term k's share of how fast |m| grows (> 0) or shrinks (< 0): which term
pushes m towards saturation (|m| -> 1, a constant plasticity rate) and which
holds it back. It is a one-step, first-order quantity ("per 1000 iterations"
in the results scripts is the same number times 1000).

grad E|m| counts both ways a parameter change moves |m|: directly, on the
same observations (pathwise), and through the policy's changed actions, which
change the later inputs (the score-function term: |m_t| times the gradient of
log pi of the episode's actions before t, less the other episodes' mean |m_t|);
the pathwise part alone is reported too. The expectations are estimated from
`--batches` N fresh batches of episodes: grad E|m| of one batch dotted with
the step of another (all N (N - 1) ordered pairs, which makes the product of
two means unbiased), with a jackknife standard error over the batches. D is
the checkpoint's (its Adam nu), or where Adam has not stepped yet (`--init`,
or a checkpoint inside the burn-in) the steady value sqrt(E[(c g)^2]) + eps
of that baseline's loss. The drift is computed for the run's A2C baseline
and, for the same agent (and checkpoint D), for the other one (`batch0`: the
reference's V of batch element 0 for every episode; `own`: each episode's V),
and their difference on the same batches (own - batch0, with its own s.e.),
and split into the modulator's parameters (`mod_kernel`, `mod_bias`: m reads
them directly) and the rest (input, w, alpha, eta and, where present, the
fan-out: they move |m| through h_t; the heads do not move |m| at all).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from train import a2c_learner, a2c_train, sweep
from train import flags as flags_lib
from train.a2c_config import BASELINES, A2CConfig

TERMS = ("policy", "concentration", "value")
GRADIENTS = ("m_abs", "m_abs_pathwise") + tuple(f"{b}/{t}" for b in BASELINES for t in TERMS)
WHERE = ("modulator", "rest", "all")
MODULATOR_PARAMS = ("mod_kernel", "mod_bias")
DIFFERENCE = "own-batch0"  # The drift's key prefix of own minus batch0, paired.
ADAM_B2 = 0.999  # optax.adam's default, as make_optimizer uses it.


def modulation_surrogate(m_abs: jax.Array, log_prob: jax.Array) -> jax.Array:
  """A scalar whose gradient is that of the expected mean |m| of the batch.

  Args:
    m_abs: [T, B] |m_t| of every episode (mean over modulators).
    log_prob: [T, B] log pi(a_t) of the actions taken.

  Returns:
    [] mean_tb |m_tb| + mean_tb sg(|m_tb| - c_tb) sum_{s<t} log pi(a_sb), with
    c_tb the mean of |m_t| over the other episodes (a leave-one-out baseline):
    the pathwise gradient plus the score-function one (m_t depends on the
    actions before t through the inputs), with the value of mean |m|.
  """
  batch = m_abs.shape[1]
  others = (jnp.sum(m_abs, axis=1, keepdims=True) - m_abs) / max(batch - 1, 1)
  before = jnp.cumsum(log_prob, axis=0) - log_prob  # sum_{s<t} log pi(a_s)
  score = jnp.mean(jax.lax.stop_gradient(m_abs - others) * before)
  return jnp.mean(m_abs) + score - jax.lax.stop_gradient(score)


def loss_term_values(trajectory: a2c_learner.Trajectory, hparams: Any, entropy_kind: str) -> dict:
  """{name: scalar} of one batch, for every name in GRADIENTS.

  "<baseline>/<term>": the weighted loss term (`policy`, `concentration`:
  entropy_coef times the penalty, `value`: value_coef times the value loss),
  summing to the run's loss (`train.a2c_loss.a2c_loss`); "m_abs": mean |m(t)|
  with the gradient of its expectation (`modulation_surrogate`);
  "m_abs_pathwise": mean |m(t)| on these episodes' observations and actions.
  """
  values = {}
  for baseline in BASELINES:
    terms = a2c_learner.loss_terms(trajectory, hparams, entropy_kind, baseline)
    values[f"{baseline}/policy"] = terms.policy_loss
    values[f"{baseline}/concentration"] = terms.entropy_loss
    values[f"{baseline}/value"] = hparams.value_coef * terms.value_loss
  m_abs = jnp.mean(jnp.abs(trajectory.modulation), axis=-1)  # [T, B]
  values["m_abs"] = modulation_surrogate(m_abs, trajectory.log_prob)
  values["m_abs_pathwise"] = jnp.mean(m_abs)
  return values


@functools.lru_cache(maxsize=8)
def make_gradients(spec: a2c_learner.A2CSpec):
  """jit(f)(params, key, hparams) -> {name: (value, flat gradient [P])} of one fresh batch.

  One compiled function per spec (`make_spec` gives one spec per static
  config). The episodes are those `train.a2c_learner.loss` differentiates
  (`differentiable_rollout`); one forward pass, one backward pass per name.
  Gradients are flattened with `jax.flatten_util.ravel_pytree(params)`.
  """

  def gradients(params, key, hparams):
    values, vjp = jax.vjp(
      lambda p: loss_term_values(
        a2c_learner.differentiable_rollout(spec, p, key, hparams), hparams, spec.config.entropy_kind
      ),
      params,
    )
    out = {}
    for name in GRADIENTS:
      cotangent = {k: jnp.asarray(k == name, v.dtype) for k, v in values.items()}
      out[name] = (values[name], ravel_pytree(vjp(cotangent)[0])[0])
    return out

  return jax.jit(gradients)


def adam_state(opt_state: Any) -> optax.ScaleByAdamState:
  """The ScaleByAdamState inside a `make_optimizer` state."""
  (adam,) = [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
    if isinstance(s, optax.ScaleByAdamState)
  ]
  return adam


def adam_denominator(opt_state: Any, adam_eps: float) -> Optional[Any]:
  """D = sqrt(nu_hat) + eps of the Adam state in `opt_state`; None before its first step."""
  adam = adam_state(opt_state)
  count = int(adam.count)
  if count == 0:
    return None
  return jax.tree.map(lambda n: np.sqrt(n / (1 - ADAM_B2**count)) + adam_eps, adam.nu)


def modulator_mask(params: Any) -> Any:
  """True on the modulator's parameters (`mod_kernel`, `mod_bias`)."""

  def is_modulator(path, _):
    return str(getattr(path[-1], "key", "")) in MODULATOR_PARAMS

  return jax.tree_util.tree_map_with_path(is_modulator, params)


def pair_estimate(grad_m: np.ndarray, steps: np.ndarray) -> tuple[float, float]:
  """grad E|m| . E[step] from N batches: the mean over ordered pairs of distinct batches.

  Args:
    grad_m: [N, P] grad |m| of each batch.
    steps: [N, P] the step part of each batch.

  Returns:
    (estimate, jackknife standard error over the batches).
  """
  n = len(grad_m)
  if n < 3:
    raise ValueError(f"{n} batches: need at least 3 for the pair estimate's standard error.")
  a = np.asarray(grad_m, np.float64) @ np.asarray(steps, np.float64).T  # [b', b]
  off = a.sum() - np.trace(a)
  estimate = off / (n * (n - 1))
  without = (off - (a.sum(0) + a.sum(1) - 2 * np.diag(a))) / ((n - 1) * (n - 2))
  sem = np.sqrt((n - 1) / n * np.sum((without - without.mean()) ** 2))
  return float(estimate), float(sem)


def load(
  workdir: str, seed_index: int = 0, step: Optional[int] = None, at_init: bool = False
) -> tuple[A2CConfig, Any, Any, Any, int]:
  """(config, params, opt_state, hparams, iteration) of one agent of a run.

  `at_init`: the agent's initial parameters and Adam state (what the run
  started from, `train.a2c_train.init_state`), iteration 0.
  """
  config = a2c_train.load_config(workdir)
  if not 0 <= seed_index < config.num_seeds:
    raise ValueError(
      f"seed_index={seed_index} is out of range: {workdir} holds {config.num_seeds} agent(s)."
    )
  if not config.plasticity.is_modulated:
    raise ValueError(
      f"{workdir} trains network={config.network!r}, which has no modulation m(t) to "
      "attribute; use a modplast or retromod run."
    )
  if at_init:
    state, iteration = a2c_train.init_state(config), 0
  else:
    config, state, iteration = a2c_train.restore_state(workdir, config, step)
  agent = jax.tree.map(lambda x: x[seed_index], (state.params, state.opt_state))
  hparams = sweep.agent_hparams(config, workdir, seed_index)
  return config, agent[0], agent[1], hparams, iteration


def attribute_workdir(
  workdir: str,
  seed_index: int = 0,
  step: Optional[int] = None,
  at_init: bool = False,
  batches: int = 20,
  seed: int = 0,
) -> dict[str, Any]:
  """Every loss term's drift of mean |m| per iteration (estimate, s.e.; JSON-ready)."""
  if batches < 3:
    raise ValueError(f"batches={batches}: need at least 3 for a standard error.")
  config, params, opt_state, hparams, iteration = load(workdir, seed_index, step, at_init)
  if config.batch_groups != 1:
    raise ValueError(
      f"{workdir} trains with batch_groups={config.batch_groups}; train.attribute "
      "attributes one batch per step (batch_groups=1) only."
    )
  gradients = make_gradients(a2c_learner.make_spec(config))
  rows = [
    jax.device_get(gradients(params, key, hparams))
    for key in jax.random.split(jax.random.key(seed), batches)
  ]
  flat = {name: np.stack([r[name][1] for r in rows]) for name in GRADIENTS}  # [N, P]
  mask = ravel_pytree(
    jax.tree.map(lambda m, x: np.full(np.shape(x), m), modulator_mask(params), params)
  )[0]
  select = {"modulator": mask.astype(bool), "rest": ~mask.astype(bool)}
  select["all"] = np.ones_like(select["rest"])
  lr = float(hparams.learning_rate)
  checkpoint_denom = None if at_init else adam_denominator(opt_state, float(hparams.adam_eps))
  drift, pathwise, norms, denominators, clipped, steps = {}, {}, {}, {}, {}, {}
  for baseline in BASELINES:
    total = sum(flat[f"{baseline}/{t}"] for t in TERMS)  # [N, P]
    scale = np.minimum(1.0, float(hparams.grad_clip_norm) / np.linalg.norm(total, axis=1))
    clipped[baseline] = int(np.sum(scale < 1))
    if checkpoint_denom is None:
      denom = np.sqrt(np.mean((scale[:, None] * total) ** 2, axis=0)) + float(hparams.adam_eps)
      denominators[baseline] = "steady: sqrt(E[(c g)^2]) + eps over the batches"
    else:
      denom = ravel_pytree(checkpoint_denom)[0]
      denominators[baseline] = (
        f"the checkpoint's Adam nu (count {int(adam_state(opt_state).count)})"
      )
    parts = {t: -lr * scale[:, None] * flat[f"{baseline}/{t}"] / denom for t in TERMS}
    parts["total"] = sum(parts.values())
    steps[baseline] = parts
    for part, step_part in parts.items():
      for where, keep in select.items():
        for out, name in ((drift, "m_abs"), (pathwise, "m_abs_pathwise")):
          estimate, sem = pair_estimate(flat[name] * keep, step_part)
          out[f"{baseline}/{part}/{where}"] = {"mean": estimate, "sem": sem}
    for term in TERMS:
      norms[f"{baseline}/{term}"] = float(
        np.mean(np.linalg.norm(flat[f"{baseline}/{term}"], axis=1))
      )
  # own - batch0, paired on the same batches (its own s.e.).
  for part in steps["own"]:
    estimate, sem = pair_estimate(flat["m_abs"], steps["own"][part] - steps["batch0"][part])
    drift[f"{DIFFERENCE}/{part}/all"] = {"mean": estimate, "sem": sem}
  return {
    "workdir": workdir,
    "seed_index": seed_index,
    "agent_seed": config.seed + seed_index,  # Its key: jax.random.key(agent_seed).
    "iteration": iteration,
    "at_init": at_init,
    "env": config.env,
    "network": config.network,
    "run_baseline": config.baseline,
    "learning_rate": lr,
    "batches": batches,
    "episodes_per_batch": config.batch_size,
    "m_abs": float(np.mean([r["m_abs"][0] for r in rows])),
    "denominator": denominators,
    "clipped_batches": clipped,
    "drift": drift,
    "drift_pathwise": pathwise,
    "grad_norm": norms,
  }


def format_table(result: dict[str, Any]) -> str:
  """The drifts as text, in units of 1e-6 |m| per iteration."""
  when = "initialisation" if result["at_init"] else f"iteration {result['iteration']}"
  lines = [
    f"{result['workdir']} agent {result['seed_index']} at {when} "
    f"(run baseline {result['run_baseline']}); mean |m| {result['m_abs']:.3f}; "
    f"{result['batches']} batches of {result['episodes_per_batch']} episodes.",
    "Drift of mean |m(t)| per iteration caused by each loss term, 1e-6 (estimate +- s.e.):",
    f"{'baseline':<10}{'term':<15}"
    + "".join(f"{w:>21}" for w in WHERE)
    + f"{'all, pathwise':>21}{'|g|':>9}",
  ]

  def cell(entry):
    return f"{1e6 * entry['mean']:+10.3f} +- {1e6 * entry['sem']:7.3f}"

  for baseline in BASELINES:
    tag = baseline if baseline == result["run_baseline"] else f"{baseline}*"
    for part in (*TERMS, "total"):
      cells = [cell(result["drift"][f"{baseline}/{part}/{w}"]) for w in WHERE]
      cells.append(cell(result["drift_pathwise"][f"{baseline}/{part}/all"]))
      norm = result["grad_norm"].get(f"{baseline}/{part}")
      lines.append(
        f"{tag:<10}{part:<15}"
        + "".join(f"{c:>21}" for c in cells)
        + (f"{norm:>9.4f}" if norm else "")
      )
  cells = [
    f"{part} {cell(result['drift'][f'{DIFFERENCE}/{part}/all'])}" for part in (*TERMS, "total")
  ]
  lines.append(f"own - batch0 (all, same batches): {'; '.join(cells)}")
  for baseline in BASELINES:
    lines.append(
      f"{baseline}: D = {result['denominator'][baseline]}; "
      f"{result['clipped_batches'][baseline]} of {result['batches']} batches clipped."
    )
  lines.append("* the other baseline than the run's: the same agent, that baseline's loss.")
  return "\n".join(lines)


def _main(fv) -> None:
  from absl import app  # pylint: disable=g-import-not-at-top

  if fv.init and fv.step is not None:
    raise app.UsageError("--init and --step exclude each other (--init: before any step).")
  result = attribute_workdir(fv.workdir, fv.seed_index, fv.step, fv.init, fv.batches, fv.seed)
  print(format_table(result))
  if fv.json_out:
    with open(fv.json_out, "w") as f:
      f.write(json.dumps(result, indent=2) + "\n")


def main(argv):
  flags_lib.run_tool(argv, _main)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdir", None, "A train.a2c workdir (modplast or retromod).", required=True)
  flags.DEFINE_integer("seed_index", 0, "Which agent of the run.", lower_bound=0)
  flags.DEFINE_integer("step", None, "Checkpoint iteration (default: the latest).")
  flags.DEFINE_bool("init", False, "The run's agent as initialised (before any step).")
  flags.DEFINE_integer("batches", 20, "Fresh batches of episodes to average over.", lower_bound=3)
  flags.DEFINE_integer("seed", 0, "Seed of the fresh batches.")
  flags.DEFINE_string("json_out", "", "Also write the result as JSON here.")
  app.run(main)
