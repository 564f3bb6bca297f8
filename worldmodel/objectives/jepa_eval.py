"""Held-out evaluation of a JEPA: masked-prediction loss, collapse monitors, and frozen-feature probes of state.

Probes regress the ground-truth physical state of each time slot (the mean state over the tubelet's frames) from
the target encoder's tokens of that slot. The same probes run on a randomly initialised encoder and on raw pixel
patches, so the numbers say what training bought. Fit on `eval.probe_train_split`, scored on the evaluated split.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from flax import nnx

from worldmodel import common, media, metrics, probes
from worldmodel.data import pipeline, records
from worldmodel.models import vit


def slot_states(state_BTS: np.ndarray, t: int) -> np.ndarray:
  """Per time slot (tubelet of t frames) the mean state: [B, T/t, S]."""
  B, T, S = state_BTS.shape
  return state_BTS.reshape(B, T // t, t, S).mean(axis=2)


def slot_tokens(x_BND: np.ndarray, grid_THW) -> np.ndarray:
  """[B, N, D] in raster order → [B·T', H'·W', D]: one probe sample per time slot."""
  B, _, D = x_BND.shape
  T, H, W = grid_THW
  return x_BND.reshape(B * T, H * W, D)


class FeatureExtractor:
  """Jitted target-encoder features (or raw pixel patches) over a split, with per-slot states."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    m = config.model
    self.grid = vit.token_grid(m.frames, m.size, m.tubelet)

  def encoders(self, trained) -> dict:
    from worldmodel.models.jepa import JEPA

    random_init = JEPA(self.config.model, rngs=nnx.Rngs(self.config.seed + 1000)).target_encoder
    tubelet = tuple(self.config.model.tubelet)
    return {
      "trained": _jit_encoder(trained),
      "random_init": _jit_encoder(random_init),
      "pixels": jax.jit(lambda v: vit.patchify(v, tubelet)),
    }

  def run(self, encoders: dict, split: str, max_clips: int) -> tuple[dict, np.ndarray]:
    batches, n = pipeline.eval_batches(self.config.data, split, self.config.eval.batch_size, max_clips)
    feats = {k: [] for k in encoders}
    states = []
    for batch in batches:
      if "state" not in batch:
        raise records.DatasetError(
          f"{self.config.data.dir} split {split!r} has no 'state' feature: probes need "
          "ground-truth state (set eval.probes=False to skip them)"
        )
      valid = np.asarray(batch["valid"]) > 0
      video = common.to_float(np.asarray(batch["video"])[valid])
      for k, f in encoders.items():
        feats[k].append(slot_tokens(np.asarray(f(video), np.float32), self.grid))
      states.append(
        slot_states(np.asarray(batch["state"])[valid], self.config.model.tubelet[0]).reshape(
          -1, batch["state"].shape[-1]
        )
      )
    return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(states)


def _jit_encoder(encoder):
  graphdef, state = nnx.split(encoder)
  f = jax.jit(lambda st, v: nnx.merge(graphdef, st)(v))
  return lambda v: f(state, v)


class Evaluator:
  """Accumulates loss and monitors over the split; probes run in `finish` (they need their own fitting split)."""

  def __init__(self, model, config: ml_collections.ConfigDict, num_media: int = 4):
    del num_media
    self.model, self.config = model, config
    self.loss = metrics.RunningMean()
    self.mon = metrics.RunningMean()

  def update(self, batch: dict, out: dict) -> None:
    valid = np.asarray(batch["valid"]) > 0
    n = int(valid.sum())
    if n:
      self.loss.update({"masked_loss": np.asarray(out["loss_B"])[valid].mean()}, weight=n)
      self.mon.update({k: np.asarray(v) for k, v in out.items() if k.startswith("monitor/")}, weight=n)

  def finish(self, out_dir: str, num_clips: int) -> dict:
    result = {
      "masked_loss": float(self.loss.result()["masked_loss"]),
      "num_clips": num_clips,
      **{k: float(v) for k, v in self.mon.result().items()},
    }
    result["collapse_warnings"] = metrics.collapse_warnings(result)
    os.makedirs(out_dir, exist_ok=True)
    if self.config.eval.probes:
      result.update(self.probe(out_dir, self.config.eval.split))
    return result

  def probe(self, out_dir: str, split: str) -> dict:
    e = self.config.eval
    ex = FeatureExtractor(self.config)
    encoders = ex.encoders(self.model.target_encoder)
    train_x, train_y = ex.run(encoders, e.probe_train_split, e.probe_clips)
    test_x, test_y = ex.run(encoders, split, e.probe_clips)
    meta = records.read_meta(pipeline.data_dirs(self.config.data)[0])
    groups = meta.get("state_groups") or {}
    train_y, _ = probes.state_targets(train_y, groups, meta.get("periodic_state") or [])
    test_y, groups = probes.state_targets(test_y, groups, meta.get("periodic_state") or [])
    r2 = {"linear": {}, "attentive": {}}
    for name in encoders:
      r2["linear"][name] = probes.r2_by_group(
        *probes.ridge_probe(train_x[name].mean(1), train_y, test_x[name].mean(1), test_y), groups
      )
      r2["attentive"][name] = probes.r2_by_group(
        *probes.attentive_probe(train_x[name], train_y, test_x[name], test_y, steps=e.probe_steps), groups
      )
    plots = {
      kind: media.plot_bars(
        os.path.join(out_dir, f"probe_r2_{kind}.png"), r2[kind], "held-out R²", f"{kind} probe of state, {split} split"
      )
      for kind in r2
    }
    return {
      "probe_r2": r2,
      "probe_samples": {"train": len(train_y), "test": len(test_y)},
      "media": {f"probe_r2_{k}_png": v for k, v in plots.items()},
    }
