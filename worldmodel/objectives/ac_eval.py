"""Held-out evaluation of an action-conditioned model: latent rollout error (L1 and MSE) per horizon against copying
the last observed frame, plus the teacher-forced loss; metrics.json and a PNG of the L1 error vs horizon."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from worldmodel import media, metrics


class Evaluator:
  def __init__(self, model, config: ml_collections.ConfigDict, num_media: int = 4):
    del model, num_media
    self.config = config
    self.acc = metrics.RunningMean()

  def update(self, batch: dict, out: dict) -> None:
    valid = np.asarray(batch["valid"]) > 0
    n = int(valid.sum())
    if n:
      keys = ("rollout", "copy_last", "rollout_mse", "copy_last_mse")
      self.acc.update(
        {k: np.asarray(out[f"{k}_BH"])[valid].mean(0) for k in keys}
        | {"teacher_forcing": np.asarray(out["teacher_B"])[valid].mean()},
        weight=n,
      )

  def finish(self, out_dir: str, num_clips: int) -> dict:
    r = self.acc.result()
    roll, copy = np.asarray(r["rollout"]), np.asarray(r["copy_last"])
    ratio = roll / np.maximum(copy, 1e-12)
    result = {
      "teacher_forcing_loss": float(r["teacher_forcing"]),
      "num_clips": num_clips,
      "context_frames": int(self.config.model.context_frames),
      "rollout_l1": [float(x) for x in roll],
      "copy_last_l1": [float(x) for x in copy],
      "rollout_vs_copy_last": [float(x) for x in ratio],
      "horizons": list(range(1, len(roll) + 1)),
    }
    mse_ratio = np.asarray(r["rollout_mse"]) / np.maximum(np.asarray(r["copy_last_mse"]), 1e-12)
    result.update(
      {
        "rollout_mse": [float(x) for x in r["rollout_mse"]],
        "copy_last_mse": [float(x) for x in r["copy_last_mse"]],
        "rollout_mse_vs_copy_last": [float(x) for x in mse_ratio],
      }
    )
    for h in (1, 4):
      if h <= len(roll):
        result[f"rollout_l1_h{h}"] = float(roll[h - 1])
        result[f"rollout_vs_copy_last_h{h}"] = float(ratio[h - 1])
        result[f"rollout_mse_vs_copy_last_h{h}"] = float(mse_ratio[h - 1])
    os.makedirs(out_dir, exist_ok=True)
    result["media"] = {
      "rollout_error_png": media.plot_curves(
        os.path.join(out_dir, "rollout_error.png"),
        {"AC predictor": roll, "copy last frame": copy},
        "horizon (frames ahead)",
        "L1 to true latent",
        "Latent rollout error",
        x=np.arange(1, len(roll) + 1),
      )
    }
    return result
