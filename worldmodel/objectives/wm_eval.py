"""Held-out evaluation of an end-to-end world model: the AC evaluator's latent rollout error (L1 and MSE per
horizon, against copying the last observed frame), the embeddings' collapse monitors, and (datasets with a `state`)
linear probes of the per-frame physical state from the embeddings of the trained model and of a randomly
initialised one (fit on `eval.probe_train_split`, at most `eval.probe_clips` clips; scored on the evaluated clips)."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from worldmodel import metrics, probes
from worldmodel.data import pipeline, records
from worldmodel.models.wm import WorldModel
from worldmodel.objectives import ac_eval

MONITORS = ("monitor_target_std", "monitor_rankme", "monitor_cross_cosine")


class Evaluator(ac_eval.Evaluator):
  def __init__(self, model, config, num_media: int = 4):
    super().__init__(model, config, num_media)
    self.model, self.monitors = model, metrics.RunningMean()
    self.embeds, self.states = [], []

  def update(self, batch: dict, out: dict) -> None:
    super().update(batch, out)
    valid = np.asarray(batch["valid"]) > 0
    if valid.any():
      self.monitors.update({k: np.asarray(out[f"{k}_B"])[valid].mean() for k in MONITORS}, weight=int(valid.sum()))
      if "state" in batch and self.config.eval.probes:
        self.embeds.append(np.asarray(out["embed_BTD"])[valid])
        self.states.append(np.asarray(batch["state"])[valid])

  def finish(self, out_dir: str, num_clips: int) -> dict:
    result = super().finish(out_dir, num_clips)
    result |= {k.replace("monitor_", "embedding_"): float(v) for k, v in self.monitors.result().items()}
    if self.embeds:
      result["probe_r2_linear"] = self._probes()
    return result

  def _probes(self) -> dict:
    """R² per state group of a ridge probe, per frame: trained vs random-init embeddings."""
    c = self.config
    meta = records.read_meta(pipeline.data_dirs(c.data)[0], pipeline.feature_map(c.data))
    groups, periodic = meta.get("state_groups") or {}, meta.get("periodic_state") or []
    random_init = WorldModel(c.model, rngs=nnx.Rngs(c.seed + 1000))
    models = {"trained": self.model, "random_init": random_init}
    encode = {k: nnx.jit(lambda m, v: m.encode(v)[:, :, 0]) for k in models}
    train_x, train_y = {k: [] for k in models}, []
    batches, _ = pipeline.eval_batches(c.data, c.eval.probe_train_split, c.eval.batch_size, c.eval.probe_clips)
    for batch in batches:
      valid = np.asarray(batch["valid"]) > 0
      for k, m in models.items():
        train_x[k].append(np.asarray(encode[k](m, jax.numpy.asarray(batch["video"])))[valid])
      train_y.append(np.asarray(batch["state"])[valid])
    flat = lambda xs: np.concatenate(xs).reshape(-1, np.concatenate(xs).shape[-1])  # noqa: E731
    y_tr, _ = probes.state_targets(flat(train_y), groups, periodic)
    y_te, g = probes.state_targets(flat(self.states), groups, periodic)
    test_x = {"trained": flat(self.embeds)}
    # The same clips as the trained side: evaluate's --max_clips may cap them below eval.max_clips.
    batches, _ = pipeline.eval_batches(c.data, c.eval.split, c.eval.batch_size, sum(map(len, self.states)))
    test_x["random_init"] = flat(
      [
        np.asarray(encode["random_init"](random_init, jax.numpy.asarray(b["video"])))[np.asarray(b["valid"]) > 0]
        for b in batches
      ]
    )
    return {k: probes.r2_by_group(*probes.ridge_probe(flat(train_x[k]), y_tr, test_x[k], y_te), g) for k in models}
