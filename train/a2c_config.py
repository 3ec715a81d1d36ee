"""Configuration of A2C meta-training (SPEC.md §5.1-5.3) and per-env paper defaults.

One frozen `A2CConfig` describes a whole run. Every field is also a flag of
`python -m train.a2c` (same name). Fields that change shapes or the graph
(sizes, network variant, env) are static; the numbers a sweep varies
(learning rate, coefficients, clip value) are copied into the traced
`A2CHParams` pytree by `A2CConfig.hparams()`, so `train(key, hparams)` can be
`jax.vmap`ped over them. The plasticity fields are those of
`bpm_jax.config.PlasticityConfig` (derived, not re-declared).

    config = a2c_defaults("CueReward-v0", network="rnn", iterations=100)
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Optional

import flax.struct
import jax.numpy as jnp

import envs
from bpm_jax import config as plasticity_config
from bpm_jax import fused_step
from bpm_jax.config import PlasticityConfig
from train.config_base import ConfigMixin, derived_fields, field, run_fields
from train.validate import check_choice, check_fields, check_float

EntropyKind = Literal["concentration", "entropy"]
Baseline = Literal["batch0", "own"]
StepImpl = Literal["auto", "reference", "fast", "fused"]

ENTROPY_KINDS: tuple[str, ...] = typing.get_args(EntropyKind)
BASELINES: tuple[str, ...] = typing.get_args(Baseline)
STEP_IMPLS: tuple[str, ...] = typing.get_args(StepImpl)
ENV_IDS: tuple[str, ...] = envs.registered_envs

# The allowed values of each choice field.
CHOICES: dict[str, tuple[str, ...]] = dict(
  plasticity_config.CHOICES,
  env=ENV_IDS,
  entropy_kind=ENTROPY_KINDS,
  baseline=BASELINES,
  step_impl=STEP_IMPLS,
)

# Fields that only steer the run (how long, how it logs, saves and compiles,
# which implementation of the same numbers it uses); they may differ between
# a run and its `--resume`. All other fields must match.
RUN_CONTROL_FIELDS = (
  "iterations",
  "chunk_size",
  "checkpoint_every",
  "keep_checkpoints",
  "resume",
  "overwrite",
  "progress",
  "fast_compile",
  "step_impl",
  "stop_on_nan",
)


@flax.struct.dataclass
class A2CHParams:
  """The traced (vmappable) numbers of an A2C run; every leaf is a [] float32.

  Attributes:
    learning_rate: Adam step size.
    adam_eps: Adam epsilon.
    grad_clip_norm: global gradient-norm clip.
    discount: gamma of R_t = r_t + gamma R_{t+1}.
    value_coef: weight of the value loss.
    entropy_coef: weight of the concentration penalty (or entropy bonus).
    clip_value: bound c of the Hebbian trace.
  """

  learning_rate: Any
  adam_eps: Any
  grad_clip_norm: Any
  discount: Any
  value_coef: Any
  entropy_coef: Any
  clip_value: Any


HPARAM_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(A2CHParams))


def resolve_step_impl(config: "A2CConfig") -> str:
  """The implementation a run uses: `step_impl`, with `auto` made concrete.

  `auto` is `fused` if the C++ kernels cover the config and build on this
  (CPU) backend, else `fast`. Called when the learner is built (it may probe
  for g++ and build the kernels), never when a config is constructed; all
  implementations compute the same numbers.
  """
  if config.step_impl != "auto":
    return config.step_impl
  plasticity = config.plasticity
  if (
    plasticity.is_plastic
    and fused_step.unsupported_reason(plasticity) is None
    and fused_step.available()
  ):
    return "fused"
  return "fast"


_PlasticFields = derived_fields("_PlasticFields", PlasticityConfig)
_RunFields = run_fields(
  "_RunFields",
  "agent",
  "Iterations",
  chunk_size=10,
  keep_checkpoints=3,
  resume_help="Continue from the latest checkpoint in the workdir.",
)


@dataclasses.dataclass(frozen=True)
class A2CConfig(ConfigMixin, _RunFields, _PlasticFields):
  """A2C meta-training run (SPEC.md §5.3). Defaults: cue-reward task, `modplast`.

  The fields network ... eta_kind come from `PlasticityConfig`. Use
  `a2c_defaults(env, ...)` to get the paper settings of another env.
  """

  # --- Task.
  env: str = field("CueReward-v0", "Environment id (see `envs.make`).")
  episode_length: int = field(
    120, "T, steps per episode (the env's max_steps_in_episode); one episode per iteration."
  )
  maze_size: int = field(9, "GridMaze only: odd side length (papers 9, reference README 13).")
  env_reward: Optional[float] = field(
    None, "Reward magnitude of the task (maze 10); None: the env's default."
  )
  # --- Network (SPEC.md §3.4; the plasticity variant fields are derived).
  hidden_size: int = field(200, "H, recurrent neurons.")
  eta_init: float = field(0.1, "Initial eta: Hebbian rate (plastic) / eligibility rate (retromod).")
  init_scale: float = field(0.01, "W, alpha ~ U(0, init_scale).")
  clip_value: float = field(1.0, "Hebbian trace bound c (traced hparam).")
  step_impl: str = field(
    "auto",
    "Plastic step: fused (C++ CPU kernels for the papers' "
    "configurations: alpha full, rule clip, one tanh modulator; equal to "
    "float32 rounding; ~2-3x faster than fast) | fast (custom VJP: same "
    "numbers as reference, less memory) | reference (plain autodiff) | auto "
    "(fused where it applies and builds, i.e. on CPU, else fast; resolved "
    "when the run starts and recorded in config.json). Run control: a resumed "
    "run may use another, and re-resolves auto.",
  )
  # --- A2C and optimiser (SPEC.md §5.3; the floats are traced, see A2CHParams).
  batch_size: int = field(30, "B, episodes per iteration.")
  learning_rate: float = field(1e-4, "Adam step size.")
  adam_eps: float = field(1e-6, "Adam epsilon.")
  grad_clip_norm: float = field(2.0, "Global gradient-norm clip.")
  discount: float = field(0.9, "gamma in R_t = r_t + gamma R_{t+1}.")
  value_coef: float = field(0.1, "Weight of the value loss.")
  entropy_coef: float = field(0.1, "Weight of the concentration penalty (or of the entropy bonus).")
  entropy_kind: str = field(
    "concentration", "concentration: +coef sum_a pi(a)^2 (reference); entropy: -coef H(pi)."
  )
  baseline: str = field(
    "batch0",
    "A2C baseline (SPEC.md §5.3): batch0 (the reference code: every "
    "episode's advantage uses V_t of batch element 0; cue-reward learns with "
    "it) | own (each episode's own V_t).",
  )
  burn_in: int = field(
    101, "First iterations compute but do not apply gradients (the reference: 101; 0: off)."
  )
  remat: bool = field(False, "Recompute the rollout step in the backward pass (jax.checkpoint).")
  batch_groups: int = field(
    1,
    "G: roll out and backpropagate the B episodes as G sequential groups of "
    "B/G (gradients averaged; same loss). Smaller [B/G, H, H] traces stay in the "
    "CPU cache: faster plastic networks on CPU. G > 1 draws other random numbers "
    "than G = 1; with baseline=batch0 each group uses its own element 0.",
  )
  # --- Run control.
  # (and seed, num_seeds, chunk_size, keep_checkpoints, resume, overwrite, progress).
  iterations: int = field(1000, "Training iterations (one batch of episodes each).")
  checkpoint_every: int = field(100, "Iterations between checkpoints.")
  fast_compile: bool = field(
    False,
    "Compile with XLA backend optimisation level 0: about half the "
    "compile time, slower steps. For tiny runs, tests and CI.",
  )
  stop_on_nan: bool = field(
    False,
    "With several agents (seeds, sweeps): stop at the first NaN/inf of any agent. Default: "
    "freeze the diverged agents at their last finite parameters and train the rest "
    "(a run with one agent always stops).",
  )

  def __post_init__(self):
    check_fields(
      self,
      CHOICES,
      {
        1: (
          "episode_length",
          "hidden_size",
          "num_modulators",
          "batch_size",
          "iterations",
          "num_seeds",
          "chunk_size",
          "checkpoint_every",
          "keep_checkpoints",
          "batch_groups",
        ),
        0: ("burn_in", "seed"),
      },
      positive=("learning_rate", "adam_eps", "grad_clip_norm", "clip_value", "init_scale"),
      nonnegative=("value_coef", "entropy_coef", "eta_init", "discount"),
    )
    if self.batch_size % self.batch_groups:
      raise ValueError(
        f"batch_groups={self.batch_groups} must divide batch_size="
        f"{self.batch_size}: each group rolls out batch_size / "
        "batch_groups episodes."
      )
    if self.maze_size < 5 or self.maze_size % 2 == 0 or isinstance(self.maze_size, bool):
      raise ValueError(
        f"maze_size={self.maze_size!r} is invalid: it must be an odd "
        "integer >= 5 (papers: 9, reference README: 13)."
      )
    if self.discount > 1.0:
      raise ValueError(f"discount={self.discount!r} is invalid: it must be in [0, 1].")
    if self.env_reward is not None:
      check_float("env_reward", self.env_reward, positive=False)
    plasticity = self.plasticity  # PlasticityConfig's own cross-field checks.
    if self.step_impl == "fused" and plasticity.is_plastic:
      try:  # Pure Python: what the kernels cover (no toolchain probe).
        fused_step.check_supported(plasticity)
      except ValueError as e:
        raise ValueError(f"--step_impl=fused: {e}") from None

  @property
  def plasticity(self) -> PlasticityConfig:
    """The static plasticity variant of the agent's recurrent layer."""
    return self.library_config(PlasticityConfig)

  def hparams(self) -> A2CHParams:
    """The traced numbers of this config as [] float32 arrays."""
    return A2CHParams(**{name: jnp.float32(getattr(self, name)) for name in HPARAM_FIELDS})

  def env_kwargs(self) -> dict[str, Any]:
    """Keyword arguments of `envs.make(self.env, **kwargs)`."""
    kwargs: dict[str, Any] = {"max_steps_in_episode": self.episode_length}
    if self.env == "GridMaze-v0":
      kwargs["maze_size"] = self.maze_size
    if self.env_reward is not None:
      kwargs["reward"] = self.env_reward
    return kwargs


