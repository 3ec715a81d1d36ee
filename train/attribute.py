r"""Which A2C loss term moves the modulation: the drift of mean |m(t)| split by loss term.

    python -m train.attribute --workdir=DIR [--step=S] [--seed_index=K] [--batches=20]
    python -m train.attribute --workdir=DIR --init     # the run's agent before training

The A2C loss is a sum of terms, L = policy + concentration + value (SPEC
§5.3, weights included), so its gradient is g = sum_k g_k. Adam moves the
parameters by -lr mu_hat / D, with mu the moving average of g and
D = sqrt(nu_hat) + eps fixed by the second moments; averaged over batches of
episodes the step is -lr E[g] / D, i.e. one part per loss term. To first
order a step changes the expected mean |m(t)| by grad E|m| . step, so

    drift_k = grad E|m| . (-lr E[g_k] / D)         per iteration

is loss term k's share of how fast |m| grows (> 0) or shrinks (< 0): which
term pushes m towards saturation (|m| -> 1, a constant plasticity rate) and
which holds it back. grad E|m| and E[g_k] are means over `--batches` fresh
batches of episodes (the observations and actions held fixed, the outputs
replayed as a function of the parameters); the standard error is over the
batches' g_k. D is the checkpoint's (its Adam nu), or with `--init` (nu = 0:
Adam's first steps are sign steps) the steady value sqrt(E[g^2]) + eps over
the batches. The shares are computed for the run's A2C baseline and, with the
same agent and D, for the other one (`batch0`: the reference's V of batch
element 0 for every episode; `own`: each episode's V), and split into the
modulator's own parameters (`mod_*`) and the rest (which move |m| through h).
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train import a2c_learner, a2c_train, sweep
from train import run as run_lib
from train.a2c_config import BASELINES, A2CConfig
from train.a2c_loss import a2c_loss, regulariser

TERMS = ("policy", "concentration", "value")
MODULATOR_PREFIX = "mod_"
ADAM_B2 = 0.999  # optax.adam's default, as make_optimizer uses it.


def loss_term_values(
  spec: a2c_learner.A2CSpec, trajectory: a2c_learner.Trajectory, hparams: Any
) -> dict[str, Any]:
  """{"<baseline>/<term>": weighted loss term, "m_abs": mean |m(t)|} of one batch.

  The weighted terms sum to the run's loss for either baseline: `policy`,
  `concentration` (entropy_coef times the penalty) and `value` (value_coef
  times the value loss), as `train.a2c_loss.a2c_loss` computes them.
  """
  penalty = regulariser(trajectory, spec.config.entropy_kind)
  values = {}
  for baseline in BASELINES:
    terms = a2c_loss(
      trajectory.log_prob,
      trajectory.value,
      trajectory.reward,
      penalty,
      hparams.discount,
      hparams.value_coef,
      hparams.entropy_coef,
      baseline,
    )
    values[f"{baseline}/policy"] = terms.policy_loss
    values[f"{baseline}/concentration"] = terms.entropy_loss
    values[f"{baseline}/value"] = hparams.value_coef * terms.value_loss
  values["m_abs"] = jnp.mean(jnp.abs(trajectory.modulation))
  return values


@functools.lru_cache(maxsize=8)
def make_gradients(spec: a2c_learner.A2CSpec):
  """jit(f)(params, key, hparams) -> {name: (value, gradient)} of one fresh batch.

  One compiled function per spec (`make_spec` gives one spec per static config).

  Names: "m_abs" and "<baseline>/<term>" (`loss_term_values`); one forward
  pass, one backward pass per name.
  """

  def gradients(params, key, hparams):
    trajectory = a2c_learner.rollout(
      spec,
      params,
      key,
      hparams,
      spec.config.batch_size,
      for_replay=a2c_learner.replays_rollout(spec),
    )
    values, vjp = jax.vjp(
      lambda p: loss_term_values(spec, a2c_learner.replay(spec, p, trajectory, hparams), hparams),
      params,
    )
    out = {}
    for name in values:
      cotangent = {k: jnp.asarray(k == name, v.dtype) for k, v in values.items()}
      out[name] = (values[name], vjp(cotangent)[0])
    return out

  return jax.jit(gradients)


def adam_denominator(opt_state: Any, adam_eps: float) -> Optional[Any]:
  """D = sqrt(nu_hat) + eps of the Adam state in `opt_state`; None before its first step."""
  (adam,) = [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
    if isinstance(s, optax.ScaleByAdamState)
  ]
  count = int(adam.count)
  if count == 0:
    return None
  return jax.tree.map(lambda n: np.sqrt(n / (1 - ADAM_B2**count)) + adam_eps, adam.nu)


def modulator_mask(params: Any) -> Any:
  """True on the modulator's own parameters (`mod_*` leaves)."""

  def is_modulator(path, _):
    return any(str(getattr(k, "key", "")).startswith(MODULATOR_PREFIX) for k in path)

  return jax.tree_util.tree_map_with_path(is_modulator, params)


def drift_shares(
  grad_m: Any, term_grads: list[Any], denom: Any, learning_rate: float, mask: Any
) -> dict[str, np.ndarray]:
  """Per batch, grad E|m| . (-lr g_k / D) on the modulator's parameters and the rest.

  Args:
    grad_m: the gradient of E|m| (pytree).
    term_grads: one gradient pytree of the term per batch.
    denom: D (pytree).
    learning_rate: lr.
    mask: `modulator_mask`.

  Returns:
    {"modulator": [batches], "rest": [batches], "all": their sum}.
  """
  out = {"modulator": [], "rest": []}
  for g in term_grads:
    dots = jax.tree.map(lambda a, b, d: -learning_rate * float(np.sum(a * b / d)), grad_m, g, denom)
    for where, select in (("modulator", True), ("rest", False)):
      out[where].append(
        sum(x for x, m in zip(jax.tree.leaves(dots), jax.tree.leaves(mask)) if m == select)
      )
  out = {k: np.asarray(v) for k, v in out.items()}
  return dict(out, all=out["modulator"] + out["rest"])


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


