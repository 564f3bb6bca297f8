"""Helpers shared by models and objectives (so that no objective imports another): uint8 → float frames, V-JEPA's
feature normalisation and regression loss, and the config / data checks every video objective runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections


def to_float(video_uint8: jax.Array) -> jax.Array:
  return video_uint8.astype(jnp.float32) / 255.0


def layer_norm(x: jax.Array) -> jax.Array:
  """LayerNorm without affine parameters: how V-JEPA normalises its regression targets."""
  x = x.astype(jnp.float32)
  mu, var = jnp.mean(x, -1, keepdims=True), jnp.var(x, -1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-6)


def regression_loss(pred, target, exp: float, axis=None):
  """V-JEPA's mean(|pred - target|^exp) / exp: L1 for exp=1 (the default), half the squared error for exp=2."""
  err = jnp.abs(pred - target)
  return jnp.mean(err if exp == 1 else err**exp, axis=axis) / exp


def check_ints(key: str, value, *, length: int | None = None, minimum: int = 1) -> None:
  ok = isinstance(value, (tuple, list)) and all(isinstance(v, int) and v >= minimum for v in value)
  if not ok or (length is not None and len(value) != length):
    want = f"{length} " if length else ""
    raise ValueError(f"config key {key!r} must be {want}integers >= {minimum}, got {value!r}")


def check_frames(config: ml_collections.ConfigDict, frame_size: int) -> None:
  """Frames of the wrong size for the model (model.size, model.frames) fail here, before anything is compiled."""
  if int(frame_size) != int(config.model.size):
    raise ValueError(
      f"dataset {config.data.dir} gives {frame_size}x{frame_size} frames but the model expects "
      f"{config.model.size}x{config.model.size} (config key 'model.size'; or resize the data with "
      f"--config.data.resize={config.model.size})"
    )
  if config.model.frames != config.data.num_frames:
    raise ValueError(
      f"config keys disagree: model.frames={config.model.frames} but data.num_frames={config.data.num_frames}"
    )


def fill_action_dim(config: ml_collections.ConfigDict, needs: str) -> None:
  """model.action_dim from the dataset's worldmodel.json when unset; `needs` ends the error for data without actions."""
  from worldmodel.data import pipeline, records

  m = config.model
  if not m.action_dim:
    meta = records.read_meta(pipeline.data_dirs(config.data)[0], pipeline.feature_map(config.data))
    if not meta.get("action_dim"):
      raise records.DatasetError(
        f"{config.data.dir}: no actions in this dataset (worldmodel.json has no action_dim); {needs}"
      )
    m.action_dim = int(meta["action_dim"])


def video_action_spec(config: ml_collections.ConfigDict, sharding) -> dict:
  """Batch spec of action-conditioned objectives: uint8 clips and one float action per frame."""
  m, B = config.model, config.batch_size
  return {
    "video": jax.ShapeDtypeStruct((B, m.frames, m.size, m.size, 3), jnp.uint8, sharding=sharding),
    "action": jax.ShapeDtypeStruct((B, m.frames, m.action_dim), jnp.float32, sharding=sharding),
  }
