"""Fused attention kernels per backend: cuDNN flash attention on GPU, Pallas splash attention on TPU.

`model.attention` picks one: 'auto' (GPU → cudnn, TPU → splash, CPU → the kernel in attention.py), or forces
'xla' / 'cudnn' / 'splash' / 'cpu'. A kernel that cannot take a call (dtype, head size, a traced mask) falls back to
XLA's `jax.nn.dot_product_attention`, and says why once per reason in the log: never a crash.

Masks reach the kernels structured where they can: `FrameCausal(per_frame)` is the AC predictor's block-causal
pattern (a token sees every token of its own and earlier frames), computed from frame ids inside the splash kernel
rather than loaded as an L×L array.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import PartitionSpec as P

from worldmodel.parallel import mesh as mesh_lib

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "cpu")
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128  # 256 on Hopper and later; 128 holds on every GPU cuDNN flash attention runs on
SPLASH_BLOCK = 512  # splash's default tile; short sequences use one tile of their padded length
SPLASH_LANES = 128  # TPU lane width: splash tiles the sequence and head dims in multiples of it

_settings = {"implementation": "auto", "mesh": None, "interpret": False}
_logged: set[str] = set()


@dataclasses.dataclass(frozen=True)
class FrameCausal:
  """Block-causal mask over frames of `per_frame` tokens: query i may attend to key j iff j // per_frame <= i // per_frame."""

  per_frame: int

  def dense(self, q_len: int, kv_len: int) -> np.ndarray:
    q, k = np.arange(q_len) // self.per_frame, np.arange(kv_len) // self.per_frame
    return q[:, None] >= k[None, :]


def configure(implementation: str = "auto", mesh=None, *, interpret: bool = False) -> None:
  """Called once per run (runtime.build) before anything is traced; `interpret` runs Pallas kernels on CPU (tests)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"config key 'model.attention' must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  _settings.update(implementation=implementation, mesh=mesh, interpret=interpret)


def log_fallback(reason: str) -> None:
  if reason not in _logged:
    _logged.add(reason)
    logging.warning("attention: %s; using XLA attention", reason)


def fallback_reasons() -> set[str]:
  return set(_logged)


def choose(q_BQHE, k_BKHE, mask, causal: bool, backend: str | None = None) -> tuple[str, str | None]:
  """(implementation, why it fell back or None) for this call. `backend` overrides jax.default_backend() (tests)."""
  backend = backend or jax.default_backend()
  want = _settings["implementation"]
  if want == "auto":
    want = {"gpu": "cudnn", "cuda": "cudnn", "rocm": "xla", "tpu": "splash"}.get(backend, "cpu")
  if want in ("cpu", "xla"):
    return want, None
  if want == "cudnn":
    why = _cudnn_refusal(q_BQHE, backend)
  else:
    static = isinstance(mask, FrameCausal) or (isinstance(mask, np.ndarray) and math.prod(mask.shape[:-2]) == 1)
    dynamic_mask = mask is not None and not static  # splash takes one static mask for every batch row and head
    why = _splash_refusal(backend, dynamic_mask or q_BQHE.shape[1] != k_BKHE.shape[1])
  return ("xla", f"{want} cannot take this call ({why})") if why else (want, None)


def _cudnn_refusal(q, backend: str) -> str | None:
  if backend not in ("gpu", "cuda"):
    return f"backend is {backend}, not an NVIDIA GPU"
  if q.dtype not in CUDNN_DTYPES:
    return f"dtype {q.dtype} (cuDNN flash attention takes bfloat16 / float16; set model.dtype=bfloat16)"
  if _round_up(q.shape[-1], 8) > CUDNN_MAX_HEAD_DIM:
    return f"head dim {q.shape[-1]} > {CUDNN_MAX_HEAD_DIM}"
  return None


def _splash_refusal(backend: str, dynamic_or_cross: bool) -> str | None:
  if backend != "tpu" and not _settings["interpret"]:
    return f"backend is {backend}, not a TPU"
  if dynamic_or_cross:
    return "a mask computed at run time or cross-attention (splash here takes self-attention, static masks)"
  return None


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def dense_mask(mask, q_len: int, kv_len: int):
  return jnp.asarray(mask.dense(q_len, kv_len))[None, None] if isinstance(mask, FrameCausal) else mask


# -- cuDNN -------------------------------------------------------------------------------------------------------
def cudnn_attention(q_BQHE, k_BKHE, v_BKHE, *, mask=None, causal=False, implementation="cudnn"):
  """cuDNN flash attention with the head dim padded to a multiple of 8 and the sequence to an even length (cuDNN's
  limits with a mask). Zero head-dim padding leaves q·k unchanged (the scale stays 1/√d of the true d); padded keys
  are cut off with key_value_seq_lengths. `implementation='xla'` runs the same padding through XLA (tests)."""
  B, Q, _, E = q_BQHE.shape
  K = k_BKHE.shape[1]
  Ep, Qp, Kp = _round_up(E, 8), _round_up(Q, 2), _round_up(K, 2)
  if mask is not None:  # kept in its broadcastable shape: no [B, H, L, L] copy
    mask = jnp.asarray(dense_mask(mask, Q, K))
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    # Padded query rows see every real key (no empty softmax rows); padded keys are masked by the lengths below.
    pad_q, pad_k = (Qp - Q) * (mask.shape[2] == Q), (Kp - K) * (mask.shape[3] == K)
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad_q), (0, pad_k)), constant_values=True)
  pad = lambda x, L, Lp: jnp.pad(x, ((0, 0), (0, Lp - L), (0, 0), (0, Ep - E)))  # noqa: E731
  lengths = jnp.full((B,), K, jnp.int32) if Kp != K else None
  o = jax.nn.dot_product_attention(
    pad(q_BQHE, Q, Qp),
    pad(k_BKHE, K, Kp),
    pad(v_BKHE, K, Kp),
    mask=mask,
    is_causal=causal,
    scale=E**-0.5,
    key_value_seq_lengths=lengths,
    implementation=implementation,
  )
  return o[:, :Q, :, :E]


# -- splash (TPU) ----------------------------------------------------------------------------------------------------
def _splash_mask_class():
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

  class PaddedMask(mask_lib._ComputableMask):
    """Causal / frame-causal / full over `length` real tokens of a sequence padded to `shape`; padded keys are never
    seen, padded queries see the real keys (their rows are cut off afterwards). Computed from token ids in-kernel."""

    def __init__(self, shape, length: int, per_frame: int | None):
      self.length, self.per_frame = length, per_frame

      def fn(q_ids, kv_ids):
        visible = kv_ids < length
        if per_frame is not None:
          visible = visible & (q_ids // per_frame >= kv_ids // per_frame)
        return visible

      super().__init__(shape, fn)

    def __eq__(self, other):
      return type(other) is type(self) and (self.shape, self.length, self.per_frame) == (
        other.shape,
        other.length,
        other.per_frame,
      )

    def __hash__(self):
      return hash((type(self), self.shape, self.length, self.per_frame))

  return mask_lib, PaddedMask


def splash_mask(L: int, Lp: int, heads: int, *, mask=None, causal=False):
  """The MultiHeadMask splash runs with: no dense L×L array for causal / FrameCausal / no mask."""
  mask_lib, PaddedMask = _splash_mask_class()
  if isinstance(mask, FrameCausal) or causal or mask is None:
    per_frame = mask.per_frame if isinstance(mask, FrameCausal) else (1 if causal else None)
    one = PaddedMask((Lp, Lp), L, per_frame)
  else:  # a static numpy mask [..., L, L] (same for every batch row and head): splash's own block-sparse form
    m = np.zeros((Lp, Lp), bool)
    m[:L, :L] = np.broadcast_to(np.asarray(mask), np.shape(mask)[:-2] + (L, L)).reshape(-1, L, L)[0]
    m[L:, :L] = True
    if causal:
      m &= np.tril(np.ones((Lp, Lp), bool))
    one = mask_lib.NumpyMask(m)
  return mask_lib.MultiHeadMask([one] * heads)


def splash_attention(q_BQHE, k_BKHE, v_BKHE, *, mask=None, causal=False):
  """Splash attention (self-attention: Q == K), under shard_map over the batch and head axes of the run's mesh."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

  B, L, H, D = q_BQHE.shape
  block = min(SPLASH_BLOCK, _round_up(L, SPLASH_LANES))
  Lp, Dp = _round_up(L, block), _round_up(D, SPLASH_LANES)
  scale = D**-0.5
  mesh = _settings["mesh"]
  _, head_axis = _shard_axes(mesh, B, H)
  heads_local = H // (mesh.shape[head_axis] if head_axis else 1)
  sizes = splash.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  kernel = splash.make_splash_mha(
    splash_mask(L, Lp, heads_local, mask=mask, causal=causal),
    block_sizes=sizes,
    head_shards=1,
    q_seq_shards=1,
    interpret=_settings["interpret"],
  )

  def local(q, k, v):  # [b, L, h, D] → splash's [h, Lp, Dp] per batch row
    pad = lambda x: jnp.pad(x, ((0, 0), (0, Lp - L), (0, 0), (0, Dp - D))).transpose(0, 2, 1, 3)  # noqa: E731
    o = jax.vmap(kernel)(pad(q * jnp.asarray(scale, q.dtype)), pad(k), pad(v))
    return o.transpose(0, 2, 1, 3)[:, :L, :, :D]

  return sharded(local, q_BQHE, k_BKHE, v_BKHE)


