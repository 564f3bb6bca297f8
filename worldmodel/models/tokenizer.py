"""Video tokenizer: tubelet patchify → space-time encoder → quantizer (FSQ / VQ) → space-time decoder → pixels.

Time is causal throughout (a latent step only sees earlier steps), so tokens of a prefix do not depend on the future.
Pixels enter as floats in [0, 1] and are mapped to [-1, 1] inside; the decoder predicts [-1, 1] values.
"""

from __future__ import annotations

from typing import NamedTuple

import einops
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from worldmodel import config as config_lib
from worldmodel.models import layers
from worldmodel.models.quantizers import FSQ, VQ, QuantOut


class TokenizerOut(NamedTuple):
  recon_BTHWC: jax.Array  # reconstruction in [-1, 1] (unclipped)
  indices_BTN: jax.Array  # code index per latent token
  quant: QuantOut


def make_quantizer(cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
  if cfg.kind == "fsq":
    return FSQ(tuple(cfg.levels), saturation_penalty=cfg.saturation_penalty)
  if cfg.kind == "vq":
    return VQ(
      cfg.num_codes,
      cfg.code_dim,
      rngs=rngs,
      commitment=cfg.commitment,
      decay=cfg.decay,
      restart_threshold=cfg.restart_threshold,
    )
  raise ValueError(f"config key 'model.quantizer.kind' must be 'fsq' or 'vq', got {cfg.kind!r}")


class VideoTokenizer(nnx.Module):
  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = config_lib.compute_dtype(cfg.dtype)
    pt, ph, pw = cfg.tubelet
    T, H, W = cfg.frames, cfg.size, cfg.size
    if T % pt or H % ph or W % pw:
      raise ValueError(f"model: clip {T}x{H}x{W} is not divisible by tubelet {cfg.tubelet}")
    self.grid = (T // pt, H // ph, W // pw)
    patch_dim, D = pt * ph * pw * 3, cfg.width
    self.quantizer = make_quantizer(cfg.quantizer, rngs=rngs)
    code_dim = self.quantizer.code_dim

    def block(r: nnx.Rngs) -> layers.SpaceTimeBlock:
      return layers.SpaceTimeBlock(D, cfg.heads, cfg.mlp_ratio, rngs=r, dtype=dtype)

    self.embed = layers.dense(patch_dim, D, axes=(None, "tensor"), rngs=rngs, dtype=dtype)
    self.enc_pos = _positions(self.grid, D, rngs)
    scan = cfg.scan_layers
    self.encoder = layers.BlockStack(block, cfg.enc_depth, rngs=rngs, scan=scan, remat=cfg.remat)
    self.enc_norm = layers.layer_norm(D, rngs=rngs, dtype=dtype)
    self.to_code = layers.dense(D, code_dim, axes=("fsdp", None), rngs=rngs, dtype=jnp.float32)

    self.from_code = layers.dense(code_dim, D, axes=(None, "tensor"), rngs=rngs, dtype=dtype)
    self.dec_pos = _positions(self.grid, D, rngs)
    self.decoder = layers.BlockStack(block, cfg.dec_depth, rngs=rngs, scan=scan, remat=cfg.remat)
    self.dec_norm = layers.layer_norm(D, rngs=rngs, dtype=dtype)
    self.to_pixels = layers.dense(D, patch_dim, axes=("fsdp", None), rngs=rngs, dtype=jnp.float32)

  @property
  def tokens_per_clip(self) -> int:
    t, h, w = self.grid
    return t * h * w

  def patchify(self, video_BTHWC: jax.Array) -> jax.Array:
    pt, ph, pw = self.cfg.tubelet
    return einops.rearrange(video_BTHWC, "b (t pt) (h ph) (w pw) c -> b t (h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)

  def unpatchify(self, patches_BTNP: jax.Array) -> jax.Array:
    pt, ph, pw = self.cfg.tubelet
    return einops.rearrange(
      patches_BTNP, "b t (h w) (pt ph pw c) -> b (t pt) (h ph) (w pw) c", h=self.grid[1], pt=pt, ph=ph, pw=pw, c=3
    )

  def encode(self, video_BTHWC: jax.Array) -> jax.Array:
    """[0,1] pixels → continuous pre-quantisation latents z_BTND (D = code dim)."""
    x = self.embed(self.patchify(video_BTHWC * 2.0 - 1.0)) + self.enc_pos[...]
    x = self.encoder(x)
    return self.to_code(self.enc_norm(x).astype(jnp.float32))

  def decode(self, z_q_BTND: jax.Array) -> jax.Array:
    """Quantised latents → pixels in [-1, 1]."""
    x = self.from_code(z_q_BTND) + self.dec_pos[...]
    x = self.decoder(x)
    return self.unpatchify(self.to_pixels(self.dec_norm(x).astype(jnp.float32)))

  def tokenize(self, video_BTHWC: jax.Array) -> jax.Array:
    return self.quantizer(self.encode(video_BTHWC), train=False).indices

  def detokenize(self, indices_BTN: jax.Array) -> jax.Array:
    return self.decode(self.quantizer.indices_to_codes(indices_BTN))

  def __call__(self, video_BTHWC: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> TokenizerOut:
    z = self.encode(video_BTHWC)
    q = self.quantizer(z, train=train, rng=rng)
    return TokenizerOut(self.decode(q.z_q), q.indices, q)


def _positions(grid: tuple[int, int, int], dim: int, rngs: nnx.Rngs) -> nnx.Param:
  """Learned factorised positions: time + space, shaped [T', N, D] to add to tokens."""
  t, h, w = grid
  init = nnx.initializers.normal(0.02)
  time_TD = init(rngs.params(), (t, 1, dim))
  space_ND = init(rngs.params(), (1, h * w, dim))
  return nnx.Param(time_TD + space_ND)
