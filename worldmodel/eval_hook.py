"""Evaluation during training: every `eval.every_steps` steps (and at the last step) the objective's evaluator runs
on `eval.train_split` (default val), at most `eval.train_max_clips` clips — the same code as
`python -m worldmodel.evaluate` (evaluate.evaluate_state) — and its scalars go to metrics.jsonl (keys
`eval_<split>/<metric>`, with the step) and TensorBoard (the same tags, in tb/).

Resume: the checkpoint records the last evaluated step (`eval_step` in its data state). An evaluation due at the step a
run resumes from that the save did not cover (a preemption saves before evaluating) runs first; none is repeated.
Results and media of each evaluation: WORKDIR/eval/train_<split>/<step>/.
"""

from __future__ import annotations

import json
import time

import jax
import ml_collections

from worldmodel import config as config_lib
from worldmodel import storage

DEFAULTS = dict(every_steps=0, train_split="val", train_max_clips=64, train_probes=False)


def settings(config: ml_collections.ConfigDict) -> dict:
  """eval.every_steps & co. with their defaults (older configs and workdirs lack the keys)."""
  ev = config.get("eval") or {}
  out = {k: ev.get(k, v) for k, v in DEFAULTS.items()}
  for key in ("every_steps", "train_max_clips"):
    if not isinstance(out[key], int) or out[key] < 0:
      raise config_lib.ConfigError(f"config key 'eval.{key}' must be an integer >= 0, got {out[key]!r}")
  return out


class EvalHook:
  """Owned by the train loop; `due(step)` is a pure function of the step so every process agrees."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.s = settings(config)
    self.every = self.s["every_steps"]
    self.total = config.total_steps
    self.workdir = workdir
    self.config = config
    self.done_step = -1  # the last step evaluated (saved in checkpoints as data_state["eval_step"])

  @property
  def enabled(self) -> bool:
    return self.every > 0

  def check(self) -> None:
    """Before any compile: the split must exist (a missing val split is a clear error now, not at step N)."""
    if self.enabled:
      from worldmodel.data import pipeline

      pipeline.open_sources(self.config.data, self.s["train_split"])

  def due(self, step: int) -> bool:
    return self.enabled and step > 0 and (step % self.every == 0 or step == self.total)

  def resumed(self, step: int, data_state: dict) -> bool:
    """After a restore at `step`: True when an evaluation due there has not run (call `run` before the loop)."""
    self.done_step = int(data_state.get("eval_step", -1))
    return self.due(step) and self.done_step < step

  def run(self, rt, state, step: int, writer) -> float:
    """Evaluate `state` (every process), log on process 0; returns the seconds it took."""
    from worldmodel import evaluate

    config = self._eval_config()
    split = self.s["train_split"]
    out_dir = storage.join(self.workdir, "eval", f"train_{split}", str(step))
    t0 = time.time()
    result = evaluate.evaluate_state(
      rt,
      state,
      config,
      step,
      split=split,
      out_dir=out_dir,
      max_clips=self.s["train_max_clips"] or None,
      probes=bool(self.s["train_probes"]),
      progress=False,
    )
    self.done_step = step
    seconds = time.time() - t0
    if jax.process_index() != 0:
      return seconds
    scalars = {f"eval_{split}/{k}": v for k, v in _scalars(result).items()}
    scalars[f"eval_{split}/seconds"] = seconds
    writer.write(step, scalars)  # metrics.jsonl + TensorBoard tags eval_<split>/<metric> (+ W&B when on)
    shown = " | ".join(f"{k} {v:.4g}" for k, v in list(_scalars(result).items())[:4])
    print(f"eval {split} step {step}: {shown} | {result.get('num_clips', '?')} clips in {seconds:.1f}s", flush=True)
    return seconds

  def _eval_config(self) -> ml_collections.ConfigDict:
    # A private copy: the evaluator writes eval.split / eval.probes, the run's own config stays as saved.
    c = self.config.copy_and_resolve_references()
    c.unlock()
    return c


def _scalars(result: dict) -> dict:
  skip = {"step", "num_clips", "num_codes", "context_frames"}  # counts and settings, not metrics
  return {
    k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip
  }


def read_rows(workdir: str, split: str = "val") -> list[dict]:
  """The in-training evaluation rows of a run's metrics.jsonl (what tests and notebooks plot)."""
  prefix = f"eval_{split}/"
  rows = []
  for line in storage.read_text(storage.join(workdir, "metrics.jsonl")).splitlines():
    row = json.loads(line)
    if any(k.startswith(prefix) for k in row):
      rows.append({"step": row["step"], **{k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)}})
  return rows
