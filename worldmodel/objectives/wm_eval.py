"""Held-out evaluation of an end-to-end world model: the AC evaluator's latent rollout error (L1 and MSE per
horizon, against copying the last observed frame) plus the collapse monitors of the embeddings."""

from __future__ import annotations

import numpy as np

from worldmodel import metrics
from worldmodel.objectives import ac_eval

MONITORS = ("monitor_target_std", "monitor_rankme", "monitor_cross_cosine")


class Evaluator(ac_eval.Evaluator):
  def __init__(self, model, config, num_media: int = 4):
    super().__init__(model, config, num_media)
    self.monitors = metrics.RunningMean()

  def update(self, batch: dict, out: dict) -> None:
    super().update(batch, out)
    valid = np.asarray(batch["valid"]) > 0
    if valid.any():
      self.monitors.update({k: np.asarray(out[f"{k}_B"])[valid].mean() for k in MONITORS}, weight=int(valid.sum()))

  def finish(self, out_dir: str, num_clips: int) -> dict:
    result = super().finish(out_dir, num_clips)
    result |= {k.replace("monitor_", "embedding_"): float(v) for k, v in self.monitors.result().items()}
    return result
