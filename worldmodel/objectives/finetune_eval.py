"""Held-out evaluation of a fine-tuned encoder + head: R² per state group (state) or accuracy, per-class accuracy
and a confusion matrix (classify); metrics.json plus a PNG."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from worldmodel import media, probes


class Evaluator:
  def __init__(self, model, config: ml_collections.ConfigDict, num_media: int = 4):
    del model, num_media
    self.m = config.model
    self.preds, self.targets = [], []

  def update(self, batch: dict, out: dict) -> None:
    valid = np.asarray(batch["valid"]) > 0
    self.preds.append(np.asarray(out["pred"])[valid])
    self.targets.append(np.asarray(out["target"])[valid])

  def finish(self, out_dir: str, num_clips: int) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    pred, y = np.concatenate(self.preds), np.concatenate(self.targets)
    result = {"task": self.m.task, "mode": self.m.mode, "num_clips": num_clips}
    if self.m.task == "classify":
      result.update(classification(pred, y, list(self.m.classes)))
      per_class = result["per_class_accuracy"]
      result["media"] = {
        "per_class_accuracy_png": media.plot_bars(
          os.path.join(out_dir, "per_class_accuracy.png"),
          {"accuracy": per_class},
          "held-out accuracy",
          f"clip classification ({self.m.mode})",
        )
      }
      return result
    S = y.shape[-1]
    groups = {k: list(v) for k, v in self.m.state_groups.items()}
    r2 = probes.r2_by_group(y.reshape(-1, S), pred.reshape(-1, S), groups)
    result.update(r2=r2, mse=float(np.mean(np.square(pred - y))))
    result["media"] = {
      "r2_png": media.plot_bars(
        os.path.join(out_dir, "r2.png"), {self.m.mode: r2}, "held-out R²", "state regression per group"
      )
    }
    return result


def classification(logits_NC: np.ndarray, labels_N: np.ndarray, classes: list[str]) -> dict:
  """Accuracy, per-class accuracy (classes with test clips) and the confusion matrix (rows: truth)."""
  guess = logits_NC.argmax(-1)
  C = len(classes)
  confusion = np.zeros((C, C), np.int64)
  np.add.at(confusion, (labels_N, guess), 1)
  per_class = {classes[c]: float(confusion[c, c] / confusion[c].sum()) for c in range(C) if confusion[c].sum()}
  return {
    "accuracy": float(np.mean(guess == labels_N)),
    "per_class_accuracy": per_class,
    "confusion": confusion.tolist(),
    "classes": classes,
  }
