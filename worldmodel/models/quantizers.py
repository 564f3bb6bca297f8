"""Discrete bottlenecks for video tokenizers: FSQ and EMA-updated cosine VQ.

Both map latents [..., D] to codes on a fixed (FSQ) or learned-by-EMA (VQ) set and return a `QuantOut`.
Neither owns an `nnx.Param`: VQ keeps its codebook in `CodebookState`, which only the forward pass writes
(train=True), so optimizers built with `wrt=nnx.Param` never touch it.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class QuantOut(NamedTuple):
  z_q: jax.Array  # [..., D] quantized latents with straight-through gradient
  indices: jax.Array  # [...] int32 code index per token
  loss: jax.Array  # scalar auxiliary loss (0.0 for FSQ)
  metrics: dict  # scalars for logging


class CodebookState(nnx.Variable):
  """Non-trainable quantizer state (codebook, EMA counts and sums): updated in the forward pass, never by grads."""


def _usage_metrics(idx_N: jax.Array, num_codes: int, prefix: str) -> dict:
  """Fraction of codes hit by this batch and perplexity of the batch code histogram.

  Counted from the sorted indices (run lengths), so the cost scales with the batch, not the codebook: FSQ
  codebooks with many levels can have millions of codes.
  """
  n = idx_N.shape[0]
  sorted_N = jnp.sort(idx_N)
  is_new_N = jnp.concatenate([jnp.ones((1,), bool), sorted_N[1:] != sorted_N[:-1]])
  run_N = jnp.cumsum(is_new_N) - 1
  counts_N = jax.ops.segment_sum(jnp.ones((n,), jnp.float32), run_N, num_segments=n)  # trailing zeros unused
  p_N = counts_N / n
  entropy = -jnp.sum(jnp.where(p_N > 0, p_N * jnp.log(jnp.maximum(p_N, 1e-30)), 0.0))
  return {
    f"{prefix}/codebook_usage_batch": jnp.sum(is_new_N).astype(jnp.float32) / float(num_codes),
    f"{prefix}/perplexity": jnp.exp(entropy),
  }


def _l2norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


# ----------------------------------------------------------------------------------------------- FSQ


_SATURATED = 2.0  # |pre-tanh input| beyond which tanh' < 0.07: the channel is effectively frozen


class FSQ(nnx.Module):
  """Finite Scalar Quantization (Mentzer et al. 2023). Codes lie on a grid in [-1, 1]^D, D = len(levels).

  Gradients pass straight through the rounding only (as in the paper), so d z_q / d z is the diagonal
  derivative of the tanh bound / half_width: ~1 near 0, vanishing when a channel saturates.
  """

  def __init__(self, levels: Sequence[int] = (8, 5, 5, 5), saturation_penalty: float = 0.0):
    self.levels = tuple(int(l) for l in levels)  # plain tuple: static, not state
    # Once a channel sits deep in the tanh's flat tail its gradient vanishes and its code can never change again
    # (we saw whole runs collapse onto 1-2 codes this way); this penalty pulls such channels back.
    self.saturation_penalty = float(saturation_penalty)
    if min(self.levels) < 2:
      raise ValueError(f"every level must be >= 2, got {self.levels}")

  @property
  def num_codes(self) -> int:
    return math.prod(self.levels)

  @property
  def code_dim(self) -> int:
    return len(self.levels)

  def _consts(self):
    levels_D = np.asarray(self.levels, np.float32)
    half_width_D = np.asarray([l // 2 for l in self.levels], np.float32)
    basis_D = np.cumprod([1] + list(self.levels[:-1])).astype(np.int32)  # mixed radix, first channel fastest
    return levels_D, half_width_D, basis_D

  def bound(self, z_ND: jax.Array) -> jax.Array:
    """Squash to (-L/2, L/2) so rounding gives exactly L values; even L are shifted by half a step."""
    levels_D, _, _ = self._consts()
    half_l_D = (levels_D - 1) * (1 - 1e-3) / 2
    offset_D = np.where(levels_D % 2 == 0, 0.5, 0.0)
    shift_D = np.arctanh(offset_D / half_l_D)  # makes bound(0) = 0
    return jnp.tanh(z_ND + shift_D) * half_l_D - offset_D

  def __call__(self, z_BND: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> QuantOut:
    del train, rng  # FSQ has no state and no randomness
    if z_BND.shape[-1] != self.code_dim:
      raise ValueError(f"expected last dim {self.code_dim}, got {z_BND.shape}")
    _, half_width_D, _ = self._consts()
    bounded = self.bound(z_BND.astype(jnp.float32))
    rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    z_q = (rounded / half_width_D).astype(z_BND.dtype)
    idx = self.codes_to_indices(jax.lax.stop_gradient(z_q))
    metrics = _usage_metrics(idx.reshape(-1), self.num_codes, "fsq")
    excess = jax.nn.relu(jnp.abs(z_BND.astype(jnp.float32)) - _SATURATED)
    metrics["fsq/saturated_frac"] = jnp.mean(excess > 0)
    loss = self.saturation_penalty * jnp.mean(jnp.square(excess)) if self.saturation_penalty else jnp.zeros(())
    return QuantOut(z_q, idx, loss, metrics)

  def codes_to_indices(self, codes: jax.Array) -> jax.Array:
    """[..., D] grid codes in [-1, 1] -> [...] int32 index in [0, num_codes)."""
    _, half_width_D, basis_D = self._consts()
    digits = jnp.round(codes.astype(jnp.float32) * half_width_D + half_width_D).astype(jnp.int32)
    return jnp.sum(digits * basis_D, axis=-1).astype(jnp.int32)

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """[...] int index -> [..., D] float32 grid codes."""
    levels_D, half_width_D, basis_D = self._consts()
    digits = (indices[..., None].astype(jnp.int32) // basis_D) % levels_D.astype(np.int32)
    return (digits.astype(jnp.float32) - half_width_D) / half_width_D


# ------------------------------------------------------------------------------------------------ VQ


class VQ(nnx.Module):
  """Cosine-similarity VQ (ViT-VQGAN) with an EMA codebook (VQ-VAE-2 / SoundStream) and dead-code restart.

  Codes and inputs are l2-normalised for the lookup; z_q = z + sg(q - z) (q has unit norm), and the
  commitment loss ||z - sg(q)||^2 also pulls |z| towards 1. With train=True the forward pass updates
  `codebook`, `ema_count`, `ema_sum` (all `CodebookState`) and revives codes whose EMA count falls below
  `restart_threshold` with random input vectors of the batch (needs `rng`).
  """

  def __init__(
    self,
    num_codes: int,
    code_dim: int,
    *,
    rngs: nnx.Rngs,
    commitment: float = 0.25,
    decay: float = 0.99,
    restart_threshold: float = 0.01,
    eps: float = 1e-5,
  ):
    self.commitment, self.decay, self.eps = float(commitment), float(decay), float(eps)
    self.restart_threshold = float(restart_threshold)
    # Revived codes start with this count: they survive ~log(count/threshold)/(1-decay) unused steps.
    self.restart_count = max(1.0, 2.0 * self.restart_threshold)
    codebook_KD = _l2norm(jax.random.normal(rngs.params(), (num_codes, code_dim), jnp.float32))
    self.codebook = CodebookState(codebook_KD)
    self.ema_count = CodebookState(jnp.ones((num_codes,), jnp.float32))  # as if each code was seen once
    self.ema_sum = CodebookState(codebook_KD)

  @property
  def num_codes(self) -> int:
    return self.codebook.shape[0]

  @property
  def code_dim(self) -> int:
    return self.codebook.shape[1]

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """[...] int index -> [..., D] unit-norm codes (the forward value of z_q)."""
    return jnp.take(jax.lax.stop_gradient(self.codebook[...]), indices, axis=0)

  def _lookup(self, zn_ND: jax.Array) -> jax.Array:
    sim_NK = zn_ND @ jax.lax.stop_gradient(self.codebook[...]).T
    return jnp.argmax(sim_NK, axis=-1).astype(jnp.int32)

  def __call__(self, z_BND: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> QuantOut:
    lead, D = z_BND.shape[:-1], z_BND.shape[-1]
    if D != self.code_dim:
      raise ValueError(f"expected last dim {self.code_dim}, got {z_BND.shape}")
    z_ND = z_BND.reshape(-1, D).astype(jnp.float32)
    zn_ND = _l2norm(z_ND)
    idx_N = self._lookup(jax.lax.stop_gradient(zn_ND))
    q_ND = self.indices_to_codes(idx_N)
    commit_loss = jnp.mean(jnp.sum((z_ND - q_ND) ** 2, axis=-1))
    z_q = z_ND + jax.lax.stop_gradient(q_ND - z_ND)

    metrics = _usage_metrics(idx_N, self.num_codes, "vq")
    metrics["vq/commit_loss"] = commit_loss
    if train:
      metrics["vq/dead_codes"] = self._ema_update(jax.lax.stop_gradient(zn_ND), idx_N, rng)
    else:
      metrics["vq/dead_codes"] = jnp.sum(self.ema_count[...] < self.restart_threshold).astype(jnp.float32)
    return QuantOut(
      z_q.reshape(*lead, D).astype(z_BND.dtype), idx_N.reshape(lead), self.commitment * commit_loss, metrics
    )

  def _ema_update(self, zn_ND: jax.Array, idx_N: jax.Array, rng: jax.Array | None) -> jax.Array:
    """EMA of cluster counts and sums, renormalise, then restart dead codes. Returns #codes restarted."""
    K, d = self.num_codes, self.decay
    counts_K = jnp.bincount(idx_N, length=K).astype(jnp.float32)
    sums_KD = jax.ops.segment_sum(zn_ND, idx_N, num_segments=K)
    ema_count_K = d * self.ema_count[...] + (1 - d) * counts_K
    ema_sum_KD = d * self.ema_sum[...] + (1 - d) * sums_KD
    # On the sphere the cluster mean's direction is the sum's direction: no count division needed.
    codebook_KD = _l2norm(ema_sum_KD, self.eps)

    dead_K = ema_count_K < self.restart_threshold
    if self.restart_threshold > 0:
      if rng is None:
        raise ValueError("VQ(train=True) with restart_threshold > 0 needs rng")
      pick_K = jax.random.randint(rng, (K,), 0, zn_ND.shape[0])  # static shape: sample for all, keep dead
      new_KD = zn_ND[pick_K]
      codebook_KD = jnp.where(dead_K[:, None], new_KD, codebook_KD)
      ema_sum_KD = jnp.where(dead_K[:, None], new_KD * self.restart_count, ema_sum_KD)
      ema_count_K = jnp.where(dead_K, self.restart_count, ema_count_K)

    self.codebook[...] = codebook_KD
    self.ema_count[...] = ema_count_K
    self.ema_sum[...] = ema_sum_KD
    return jnp.sum(dead_K).astype(jnp.float32)
