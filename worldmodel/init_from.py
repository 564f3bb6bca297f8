"""Start a run from pretrained weights: `--config.init.source=PATH`.

PATH is a worldmodel workdir (its newest checkpoint) or a V-JEPA / V-JEPA 2 encoder file (.pt / .pth / .safetensors,
imported by `worldmodel.importers.vjepa`). Every top-level part of the new model (params: encoder, predictor, ...;
extra: target_encoder, ...) that the source also has is copied, after checking names and shapes; the rest keeps its
fresh initialisation. The optimizer state always starts fresh.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from worldmodel import checkpoint as ckpt_lib
from worldmodel import storage
from worldmodel.importers import vjepa


def source_tree(src: str, config) -> tuple[dict, str]:
  """{"params": {...}, "extra": {...}} of the source, and a description of where it came from."""
  if storage.isdir(src):
    step, saved = ckpt_lib.read_newest(src)
    return {"params": saved.get("params", {}), "extra": saved.get("extra", {})}, f"{src} (step {step})"
  if src.endswith(vjepa.SUFFIXES):
    if storage.is_remote(src) or not os.path.exists(src):
      raise ckpt_lib.CheckpointError(f"init.source {src}: no such local file (copy V-JEPA files from buckets first)")
    weights = vjepa.encoder_weights(src, config.model, key=config.init.key or None)
    return {"params": {"encoder": weights}, "extra": {"target_encoder": weights}}, src
  raise ckpt_lib.CheckpointError(
    f"init.source {src!r} is neither a worldmodel workdir nor a V-JEPA checkpoint; supported: a workdir "
    f"(config.json + checkpoints/), or an encoder file ending in {', '.join(vjepa.SUFFIXES)}"
  )


def initialize_from(rt, state: dict) -> dict:
  src = rt.config.init.source
  tree, where = source_tree(src, rt.config)
  loaded = []
  for group in ("params", "extra"):
    for name, part in state[group].items():
      if name in tree[group]:
        values = ckpt_lib.conform(tree[group][name], part, f"init.source {where}: {group}/{name}")
        state[group][name] = jax.device_put(jax.tree.map(jnp.asarray, values), rt.state_shardings[group][name])
        loaded.append(f"{group}/{name}")
  if not loaded:
    have = sorted(f"{g}/{n}" for g in ("params", "extra") for n in tree[g])
    want = sorted(f"{g}/{n}" for g in ("params", "extra") for n in state[g])
    raise ckpt_lib.CheckpointError(
      f"init.source {where} has nothing this model uses: it holds {have}, the model has {want}"
    )
  print(f"initialised {', '.join(loaded)} from {where}", flush=True)
  return state
