"""Action-conditioned world model: a frozen pretrained video encoder (every frame on its own) under an
action-conditioned predictor of the next frame's features (V-JEPA 2-AC style). Objective: objectives/ac.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from worldmodel import common
from worldmodel.models import vit
from worldmodel.models.ac_predictor import ACPredictor
from worldmodel.models.variables import Frozen, retyped


class ACModel(nnx.Module):
  def __init__(self, m: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    e = m.encoder_model
    self.tubelet, self.rollout_steps = tuple(e.tubelet), m.rollout_steps
    self.loss_exp = float(m.loss_exp)
    self.context_frames = int(m.context_frames)  # observed frames before an evaluation / planning rollout
    self.encoder = retyped(vit.VideoViT(e, e.encoder, rngs=rngs), Frozen)
    self.predictor = ACPredictor(m, e.encoder.width, self.encoder.grid[1:], rngs=rngs)

  def encode(self, frames_BTHWC: jax.Array) -> jax.Array:
    """uint8 or [0, 1] frames → layer-normed features [B, T, N, D], every frame on its own."""
    if frames_BTHWC.dtype == jnp.uint8:
      frames_BTHWC = common.to_float(frames_BTHWC)
    B, T, H, W, C = frames_BTHWC.shape
    clips = jnp.repeat(frames_BTHWC.reshape(B * T, 1, H, W, C), self.tubelet[0], axis=1)
    z = common.layer_norm(self.encoder(clips))
    return jax.lax.stop_gradient(z.reshape(B, T, z.shape[1], z.shape[2]))

  def rollout(self, z_ctx_BCND: jax.Array, a_BKA: jax.Array, horizon: int) -> jax.Array:
    """Context features of frames 0..C-1 and actions 0..C+horizon-2 → predicted frames C..C+horizon-1,
    one frame at a time with cached keys / values; each prediction is layer-normed and fed back."""
    B, C = z_ctx_BCND.shape[:2]
    cache = self.predictor.init_cache(B, C + horizon)
    for t in range(C):
      pred, cache = self.predictor.step(cache, t, z_ctx_BCND[:, t], a_BKA[:, t])
    preds = [common.layer_norm(pred)]
    for h in range(1, horizon):
      t = C - 1 + h
      pred, cache = self.predictor.step(cache, t, preds[-1], a_BKA[:, t])
      preds.append(common.layer_norm(pred))
    return jnp.stack(preds, axis=1)
