"""Transformer building blocks shared by every model (tokenizer, JEPA encoder / predictor, AC predictor).

Parameters are f32 ("master weights"); `dtype` is the compute dtype (bf16 on TPU/GPU and on CPUs with bf16 dot
instructions, f32 on other CPUs, where bf16 is slower: `model.dtype='auto'`).
Every kernel carries mesh-axis annotations: `fsdp` shards the input dimension of projections, `tensor` splits heads and
the MLP hidden dimension (Megatron style: column-parallel in, row-parallel out).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from worldmodel.models import attention_backends, positions
from worldmodel.models.attention import dot_product_attention

_init = nnx.initializers.xavier_uniform()
_NARROW = (jnp.bfloat16, jnp.float16)


@jax.custom_vjp
def _narrow_matmul(x_XK, w_KN):
  """x @ w over x's last axis for bf16 / f16 operands, with float32 accumulation and output, forward and backward.

  XLA:CPU runs bf16 x bf16 -> f32 dots on AVX512_BF16 / AMX (~2.4x its f32 rate on Zen 4), but bf16 x bf16 -> bf16
  dots, and the bf16 dots of jax's own transpose rule, on a slow path (below its f32 rate): BUILD_NOTES, "bf16 on CPU".
  """
  return jnp.einsum("...k,kn->...n", x_XK, w_KN, preferred_element_type=jnp.float32)


def _narrow_matmul_fwd(x_XK, w_KN):
  return _narrow_matmul(x_XK, w_KN), (x_XK, w_KN)


def _matmul_grads(x_XK, w_KN, g_XN):
  """Input and weight gradients of x @ w in f32, from g cast to the (narrow) operands' dtype."""
  g_XN = g_XN.astype(x_XK.dtype)
  dx_XK = jnp.einsum("...n,kn->...k", g_XN, w_KN, preferred_element_type=jnp.float32)
  dw_KN = jnp.einsum("...k,...n->kn", x_XK, g_XN, preferred_element_type=jnp.float32)
  return dx_XK, dw_KN


def _narrow_matmul_bwd(res, g_XN):
  x_XK, w_KN = res
  dx_XK, dw_KN = _matmul_grads(x_XK, w_KN, g_XN)
  return dx_XK.astype(x_XK.dtype), dw_KN.astype(w_KN.dtype)


_narrow_matmul.defvjp(_narrow_matmul_fwd, _narrow_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cast_matmul(x_XK, w_KN, dtype):
  """`_narrow_matmul` of f32 operands cast to `dtype` inside: the cotangents come back in f32 straight from the
  f32-accumulating products, with no narrow copy of each activation gradient and weight gradient to widen again
  (the casts outside a custom VJP cost two passes per product, and round the weight gradients to bf16)."""
  return _narrow_matmul(x_XK.astype(dtype), w_KN.astype(dtype))


def _cast_matmul_fwd(x_XK, w_KN, dtype):
  x_XK, w_KN = x_XK.astype(dtype), w_KN.astype(dtype)
  return _narrow_matmul(x_XK, w_KN), (x_XK, w_KN)  # residuals narrow: half the memory


def _cast_matmul_bwd(dtype, res, g_XN):
  del dtype  # the residuals carry it
  return _matmul_grads(*res, g_XN)  # f32, the primal operands' dtype


_cast_matmul.defvjp(_cast_matmul_fwd, _cast_matmul_bwd)


def _cpu() -> bool:
  return jax.default_backend() == "cpu"


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, compute_dtype=None, **kwargs):
  """`nnx.Linear`'s product: narrow (bf16 / f16) operands on CPU go through `_narrow_matmul` and the result stays
  f32, everything else through `lax.dot_general` unchanged. On CPU bf16 is for dot operands only (as PyTorch's CPU
  autocast): XLA:CPU's bf16 element-wise ops are slower than f32 (LayerNorm + GELU over [8, 512, 384], forward +
  backward: 24.8 ms in bf16 vs 2.3 ms in f32 on Zen 4), so activations stay f32 between the dense layers."""
  (contract_l, contract_r), batch = dimension_numbers
  plain = (tuple(contract_l), tuple(contract_r)) == ((lhs.ndim - 1,), (0,)) and batch == ((), ()) and rhs.ndim == 2
  if plain and compute_dtype in _NARROW and lhs.dtype == rhs.dtype == jnp.float32 and _cpu():
    return _cast_matmul(lhs, rhs, compute_dtype).astype(preferred_element_type or jnp.float32)
  if plain and lhs.dtype in _NARROW and rhs.dtype == lhs.dtype and _cpu():
    return _narrow_matmul(lhs, rhs).astype(preferred_element_type or jnp.float32)
  return jax.lax.dot_general(
    lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type, **kwargs
  )


