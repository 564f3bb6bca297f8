"""Scaled dot-product attention: fused kernels on GPU / TPU (attention_backends.py), a leaner kernel on CPU.

On CPU the attention matrices ([B, H, L, L]) are what costs time, not the matmuls: every elementwise pass over
them is memory-bound. `jax.nn.dot_product_attention`'s XLA path makes ~10 such passes forward + backward (measured
427 ms per predictor layer at [16, 512, 6 heads, 32]); the kernel below normalises after the PV matmul, runs the
forward in query blocks, and has a hand-written backward that recomputes P from the saved log-sum-exp (~2× faster
end to end, BUILD_NOTES.md). Same FLOPs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from worldmodel.models import attention_backends as backends
from worldmodel.models.attention_backends import FrameCausal  # noqa: F401 - re-exported for callers

NEG_INF = -1e30


def dot_product_attention(q_BQHE, k_BKHE, v_BKHE, *, mask=None, causal: bool = False) -> jax.Array:
  """softmax(q·kᵀ/√d + mask) · v, shapes [B, L, H, E]; `mask` boolean broadcastable to [B, H, Q, K], or a
  structured `FrameCausal`. The kernel is chosen per backend and `model.attention` (attention_backends.choose)."""
  impl, why = backends.choose(q_BQHE, k_BKHE, mask, causal)
  if why:
    backends.log_fallback(why)
  if impl == "cudnn":
    return backends.cudnn_attention(q_BQHE, k_BKHE, v_BKHE, mask=mask, causal=causal)
  if impl == "splash":
    return backends.splash_attention(q_BQHE, k_BKHE, v_BKHE, mask=mask, causal=causal)
  if impl == "cpu" and mask is None and not causal and not fused_refusal(q_BQHE, k_BKHE):
    return backends.cpu_fused_attention(q_BQHE, k_BKHE, v_BKHE)
  mask = backends.dense_mask(mask, q_BQHE.shape[1], k_BKHE.shape[1])
  if impl == "xla":
    return jax.nn.dot_product_attention(q_BQHE, k_BKHE, v_BKHE, mask=mask, is_causal=causal)
  if causal:
    Q, K = q_BQHE.shape[1], k_BKHE.shape[1]
    tril = jnp.tril(jnp.ones((Q, K), bool), K - Q)[None, None]
    mask = tril if mask is None else mask & tril
  bias = None if mask is None else jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)
  return _attention(q_BQHE, k_BKHE, v_BKHE, bias) if bias is not None else _attention_nobias(q_BQHE, k_BKHE, v_BKHE)


def fused_refusal(q_BQHE, k_BKHE) -> str | None:
  """Why the fused native kernel (worldmodel/kernels) cannot take an unmasked call, logged once; None if it can."""
  from worldmodel import kernels

  why = kernels.supports(q_BQHE, k_BKHE)
  if why:
    backends.log_once(f"fused CPU kernel not used: {why}; using the XLA-composed CPU kernel")
  return why


def _logits(q, k, bias):
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k, preferred_element_type=jnp.float32)
  return logits if bias is None else logits + bias


QUERY_CHUNK = 64  # forward in query blocks: a [B, H, 64, K] block stays in cache across its passes (1.6× faster)


def _forward(q, k, v, bias):
  """Returns o [B, Q, H, D] and the log-sum-exp [B, H, Q, 1] the backward needs."""
  scale = q.shape[-1] ** -0.5
  # One transpose of each operand, not one per block.
  return _forward_blocks((q * scale).transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), bias)


def _forward_blocks(q_bhqd, k_bhdk, v_bhkd, bias):
  Q = q_bhqd.shape[2]
  step = QUERY_CHUNK if Q >= 2 * QUERY_CHUNK and Q % QUERY_CHUNK == 0 else Q
  outs, lses = [], []
  for i in range(0, Q, step):
    logits = jnp.matmul(q_bhqd[:, :, i : i + step], k_bhdk, preferred_element_type=jnp.float32)
    if bias is not None:
      logits = logits + (bias if bias.shape[-2] == 1 else bias[..., i : i + step, :])
    m = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - m)
    den = jnp.sum(e, axis=-1, keepdims=True)
    # Normalise after the PV matmul: one pass over the block fewer than dividing P.
    pv = jnp.matmul(e.astype(v_bhkd.dtype), v_bhkd, preferred_element_type=jnp.float32)
    outs.append((pv / den).astype(v_bhkd.dtype))
    lses.append(m + jnp.log(den))
  return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3), jnp.concatenate(lses, axis=2)


def _backward(q, k, v, bias, o, lse, do):
  # Unblocked (blocking the backward means accumulating dK, dV over blocks, which measured slower). The dQ and dK
  # products are written as plain [.., M, N] @ [.., N, P] matmuls over the big matrix: ~1.5× faster than einsum's
  # choice of operand order here.
  # Every product accumulates in f32 (bf16 operands: XLA:CPU's fast bf16 dot path is bf16 x bf16 -> f32 only).
  scale, f32 = q.shape[-1] ** -0.5, jnp.float32
  p = jnp.exp(_logits(q, k, bias) - lse).astype(v.dtype)  # recomputed, as flash attention does
  dv = jnp.einsum("bhqk,bqhd->bkhd", p, do, preferred_element_type=f32)
  dp = jnp.einsum("bqhd,bkhd->bhqk", do, v, preferred_element_type=f32)
  delta = jnp.sum(do.astype(f32) * o, axis=-1).transpose(0, 2, 1)[..., None]  # rowsum(dO ∘ O) = rowsum(P ∘ dP)
  ds = (p * (dp - delta)).astype(q.dtype)
  dq = jnp.matmul(ds, k.transpose(0, 2, 1, 3), preferred_element_type=f32).transpose(0, 2, 1, 3) * scale
  dk = jnp.matmul(q.transpose(0, 2, 3, 1), ds, preferred_element_type=f32).transpose(0, 3, 1, 2) * scale
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@jax.custom_vjp
def _attention_nobias(q, k, v):
  return _forward(q, k, v, None)[0]


def _nobias_fwd(q, k, v):
  o, lse = _forward(q, k, v, None)
  return o, (q, k, v, o, lse)


def _nobias_bwd(res, do):
  q, k, v, o, lse = res
  return _backward(q, k, v, None, o, lse, do)


_attention_nobias.defvjp(_nobias_fwd, _nobias_bwd)


@jax.custom_vjp
def _attention(q, k, v, bias):
  return _forward(q, k, v, bias)[0]


def _bias_fwd(q, k, v, bias):
  o, lse = _forward(q, k, v, bias)
  return o, (q, k, v, bias, o, lse)


def _bias_bwd(res, do):
  q, k, v, bias, o, lse = res
  return (*_backward(q, k, v, bias, o, lse, do), jnp.zeros_like(bias))  # masks are constants


_attention.defvjp(_bias_fwd, _bias_bwd)