# What a config.json written before a field existed ran with: `baseline`
# arrived (default batch0) after runs that used each episode's own V_t;
# `eta_kind` was not a field (always scalar).
A2CConfig.SAVED_BEFORE_FIELD_EXISTED = {"baseline": "own", "eta_kind": "scalar"}

# Paper / reference settings per environment (SPEC.md §5.1, §5.2).
_CUE_REWARD = dict(
  episode_length=120,
  hidden_size=200,
  batch_size=30,
  learning_rate=1e-4,
  adam_eps=1e-6,
  grad_clip_norm=2.0,
  discount=0.9,
  value_coef=0.1,
  entropy_coef=0.1,
  clip_value=1.0,
  eta_init=0.1,
  init_scale=0.01,
)

PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
  "CueReward-v0": dict(_CUE_REWARD),
  "CueRewardFixedCues-v0": dict(_CUE_REWARD),
  "GridMaze-v0": dict(
    episode_length=200,
    hidden_size=100,
    maze_size=9,
    env_reward=10.0,
    batch_size=30,
    learning_rate=1e-4,
    adam_eps=1e-4,
    grad_clip_norm=4.0,
    discount=0.9,
    value_coef=0.1,
    entropy_coef=0.03,
    clip_value=1.0,
    eta_init=0.01,
    init_scale=0.01,
  ),
}


def paper_defaults(env: str, network: str = "modplast") -> dict[str, Any]:
  """The paper settings of `env` for `network` (a dict of A2CConfig fields)."""
  check_choice("env", env, ENV_IDS)
  defaults = dict(PAPER_DEFAULTS[env], env=env, network=network)
  if env == "GridMaze-v0" and network == "plastic":
    defaults["eta_init"] = 0.1  # SPEC.md §3.4: the plain Hebbian eta starts at 0.1.
  return defaults


def a2c_defaults(env: str = "CueReward-v0", **overrides: Any) -> A2CConfig:
  """`A2CConfig` with the paper defaults of `env`, then `overrides` applied."""
  network = overrides.get("network", "modplast")
  values = paper_defaults(env, network)
  values.update(overrides)
  return A2CConfig(**values)