def dense(
  din: int, dout: int, *, axes: tuple, rngs: nnx.Rngs, dtype=jnp.float32, use_bias: bool = True, init=_init
) -> nnx.Linear:
  # CPU with a narrow compute dtype: the layer stays f32 and its product casts inside (`_cast_matmul`).
  narrow_cpu = jnp.dtype(dtype) in _NARROW and _cpu()
  return nnx.Linear(
    din,
    dout,
    use_bias=use_bias,
    dtype=jnp.float32 if narrow_cpu else dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
    dot_general=functools.partial(dot_general, compute_dtype=jnp.dtype(dtype)) if narrow_cpu else dot_general,
    kernel_init=nnx.with_partitioning(init, axes),
    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
  )


def compute_dtype(linear: nnx.Linear):
  """The dtype a `dense` layer computes its product in (on CPU a narrow one lives in its product, not in .dtype)."""
  dot = linear.dot_general
  return jnp.dtype(dot.keywords["compute_dtype"]) if isinstance(dot, functools.partial) else jnp.dtype(linear.dtype)


def layer_norm(dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.LayerNorm:
  dtype = jnp.float32 if _cpu() else dtype  # CPU: element-wise work in f32 (see dot_general)
  return nnx.LayerNorm(dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs, epsilon=1e-6)


class Attention(nnx.Module):
  """Multi-head self-attention: jax.nn.dot_product_attention (fused kernels) on GPU/TPU; see attention.py for CPU."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    if dim % heads:
      raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
    self.heads, self.dtype = heads, dtype
    self.qkv = dense(dim, 3 * dim, axes=("fsdp", "tensor"), rngs=rngs, dtype=dtype)
    self.out = dense(dim, dim, axes=("tensor", "fsdp"), rngs=rngs, dtype=dtype)

  def qkv_heads(self, x_BLD: jax.Array, rope=None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q, k, v [B, L, H, K]; `rope` = (sin, cos) [B, L, K] rotates q and k."""
    B, L, D = x_BLD.shape
    # Heads-major layout [.., H, 3, K]: splitting the fused output over `tensor` splits whole heads.
    qkv_BLH3K = self.qkv(x_BLD).reshape(B, L, self.heads, 3, D // self.heads)
    q, k, v = (qkv_BLH3K[:, :, :, i] for i in range(3))
    if rope is not None:
      q, k = positions.apply_rope(q, *rope), positions.apply_rope(k, *rope)
    return q, k, v

  def __call__(self, x_BLD: jax.Array, *, causal: bool = False, mask=None, rope=None) -> jax.Array:
    """`mask`: boolean, broadcastable to [B, H, L, L] (True = may attend)."""
    B, L, D = x_BLD.shape
    q, k, v = self.qkv_heads(x_BLD, rope)
    return self.out(self.attend(q, k, v, causal=causal, mask=mask).reshape(B, L, D))

  def attend(self, q, k, v, *, causal: bool = False, mask=None) -> jax.Array:
    """Attention over [B, L, H, K] heads. Masked calls take their operands in the compute dtype (on CPU the composed
    kernel's products then run bf16 x bf16 -> f32); unmasked ones on CPU keep f32 (the fused kernel computes in f32)
    unless the fused kernel runs bf16 on AMX here (worldmodel/kernels: products on AMX tiles, softmax in f32)."""
    if mask is not None or causal or self._amx_attention(q):
      q, k, v = (t.astype(self.dtype) for t in (q, k, v))
    return dot_product_attention(q, k, v, causal=causal, mask=mask)

  def _amx_attention(self, q) -> bool:
    """Whether this unmasked call goes to the fused CPU kernel and that runs bf16 on AMX tiles."""
    if self.dtype != jnp.bfloat16 or not _cpu() or attention_backends.choose(q, q, None, False)[0] != "cpu":
      return False
    from worldmodel import kernels

    return q.shape[-1] % kernels.AMX_HEAD_MULTIPLE == 0 and kernels.amx()


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x·Φ(x), in PyTorch's form 0.5·x·(1 + erf(x/√2)) (ViT imports match). jax.nn.gelu's exact form goes
  through erfc, which XLA:CPU evaluates at ~half the speed (4.2 vs 2.4 ms over [4096, 1536] f32 on an AMX host)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * 0.7071067811865476).astype(x.dtype))


