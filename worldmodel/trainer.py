"""The one train loop, for every objective: data → sharded step → logs → checkpoints, resumable and preemptible.

Read top to bottom: checks (before any compile) → runtime (mesh, model, optimizer) → restore or init → loop.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from worldmodel import checkpoint as ckpt_lib
from worldmodel import config as config_lib
from worldmodel import eval_hook, metrics, objectives, perf, storage, trackers
from worldmodel import runtime as runtime_lib
from worldmodel.data import pipeline, prefetch, records
from worldmodel.parallel import mesh as mesh_lib


class TrainError(RuntimeError):
  """A run that cannot start or continue; the message says why."""


# ---------------------------------------------------------------------------------------------------------------
# Checks that must fail before anything is compiled.
# ---------------------------------------------------------------------------------------------------------------
def preflight(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, list]:
  """(dataset metadata, the train split's opened sources, handed on to the pipeline) once every check passed."""
  config_lib.validate(config)
  for path in (workdir, config.init.source):  # a missing bucket / storage extra: fail first
    storage.check_reachable(path)
  objective = objectives.get(config.objective)
  objective.resolve_config(config)  # fills keys derived from other runs / the data (saved in config.json)
  objective.check_config(config)
  meta = records.read_meta(pipeline.data_dirs(config.data)[0], pipeline.feature_map(config.data))
  sources = pipeline.open_sources(config.data, config.data.train_split)  # missing / empty split → clear error
  pipeline.mixture_weights(config.data, len(sources))
  objective.check_data(config, pipeline.frame_size(config.data))
  if config.batch_size % jax.process_count():
    raise TrainError(f"batch_size {config.batch_size} is not divisible by {jax.process_count()} processes")
  _check_workdir(config, workdir)
  eval_hook.EvalHook(config, workdir).check()
  trackers.check(config)
  return meta, sources


def _check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir that holds another model's checkpoints is never overwritten."""
  path = storage.join(workdir, "config.json")
  if not storage.exists(path):
    return
  old = config_lib.model_signature(json.loads(storage.read_text(path)))
  new = config_lib.model_signature(json.loads(json.dumps(config_lib.to_dict(config))))
  if old != new:
    diffs = _diff(old, new)
    raise TrainError(
      f"workdir {workdir} holds a different model ({'; '.join(diffs[:6])}). Use a new --workdir, "
      "or the same model config to resume; nothing was changed."
    )


def _diff(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return [] if a == b else [f"{prefix.rstrip('.')}: saved {a!r}, now {b!r}"]


# ---------------------------------------------------------------------------------------------------------------
# Logging: console (process 0), metrics.jsonl, TensorBoard.
# ---------------------------------------------------------------------------------------------------------------
class MetricWriter:
  """metrics.jsonl and tb/ are written to a local mirror of the workdir, uploaded after each write for a bucket."""

  def __init__(self, workdir: str, total_steps: int):
    self.lead = jax.process_index() == 0
    self.total = total_steps
    self.jsonl = self.tb = None
    self.mirror = storage.Mirror(workdir, pull=("metrics.jsonl",)) if self.lead else None
    if self.lead:
      from tensorboardX import SummaryWriter

      self.jsonl = open(os.path.join(self.mirror.local, "metrics.jsonl"), "a")
      self.tb = SummaryWriter(os.path.join(self.mirror.local, "tb"))

  def write(self, step: int, scalars: dict, *, steps_per_s: float | None = None) -> None:
    if not self.lead:
      return
    row = {"step": step, **{k: float(v) for k, v in scalars.items()}}
    self.jsonl.write(json.dumps(row) + "\n")
    self.jsonl.flush()
    for k, v in scalars.items():
      self.tb.add_scalar(k, float(v), step)
    self.tb.flush()
    self.mirror.sync()
    if steps_per_s:
      eta = (self.total - step) / steps_per_s  # steps/s is measured without compilation
      shown = " | ".join(f"{k} {float(scalars[k]):.4g}" for k in ("loss", "psnr", "grad_norm") if k in scalars)
      speed = f"{steps_per_s:.2f} steps/s | {scalars.get('clips_per_s', 0):.1f} clips/s"
      if math.isfinite(scalars.get("mfu", math.nan)):
        speed += f" | MFU {100 * scalars['mfu']:.1f}%"
      print(f"step {step}/{self.total} | {shown} | {speed} | ETA {_hms(eta)}", flush=True)

  def close(self) -> None:
    if self.lead:
      self.jsonl.close()
      self.tb.close()
      self.mirror.close()


def _hms(seconds: float) -> str:
  s = int(seconds)
  return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def host_scalars(logs: dict) -> dict:
  """Replicated jit outputs → Python floats; works when arrays span several processes."""
  return {k: float(np.asarray(v.addressable_data(0) if isinstance(v, jax.Array) else v)) for k, v in logs.items()}


class _Preemption:
  """SIGTERM (preemption notice) → finish the current step, checkpoint, exit 0.

  One process: a Python handler sets a flag. Several processes: the notice may reach one host, or reach hosts at
  different steps, and a save is collective, so they must agree on the step. JAX's preemption sync service (started
  by jax.distributed.initialize, which installs its own SIGTERM handler) spreads the notice and names a common step.
  """

  def __init__(self):
    self.multi = jax.process_count() > 1
    self.requested = False
    if not self.multi:
      self._old = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def should_stop(self, step: int) -> bool:
    """Call once per step, on every process (the multi-process protocol counts on it)."""
    if self.multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    if not self.multi:
      signal.signal(signal.SIGTERM, self._old)


# ---------------------------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  workdir = storage.absolute(workdir)
  meta, sources = preflight(config, workdir)
  storage.makedirs(workdir)
  perf.enable_compile_cache(config, workdir)
  rt = runtime_lib.build(config)
  lead = jax.process_index() == 0
  if lead:
    print(
      f"mesh: {mesh_lib.describe(rt.mesh)} | data: {config.data.dir} ({meta.get('source', '?')}) | workdir: {workdir}",
      flush=True,
    )

  c = config.checkpoint
  ckpt = ckpt_lib.Checkpointer(
    storage.join(workdir, "checkpoints"), keep=c.keep, async_save=c.async_save, keep_every=c.keep_every
  )
  state, start, data_state = _restore_or_init(rt, ckpt)
  evals = eval_hook.EvalHook(config, workdir)
  if lead:  # only once the state exists: a run that failed to initialise leaves no config behind
    config_lib.save_json(config, workdir)
  if start >= config.total_steps:
    print(f"nothing to do: checkpoint step {start} >= total_steps {config.total_steps}", flush=True)
    ckpt.close()
    return {"step": start}

  host_data = iter(
    pipeline.train_dataset(
      config.data,
      seed=config.seed,
      global_batch=config.batch_size,
      start_step=start,
      num_steps=config.total_steps - start,
      transform=runtime_lib.sample_transform(config),
      sources=sources,
    )
  )
  data = prefetch.to_device(host_data, rt.mesh, config.data.device_prefetch)  # copies overlap the step
  metric_writer = MetricWriter(workdir, config.total_steps)
  writer = trackers.Writers(metric_writer, config, workdir)  # + W&B when log.wandb
  if evals.resumed(start, data_state):  # due at the restored step but not run before that save
    evals.run(rt, state, start, writer)
  profiler = perf.Profiler(config.profile, os.path.join(metric_writer.mirror.local, "profile") if lead else None)
  clock = perf.SaveClock(c.every_minutes)
  step_fn, info = None, {}
  preempt = _Preemption()
  cfg_dict = config_lib.to_dict(config)
  last = {}
  t_mark, steps_mark, wait_s = time.time(), start, 0.0
  step = start
  try:
    while step < config.total_steps:
      t0 = time.time()
      batch = _next_batch(data, step)
      wait_s += time.time() - t0
      if step_fn is None:  # compiled ahead of time: its time is reported, and kept out of steps/s and the ETA
        t_compile = time.time()
        step_fn, info = perf.compile_step(rt, state, batch)
        t_mark += time.time() - t_compile
        _print_startup(info, lead)
      profiler.before_step(step)
      state, logs = step_fn(state, batch)
      step += 1
      if profiler.after_step(step, logs) and lead:
        metric_writer.mirror.sync()

      # Read once: a SIGTERM landing between the save decision and the exit check must not exit unsaved.
      stop = preempt.should_stop(step)
      due_log = step % config.log_every_steps == 0 or step == config.total_steps
      due_ckpt = step % c.every_steps == 0 or step == config.total_steps or stop or (due_log and clock.due())
      if due_log or due_ckpt:
        last = host_scalars(logs)
        _check_finite(last, step)
      if due_log:
        now = time.time()
        rate = (step - steps_mark) / max(now - t_mark, 1e-9)
        last["data_wait_frac"] = wait_s / max(now - t_mark, 1e-9)
        last.update(perf.rate_scalars(info, step - steps_mark, now - t_mark, config.batch_size))
        last.update({k: info[k] for k in ("compile_s", "params", "flops_per_step") if steps_mark == start})
        writer.write(step, last, steps_per_s=rate)
        warnings = metrics.collapse_warnings(last)
        if warnings and lead:
          print(f"WARNING step {step}: representation may be collapsing: {'; '.join(warnings)}", flush=True)
        t_mark, steps_mark, wait_s = now, step, 0.0
      if evals.due(step) and not stop:  # a preemption saves first; the resumed run evaluates this step
        t_mark += evals.run(rt, state, step, writer)  # eval time is not train time (steps/s, ETA)
      if due_ckpt:
        ckpt.save(
          step,
          state,
          {
            "next_step": step,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "samples_seen": step * config.batch_size,
            "eval_step": evals.done_step,
          },
          cfg_dict,
          force=True,
        )
        clock.saved()
      if stop:
        print(f"SIGTERM: saved checkpoint at step {step}; exiting", flush=True)
        break
  finally:
    getattr(data, "close", lambda: None)()
    profiler.close()
    preempt.restore()
    ckpt.close()
    writer.close()
  return {"step": step, **last}


def _print_startup(info: dict, lead: bool) -> None:
  if lead:
    print(
      f"compiled the train step in {info['compile_s']:.1f} s | {info['params'] / 1e6:.2f} M params | "
      f"{info['flops_per_step'] / 1e9:.3g} GFLOP per step per device | peak {info['peak_flops'] / 1e12:.3g} "
      f"TFLOP/s per device ({info['peak_source']})",
      flush=True,
    )


def _restore_or_init(rt: runtime_lib.Runtime, ckpt: ckpt_lib.Checkpointer):
  if ckpt.steps():
    step, state, data_state = ckpt.restore(rt.abstract_state)
    if data_state.get("batch_size") not in (None, rt.config.batch_size):
      raise TrainError(
        f"checkpoint step {step} was trained with batch_size {data_state['batch_size']}, "
        f"now {rt.config.batch_size}: the data order would not continue"
      )
    if data_state.get("next_step", step) != step:
      raise TrainError(f"checkpoint step {step} holds data position {data_state['next_step']}: inconsistent save")
    print(f"resumed from checkpoint step {step} (data position: sample {step * rt.config.batch_size})", flush=True)
    return state, step, data_state
  return rt.fresh_state(), 0, {}


def _next_batch(data, step: int) -> dict:
  """A data error mid-run (e.g. a corrupt record) stops the run with its cause; saved checkpoints stay intact."""
  try:
    return next(data)
  except Exception as e:  # grain may wrap the reader's exception: find ours in the chain
    cause = e
    while cause is not None and not isinstance(cause, records.DatasetError):
      cause = cause.__cause__ or cause.__context__
    if cause is None:
      raise
    raise TrainError(f"data error at step {step + 1}: {cause}") from e


def _check_finite(logs: dict, step: int) -> None:
  bad = [k for k, v in logs.items() if not math.isfinite(v)]
  if bad:
    raise TrainError(
      f"non-finite {', '.join(bad)} at step {step}; stopping without saving (the last good checkpoint is intact)"
    )