def _mean(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *x: np.mean(np.stack(x), axis=0), *trees)


def attribute_workdir(
  workdir: str,
  seed_index: int = 0,
  step: Optional[int] = None,
  at_init: bool = False,
  batches: int = 20,
  seed: int = 0,
) -> dict[str, Any]:
  """Every loss term's drift of mean |m| per iteration (mean, s.e. over batches; JSON-ready)."""
  if batches < 2:
    raise ValueError(f"batches={batches}: need at least 2 for a standard error.")
  config, params, opt_state, hparams, iteration = load(workdir, seed_index, step, at_init)
  gradients = make_gradients(a2c_learner.make_spec(config))
  rows = [
    jax.device_get(gradients(params, key, hparams))
    for key in jax.random.split(jax.random.key(seed), batches)
  ]
  grad_m = _mean([r["m_abs"][1] for r in rows])
  mask = modulator_mask(params)
  denom = adam_denominator(opt_state, float(hparams.adam_eps))
  shares, norms = {}, {}
  for baseline in BASELINES:
    grads = {term: [r[f"{baseline}/{term}"][1] for r in rows] for term in TERMS}
    if denom is None or at_init:  # Adam's steady D for this baseline's loss.
      totals = [jax.tree.map(lambda *g: sum(g), *gs) for gs in zip(*grads.values())]
      d = jax.tree.map(
        lambda *g: np.sqrt(np.mean(np.stack(g) ** 2, axis=0)) + float(hparams.adam_eps), *totals
      )
    else:
      d = denom
    per_batch = {
      term: drift_shares(grad_m, gs, d, float(hparams.learning_rate), mask)
      for term, gs in grads.items()
    }
    per_batch["total"] = {
      w: sum(per_batch[t][w] for t in TERMS) for w in ("modulator", "rest", "all")
    }
    for part, by_where in per_batch.items():
      for where, x in by_where.items():
        shares[f"{baseline}/{part}/{where}"] = {
          "mean": float(np.mean(x)),
          "sem": float(np.std(x, ddof=1) / np.sqrt(len(x))),
        }
    for term in TERMS:
      norms[f"{baseline}/{term}"] = float(np.mean([optax.tree.norm(g) for g in grads[term]]))
  return {
    "workdir": workdir,
    "seed_index": seed_index,
    "iteration": iteration,
    "at_init": at_init,
    "denominator": "steady sqrt(E[g^2]) over the batches" if at_init else "checkpoint Adam nu",
    "env": config.env,
    "network": config.network,
    "run_baseline": config.baseline,
    "learning_rate": float(hparams.learning_rate),
    "batches": batches,
    "episodes_per_batch": config.batch_size,
    "m_abs": float(np.mean([r["m_abs"][0] for r in rows])),
    "drift": shares,
    "grad_norm": norms,
  }


def format_table(result: dict[str, Any]) -> str:
  """The drifts as text, in units of 1e-6 |m| per iteration."""
  s = result["drift"]
  when = "initialisation" if result["at_init"] else f"iteration {result['iteration']}"
  lines = [
    f"{result['workdir']} agent {result['seed_index']} at {when} "
    f"(run baseline {result['run_baseline']}); mean |m| {result['m_abs']:.3f}; "
    f"{result['batches']} batches of {result['episodes_per_batch']} episodes; "
    f"D: {result['denominator']}.",
    "Drift of mean |m(t)| per iteration caused by each loss term, 1e-6 (mean +- s.e.):",
    f"{'baseline':<10}{'term':<15}{'modulator':>20}{'rest':>20}{'all':>20}{'|g|':>10}",
  ]
  for baseline in BASELINES:
    tag = baseline if baseline == result["run_baseline"] else f"{baseline}*"
    for part in (*TERMS, "total"):
      cells = [
        f"{1e6 * s[f'{baseline}/{part}/{w}']['mean']:+9.3f} +- "
        f"{1e6 * s[f'{baseline}/{part}/{w}']['sem']:7.3f}"
        for w in ("modulator", "rest", "all")
      ]
      norm = result["grad_norm"].get(f"{baseline}/{part}")
      lines.append(
        f"{tag:<10}{part:<15}"
        + "".join(f"{c:>20}" for c in cells)
        + (f"{norm:>10.4f}" if norm else "")
      )
  lines.append("* the other baseline: the same agent and D, that baseline's loss.")
  return "\n".join(lines)


def main(argv):
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  if not fv["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    result = attribute_workdir(fv.workdir, fv.seed_index, fv.step, fv.init, fv.batches, fv.seed)
  except run_lib.RUN_ERRORS + (OSError,) as e:
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(format_table(result))
  if fv.json_out:
    with open(fv.json_out, "w") as f:
      f.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdir", None, "A train.a2c workdir (modplast or retromod).", required=True)
  flags.DEFINE_integer("seed_index", 0, "Which agent of the run.", lower_bound=0)
  flags.DEFINE_integer("step", None, "Checkpoint iteration (default: the latest).")
  flags.DEFINE_bool("init", False, "The run's agent as initialised (before any step).")
  flags.DEFINE_integer("batches", 20, "Fresh batches of episodes to average over.", lower_bound=2)
  flags.DEFINE_integer("seed", 0, "Seed of the fresh batches.")
  flags.DEFINE_string("json_out", "", "Also write the result as JSON here.")
  app.run(main)
