"""Experiment trackers beside metrics.jsonl and TensorBoard: Weights & Biases, when `log.wandb` names a project.

  --config.log.wandb=PROJECT            or ENTITY/PROJECT
  c.log.wandb = dict(project=..., entity=..., name=..., tags=(...), mode="offline")   # in an experiment file

Needs the [wandb] extra (pip install -e '.[wandb]'). Only process 0 writes. The run id is kept in
WORKDIR/wandb_run_id, so a resumed training job continues the same W&B run. WANDB_MODE=offline (or mode="offline")
writes the run under WORKDIR/wandb/ for a later `wandb sync`.
"""

from __future__ import annotations

import os
import secrets

import jax
import ml_collections

from worldmodel import config as config_lib
from worldmodel import storage


def wandb_settings(config: ml_collections.ConfigDict) -> dict | None:
  """log.wandb as keyword arguments of wandb.init, or None when off; a clear error for a malformed value."""
  value = (config.get("log") or {}).get("wandb", "")
  if not value:
    return None
  if isinstance(value, str):
    entity, _, project = value.rpartition("/")
    if not project or entity.count("/"):
      raise config_lib.ConfigError(f"config key 'log.wandb' must be PROJECT or ENTITY/PROJECT, got {value!r}")
    return {"project": project, **({"entity": entity} if entity else {})}
  value = dict(value)
  unknown = set(value) - {"project", "entity", "name", "tags", "group", "mode", "notes"}
  if not value.get("project") or unknown:
    raise config_lib.ConfigError(
      f"config key 'log.wandb' needs 'project' and takes entity/name/tags/group/mode/notes; got {sorted(value)}"
    )
  if "tags" in value:
    value["tags"] = list(value["tags"])
  return value


def check(config: ml_collections.ConfigDict) -> None:
  """Before any compile: a W&B run asked for without wandb installed is one clear line."""
  if wandb_settings(config) is None:
    return
  try:
    import wandb  # noqa: F401
  except ImportError:
    raise config_lib.ConfigError(
      "config key 'log.wandb' is set but wandb is not installed: pip install -e '.[wandb]'"
    ) from None


class Writers:
  """The train loop's metric writer plus the trackers that are on: the same write(step, scalars) / close() calls."""

  def __init__(self, base, config: ml_collections.ConfigDict, workdir: str):
    self.base = base
    self.run = None
    settings = wandb_settings(config)
    if settings is not None and jax.process_index() == 0:
      self.run = _wandb_run(settings, config, workdir)

  def write(self, step: int, scalars: dict, **kwargs) -> None:
    self.base.write(step, scalars, **kwargs)
    if self.run is not None:
      self.run.log({k: float(v) for k, v in scalars.items()}, step=step)

  def close(self) -> None:
    self.base.close()
    if self.run is not None:
      self.run.finish()
      self.run = None

  def __getattr__(self, name):  # anything else the loop asks of its writer
    return getattr(self.base, name)


def _wandb_run(settings: dict, config: ml_collections.ConfigDict, workdir: str):
  import wandb

  id_path = storage.join(workdir, "wandb_run_id")
  if storage.exists(id_path):
    run_id = storage.read_text(id_path).strip()
  else:
    run_id = secrets.token_hex(4)  # W&B run ids: short [a-z0-9]
    storage.write_text(id_path, run_id + "\n")
  settings = {"name": storage.basename(workdir.rstrip("/")), **settings}
  # W&B keeps its files in a local folder: the workdir, or a cache folder for a bucket workdir.
  local = os.path.join(storage.cache_root(), "wandb") if storage.is_remote(workdir) else workdir
  os.makedirs(local, exist_ok=True)
  return wandb.init(
    id=run_id, resume="allow", dir=local, config=config_lib.to_dict(config), reinit="finish_previous", **settings
  )
