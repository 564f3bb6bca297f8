"""Benchmark the train step of an experiment config on this machine.

  python -m worldmodel.bench --config=experiments/tokenizer.py:small --steps=10 [--config.data.dir=DATA]
  python -m worldmodel.bench --config=experiments/tokenizer.py:small --loader_workers=0,1,2   # input pipeline only
  python -m worldmodel.bench --config=experiments/jepa.py:vit_g --input_only --chunk=4 --episode_frames=128
  python -m worldmodel.bench --config=experiments/ac.py:small --rollout   # AC rollout latency, CEM iteration

Without --config.data.dir a small embedded dataset of the config's frame size is generated in a temp folder, so the
loader is part of the measurement. Prints progress, then one JSON line last:
  step_time_s (median), clips_per_s, flops_per_step (XLA cost analysis of the compiled step), peak_flops_per_s
  (a matmul in the model's dtype measured in this process), mfu, data_wait_frac, compile_s, ...
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the heavy imports: restart under tcmalloc (worldmodel/allocator.py)
  from worldmodel import allocator

  allocator.use_tcmalloc()

import contextlib
import functools
import json
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from worldmodel import allocator
from worldmodel import config as config_lib
from worldmodel.parallel import distributed
from worldmodel.perf import compiled_flops, measure_matmul_peak

if __name__ == "__main__":  # flags only for the CLI: importing several CLI modules must not redefine them
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].", lock_config=True)
  _STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one warm-up step that compiles).")
  _MATMUL = flags.DEFINE_integer(
    "matmul_size", 2048, "Side of the square matmul (model.dtype) used to measure peak FLOP/s."
  )
  _LOADER = flags.DEFINE_list(
    "loader_workers",
    [],
    "Benchmark only the input pipeline, once per grain worker count given (e.g. 0,1,2), instead of the train step.",
  )
  _LOADER_BATCHES = flags.DEFINE_integer("loader_batches", 50, "Batches timed per loader setting (after 2 warm-up).")
  _INPUT_ONLY = flags.DEFINE_boolean(
    "input_only",
    False,
    "Benchmark only the input pipeline at config.data.workers: clips/s on this host and read amplification "
    "(frames / bytes read per frame / byte used).",
  )
  _CHUNK = flags.DEFINE_integer(
    "chunk", 0, "With the generated dataset: also write a chunked copy (data/chunks.py) with this many steps a record."
  )
  _FRAMES = flags.DEFINE_enum("frames", "raw", ["raw", "jpeg", "png"], "--chunk: frame encoding of the chunked copy.")
  _EPISODE_FRAMES = flags.DEFINE_integer(
    "episode_frames",
    0,
    "Steps per generated episode (0: max(32, the clip span)); long episodes show read amplification.",
  )
  _ROLLOUT = flags.DEFINE_boolean(
    "rollout",
    False,
    "Benchmark the action-conditioned predictor's rollout instead "
    "(experiments/ac.py configs): ms per predicted frame at batch 1, cached vs full "
    "recompute, and one CEM iteration over --candidates rollouts of --horizon frames.",
  )
  _TOKENS = flags.DEFINE_integer("rollout_tokens", 64, "--rollout: tokens per frame (an 8x8 grid).")
  _ENC_DIM = flags.DEFINE_integer("rollout_enc_dim", 384, "--rollout: encoder feature width.")
  _CANDIDATES = flags.DEFINE_integer("candidates", 64, "--rollout: action sequences per CEM iteration.")
  _HORIZON = flags.DEFINE_integer("horizon", 4, "--rollout: predicted frames per CEM candidate.")
  flags.mark_flags_as_required(["config"])


def bench(config, steps: int, matmul_size: int = 2048) -> dict:
  from worldmodel import runtime as runtime_lib
  from worldmodel.data import pipeline

  rt = runtime_lib.build(config)
  state = rt.init_fn()
  data = iter(
    pipeline.train_dataset(
      config.data,
      seed=config.seed,
      global_batch=config.batch_size,
      start_step=0,
      num_steps=steps + 1,
      transform=runtime_lib.sample_transform(config),
    )
  )
  first = pipeline.to_global(next(data), rt.mesh)
  t0 = time.perf_counter()
  step_fn = rt.train_step.lower(state, first).compile()
  flops = compiled_flops(step_fn)
  if config.model.get("scan_layers") or config.model.get("encoder_model", {}).get("scan_layers"):
    print("warning: XLA's cost analysis counts scanned layers once: flops_per_step and mfu are too low", flush=True)
  state, logs = step_fn(state, first)
  jax.block_until_ready(logs)
  compile_s = time.perf_counter() - t0

  step_times, waits = [], []
  for i in range(steps):
    t0 = time.perf_counter()
    batch = pipeline.to_global(next(data), rt.mesh)
    t1 = time.perf_counter()
    state, logs = step_fn(state, batch)
    jax.block_until_ready(logs)
    t2 = time.perf_counter()
    waits.append(t1 - t0)
    step_times.append(t2 - t0)
    print(f"step {i + 1}/{steps}: {t2 - t0:.3f}s (data {t1 - t0:.3f}s)", flush=True)
  dtype = config_lib.canonical_dtype("model.dtype", config.model.dtype)  # the step's compute dtype: its peak, here
  peak = measure_matmul_peak(matmul_size, dtype=dtype)
  step_time = float(np.median(step_times))
  result = {
    "config": config.model.name,
    "batch_size": config.batch_size,
    "devices": jax.device_count(),
    "step_time_s": step_time,
    "step_time_min_s": float(np.min(step_times)),
    "clips_per_s": config.batch_size / step_time,
    "flops_per_step": flops,
    "achieved_flops_per_s": flops / step_time,
    "peak_flops_per_s": peak,
    "peak_dtype": dtype,
    "mfu": flops / step_time / peak,
    "data_wait_frac": float(np.sum(waits) / np.sum(step_times)),
    "compile_s": compile_s,
    "steps": steps,
    "backend": jax.default_backend(),
    "allocator": allocator.active(),
  }
  return result


def bench_loader(config, workers: list[int], batches: int) -> dict:
  """Clips/s of the grain pipeline alone (decode, window, batch) for each worker count."""
  from worldmodel import runtime as runtime_lib
  from worldmodel.data import pipeline

  out = {}
  for w in workers:
    config.data.workers = w
    it = iter(
      pipeline.train_dataset(
        config.data,
        seed=config.seed,
        global_batch=config.batch_size,
        start_step=0,
        num_steps=batches + 2,
        transform=runtime_lib.sample_transform(config),
      )
    )
    for _ in range(2):  # worker start-up and first reads are not throughput
      next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    out[str(w)] = batches * config.batch_size / (time.perf_counter() - t0)
    print(f"loader workers={w}: {out[str(w)]:.0f} clips/s", flush=True)
  clip = (config.data.num_frames, config.model.size, config.model.size, 3)
  return {
    "loader_clips_per_s": out,
    "clip_shape": clip,
    "batch_size": config.batch_size,
    "read_threads": config.data.read_threads,
  }


def bench_rollout(
  config, *, tokens: int, enc_dim: int, frames: int = 7, candidates: int = 64, horizon: int = 4, repeats: int = 5
) -> dict:
  """Latency of the AC predictor: cached step-by-step rollout vs recomputing the sequence for every new frame."""
  from flax import nnx

  from worldmodel.models.ac_predictor import ACPredictor

  m = config.model
  m.action_dim = m.action_dim or 7
  side = int(round(tokens**0.5))
  pred = ACPredictor(m, enc_dim, (side, side), rngs=nnx.Rngs(0))
  graphdef, weights = nnx.split(pred)
  rng = np.random.default_rng(0)
  z0 = jnp.asarray(rng.normal(size=(1, side * side, enc_dim)), jnp.float32)
  a = jnp.asarray(rng.normal(size=(1, frames, m.action_dim)), jnp.float32)

  @jax.jit
  def step(w, cache, t, z, at):
    return nnx.merge(graphdef, w).step(cache, t, z, at)

  @functools.partial(jax.jit, static_argnums=(3,))
  def recompute(w, seq, acts, n):
    return nnx.merge(graphdef, w)(seq[:, :n], acts[:, :n])[:, -1]

  def cached_rollout():
    cache, z = pred.init_cache(1, frames), z0
    for t in range(frames):
      z, cache = step(weights, cache, jnp.int32(t), z, a[:, t])
    return jax.block_until_ready(z)

  def recompute_rollout():
    seq = jnp.zeros((1, frames, side * side, enc_dim)).at[:, 0].set(z0)
    for t in range(frames):
      out = recompute(weights, seq, a, t + 1)
      if t + 1 < frames:
        seq = seq.at[:, t + 1].set(out)
    return jax.block_until_ready(out)

  @jax.jit
  def cem_iteration(w, z, acts_NHA):  # what a planner pays per iteration: all candidates in one batch
    p = nnx.merge(graphdef, w)
    cache = p.init_cache(acts_NHA.shape[0], horizon)
    zs = jnp.broadcast_to(z, (acts_NHA.shape[0],) + z.shape[1:])
    for t in range(horizon):
      zs, cache = p.step(cache, t, zs, acts_NHA[:, t])
    return jnp.mean(zs, axis=(1, 2))

  acts = jnp.asarray(rng.normal(size=(candidates, horizon, m.action_dim)), jnp.float32)

  def timed(fn):
    fn()  # compile
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    return float(np.median(times))

  cached = timed(cached_rollout) / frames
  full = timed(recompute_rollout) / frames
  cem = timed(lambda: jax.block_until_ready(cem_iteration(weights, z0, acts)))
  p = m.predictor
  return {
    "predictor": f"{p.width}x{p.depth} heads {p.heads}",
    "tokens_per_frame": side * side,
    "action_dim": m.action_dim,
    "dtype": str(config_lib.compute_dtype(m.dtype)),  # 'auto' resolved for this host
    "frames": frames,
    "ms_per_frame_cached": 1e3 * cached,
    "ms_per_frame_recompute": 1e3 * full,
    "cem_iteration_s": cem,
    "cem_candidates": candidates,
    "cem_horizon": horizon,
    "allocator": allocator.active(),
  }


@contextlib.contextmanager
def _bench_data(config):
  """Without data.dir, a small bouncing dataset of the config's frame size, in a temp folder removed afterwards."""
  if config.data.dir:
    yield
    return
  from worldmodel.data.sources import bouncing

  tmp = tempfile.mkdtemp(prefix="wm-bench-")
  try:
    frames = max(32, (config.data.num_frames - 1) * config.data.frame_stride + 1, _EPISODE_FRAMES.value)
    config.data.dir = bouncing.write_dataset(
      os.path.join(tmp, "data"), episodes=68, frames=frames, size=config.model.size
    )
    if _CHUNK.value:
      from worldmodel.data import chunks

      chunks.migrate(config.data.dir, chunk=_CHUNK.value, encoding=_FRAMES.value)
    yield
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _resolve(config) -> None:
  """The keys an objective derives from the data or another run (the action size, an encoder's shape), as train's
  preflight fills them; a dataset or source that cannot provide them is a one-line error."""
  from worldmodel import checkpoint, objectives
  from worldmodel.data import records

  try:
    objectives.get(config.objective).resolve_config(config)
  except (records.DatasetError, checkpoint.CheckpointError, config_lib.ConfigError) as e:
    config_lib.die(str(e))


def main(argv):
  distributed.start(argv)
  config = _CONFIG.value
  try:
    config_lib.normalize_dtypes(config.model)  # 'bf16' → 'bfloat16', as train does
    config_lib.validate(config) if config.data.dir else None
  except config_lib.ConfigError as e:
    config_lib.die(str(e))
  if _ROLLOUT.value:
    with config.unlocked():
      result = bench_rollout(
        config, tokens=_TOKENS.value, enc_dim=_ENC_DIM.value, candidates=_CANDIDATES.value, horizon=_HORIZON.value
      )
    print(json.dumps(result), flush=True)
    return
  with config.unlocked(), _bench_data(config):
    if _INPUT_ONLY.value:
      from worldmodel.data import input_bench

      result = bench_loader(config, [int(config.data.workers)], _LOADER_BATCHES.value)
      result.update(input_bench.read_amplification(config))
    elif _LOADER.value:
      result = bench_loader(config, [int(w) for w in _LOADER.value], _LOADER_BATCHES.value)
    else:
      _resolve(config)
      result = bench(config, _STEPS.value, _MATMUL.value)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.flags_parser)
