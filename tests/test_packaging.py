"""What a non-editable install (`pip install .`) ships: setup.cfg's package data."""

import configparser
import pathlib
import re

from bpm_jax import fused_step

ROOT = pathlib.Path(__file__).resolve().parents[1]


def package_data_globs(package):
  config = configparser.ConfigParser()
  config.read(ROOT / "setup.cfg")
  value = config["options.package_data"][package]
  return [g.strip() for g in re.split(r"[,\n]", value) if g.strip()]


def test_package_data_ships_every_kernel_source_and_header():
  """The kernels are compiled on first use, from files next to the installed package."""
  globs = package_data_globs("bpm_jax")
  package = pathlib.Path(fused_step.__file__).resolve().parent
  files = [*fused_step._SOURCES, *fused_step._HEADERS]
  for source in fused_step._SOURCES:  # What the sources include from their folder.
    for name in re.findall(r'#include "([^"]+)"', source.read_text()):
      files.append(source.parent / name)
  assert len(files) >= 3
  for path in files:
    assert path.exists(), path
    relative = path.resolve().relative_to(package)
    # setuptools globs like pathlib: `*` stops at a `/`.
    shipped = [g for g in globs if len(pathlib.PurePath(g).parts) == len(relative.parts)]
    assert any(relative.match(g) for g in shipped), (
      f"{relative} is not in setup.cfg's package_data for bpm_jax ({globs})"
    )
