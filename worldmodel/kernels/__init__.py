"""Native CPU kernels, built on first use with the host's C++ compiler and called through XLA's FFI.

`attention(q, k, v)` is fused softmax attention for [B, L, H, E] with E % 16 == 0 and no mask. cpu_attention.cc
computes in float32 (bfloat16 / float16 operands are widened and the output narrowed back, as PyTorch's CPU SDPA
accumulates in float32); on CPUs with AMX, bfloat16 operands with E % 32 == 0 go to cpu_attention_amx.cc instead,
whose products run on AMX tiles (bf16 × bf16 → f32; WORLDMODEL_CPU_AMX=0 keeps them on the f32 kernel).
`unavailable()` says why the kernels cannot be used here (None: they can), `amx()` whether the AMX path is on. The shared library is compiled once per source, jaxlib and
CPU (`-march=native`, or the cap in XLA_FLAGS' `--xla_cpu_max_isa`, or $WORLDMODEL_KERNEL_MARCH) into $WORLDMODEL_KERNEL_CACHE (default ~/.cache/worldmodel/kernels) and reused; without a
compiler, or with WORLDMODEL_CPU_KERNELS=0, callers keep XLA's ops and the reason is logged once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
from absl import logging

_HERE = pathlib.Path(__file__).parent
SOURCES = (_HERE / "cpu_attention.cc", _HERE / "cpu_attention_amx.cc")
HEADER = _HERE / "cpu_attention.h"
PAD = 16  # the kernel's vector width in floats: key length and head width are multiples of it


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("WORLDMODEL_KERNEL_CACHE", pathlib.Path.home() / ".cache/worldmodel/kernels"))


def _cpu_id() -> str:
  try:
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
  except (OSError, StopIteration):
    flags = ""
  return flags


# XLA's ISA cap (--xla_cpu_max_isa) → the -march that keeps the kernel within it, so a capped run is capped here too.
_MARCH_FOR_ISA = {"AVX2": "haswell", "AVX": "sandybridge", "SSE4_2": "nehalem"}


def _march() -> str:
  """$WORLDMODEL_KERNEL_MARCH, else the one matching XLA_FLAGS' --xla_cpu_max_isa, else native."""
  if os.environ.get("WORLDMODEL_KERNEL_MARCH"):
    return os.environ["WORLDMODEL_KERNEL_MARCH"]
  isa = re.search(r"--xla_cpu_max_isa=(\w+)", os.environ.get("XLA_FLAGS", ""))
  return _MARCH_FOR_ISA.get(isa.group(1).upper(), "native") if isa else "native"


def _build() -> pathlib.Path:
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not cxx:
    raise RuntimeError("no C++ compiler (g++ / c++) on PATH")
  include = jax.ffi.include_dir()
  cmd = [cxx, "-O3", f"-march={_march()}", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{include}"]
  texts = [f.read_text() for f in (*SOURCES, HEADER)]
  key = hashlib.sha256("\n".join([*texts, " ".join(cmd), jax.__version__, _cpu_id()]).encode()).hexdigest()[:16]
  lib = _cache_dir() / f"cpu_attention-{key}.so"
  if not lib.exists():
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:  # build aside, then rename: concurrent builders are safe
      out = pathlib.Path(tmp) / lib.name
      done = subprocess.run([*cmd, *map(str, SOURCES), "-o", str(out)], capture_output=True, text=True)
      if done.returncode:
        raise RuntimeError(f"{cxx} failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}")
      os.replace(out, lib)
  return lib


@functools.cache
def _load() -> str | None:
  """None when the kernels are registered, else why not."""
  if os.environ.get("WORLDMODEL_CPU_KERNELS", "1") == "0":
    return "WORLDMODEL_CPU_KERNELS=0"
  try:
    lib = ctypes.cdll.LoadLibrary(str(_build()))
  except (OSError, RuntimeError, subprocess.SubprocessError) as e:
    return f"the fused CPU attention kernel could not be built ({e})"
  targets = {"wm_attention_fwd": lib.WmAttentionForward, "wm_attention_bwd": lib.WmAttentionBackward}
  if os.environ.get("WORLDMODEL_CPU_AMX", "1") != "0" and lib.wm_attention_amx_ready():
    targets.update(wm_attention_fwd_bf16=lib.WmAttentionForwardBf16, wm_attention_bwd_bf16=lib.WmAttentionBackwardBf16)
    _AMX.append(True)
  for name, symbol in targets.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
  logging.info("fused CPU attention kernel loaded%s", " (bf16 products on AMX)" if _AMX else "")
  return None


_AMX: list = []  # [True] once the AMX kernels are registered


def amx() -> bool:
  """Whether bfloat16 attention runs its products on AMX tiles here."""
  return _load() is None and bool(_AMX)


def unavailable() -> str | None:
  return _load()


_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def supports(q_BQHE, k_BKHE) -> str | None:
  """None if the fused kernel takes these operands, else why not."""
  if q_BQHE.dtype not in _DTYPES or k_BKHE.dtype not in _DTYPES:
    return f"dtype {q_BQHE.dtype} (the fused CPU kernel takes float32, bfloat16 or float16)"
  if q_BQHE.shape[-1] % PAD:
    return f"head width {q_BQHE.shape[-1]} is not a multiple of {PAD}"
  return unavailable()


def _forward(q, k, v, valid: int):
  B, Q, H, _ = q.shape
  out = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, H, Q), jnp.float32))
  return jax.ffi.ffi_call(f"wm_attention_fwd{_SUFFIX[q.dtype]}", out)(q, k, v, valid=valid)


