"""Video ViT (V-JEPA's encoder) and the narrow JEPA predictor.

Tokens are 3-D tubelets (default 2×P×P) in raster order (t slowest). Both models accept a subset of token ids, so
the context encoder only computes the tokens it sees; positions (fixed sin-cos table, or V-JEPA 2's 3-D RoPE) are
looked up by id.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from worldmodel import config as config_lib
from worldmodel.models import layers, positions

# V-JEPA normalises pixels with ImageNet statistics; keeping it makes imported encoders see what they were trained on.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def token_grid(frames: int, size: int, tubelet) -> tuple[int, int, int]:
  return frames // tubelet[0], size // tubelet[1], size // tubelet[2]


def patchify(video_BTHWC: jax.Array, tubelet) -> jax.Array:
  """[B, T, H, W, C] → [B, N, t·p·p·C], each patch flattened in (t, p, p, C) order (a Conv3d kernel's layout)."""
  B, T, H, W, C = video_BTHWC.shape
  t, ph, pw = tubelet
  x = video_BTHWC.reshape(B, T // t, t, H // ph, ph, W // pw, pw, C)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(B, (T // t) * (H // ph) * (W // pw), t * ph * pw * C)


def gather_tokens(x_BND: jax.Array, ids_BK: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x_BND, ids_BK[..., None].astype(jnp.int32), axis=1)


# sincos: V-JEPA's table with uniform_power=True (its published checkpoints); sincos_nonuniform: uniform_power=False
# (the vjepa2 code's default: half the channels for time); rope: V-JEPA 2's rotary positions.
POS_KINDS = ("sincos", "sincos_nonuniform", "rope")


class PositionTable:
  """What a model adds for token ids: a sin-cos vector (added to x) or RoPE angles (handed to attention)."""

  def __init__(self, kind: str, grid_THW, width: int, heads: int):
    if kind not in POS_KINDS:
      raise ValueError(f"config key 'model.pos' must be one of {POS_KINDS}, got {kind!r}")
    self.kind, self.heads = kind, heads
    self.coords = positions.grid_coords(grid_THW).astype(np.int32)
    sincos = kind.startswith("sincos")
    self.table = positions.sincos_3d(grid_THW, width, uniform_power=kind == "sincos") if sincos else None

  def apply(self, x_BKD: jax.Array, ids_BK: jax.Array):
    """(x with sin-cos added, rope tables or None)."""
    if self.table is not None:
      return x_BKD + jnp.asarray(self.table, x_BKD.dtype)[ids_BK], None
    head_dim = x_BKD.shape[-1] // self.heads
    return x_BKD, positions.rope_angles(jnp.asarray(self.coords)[ids_BK], head_dim)


class VideoViT(nnx.Module):
  """Tubelet embedding → pre-LN blocks → final LayerNorm. No CLS token (as V-JEPA)."""

  def __init__(self, m: ml_collections.ConfigDict, e: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    dtype = config_lib.compute_dtype(m.dtype)
    self.tubelet, self.grid = tuple(m.tubelet), token_grid(m.frames, m.size, m.tubelet)
    self.width = e.width
    patch_dim = int(np.prod(m.tubelet)) * 3
    self.patch_embed = layers.dense(patch_dim, e.width, axes=(None, "tensor"), rngs=rngs, dtype=dtype)
    self.pos = PositionTable(m.pos, self.grid, e.width, e.heads)
    self.blocks = layers.BlockStack(
      lambda r: layers.ViTBlock(e.width, e.heads, e.mlp_ratio, rngs=r, dtype=dtype),
      e.depth,
      rngs=rngs,
      scan=m.scan_layers,
      remat=m.remat,
    )
    self.norm = layers.layer_norm(e.width, rngs=rngs, dtype=dtype)

  @property
  def num_tokens(self) -> int:
    return int(np.prod(self.grid))

  def __call__(self, video_BTHWC: jax.Array, ids_BK: jax.Array | None = None) -> jax.Array:
    """video in [0, 1]; ids: the tokens to encode (default: all). Returns features [B, K, width]."""
    x = (video_BTHWC - IMAGENET_MEAN) / IMAGENET_STD
    patches_BNP = patchify(x, self.tubelet)
    B, N, _ = patches_BNP.shape
    if ids_BK is None:
      ids_BK = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, N))
    else:
      patches_BNP = gather_tokens(patches_BNP, ids_BK)
    x_BKD, rope = self.pos.apply(self.patch_embed(patches_BNP), ids_BK)
    return self.norm(self.blocks(x_BKD, rope=rope))


def build(model_cfg: ml_collections.ConfigDict, weights: dict):
  """A `VideoViT` holding `weights` (a pure dict), without running the random initialisers."""
  abstract = nnx.eval_shape(lambda: VideoViT(model_cfg, model_cfg.encoder, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  from worldmodel.checkpoint import conform  # models do not depend on checkpointing at import

  weights = conform(weights, nnx.to_pure_dict(state), "encoder weights")
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, weights))
  return nnx.merge(graphdef, state)


class Predictor(nnx.Module):
  """Narrow ViT: context features + one learned mask token per mask set at the target positions → target features.

  Context and target tokens are concatenated (attention does not care about order; positions come from the ids),
  so every mask set gives a sequence of all N tokens and all sets run as one batch.
  """

  def __init__(self, m: ml_collections.ConfigDict, num_mask_tokens: int, *, rngs: nnx.Rngs):
    p, dtype = m.predictor, config_lib.compute_dtype(m.dtype)
    grid = token_grid(m.frames, m.size, m.tubelet)
    self.embed = layers.dense(m.encoder.width, p.width, axes=("fsdp", "tensor"), rngs=rngs, dtype=dtype)
    self.mask_tokens = nnx.Param(jnp.zeros((num_mask_tokens, p.width)), out_sharding=(None, None))
    self.pos = PositionTable(m.pos, grid, p.width, p.heads)
    self.blocks = layers.BlockStack(
      lambda r: layers.ViTBlock(p.width, p.heads, p.mlp_ratio, rngs=r, dtype=dtype),
      p.depth,
      rngs=rngs,
      scan=m.scan_layers,
      remat=m.remat,
    )
    self.norm = layers.layer_norm(p.width, rngs=rngs, dtype=dtype)
    self.proj = layers.dense(p.width, m.encoder.width, axes=("tensor", "fsdp"), rngs=rngs, dtype=dtype)

  def __call__(self, sets: list[tuple[jax.Array, jax.Array, jax.Array]], *, dense: bool = False) -> list[jax.Array]:
    """sets: per mask set (context features [B, K, D], context ids [B, K], target ids [B, M]) → predictions
    [B, M, D] per set; dense: [B, K + M, D], the context positions' first (V-JEPA 2.1's dense loss). Sets whose
    K + M agree run as one batch."""
    xs, ids = [], []
    for i, (ctx_BKD, ctx_ids, tgt_ids) in enumerate(sets):
      B, M = tgt_ids.shape
      mask_BMW = jnp.broadcast_to(self.mask_tokens[i].astype(ctx_BKD.dtype), (B, M, self.mask_tokens.shape[1]))
      xs.append(jnp.concatenate([self.embed(ctx_BKD), mask_BMW], axis=1))
      ids.append(jnp.concatenate([ctx_ids, tgt_ids], axis=1))
    lengths = {x.shape[1] for x in xs}
    if len(lengths) == 1:  # one call for all sets: bigger matmuls, one set of weights read
      outs = jnp.split(self._blocks(jnp.concatenate(xs), jnp.concatenate(ids)), len(xs))
    else:
      outs = [self._blocks(x, i) for x, i in zip(xs, ids)]
    return [self.proj(self.norm(o if dense else o[:, c.shape[1] :])) for o, (c, _, _) in zip(outs, sets)]

  def _blocks(self, x_BLW: jax.Array, ids_BL: jax.Array) -> jax.Array:
    x_BLW, rope = self.pos.apply(x_BLW, ids_BL)
    return self.blocks(x_BLW, rope=rope)
