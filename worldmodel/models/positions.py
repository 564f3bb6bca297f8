"""Position encodings for 3-D token grids (time × height × width): fixed sin-cos tables and V-JEPA 2's 3-D RoPE.

Both are functions of integer token coordinates, so a masked subset of tokens gets its positions by indexing, and a
new resolution needs no interpolation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def grid_coords(grid_THW: tuple[int, int, int]) -> np.ndarray:
  """[N, 3] integer (t, h, w) of every token, in raster order (t slowest): token id = (t·H + h)·W + w."""
  t, h, w = np.meshgrid(*(np.arange(n) for n in grid_THW), indexing="ij")
  return np.stack([t.ravel(), h.ravel(), w.ravel()], axis=-1)


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = pos[:, None].astype(np.float64) * omega[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(grid_THW: tuple[int, int, int], dim: int, uniform_power: bool = True) -> np.ndarray:
  """V-JEPA's fixed table [t | h | w], each part [sin | cos], cut to dim. uniform_power (the published checkpoints):
  ceil(dim/6)·2 channels each; otherwise (the vjepa2 code's default): dim//2 for time, dim//4 each for h and w."""
  if not uniform_power and dim % 8:
    raise ValueError(f"the non-uniform sin-cos table needs a width divisible by 8 (even h / w parts), got {dim}")
  parts = [int(math.ceil(dim / 6) * 2)] * 3 if uniform_power else [dim // 2, dim // 4, dim // 4]
  coords = grid_coords(grid_THW)
  table = np.concatenate([_sincos_1d(part, coords[:, i]) for i, part in enumerate(parts)], axis=1)
  return table[:, :dim].astype(np.float32)


def rope_dims(head_dim: int) -> int:
  """Channels per axis that V-JEPA 2 rotates: 2·((head_dim // 3) // 2); the rest of the head is left as is."""
  return 2 * ((head_dim // 3) // 2)


def rope_angles(coords_N3: jax.Array, head_dim: int) -> tuple[jax.Array, jax.Array]:
  """sin, cos [..., N, head_dim] for 3-D RoPE exactly as V-JEPA 2 lays it out.

  Per axis a (t, h, w in that order) with d = rope_dims channels: frequencies f_i = pos_a / 10000^(i / (d/2)) for
  i < d/2, *tiled* to [f_0..f_{d/2-1}, f_0..f_{d/2-1}] while the rotation pairs adjacent channels (2i, 2i+1). The
  reference keeps this mismatch for checkpoint compatibility, so we reproduce it; the unrotated tail gets sin 0, cos 1.
  """
  d = rope_dims(head_dim)
  omega = 1.0 / 10000 ** (jnp.arange(d // 2, dtype=jnp.float32) / (d / 2.0))
  parts = []
  for a in range(3):
    f = coords_N3[..., a : a + 1].astype(jnp.float32) * omega
    parts.append(jnp.concatenate([f, f], axis=-1))
  angles = jnp.concatenate(parts, axis=-1)
  tail = head_dim - 3 * d
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  if tail:
    pad = [(0, 0)] * (angles.ndim - 1) + [(0, tail)]
    sin = jnp.pad(sin, pad)
    cos = jnp.pad(cos, pad, constant_values=1.0)
  return sin, cos


def apply_rope(x_BLHE: jax.Array, sin_BLE: jax.Array, cos_BLE: jax.Array) -> jax.Array:
  """x·cos + rotate_pairs(x)·sin, rotate_pairs(x)[2i] = -x[2i+1], [2i+1] = x[2i]."""
  B, L, H, E = x_BLHE.shape
  pairs = x_BLHE.reshape(B, L, H, E // 2, 2)
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(B, L, H, E)
  sin, cos = sin_BLE[:, :, None].astype(x_BLHE.dtype), cos_BLE[:, :, None].astype(x_BLHE.dtype)
  return x_BLHE * cos + rotated * sin
