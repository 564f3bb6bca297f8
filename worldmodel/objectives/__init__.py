"""Objectives by name: `config.objective = NAME` selects the `Objective` registered in worldmodel/objectives/NAME.py.

The contract every objective implements is documented in worldmodel/objectives/base.py.
"""

from __future__ import annotations

import importlib
import pkgutil

from worldmodel.objectives.base import REGISTRY, Objective, register

__all__ = ["Objective", "get", "names", "register"]


def get(name: str) -> Objective:
  """The objective named `name` (imported on first use); a clear error naming the known ones otherwise."""
  if name not in REGISTRY and isinstance(name, str) and name.isidentifier():
    try:
      importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{__name__}.{name}":
        raise
  if name not in REGISTRY:
    raise ValueError(f"config key 'objective' is {name!r}; known objectives: {names()}")
  return REGISTRY[name]


def names() -> list[str]:
  """Every registered objective (imports each module of this package once)."""
  for module in pkgutil.iter_modules(__path__):
    if module.name != "base":
      importlib.import_module(f"{__name__}.{module.name}")
  return sorted(REGISTRY)
