"""Fine-tune a pretrained video encoder with a task head: state regression or clip classification.

The encoder comes from `init.source` (a JEPA workdir's target encoder, an AC or fine-tune workdir's encoder, an
encoder export, or a V-JEPA / V-JEPA 2 .pt / .safetensors file); its architecture is read from there. Modes
(`model.mode`):
  frozen   the encoder's weights are `Frozen` variables (no gradients, no optimizer state): an attentive probe
  partial  the last `model.trainable_blocks` blocks and the final norm train, the rest is frozen
  full     everything trains; `optim.layer_decay` < 1 scales block i's learning rate by decay^(depth - i)
           (layer-wise learning-rate decay: lower layers move less)
Tasks (`model.task`):
  state     regress the state of every tubelet time slot (mean over its frames; angles that wind past ±π as sin,
            cos), standardised with train-split statistics; evaluated as R² per state group (as the JEPA probes)
  classify  a clip's `label` (e.g. `generate --source=video:DIR/*/*.mp4 --labels=dirname`); softmax cross-entropy,
            evaluated as accuracy, per class, and a confusion matrix
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from worldmodel import checkpoint as ckpt_lib
from worldmodel import common, encoders, probes
from worldmodel.data import pipeline, records
from worldmodel.models.finetune import MODES, TASKS, FinetuneModel
from worldmodel.objectives import base


# ---------------------------------------------------------------------------------------------------------------
# Config: the encoder's architecture and the task's sizes / statistics come from the source and the data.
# ---------------------------------------------------------------------------------------------------------------
def resolve_config(config: ml_collections.ConfigDict) -> None:
  m, src = config.model, config.init.source
  if not src:
    raise ValueError(
      "config key 'init.source' must name the pretrained encoder to fine-tune: a JEPA workdir, an "
      "encoder export (python -m worldmodel.encoders), or a V-JEPA .pt / .safetensors file"
    )
  if m.task not in TASKS:
    raise ValueError(f"config key 'model.task' must be one of {TASKS}, got {m.task!r}")
  enc = encoders.read_encoder_config(src, frames=m.frames, key=config.init.key or None, heads=config.init.heads or None)
  enc.scan_layers, enc.remat, enc.dtype = m.scan_layers, m.remat, m.dtype
  m.encoder_model = enc
  m.size = enc.size
  meta = records.read_meta(pipeline.data_dirs(config.data)[0], pipeline.feature_map(config.data))
  if m.task == "classify":
    if not meta.get("classes"):
      raise records.DatasetError(
        f"{config.data.dir}: no class labels (worldmodel.json has no 'classes'); generate "
        "the dataset with --source=video:DIR/*/*.mp4 --labels=dirname"
      )
    m.classes = list(meta["classes"])
  else:
    if not meta.get("state_dim"):
      raise records.DatasetError(f"{config.data.dir}: no 'state' feature to regress (model.task='state')")
    m.state_dim, m.periodic_state = int(meta["state_dim"]), list(meta.get("periodic_state") or [])
    if not m.state_mean:  # once per run: a resumed run keeps the statistics it started with
      mean, std = state_statistics(config.data, m.periodic_state)
      m.state_mean, m.state_std = [float(x) for x in mean], [float(x) for x in std]
    _, m.state_groups = probes.state_targets(
      np.zeros((1, m.state_dim)), meta.get("state_groups") or {}, m.periodic_state
    )


def state_statistics(data_cfg, periodic: list[int], max_episodes: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Per-dimension mean / std of the train split's regression targets (periodic dimensions as sin, cos; up to
  max_episodes episodes); std floored so that a constant dimension does not blow up."""
  source = pipeline.open_sources(data_cfg, data_cfg.train_split)[0]
  states = np.concatenate([source[i]["state"] for i in range(min(len(source), max_episodes))]).astype(np.float64)
  states, _ = probes.state_targets(states, {}, periodic)
  return states.mean(0), np.maximum(states.std(0), 1e-3 * max(float(states.std(0).max()), 1e-6))


def check_config(config: ml_collections.ConfigDict) -> None:
  m = config.model
  if m.mode not in MODES:
    raise ValueError(f"config key 'model.mode' must be one of {MODES}, got {m.mode!r}")
  depth = m.encoder_model.encoder.depth
  if m.mode == "partial":
    if not 1 <= m.trainable_blocks <= depth:
      raise ValueError(
        f"config key 'model.trainable_blocks' ({m.trainable_blocks}) must be in 1..{depth} (the "
        "encoder's depth) for model.mode='partial'"
      )
    if m.scan_layers:
      raise ValueError("model.mode='partial' freezes some blocks and not others: it needs model.scan_layers=False")
  if not 0 < config.optim.layer_decay <= 1:
    raise ValueError(f"config key 'optim.layer_decay' must be in (0, 1], got {config.optim.layer_decay}")
  if m.frames % m.encoder_model.tubelet[0]:
    raise ValueError(
      f"config key 'model.frames' ({m.frames}) must be a multiple of the encoder's tubelet "
      f"{tuple(m.encoder_model.tubelet)}"
    )
  if config.data.num_frames != m.frames:
    raise ValueError(
      f"config keys 'data.num_frames' ({config.data.num_frames}) and 'model.frames' ({m.frames}) must agree"
    )


def create_model(config: ml_collections.ConfigDict, rngs) -> FinetuneModel:
  return FinetuneModel(config.model, rngs=rngs)


def batch_spec(config: ml_collections.ConfigDict, sharding) -> dict:
  m, B = config.model, config.batch_size
  spec = {"video": jax.ShapeDtypeStruct((B, m.frames, m.size, m.size, 3), jnp.uint8, sharding=sharding)}
  if m.task == "classify":
    spec["label"] = jax.ShapeDtypeStruct((B,), jnp.int32, sharding=sharding)
  else:
    spec["state"] = jax.ShapeDtypeStruct((B, m.frames, m.state_dim), jnp.float32, sharding=sharding)
  return spec


