"""What every trainer config shares: field help texts, derived fields, JSON.

A trainer config is a frozen dataclass; each field carries its flag help in
`metadata["help"]` (one absl flag per field, `train.flags.define_config_flags`).
Fields that configure a library object (`bpm_jax.config.PlasticityConfig`,
`bpm_jax.lm.LMConfig`) are not re-declared by hand: `derived_fields` copies
them, defaults and help included, into a base class the trainer config
inherits, so none can go missing:

    _PlasticFields = derived_fields("_PlasticFields", PlasticityConfig)

    @dataclasses.dataclass(frozen=True)
    class A2CConfig(ConfigMixin, _PlasticFields):
      env: str = field("CueReward-v0", "Environment id.")
      ...
      plasticity = property(lambda self: self.library_config(PlasticityConfig))
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Mapping, Optional, Sequence


def field(default: Any, help_text: str) -> Any:
  """A config field with its flag help text (`metadata["help"]`)."""
  return dataclasses.field(default=default, metadata={"help": help_text})


def derived_fields(
  name: str,
  source: type,
  exclude: Sequence[str] = (),
  defaults: Optional[Mapping[str, Any]] = None,
  helps: Optional[Mapping[str, str]] = None,
) -> type:
  """A frozen dataclass with the fields of dataclass `source` (to inherit from).

  Args:
    name: the new class's name.
    source: a dataclass whose fields carry `metadata["help"]`.
    exclude: fields not to copy (e.g. sizes that come from the data).
    defaults, helps: per-field replacements of the default / the help text.
  """
  defaults, helps = dict(defaults or {}), dict(helps or {})
  unknown = sorted(
    (set(defaults) | set(helps) | set(exclude)) - {f.name for f in dataclasses.fields(source)}
  )
  if unknown:
    raise TypeError(f"{source.__name__} has no field(s) {unknown}.")
  spec = []
  for f in dataclasses.fields(source):
    if f.name in exclude:
      continue
    default = defaults.get(f.name, f.default)
    if default is dataclasses.MISSING:
      raise TypeError(
        f"{source.__name__}.{f.name} has no default: give one in `defaults` or `exclude` it."
      )
    help_text = helps.get(f.name, f.metadata.get("help", ""))
    spec.append((f.name, f.type, field(default, help_text)))
  return dataclasses.make_dataclass(name, spec, frozen=True)


class ConfigMixin:
  """replace / to_dict / JSON for a frozen config dataclass.

  `SAVED_BEFORE_FIELD_EXISTED`: for fields added after runs were saved, the
  value those runs used; `from_json` fills them in, so an old config.json
  resumes with the settings it was trained with, not today's defaults.
  """

  SAVED_BEFORE_FIELD_EXISTED: ClassVar[dict[str, Any]] = {}

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  def library_config(self, cls: type, **extra: Any) -> Any:
    """`cls(**fields of self that cls has, **extra)` (a derived library config)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(extra)
    return cls(**{n: getattr(self, n) for n in names if hasattr(self, n)}, **extra)

  @classmethod
  def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]):
    """The config of `values`; unknown names are an error that lists the known ones."""
    unknown = sorted(set(values) - cls.field_names())
    if unknown:
      raise ValueError(
        f"Unknown {cls.__name__} field(s) {unknown}; known: {sorted(cls.field_names())}."
      )
    return cls(**values)

  @classmethod
  def saved_settings(cls, values: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config's fields, with the ones it predates at the values it used."""
    return dict(cls.SAVED_BEFORE_FIELD_EXISTED, **values)

  @classmethod
  def from_json(cls, text: str):
    """A saved config (see `saved_settings`)."""
    return cls.from_dict(cls.saved_settings(json.loads(text)))


def run_fields(
  name: str, agent: str, chunk_unit: str, chunk_size: int, keep_checkpoints: int, resume_help: str
) -> type:
  """A frozen dataclass of the run-control fields every trainer has (to inherit).

  Args:
    name: the class name.
    agent: what one of `num_seeds` is ("agent", "model").
    chunk_unit: what `chunk_size` counts ("Iterations", "Minibatches").
    chunk_size, keep_checkpoints: the trainer's defaults.
    resume_help: the help text of `resume`.

  `resume` and `overwrite` are run control (`RUN_CONTROL_FIELDS`); a resumed
  run never inherits `overwrite` from config.json (`train.flags.NOT_RESUMED`).
  """
  spec = [
    ("seed", int, field(0, f"{agent.capitalize()} s of num_seeds uses jax.random.key(seed + s).")),
    ("num_seeds", int, field(1, f"S, independent {agent}s trained in one vmapped program.")),
    ("chunk_size", int, field(chunk_size, f"{chunk_unit} per jitted host call (lax.scan).")),
    (
      "keep_checkpoints",
      int,
      field(keep_checkpoints, "How many of the latest checkpoints to keep."),
    ),
    ("resume", bool, field(False, resume_help)),
    (
      "overwrite",
      bool,
      field(
        False,
        "Replace the earlier run in the workdir (its checkpoints, metrics, config.json); "
        "files that are not from a run are never deleted: the run refuses instead.",
      ),
    ),
    ("progress", bool, field(True, "Show a tqdm progress bar (--noprogress: off).")),
  ]
  return dataclasses.make_dataclass(name, spec, frozen=True)
