"""Config helpers shared by the entry points: flag parsing with clean errors, validation, workdir config.json.

Experiment configs are Python files in experiments/ with `get_config(arg)` returning an ml_collections.ConfigDict;
`--config=experiments/NAME.py:VARIANT` picks one and `--config.KEY=VALUE` overrides single keys (absl config_flags).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

import ml_collections
from absl import flags

# Keys every experiment has (DESIGN.md). Checked before anything is built or compiled.
REQUIRED_KEYS = (
  "seed",
  "total_steps",
  "batch_size",
  "data.dir",
  "log_every_steps",
  "checkpoint.every_steps",
  "checkpoint.keep",
  "mesh.data",
  "mesh.fsdp",
  "mesh.tensor",
  "model.name",
  "objective",
)


class ConfigError(ValueError):
  """A config that cannot run; the message names the key at fault."""


def die(msg: str, code: int = 2):
  """Print a one-line cause (no traceback) and exit non-zero: what every CLI does on bad input."""
  print(f"error: {msg}", file=sys.stderr, flush=True)
  sys.exit(code)


def flags_parser(argv: Sequence[str]) -> list[str]:
  """absl flags parser for app.run that turns config override mistakes into one clear line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    die(_explain(str(e)))
  except AttributeError as e:  # config_flags raises this for --config.unknown_key=...
    key = str(e).strip("\"'")
    bad = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0]]
    die(f"unknown config key {key!r} (from {bad[0] if bad else argv}); see the config file for valid keys")
  except Exception as e:  # noqa: BLE001 - e.g. a config file's get_config raising for an unknown variant
    die(f"could not load the config: {type(e).__name__}: {e}")


def _explain(msg: str) -> str:
  # absl wraps config errors as 'flag --config.batch_size=abc: invalid literal ...': keep the flag visible.
  # config_flags embeds the config file's own traceback: keep only its first line (the flag) and the final error.
  lines = [l for l in msg.splitlines() if l.strip()]
  if any(l.startswith("Traceback") for l in lines):
    lines = [lines[0].split(": Error whilst")[0], lines[-1].strip()]
  return "bad flag: " + ": ".join(lines)


def check_required(config: ml_collections.ConfigDict) -> None:
  for key in REQUIRED_KEYS:
    node: Any = config
    for part in key.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ConfigError(f"config is missing required key {key!r}")
      node = node[part]


def _optional(config: ml_collections.ConfigDict, dotted: str) -> Any:
  try:
    return get(config, dotted)
  except (KeyError, AttributeError):
    return 0


def validate(config: ml_collections.ConfigDict) -> None:
  """Cheap consistency checks that must fail before any compile."""
  check_required(config)
  positive = ["total_steps", "batch_size", "log_every_steps", "checkpoint.every_steps", "checkpoint.keep"]
  for key in positive:
    value = get(config, key)
    if not isinstance(value, int) or value <= 0:
      raise ConfigError(f"config key {key!r} must be a positive integer, got {value!r}")
  for key in ("checkpoint.every_minutes", "checkpoint.keep_every", "profile.start_step", "profile.num_steps"):
    value = _optional(config, key)  # optional keys (issue 12), 0 = off
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      raise ConfigError(f"config key {key!r} must be a number >= 0 (0: off), got {value!r}")
  for key in ("mesh.data", "mesh.fsdp", "mesh.tensor"):
    value = get(config, key)
    if not isinstance(value, int) or (value <= 0 and value != -1):
      raise ConfigError(f"config key {key!r} must be a positive integer or -1 (fill), got {value!r}")
  if not config.data.dir:
    raise ConfigError(
      "config key 'data.dir' is empty: pass --config.data.dir=PATH (make a dataset with "
      "python -m worldmodel.data.generate)"
    )


def get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node: Any = config
  for part in dotted.split("."):
    node = node[part]
  return node


def to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def save_json(config: ml_collections.ConfigDict, workdir: str) -> str:
  from worldmodel import storage

  path = storage.join(workdir, "config.json")
  storage.write_text(path, json.dumps(to_dict(config), indent=2, sort_keys=True))
  return path


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  from worldmodel import storage

  path = storage.join(workdir, "config.json")
  try:
    storage.check_reachable(workdir)
  except storage.StorageError as e:
    raise ConfigError(str(e)) from None
  if not storage.exists(path):
    raise ConfigError(f"{workdir} is not a worldmodel workdir: no config.json in it")
  return ml_collections.ConfigDict(_tuples(json.loads(storage.read_text(path))))


def _tuples(d: Any) -> Any:
  # JSON turns tuples into lists; configs use tuples for shapes/levels, so convert back for a faithful rebuild.
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuples(v) for v in d)
  return d


# Parts of the config that define the model's parameters: a workdir trained with other values cannot be resumed.
def model_signature(config: ml_collections.ConfigDict | dict) -> dict:
  d = config if isinstance(config, dict) else to_dict(config)
  return {"objective": d.get("objective"), "model": d.get("model")}