# ---------------------------------------------------------------------------------------------------------------
# Start from the pretrained encoder; layer-wise learning-rate decay.
# ---------------------------------------------------------------------------------------------------------------
def initialize(rt, state: dict) -> dict:
  """Fill the encoder (its trainable parts in params, its frozen parts in extra) from init.source; the head keeps
  its fresh initialisation."""
  c = rt.config
  weights, _ = encoders.read_encoder(
    c.init.source, frames=c.model.frames, key=c.init.key or None, heads=c.init.heads or None
  )
  parts = {g: traverse_util.flatten_dict(state[g].get("encoder", {})) for g in ("params", "extra")}
  like = traverse_util.unflatten_dict({**parts["params"], **parts["extra"]})
  flat = traverse_util.flatten_dict(ckpt_lib.conform(weights, like, f"init.source {c.init.source} encoder"))
  for g, part in parts.items():
    if part:
      tree = traverse_util.unflatten_dict({k: jnp.asarray(flat[k]) for k in part})
      state[g]["encoder"] = jax.device_put(tree, rt.state_shardings[g]["encoder"])
  trainable = sum(int(np.prod(v.shape)) for v in parts["params"].values())
  print(f"encoder from {c.init.source} ({c.model.mode}: {trainable:,} of its weights train)", flush=True)
  return state


def lr_scales(config: ml_collections.ConfigDict, params: dict) -> dict | None:
  """Per-parameter learning-rate multipliers for layer-wise decay (None when off). Block i of L gets
  decay^(L - i), the patch embedding decay^(L + 1), the final norm and the head 1. Scanned blocks (stacked on a
  leading layer axis) get a per-layer vector."""
  decay = config.optim.layer_decay
  if decay >= 1.0:
    return None
  depth = config.model.encoder_model.encoder.depth
  layer_scale = np.array([decay ** (depth - i) for i in range(depth)], np.float32)

  def scale(path, leaf):
    keys = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
    if keys[0] != "encoder":
      return np.float32(1.0)
    if keys[1] == "patch_embed":
      return np.float32(decay ** (depth + 1))
    if keys[1] == "blocks":
      if config.model.encoder_model.scan_layers:
        return layer_scale.reshape((depth,) + (1,) * (len(leaf.shape) - 1))
      return np.float32(layer_scale[int(keys[3])])
    return np.float32(1.0)

  return jax.tree_util.tree_map_with_path(scale, params)


# ---------------------------------------------------------------------------------------------------------------
# Loss and evaluation outputs.
# ---------------------------------------------------------------------------------------------------------------
def targets(model: FinetuneModel, batch: dict) -> jax.Array:
  """Standardised per-slot regression targets [B, T', S'] (periodic dimensions as sin, cos)."""
  state, _ = probes.state_targets(batch["state"].astype(jnp.float32), {}, list(model.periodic))
  B, T, S = state.shape
  slots = state.reshape(B, T // model.slot_frames, model.slot_frames, S).mean(axis=2)
  return (slots - jnp.asarray(model.state_mean, jnp.float32)) / jnp.asarray(model.state_std, jnp.float32)


def outputs(model: FinetuneModel, batch: dict) -> tuple[jax.Array, jax.Array]:
  """(predictions, targets): logits [B, C] and labels [B], or standardised states [B, T', S] twice."""
  out = model(batch["video"])
  if model.task == "classify":
    return out, batch["label"].astype(jnp.int32)
  y = targets(model, batch)
  return out.reshape(y.shape), y


def loss_fn(model: FinetuneModel, batch: dict, *, rng: jax.Array, train: bool):
  del rng, train
  pred, y = outputs(model, batch)
  if model.task == "classify":
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(pred, y))
    return loss, {"loss": loss, "accuracy": jnp.mean((jnp.argmax(pred, -1) == y).astype(jnp.float32))}
  loss = jnp.mean(jnp.square(pred - y))  # targets are standardised: 1 - loss ≈ R² over the batch
  return loss, {"loss": loss, "r2": 1.0 - loss / jnp.maximum(jnp.mean(jnp.square(y - y.mean((0, 1)))), 1e-9)}


def eval_step(model: FinetuneModel, batch: dict) -> dict:
  pred, y = outputs(model, batch)
  return {"pred": pred, "target": y}


from worldmodel.objectives.finetune_eval import Evaluator  # noqa: E402


@base.register
class Finetune(base.Objective):
  name = "finetune"
  defaults = {"model": {"state_groups": {}}}
  create_model, batch_spec = staticmethod(create_model), staticmethod(batch_spec)
  check_config, check_data = staticmethod(check_config), staticmethod(common.check_frames)
  loss_fn, eval_step, Evaluator = staticmethod(loss_fn), staticmethod(eval_step), Evaluator
  resolve_config, initialize, lr_scales = (
    staticmethod(resolve_config),
    staticmethod(initialize),
    staticmethod(lr_scales),
  )
  loads_init_source = True  # `initialize` reads init.source (the runtime's by-name warm start does not apply)
  encoder_description = "its fine-tuned encoder"

  def encoder_config(self, config):
    return config.model.encoder_model

  def encoder_weights(self, state: dict):
    """Trained parts are params, frozen parts extra: put them back together."""
    parts = {
      **traverse_util.flatten_dict(state.get("extra", {}).get("encoder", {})),
      **traverse_util.flatten_dict(state.get("params", {}).get("encoder", {})),
    }
    return traverse_util.unflatten_dict(parts)