def cpu_fused_attention(q_BQHE, k_BKHE, v_BKHE):
  """The fused CPU kernel (worldmodel/kernels), under shard_map over the run's mesh like splash."""
  from worldmodel import kernels

  return sharded(kernels.attention, q_BQHE, k_BKHE, v_BKHE)


def sharded(local, q_BQHE, k_BKHE, v_BKHE):
  """local(q, k, v) per device, batch over the data axes and heads over `tensor` (custom kernels do not partition)."""
  mesh = _settings["mesh"]
  if mesh is None or math.prod(mesh.shape.values()) == 1:
    return local(q_BQHE, k_BKHE, v_BKHE)
  batch_axes, head_axis = _shard_axes(mesh, q_BQHE.shape[0], q_BQHE.shape[2])
  spec = P(batch_axes or None, None, head_axis, None)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(
    q_BQHE, k_BKHE, v_BKHE
  )


def _shard_axes(mesh, batch: int, heads: int):
  """Batch over (data, fsdp[, fsdp_sub]) and heads over tensor, each only where the axis divides (else that dim is replicated
  inside the kernel's shard_map, which is correct and only costs memory)."""
  if mesh is None:
    return None, None
  batch_axes = tuple(a for a in mesh_lib.batch_axes(mesh) if mesh.shape[a] > 1)
  if batch % math.prod(mesh.shape[a] for a in batch_axes):
    log_once(f"kernel: batch {batch} does not divide over {batch_axes}; the kernel runs replicated over them")
    batch_axes = ()
  head_axis = "tensor" if mesh.shape.get("tensor", 1) > 1 and heads % mesh.shape["tensor"] == 0 else None
  return batch_axes, head_axis


def log_once(text: str) -> None:
  if text not in _logged:
    _logged.add(text)
    logging.warning("attention: %s", text)
