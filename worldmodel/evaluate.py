"""Evaluate a checkpoint on held-out video.

  python -m worldmodel.evaluate --workdir=runs/tok --split=test
  python -m worldmodel.evaluate --workdir=runs/tok --all_steps      # every checkpoint; metric-vs-step plots

Reads DIR/config.json, restores the newest checkpoint (or --step), runs the objective's evaluator over the whole split
and writes DIR/eval/<step>/metrics.json plus media (GIF truth | reconstruction, PNG plots) and TensorBoard scalars
under DIR/tb/eval_<split>/. --data points at another dataset directory (same frame size) than the one trained on.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the heavy imports: restart under tcmalloc (worldmodel/allocator.py)
  from worldmodel import allocator

  allocator.use_tcmalloc()

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

from worldmodel import config as config_lib
from worldmodel import storage
from worldmodel.parallel import distributed

if __name__ == "__main__":  # flags only for the CLI: importing several CLI modules must not redefine them
  _WORKDIR = flags.DEFINE_string("workdir", None, "A worldmodel workdir (holds config.json and checkpoints/).")
  _SPLIT = flags.DEFINE_string("split", "test", "Dataset split to evaluate: train, val or test.")
  _DATA = flags.DEFINE_string("data", None, "Dataset directory; default: the one the run trained on.")
  _STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the newest readable one.")
  _OUT = flags.DEFINE_string("out", None, "Output directory; default: WORKDIR/eval/<step>.")
  _BATCH = flags.DEFINE_integer("batch_size", None, "Eval batch size; default: config.eval.batch_size.")
  _MAX_CLIPS = flags.DEFINE_integer("max_clips", None, "Evaluate at most this many clips (default: the whole split).")
  _ALL_STEPS = flags.DEFINE_boolean(
    "all_steps",
    False,
    "Evaluate every checkpoint in the workdir (oldest first) and "
    "plot each metric against the step in WORKDIR/eval/all_steps/.",
  )
  _PERCEPTUAL = flags.DEFINE_string(
    "perceptual",
    "",
    "Tokenizer runs: also compute 'lpips' and / or 'fvd' (comma-separated; needs the [metrics] "
    "extra: pip install -e '.[metrics]'). FVD is reported with its extractor, resolution, frames and clip count.",
  )
  _PROBES = flags.DEFINE_boolean("probes", True, "JEPA runs: fit the state probes (trained vs random-init vs pixels).")
  _CONTEXT = flags.DEFINE_integer(
    "context",
    None,
    "AC runs: observed frames each latent rollout starts from; default: the run's model.context_frames.",
  )
  flags.mark_flag_as_required("workdir")
  flags.adopt_module_key_flags(distributed)  # --help lists the multi-host flags too


def evaluate(
  workdir: str,
  *,
  split: str = "test",
  data_dir: str | None = None,
  step: int | None = None,
  out_dir: str | None = None,
  batch_size: int | None = None,
  max_clips: int | None = None,
  probes: bool = True,
  perceptual: str = "",
  context: int | None = None,
) -> dict:
  from worldmodel import checkpoint as ckpt_lib
  from worldmodel import objectives
  from worldmodel import runtime as runtime_lib
  from worldmodel.data import pipeline
  from worldmodel.parallel import mesh as mesh_lib

  config = config_lib.load_workdir_config(workdir)
  if data_dir:
    config.data.dir = data_dir
  config.eval.split = split  # evaluators that fit probes score them on this split
  objectives.get(config.objective).configure_eval(config, context=context, perceptual=perceptual, probes=probes)
  try:
    mesh = mesh_lib.make_mesh(config.mesh)
  except ValueError:  # trained on another device count: evaluate data-parallel on what is here
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  rt = runtime_lib.build(config, mesh)
  rt.objective.check_data(config, pipeline.frame_size(config.data))
  ckpt = ckpt_lib.Checkpointer(storage.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
  step, state, _ = ckpt.restore(rt.abstract_state, step)
  ckpt.close()

  out_dir = storage.absolute(out_dir or storage.join(workdir, "eval", str(step)))
  result = evaluate_state(
    rt,
    state,
    config,
    step,
    split=split,
    batch_size=batch_size,
    max_clips=max_clips,
    out_dir=out_dir,
    probes=probes,
    perceptual=perceptual,
  )
  if jax.process_index() == 0:
    _tensorboard(workdir, split, step, result)
    _print_table(result, out_dir)
  return result


def evaluate_state(
  rt,
  state,
  config,
  step: int,
  *,
  split: str,
  out_dir: str,
  batch_size: int | None = None,
  max_clips: int | None = None,
  probes: bool = True,
  perceptual: str = "",
  progress: bool = True,
) -> dict:
  """The objective's evaluator over `split` for a train state already on the mesh: what the CLI runs after its
  restore, and what training runs every eval.every_steps (worldmodel/eval_hook.py). Every process calls it (the
  same jitted calls in the same order); process 0 gets the result and writes OUT_DIR/metrics.json + media."""
  from worldmodel import runtime as runtime_lib
  from worldmodel.data import pipeline

  bs = batch_size or config.eval.batch_size
  bs = -(-bs // rt.mesh.size) * rt.mesh.size  # whole batches per device
  limit = max_clips if max_clips is not None else (config.eval.max_clips or None)
  batches, num_clips = pipeline.eval_batches(
    config.data, split, bs, limit, transform=runtime_lib.sample_transform(config, eval=True)
  )
  evaluator = rt.objective.Evaluator(rt.model(state), config, num_media=config.eval.num_media)
  lead = jax.process_index() == 0
  t0, n_batches = time.time(), -(-num_clips // bs)
  tty = progress and sys.stdout.isatty()  # a live progress line on terminals, a few plain lines in logs
  for i, batch in enumerate(batches):
    out = rt.eval_step(state, pipeline.to_global(_local_slice(batch), rt.mesh))
    evaluator.update(batch, _gather(out))
    if progress and lead and (tty or (i + 1) % max(1, n_batches // 10) == 0 or i + 1 == n_batches):
      line = f"eval {split}: batch {i + 1}/{n_batches} ({time.time() - t0:.0f}s)"
      print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
  if lead and tty:
    print(flush=True)
  if not lead:
    return {}
  mirror = storage.Mirror(out_dir)  # media and plots are written locally, then uploaded for a bucket
  result = {"step": step, "split": split, "data": config.data.dir, **evaluator.finish(mirror.local, num_clips)}
  result = json.loads(json.dumps(result).replace(mirror.local, out_dir))  # report where the files end up
  with open(os.path.join(mirror.local, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  mirror.close()
  return result


def _local_slice(batch: dict) -> dict:
  """Every process reads the same eval batch; each feeds its own contiguous slice to the global array."""
  n, p = jax.process_count(), jax.process_index()
  return {k: np.asarray(v)[p * (len(v) // n) : (p + 1) * (len(v) // n)] for k, v in batch.items()}


def _gather(out: dict) -> dict:
  if jax.process_count() == 1:
    return jax.device_get(out)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(out, tiled=True)


def _tensorboard(workdir: str, split: str, step: int, result: dict) -> None:
  from tensorboardX import SummaryWriter

  mirror = storage.Mirror(storage.join(workdir, "tb", f"eval_{split}"))
  with SummaryWriter(mirror.local) as tb:
    for k, v in result.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        tb.add_scalar(k, v, step)
  mirror.close()


def _print_table(result: dict, out_dir: str) -> None:
  def flat(d, prefix=""):  # nested numbers (R² per group, probe results) print as a/b/c
    for k, v in d.items():
      if isinstance(v, dict) and k != "media":
        yield from flat(v, f"{prefix}{k}/")
      elif isinstance(v, (int, float)) and not isinstance(v, bool):
        yield f"{prefix}{k}", v

  scalars = dict(flat(result))
  width = max(map(len, scalars))
  print(f"{'metric':<{width}}  value")
  for k, v in scalars.items():
    print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
  print(f"wrote {storage.join(out_dir, 'metrics.json')}")
  for name, path in result.get("media", {}).items():
    print(f"  {name}: {path}")


def evaluate_all_steps(workdir: str, **kwargs) -> dict:
  """Every checkpoint in turn; then metrics.json + one PNG per scalar metric against the step."""
  from worldmodel import checkpoint as ckpt_lib
  from worldmodel import media

  config = config_lib.load_workdir_config(workdir)
  ckpt = ckpt_lib.Checkpointer(storage.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
  steps = ckpt.steps()
  ckpt.close()
  if not steps:
    raise ckpt_lib.CheckpointError(f"no checkpoint in {workdir}/checkpoints")
  rows = [evaluate(workdir, step=s, **kwargs) for s in steps]
  if jax.process_index():
    return {}
  out_dir = storage.join(workdir, "eval", "all_steps")
  mirror = storage.Mirror(out_dir)
  keys = [k for k, v in rows[-1].items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"]
  series = {k: [r.get(k, float("nan")) for r in rows] for k in keys}
  # Numbers that are the same at every step (clip count, codebook size, nominal bits per pixel) are metadata: kept in
  # metrics.json, not drawn as flat lines.
  constant = {k: v[0] for k, v in series.items() if len(steps) > 1 and len(set(v)) == 1}
  series = {k: v for k, v in series.items() if k not in constant}
  plots = {
    k: media.plot_curves(
      os.path.join(mirror.local, k.replace("/", "_") + ".png"),
      {k: np.asarray(v)},
      "checkpoint step",
      k,
      f"{k} vs step",
      x=np.asarray(steps),
    )
    for k, v in series.items()
  }
  result = {"steps": steps, "metrics": series, "constant": constant, "plots": plots}
  result = json.loads(json.dumps(result).replace(mirror.local, out_dir))
  with open(os.path.join(mirror.local, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  mirror.close()
  print(f"wrote {storage.join(out_dir, 'metrics.json')} and {len(plots)} plots")
  return result


def main(argv):
  distributed.start(argv)
  from worldmodel.checkpoint import CheckpointError
  from worldmodel.data.records import DatasetError

  try:
    kwargs = dict(
      split=_SPLIT.value,
      data_dir=_DATA.value,
      batch_size=_BATCH.value,
      max_clips=_MAX_CLIPS.value,
      probes=_PROBES.value,
      perceptual=_PERCEPTUAL.value,
      context=_CONTEXT.value,
    )
    if _ALL_STEPS.value:
      evaluate_all_steps(_WORKDIR.value, **kwargs)
    else:
      evaluate(_WORKDIR.value, step=_STEP.value, out_dir=_OUT.value, **kwargs)
  except (config_lib.ConfigError, CheckpointError, DatasetError, ValueError) as e:
    config_lib.die(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.flags_parser)
else:  # worldmodel.evaluate(...) is the Python API's evaluate (worldmodel/api.py)
  from worldmodel import api

  api.callable_module(__name__, api.evaluate)
