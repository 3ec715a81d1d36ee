"""Validators of config fields: one clear ValueError naming the field and the rule.

    check_choice("network", "lstm", ("rnn", "plastic"))
    # ValueError: network='lstm' is not a known option; choose one of rnn, plastic.

Used by every trainer config's `__post_init__`; the flag layer turns the
message into `--network='lstm' is not ...`.
"""

from __future__ import annotations

import math
from typing import Any


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
  """ValueError naming the field, the bad value and the allowed ones."""
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is not a known option; choose one of {', '.join(allowed)}.")


def check_int(name: str, value: Any, minimum: int) -> None:
  """ValueError unless `value` is an int >= minimum."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name}={value!r} is invalid: it must be an integer >= {minimum}.")


def check_float(name: str, value: Any, positive: bool) -> None:
  """ValueError unless `value` is a finite number > 0 (positive) or >= 0."""
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value > 0 if positive else value >= 0)
  if not ok:
    bound = "> 0" if positive else ">= 0"
    raise ValueError(f"{name}={value!r} is invalid: it must be a finite number {bound}.")


def check_fields(
  config: Any,
  choices: dict[str, tuple[str, ...]] = None,
  min_ints: dict[int, tuple[str, ...]] = None,
  positive: tuple[str, ...] = (),
  nonnegative: tuple[str, ...] = (),
) -> None:
  """The checks above over a config's fields, in one call.

  Args:
    config: any object with the named attributes.
    choices: field -> allowed values.
    min_ints: minimum -> fields that must be integers >= it.
    positive, nonnegative: fields that must be finite numbers > 0 / >= 0.
  """
  for name, allowed in (choices or {}).items():
    check_choice(name, getattr(config, name), allowed)
  for minimum, names in (min_ints or {}).items():
    for name in names:
      check_int(name, getattr(config, name), minimum)
  for name in positive:
    check_float(name, getattr(config, name), positive=True)
  for name in nonnegative:
    check_float(name, getattr(config, name), positive=False)