class MLP(nnx.Module):
  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.up = dense(dim, hidden, axes=("fsdp", "tensor"), rngs=rngs, dtype=dtype)
    self.down = dense(hidden, dim, axes=("tensor", "fsdp"), rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(gelu(self.up(x)))


class SpaceTimeBlock(nnx.Module):
  """Factorised video block: attention within each frame, causal attention across time per position, then MLP.

  Causal time attention keeps the tokenizer usable for prediction: tokens of step t never see steps > t.
  """

  def __init__(self, dim: int, heads: int, mlp_ratio: float, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.norm_s = layer_norm(dim, rngs=rngs, dtype=dtype)
    self.space = Attention(dim, heads, rngs=rngs, dtype=dtype)
    self.norm_t = layer_norm(dim, rngs=rngs, dtype=dtype)
    self.time = Attention(dim, heads, rngs=rngs, dtype=dtype)
    self.norm_m = layer_norm(dim, rngs=rngs, dtype=dtype)
    self.mlp = MLP(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)

  def __call__(self, x_BTND: jax.Array) -> jax.Array:
    B, T, N, D = x_BTND.shape
    h = self.space(self.norm_s(x_BTND).reshape(B * T, N, D)).reshape(B, T, N, D)
    x_BTND = x_BTND + h
    x_BNTD = x_BTND.transpose(0, 2, 1, 3)
    h = self.time(self.norm_t(x_BNTD).reshape(B * N, T, D), causal=True).reshape(B, N, T, D)
    x_BTND = x_BTND + h.transpose(0, 2, 1, 3)
    return x_BTND + self.mlp(self.norm_m(x_BTND))


class ViTBlock(nnx.Module):
  """Pre-LN transformer block (V-JEPA's): x + attn(LN(x)), then x + MLP(LN(x))."""

  def __init__(self, dim: int, heads: int, mlp_ratio: float, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.norm1 = layer_norm(dim, rngs=rngs, dtype=dtype)
    self.attn = Attention(dim, heads, rngs=rngs, dtype=dtype)
    self.norm2 = layer_norm(dim, rngs=rngs, dtype=dtype)
    self.mlp = MLP(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)

  def __call__(self, x_BLD: jax.Array, *, mask=None, rope=None) -> jax.Array:
    x_BLD = x_BLD + self.attn(self.norm1(x_BLD), mask=mask, rope=rope)
    return x_BLD + self.mlp(self.norm2(x_BLD))


REMAT_POLICIES = {"none": None, "full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class BlockStack(nnx.Module):
  """`depth` blocks applied in order.

  scan=True stacks their parameters on a leading layer axis (replicated: `None` in the partition spec) and runs
  them with a scan, so compile time stays flat in depth; scan=False unrolls a Python list (on this CPU unrolled
  layers ran faster, BUILD_NOTES.md). remat: 'none'; 'full' recomputes each block's activations in the backward
  pass; 'dots' keeps the matmul outputs and recomputes only the cheap elementwise work in between.
  """

  def __init__(
    self,
    make_block: Callable[[nnx.Rngs], nnx.Module],
    depth: int,
    *,
    rngs: nnx.Rngs,
    scan: bool = False,
    remat: str = "none",
  ):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {remat!r}; use one of {sorted(REMAT_POLICIES)}")
    self.scan, self.remat = scan, remat
    if scan:

      @nnx.split_rngs(splits=depth)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
      def create(r: nnx.Rngs):
        return make_block(r)

      self.blocks = create(rngs)
    else:
      self.blocks = nnx.List([make_block(rngs) for _ in range(depth)])

  def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
    """kwargs (e.g. an attention mask or RoPE tables) go to every block unchanged."""

    def call(block, h):
      return block(h, **kwargs)

    if self.remat != "none":
      call = nnx.remat(call, policy=REMAT_POLICIES[self.remat])
    if self.scan:

      @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
      def body(block, h):
        return call(block, h)

      return body(self.blocks, x)
    for block in self.blocks:
      x = call(block, x)
    return x
