"""What a run costs and how fast it goes: compilation cache, compile time, FLOPs, MFU, memory, profiler window,
and the clock for time-based checkpoints. The trainer calls these; bench.py reuses the FLOP counting and the peak.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from worldmodel import storage

# Dense peak FLOP/s per chip (vendor data sheets): (bf16, f32). GPU f32 is the TF32 tensor-core rate, what XLA uses
# for f32 matmuls at default precision; TPUs run f32 matmuls as bf16 passes at default precision.
PEAKS = (
  ("h200", (989e12, 494e12)),
  ("h100", (989e12, 494e12)),
  ("a100", (312e12, 156e12)),
  ("tpu v6 lite", (918e12, 918e12)),  # v6e
  ("tpu v6e", (918e12, 918e12)),
  ("tpu v5 lite", (197e12, 197e12)),  # v5e
  ("tpu v5e", (197e12, 197e12)),
  ("tpu v5p", (459e12, 459e12)),
  ("tpu v5", (459e12, 459e12)),  # v5p reports "TPU v5"
  ("tpu v4", (275e12, 275e12)),
)


def enable_compile_cache(config, workdir: str) -> str | None:
  """Persistent compilation cache at config.compile_cache_dir ('' → the JAX_COMPILATION_CACHE_DIR the environment
  sets, else WORKDIR/compile_cache; 'none' → off): a restart of the same run loads its executables instead of
  compiling them, and runs that share an environment's cache share them. Returns the directory used."""
  from jax.experimental.compilation_cache import compilation_cache as cc

  path = config.get("compile_cache_dir", "")
  if path == "none":
    return None
  path = storage.absolute(path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or storage.join(workdir, "compile_cache"))
  if jax.config.jax_compilation_cache_dir != path:
    cc.reset_cache()  # the cache binds its directory on first use: an earlier run in this process used another
    jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # CPU steps compile in < 1 s: cache them too
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled (SPMD-partitioned, so per-device) program, from XLA's cost analysis plus our
  fused kernels' custom calls (which the cost analysis counts as 0)."""
  from worldmodel import kernels

  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  try:
    extra = kernels.custom_call_flops(compiled.as_text())
  except Exception:  # noqa: BLE001 - some runtimes cannot print a compiled module; the count is then XLA's alone
    extra = 0.0
  return float((cost or {}).get("flops", float("nan"))) + extra


def measure_matmul_peak(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
  """FLOP/s of a jitted n×n matmul in `dtype` (the dtype the measured program computes in): the practical peak MFU
  is measured against where no table entry fits. XLA:CPU's bf16 and f32 peaks differ by host (BUILD_NOTES). The
  fastest of `repeats` runs: other work (bench's data prefetch, still running) only slows a run down, and a
  median taken beside it once put the bf16 peak at half its value (MFU 1.17; BUILD_NOTES, "Races on an AMD Zen 5")."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  # Accumulated in float32, as the models' dense layers do (models/layers.py): XLA:CPU's bf16 -> bf16 dot is a slower path.
  f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / float(np.min(times))


def peak_for(device_kind: str, dtype: str) -> float | None:
  """Data-sheet peak of a device kind (jax's `device.device_kind`, e.g. 'NVIDIA H100 80GB HBM3', 'TPU v5 lite')."""
  kind = device_kind.lower()
  for name, (bf16, f32) in PEAKS:
    if name in kind:
      return bf16 if dtype == "bfloat16" else f32
  return None


def device_peak(dtype: str = "float32") -> tuple[float, str]:
  """(peak FLOP/s of one local device, where the number comes from)."""
  kind = jax.local_devices()[0].device_kind
  if peak_for(kind, dtype):
    return peak_for(kind, dtype), f"{kind} {dtype} data sheet"
  if jax.default_backend() == "cpu":  # fake CPU devices share the host's cores
    return measure_matmul_peak(1024, 5, dtype) / jax.local_device_count(), f"measured {dtype} matmul / local devices"
  return float("nan"), f"unknown device {kind!r}"


def memory_stats() -> dict:
  """Device 0's bytes in use and peak, where the backend reports them (GPU, TPU; not XLA:CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  out = {}
  for key, name in (("bytes_in_use", "mem_gib"), ("peak_bytes_in_use", "mem_peak_gib")):
    if key in stats:
      out[name] = stats[key] / 2**30
  return out


def param_count(abstract_params) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))


def compile_step(rt, state, batch) -> tuple[object, dict]:
  """The train step compiled ahead of time (so its compile time is measured apart from steps), and its costs."""
  t0 = time.perf_counter()
  compiled = rt.train_step.lower(state, batch).compile()
  info = {"compile_s": time.perf_counter() - t0, "flops_per_step": compiled_flops(compiled)}
  info["params"] = param_count(rt.abstract_state["params"])
  info["peak_flops"], info["peak_source"] = device_peak(rt.config.model.get("dtype", "float32"))
  return compiled, info


def rate_scalars(info: dict, steps: int, seconds: float, batch_size: int) -> dict:
  """Step time, throughput and MFU over a window of `steps` steps that took `seconds` (compilation excluded)."""
  step_s = seconds / max(steps, 1)
  tflops = info["flops_per_step"] / step_s / 1e12
  return {
    "step_time_s": step_s,
    "steps_per_s": 1.0 / step_s,
    "clips_per_s": batch_size / step_s,
    "tflops_per_device": tflops,
    "mfu": tflops * 1e12 / info["peak_flops"],
    **memory_stats(),
  }


class Profiler:
  """A jax.profiler trace of steps [start_step, start_step + num_steps) into DIR (config.profile)."""

  def __init__(self, profile_cfg, directory: str):
    self.start = int(profile_cfg.get("start_step", 0)) if profile_cfg else 0
    self.stop = self.start + (int(profile_cfg.get("num_steps", 0)) if profile_cfg else 0)
    self.directory = directory
    self.active = False

  def before_step(self, step: int) -> None:
    """`step`: the number of steps done so far; the trace covers the steps that follow."""
    if self.directory and self.stop > self.start and step == self.start and not self.active:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after_step(self, step: int, outputs) -> bool:
    """True when the trace was just written (sync it)."""
    if self.active and step >= self.stop:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.active = False
      return True
    return False

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


class SaveClock:
  """checkpoint.every_minutes: a save is due once that long has passed since the last. Every process must agree on
  the step, so process 0's clock decides and the decision is broadcast (only at log steps: a collective)."""

  def __init__(self, minutes: float):
    self.seconds = minutes * 60
    self.last = time.monotonic()

  def due(self) -> bool:
    if self.seconds <= 0:
      return False
    mine = time.monotonic() - self.last >= self.seconds
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      mine = bool(multihost_utils.broadcast_one_to_all(np.int32(mine)))
    return mine

  def saved(self) -> None:
    self.last = time.monotonic()
