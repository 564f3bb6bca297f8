"""Task heads on top of a video encoder's tokens (fine-tuning and evaluation).

`AttentiveHead` is V-JEPA's attentive pooler: learned queries cross-attend over all tokens (so position and
motion information the encoder keeps in individual tokens is reachable, unlike mean pooling), a residual MLP on
the pooled vectors, then a linear read-out of the queries concatenated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from worldmodel.models import layers
from worldmodel.models.attention import dot_product_attention


class AttentiveHead(nnx.Module):
  def __init__(
    self,
    width: int,
    out_dim: int,
    *,
    heads: int,
    queries: int,
    mlp_ratio: float = 4.0,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
  ):
    if width % heads:
      raise ValueError(f"head width {width} is not divisible by {heads} heads")
    self.heads, self.queries = heads, queries
    self.query = nnx.Param(0.02 * jax.random.normal(rngs.params(), (queries, width)))
    self.norm_kv = layers.layer_norm(width, rngs=rngs, dtype=dtype)
    self.q = layers.dense(width, width, axes=("fsdp", "tensor"), rngs=rngs, dtype=dtype)
    self.kv = layers.dense(width, 2 * width, axes=("fsdp", "tensor"), rngs=rngs, dtype=dtype)
    self.proj = layers.dense(width, width, axes=("tensor", "fsdp"), rngs=rngs, dtype=dtype)
    self.norm_mlp = layers.layer_norm(width, rngs=rngs, dtype=dtype)
    self.mlp = layers.MLP(width, int(width * mlp_ratio), rngs=rngs, dtype=dtype)
    self.norm_out = layers.layer_norm(width, rngs=rngs, dtype=dtype)
    self.out = layers.dense(queries * width, out_dim, axes=("fsdp", None), rngs=rngs, dtype=dtype)

  def __call__(self, x_BND: jax.Array) -> jax.Array:
    """Tokens [B, N, D] → outputs [B, out_dim] (f32)."""
    B, N, D = x_BND.shape
    H, Q = self.heads, self.queries
    kv = self.kv(self.norm_kv(x_BND)).reshape(B, N, H, 2, D // H)
    q = jnp.broadcast_to(self.q(self.query[...]).reshape(1, Q, H, D // H), (B, Q, H, D // H)).astype(kv.dtype)
    pooled_BQD = self.query[...] + self.proj(dot_product_attention(q, kv[:, :, :, 0], kv[:, :, :, 1]).reshape(B, Q, D))
    pooled_BQD = pooled_BQD + self.mlp(self.norm_mlp(pooled_BQD))
    return self.out(self.norm_out(pooled_BQD).reshape(B, Q * D)).astype(jnp.float32)
