"""`make(env_id, **kwargs) -> (env, env_params)` for the bpm-jax environments.

The same ids are registered with gymnax, so `gymnax.make("GridMaze-v0")` works
too (gymnax's `make` only forwards constructor arguments and returns the
default params; `envs.make` also sets `EnvParams` fields and validates them).
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import gymnax
from gymnax.environments import environment

from envs.cue_reward import CueReward
from envs.grid_maze import GridMaze
from envs.image_completion import ImageCompletion
from envs.omniglot import Omniglot, SyntheticGlyphs
from envs.pattern_completion import PatternCompletion


@dataclasses.dataclass(frozen=True)
class EnvSpec:
  """An environment class plus the constructor arguments an id fixes."""

  env_class: type
  fixed_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

  def factory(self) -> Callable[..., environment.Environment]:
    return functools.partial(self.env_class, **self.fixed_kwargs)

  def constructor_args(self) -> list[str]:
    names = inspect.signature(self.env_class.__init__).parameters
    return [name for name in names if name != "self" and name not in self.fixed_kwargs]


_SPECS: dict[str, EnvSpec] = {
  "CueReward-v0": EnvSpec(CueReward),
  "CueRewardFixedCues-v0": EnvSpec(CueReward, {"n_cues": 4, "cue_bits": 4, "fixed_cues": True}),
  "GridMaze-v0": EnvSpec(GridMaze),
}

# Supervised episodic tasks (SPEC §5.4-5.6): `sample_episode(key, params)`, no `step`.
_TASK_SPECS: dict[str, EnvSpec] = {
  "PatternCompletion-v0": EnvSpec(PatternCompletion),
  "ImageCompletion-v0": EnvSpec(ImageCompletion),
  "Omniglot-v0": EnvSpec(Omniglot),
  "SyntheticGlyphs-v0": EnvSpec(SyntheticGlyphs),  # Generated glyphs, not Omniglot.
}

registered_envs: tuple[str, ...] = tuple(_SPECS)
registered_tasks: tuple[str, ...] = tuple(_TASK_SPECS)


def task_class(task_id: str) -> type:
  """The class of a registered episodic task (nothing is built or loaded)."""
  if task_id not in _TASK_SPECS:
    raise ValueError(f"Unknown task id {task_id!r}; known ids: {', '.join(_TASK_SPECS)}.")
  return _TASK_SPECS[task_id].env_class


def make(env_id: str, **kwargs: Any) -> tuple[environment.Environment, Any]:
  """Builds an environment and its validated params.

  Args:
    env_id: one of `registered_envs` (gymnax environments) or
      `registered_tasks` (episodic tasks with `sample_episode`).
    **kwargs: constructor arguments (shape-changing, e.g. `maze_size`,
      `n_cues`) and/or `EnvParams` fields (e.g. `max_steps_in_episode`,
      `reward`); each keyword goes where its name belongs.

  Returns:
    `(env, env_params)`.

  Raises:
    ValueError: unknown id, unknown keyword or invalid value.
  """
  specs = {**_SPECS, **_TASK_SPECS}
  if env_id not in specs:
    raise ValueError(f"Unknown env_id {env_id!r}; known ids: {', '.join(specs)}.")
  spec = specs[env_id]
  constructor_args = spec.constructor_args()
  env_kwargs = {k: v for k, v in kwargs.items() if k in constructor_args}
  env = spec.factory()(**env_kwargs)
  param_fields = [field.name for field in dataclasses.fields(env.default_params)]
  unknown = sorted(set(kwargs) - set(constructor_args) - set(param_fields))
  if unknown:
    raise ValueError(
      f"Unknown keyword(s) {unknown} for {env_id!r}; constructor arguments: "
      f"{constructor_args}; EnvParams fields: {param_fields}"
      + (f"; fixed by this id: {spec.fixed_kwargs}." if spec.fixed_kwargs else ".")
    )
  param_kwargs = {k: v for k, v in kwargs.items() if k in param_fields}
  params = env.default_params.replace(**param_kwargs)
  return env, env.validate_params(params)


def _register_with_gymnax() -> None:
  for env_id, spec in _SPECS.items():
    if env_id not in gymnax.registered_envs:
      gymnax.register(env_id, spec.factory())


_register_with_gymnax()