# Kernel per operand dtype: float32 (cpu_attention.cc) or bfloat16 on AMX (cpu_attention_amx.cc).
_SUFFIX = {jnp.dtype(jnp.float32): "", jnp.dtype(jnp.bfloat16): "_bf16"}


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, valid):
  return _forward(q, k, v, valid)[0]


def _fwd(q, k, v, valid):
  o, lse = _forward(q, k, v, valid)
  return o, (q, k, v, o, lse)


def _bwd(valid, res, do):
  q, k, v, o, lse = res
  shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
  return jax.ffi.ffi_call(f"wm_attention_bwd{_SUFFIX[q.dtype]}", shapes)(
    q, k, v, o, lse, do.astype(q.dtype), valid=valid
  )


_attention.defvjp(_fwd, _bwd)

AMX_HEAD_MULTIPLE = 32  # the AMX kernel's K step: head width (and, padded inside, key and query lengths)


def attention(q_BQHE: jax.Array, k_BKHE: jax.Array, v_BKHE: jax.Array) -> jax.Array:
  """softmax(q·kᵀ/√E)·v with the fused kernel; keys are zero-padded to a multiple of 16 and masked inside."""
  if why := supports(q_BQHE, k_BKHE):
    raise ValueError(f"fused CPU attention cannot take this call: {why}")
  dtype = q_BQHE.dtype
  # bfloat16 with AMX stays bfloat16 (products on AMX tiles, softmax in float32); otherwise the kernel works in
  # float32 and narrower operands are widened here (the casts are outside the custom VJP, so the gradients come
  # back in the operands' dtype).
  on_amx = dtype == jnp.bfloat16 and q_BQHE.shape[-1] % AMX_HEAD_MULTIPLE == 0 and amx()
  q_BQHE, k_BKHE, v_BKHE = (x.astype(dtype if on_amx else jnp.float32) for x in (q_BQHE, k_BKHE, v_BKHE))
  K = k_BKHE.shape[1]
  pad = -K % PAD
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    k_BKHE, v_BKHE = jnp.pad(k_BKHE, widths), jnp.pad(v_BKHE, widths)
  return _attention(q_BQHE, k_BKHE, v_BKHE, K).astype(dtype)


# Multiply-adds per (q, k, e) triple: forward Q·Kᵀ and P·V; backward recomputes Q·Kᵀ, then dV, dP, dQ, dK.
_FLOPS_PER_QKE = {"fwd": 4, "bwd": 10}
_CALL = re.compile(
  r'custom_call_target="wm_attention_(fwd|bwd)(?:_bf16)?", operand_layout_constraints='
  r"\{(?:f32|bf16)\[([\d,]+)\]\{[\d,]*\}, (?:f32|bf16)\[([\d,]+)\]"
)


def custom_call_flops(hlo_text: str) -> float:
  """FLOPs of the fused kernels in a compiled module's HLO text (XLA's cost analysis counts custom calls as 0)."""
  total = 0.0
  for kind, q_shape, k_shape in _CALL.findall(hlo_text):
    B, Lq, H, E = (int(x) for x in q_shape.split(","))
    total += _FLOPS_PER_QKE[kind] * B * H * Lq * int(k_shape.split(",")[1]) * E
  return total
