"""Action-conditioned predictor (V-JEPA 2-AC style): block-causal transformer over per-frame latent tokens.

Per frame t the sequence holds [action_t token, N frame tokens]; every token may attend to all tokens of frames
≤ t (block-causal), and the frame tokens' outputs predict the features of frame t+1. Training runs the whole clip in
one pass (teacher forcing); with `model.residual` the output is added to frame t's features, and the readout starts
at zero, so an untrained predictor is exactly "copy the last frame". Planning rolls out one frame at a time with
cached keys / values (`init_cache`, `step`), which gives the same outputs as recomputing the whole sequence.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from worldmodel import config as config_lib
from worldmodel.models import layers, positions
from worldmodel.models.attention import FrameCausal


def block_causal_mask(frames: int, per_frame: int) -> np.ndarray:
  """[L, L] boolean, L = frames·per_frame: token i may attend to token j iff frame(j) <= frame(i)."""
  f = np.arange(frames * per_frame) // per_frame
  return f[:, None] >= f[None, :]


@functools.lru_cache(maxsize=8)
def _table(frames: int, grid_hw: tuple[int, int], width: int) -> np.ndarray:
  """[T, N, W] sin-cos of (t, h, w): a constant, not a parameter."""
  return positions.sincos_3d((frames,) + grid_hw, width).reshape(frames, -1, width)


class ACPredictor(nnx.Module):
  def __init__(self, m: ml_collections.ConfigDict, enc_dim: int, grid_hw: tuple[int, int], *, rngs: nnx.Rngs):
    p, dtype = m.predictor, config_lib.compute_dtype(m.dtype)
    self.width, self.heads, self.enc_dim = p.width, p.heads, enc_dim
    self.residual = bool(m.residual)  # predict z_t + Δ: "nothing moves" is where training starts
    self.tokens_per_frame = int(np.prod(grid_hw))
    self.max_frames = m.max_frames
    self.embed = layers.dense(enc_dim, p.width, axes=("fsdp", "tensor"), rngs=rngs, dtype=dtype)
    self.action_embed = layers.dense(m.action_dim, p.width, axes=(None, "tensor"), rngs=rngs, dtype=dtype)
    self.action_type = nnx.Param(jnp.zeros((1, p.width)), out_sharding=(None, None))
    # Positions: a (t, h, w) sin-cos table; the action token of frame t sits at (t, 0, 0) plus its type embedding.
    self.grid_hw = tuple(grid_hw)
    # Unrolled layers: `step` walks them one by one with each layer's cache.
    self.blocks = layers.BlockStack(
      lambda r: layers.ViTBlock(p.width, p.heads, p.mlp_ratio, rngs=r, dtype=dtype),
      p.depth,
      rngs=rngs,
      scan=False,
      remat=m.remat,
    )
    self.norm = layers.layer_norm(p.width, rngs=rngs, dtype=dtype)
    # Residual: a zero readout makes the untrained predictor exactly "copy the last frame", the baseline it must beat
    # (with a random readout it started at 1.4x copy-last's error and had to unlearn the noise first).
    zero = nnx.initializers.zeros_init()
    self.proj = layers.dense(
      p.width, enc_dim, axes=("tensor", "fsdp"), rngs=rngs, dtype=dtype, **({"init": zero} if self.residual else {})
    )

  @property
  def per_frame(self) -> int:
    return self.tokens_per_frame + 1

  def _tokens(self, z_BTND: jax.Array, a_BTA: jax.Array, t0=0) -> jax.Array:
    """[B, T, 1 + N, W] input tokens for frames t0..t0+T-1."""
    T = z_BTND.shape[1]
    table = jnp.asarray(_table(self.max_frames, self.grid_hw, self.width))
    frame_pos = jax.lax.dynamic_slice_in_dim(table, t0, T)
    action_pos = frame_pos[:, 0]
    x_frames = self.embed(z_BTND) + frame_pos
    x_action = self.action_embed(a_BTA) + self.action_type[...] + action_pos
    return jnp.concatenate([x_action[:, :, None].astype(x_frames.dtype), x_frames], axis=2)

  def _readout(self, x_BTPW: jax.Array) -> jax.Array:
    return self.proj(self.norm(x_BTPW[:, :, 1:]))

  def __call__(self, z_BTND: jax.Array, a_BTA: jax.Array) -> jax.Array:
    """Teacher forcing: features of frames 0..T-1 and their actions → predicted features of frames 1..T."""
    B, T, N, D = z_BTND.shape
    if T > self.max_frames:
      raise ValueError(f"{T} frames exceed the predictor's model.max_frames={self.max_frames}")
    x = self._tokens(z_BTND, a_BTA).reshape(B, T * self.per_frame, self.width)
    x = self.blocks(x, mask=FrameCausal(self.per_frame))  # structured: no L×L array reaches the kernels
    out = self._readout(x.reshape(B, T, self.per_frame, self.width))
    return z_BTND + out if self.residual else out

  # -- cached step-by-step rollout ---------------------------------------------------------------------------
  def init_cache(self, batch: int, frames: int | None = None, dtype=jnp.float32) -> dict:
    L = (frames or self.max_frames) * self.per_frame
    shape = (len(self.blocks.blocks), batch, L, self.heads, self.width // self.heads)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

  def step(self, cache: dict, t: int | jax.Array, z_BND: jax.Array, a_BA: jax.Array) -> tuple[jax.Array, dict]:
    """Frame t's features and action → predicted features of frame t+1; appends frame t's keys / values.

    With a Python int `t` (unrolled rollouts) attention reads only the filled prefix of the cache: fewer FLOPs than
    masking the empty slots, which a traced `t` has to do."""
    P = self.per_frame
    x = self._tokens(z_BND[:, None], a_BA[:, None], t)[:, 0]  # [B, P, W]
    L = cache["k"].shape[2]
    if isinstance(t, int):
      L, visible = (t + 1) * P, None
    else:
      visible = (jnp.arange(L) < (t + 1) * P)[None, None, None, :]  # frames <= t (later slots are still empty)
    ks, vs = [], []
    for i, block in enumerate(self.blocks.blocks):
      q, k, v = block.attn.qkv_heads(block.norm1(x))
      k_all = jax.lax.dynamic_update_slice_in_dim(cache["k"][i], k.astype(cache["k"].dtype), t * P, axis=1)
      v_all = jax.lax.dynamic_update_slice_in_dim(cache["v"][i], v.astype(cache["v"].dtype), t * P, axis=1)
      ks.append(k_all)
      vs.append(v_all)
      o = block.attn.attend(q, k_all[:, :L].astype(q.dtype), v_all[:, :L].astype(q.dtype), mask=visible)
      x = x + block.attn.out(o.reshape(x.shape))
      x = x + block.mlp(block.norm2(x))
    pred = self._readout(x[:, None])[:, 0]
    pred = z_BND + pred if self.residual else pred
    return pred, {"k": jnp.stack(ks), "v": jnp.stack(vs)}
