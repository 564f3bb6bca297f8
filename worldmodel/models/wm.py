"""End-to-end JEPA world model (LeWM / PLDM style): a trainable per-frame encoder and an action-conditioned
predictor of the next frame's embedding, trained jointly from pixels. Objective: objectives/wm.py.

encode: every frame on its own through a VideoViT (one tubelet deep), mean-pooled over its tokens, then an MLP
projector → one embedding per frame, [B, T, 1, D] (one "token", so the AC predictor, the evaluator and the planner
treat it like a one-token frame). The predictor is the AC predictor (block-causal over [action, frame] tokens).
Embeddings are not layer-normed: the anti-collapse regulariser (SIGReg / VICReg) sets their scale.
With `model.dense.weight` > 0 a second, small AC predictor over the token grid predicts every token's projection one
frame ahead (a training loss only: planning and the probes use `encode` / `tokens` as before).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from worldmodel import common
from worldmodel.models import layers, vit
from worldmodel.models.ac_predictor import ACPredictor


class WorldModel(nnx.Module):
  def __init__(self, m: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    e, D, H = m.encoder_model, m.embed_dim, m.projector_width
    self.tubelet, self.rollout_steps = tuple(e.tubelet), m.rollout_steps
    self.loss_exp = float(m.loss_exp)  # 2: squared error (LeWM), 1: L1; also planning's default cost
    self.context_frames = int(m.context_frames)
    self.reg = tuple((k, float(v)) for k, v in sorted(m.reg.items()))  # loss weights (static)
    self.encoder = vit.VideoViT(e, e.encoder, rngs=rngs)
    W = e.encoder.width
    self.proj_in = layers.dense(W, H, axes=("fsdp", "tensor"), rngs=rngs)
    # BatchNorm in the projector (LeWM): embeddings start spread across the batch, not at the ~0.01 std a pooled
    # random ViT gives (the regulariser alone took longer than a short run to undo that; BUILD_NOTES.md).
    self.proj_norm = nnx.BatchNorm(H, momentum=0.9, use_running_average=True, rngs=rngs)
    self.proj_out = layers.dense(H, D, axes=("tensor", "fsdp"), rngs=rngs)
    self.predictor = ACPredictor(m, D, (1, 1), rngs=rngs)
    # Inverse dynamics (PLDM): (z_t, z_t+1) → a_t; always built so that switching it on keeps checkpoints loadable.
    self.inv_in = layers.dense(2 * D, H, axes=("fsdp", "tensor"), rngs=rngs)
    self.inv_out = layers.dense(H, m.action_dim, axes=("tensor", None), rngs=rngs)
    # Dense next-frame loss (`model.dense`, V-JEPA 2.1's remedy for pooled losses losing local detail): every token
    # projected and predicted one frame ahead by a small AC predictor over the token grid. Built only when on, so
    # checkpoints without it keep their structure.
    dense = m.get("dense") or {}
    self.dense_weight = float(dense.get("weight", 0.0))
    self.dense_sigreg = float(dense.get("sigreg", 0.0))
    if self.dense_weight:
      grid = vit.token_grid(e.tubelet[0], m.size, e.tubelet)[1:]
      pm = ml_collections.ConfigDict(m.to_dict())  # the model's settings with the dense predictor's size
      pm.predictor = dense["predictor"]
      self.dense_proj = layers.dense(W, dense["dim"], axes=("fsdp", "tensor"), rngs=rngs)
      self.dense_predictor = ACPredictor(pm, dense["dim"], grid, rngs=rngs)

  def encode(self, frames_BTHWC: jax.Array, train: bool = False) -> jax.Array:
    """uint8 or [0, 1] frames → embeddings [B, T, 1, D], every frame on its own (gradients flow: trained jointly).
    train: the projector's BatchNorm normalises with (and updates) the batch's statistics, else its running ones."""
    return self.encode_with_tokens(frames_BTHWC, train)[0]

  def encode_with_tokens(self, frames_BTHWC: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """(embeddings [B, T, 1, D], the tokens they were pooled from [B, T, L, W])."""
    B, T = frames_BTHWC.shape[:2]
    x_BTLW = self.tokens(frames_BTHWC)
    pooled = jnp.mean(x_BTLW, axis=2).reshape(B * T, -1)
    z = self.proj_out(jax.nn.gelu(self.proj_norm(self.proj_in(pooled), use_running_average=not train)))
    return z.reshape(B, T, 1, -1), x_BTLW

  def tokens(self, frames_BTHWC: jax.Array) -> jax.Array:
    """The encoder's tokens of every frame on its own, [B, T, L, W] in f32 (before pooling and the projector)."""
    if frames_BTHWC.dtype == jnp.uint8:
      frames_BTHWC = common.to_float(frames_BTHWC)
    B, T, H, W, C = frames_BTHWC.shape
    clips = frames_BTHWC.reshape(B * T, 1, H, W, C)
    if self.tubelet[0] > 1:
      clips = jnp.repeat(clips, self.tubelet[0], axis=1)
    x_NLW = self.encoder(clips).astype(jnp.float32)
    return x_NLW.reshape(B, T, *x_NLW.shape[1:])

  def inverse_dynamics(self, z_BTND: jax.Array) -> jax.Array:
    """Predicted actions [B, T-1, A] between consecutive embeddings."""
    pair = jnp.concatenate([z_BTND[:, :-1, 0], z_BTND[:, 1:, 0]], axis=-1)
    return self.inv_out(jax.nn.gelu(self.inv_in(pair)))

  def rollout(self, z_ctx_BCND: jax.Array, a_BKA: jax.Array, horizon: int) -> jax.Array:
    """Context embeddings of frames 0..C-1 and actions 0..C+horizon-2 → predicted embeddings of frames
    C..C+horizon-1, one frame at a time with cached keys / values, each prediction fed back as it is."""
    B, C = z_ctx_BCND.shape[:2]
    cache = self.predictor.init_cache(B, C + horizon)
    for t in range(C):
      pred, cache = self.predictor.step(cache, t, z_ctx_BCND[:, t], a_BKA[:, t])
    preds = [pred]
    for h in range(1, horizon):
      pred, cache = self.predictor.step(cache, C - 1 + h, preds[-1], a_BKA[:, C - 1 + h])
      preds.append(pred)
    return jnp.stack(preds, axis=1)
