"""Tokenizer objective: reconstruct clips through the quantised bottleneck.

loss = MSE(recon, target) in [-1, 1] pixel space + the quantiser's auxiliary loss (VQ commitment; 0 for FSQ).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from worldmodel import common, media, metrics, perceptual
from worldmodel.models.tokenizer import VideoTokenizer
from worldmodel.objectives import base


def create_model(config: ml_collections.ConfigDict, rngs) -> VideoTokenizer:
  return VideoTokenizer(config.model, rngs=rngs)


def batch_spec(config: ml_collections.ConfigDict, sharding) -> dict:
  """Abstract global batch (what the pipeline feeds the train step), for compiling ahead of time."""
  m = config.model
  return {"video": jax.ShapeDtypeStruct((config.batch_size, m.frames, m.size, m.size, 3), jnp.uint8, sharding=sharding)}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Shape-like keys are checked here: absl accepts any string for a tuple-valued key."""
  m = config.model
  common.check_ints("model.tubelet", m.tubelet, length=3, minimum=1)
  if m.quantizer.kind == "fsq":
    common.check_ints("model.quantizer.levels", m.quantizer.levels, minimum=2)
  elif m.quantizer.kind != "vq":
    raise ValueError(f"config key 'model.quantizer.kind' must be 'fsq' or 'vq', got {m.quantizer.kind!r}")
  for key in ("frames", "size", "width", "heads", "enc_depth", "dec_depth"):
    common.check_ints(f"model.{key}", (m[key],), minimum=1)
  if m.width % m.heads:
    raise ValueError(f"config key 'model.width' ({m.width}) must be divisible by 'model.heads' ({m.heads})")
  for key, n in (("frames", 0), ("size", 1), ("size", 2)):
    if m[key] % m.tubelet[n]:
      raise ValueError(f"config key 'model.{key}' ({m[key]}) is not divisible by model.tubelet[{n}] ({m.tubelet[n]})")


def loss_fn(model: VideoTokenizer, batch: dict, *, rng: jax.Array, train: bool):
  video = common.to_float(batch["video"])
  out = model(video, train=train, rng=rng)
  mse = jnp.mean(jnp.square(out.recon_BTHWC - (video * 2.0 - 1.0)))
  loss = mse + out.quant.loss
  # PSNR of the [0,1] image: MSE in [-1,1] space is 4x the [0,1] MSE.
  logs = {"loss": loss, "mse": mse, "psnr": -10.0 * jnp.log10(mse / 4.0 + 1e-10), **out.quant.metrics}
  return loss, logs


def eval_step(model: VideoTokenizer, batch: dict) -> dict:
  """Per-clip outputs the host aggregates: per-frame PSNR/SSIM/MSE, code indices, reconstructions."""
  video = common.to_float(batch["video"])
  out = model(video, train=False)
  recon = jnp.clip((out.recon_BTHWC + 1.0) / 2.0, 0.0, 1.0)
  per_frame = metrics.video_psnr_ssim(video, recon)
  return {**per_frame, "indices": out.indices_BTN, "recon": recon}


class Evaluator:
  """Accumulates a whole split; writes metrics, a truth | reconstruction GIF and a PSNR-per-frame plot."""

  def __init__(self, model: VideoTokenizer, config: ml_collections.ConfigDict, num_media: int = 4):
    self.model, self.config, self.num_media = model, config, num_media
    self.codes = metrics.CodeStats(model.quantizer.num_codes)
    self.frames = metrics.RunningMean()
    self.media: list[np.ndarray] = []
    kinds = perceptual.parse(config.eval.perceptual)
    self.perceptual = (
      perceptual.Accumulator(kinds, config.model.frames) if kinds else None
    )  # LPIPS / FVD: the [metrics] extra

  def update(self, batch: dict, out: dict) -> None:
    valid = np.asarray(batch["valid"]) > 0
    n = int(valid.sum())
    if not n:
      return
    per_frame = {k: np.asarray(out[k])[valid] for k in ("psnr_BT", "ssim_BT", "mse_BT")}
    self.frames.update({k[:-3]: v.mean(0) for k, v in per_frame.items()}, weight=n)
    self.codes.update(np.asarray(out["indices"])[valid])
    if self.perceptual:
      self.perceptual.update(np.asarray(batch["video"])[valid] / 255.0, np.asarray(out["recon"])[valid])
    for truth, recon in zip(np.asarray(batch["video"])[valid], np.asarray(out["recon"])[valid]):
      if len(self.media) < self.num_media:
        self.media.append(media.side_by_side([truth, media.to_uint8(recon)]))

  def finish(self, out_dir: str, num_clips: int) -> dict:
    per_frame = self.frames.result()  # per-frame-index means over clips
    m = self.config.model
    result = {
      "psnr": float(np.mean(per_frame["psnr"])),
      "ssim": float(np.mean(per_frame["ssim"])),
      "mse": float(np.mean(per_frame["mse"])),
      "codebook_usage": self.codes.usage(),
      "perplexity": self.codes.perplexity(),
      "bits_per_pixel": metrics.bits_per_pixel(
        self.model.tokens_per_clip, self.model.quantizer.num_codes, m.frames, m.size, m.size
      ),
      "bits_per_pixel_entropy": self.codes.entropy_bits() * self.model.tokens_per_clip / (m.frames * m.size**2),
      "num_codes": self.model.quantizer.num_codes,
      "num_clips": num_clips,
      "psnr_per_frame": [float(x) for x in per_frame["psnr"]],
      "ssim_per_frame": [float(x) for x in per_frame["ssim"]],
      **(self.perceptual.result() if self.perceptual else {}),
    }
    os.makedirs(out_dir, exist_ok=True)
    result["media"] = {
      "reconstructions_gif": media.write_gif(
        os.path.join(out_dir, "truth_vs_recon.gif"),
        np.concatenate(self.media, axis=1),
        fps=6,
        scale=3,
        captions=["truth", "reconstruction"],
      ),
      "psnr_per_frame_png": media.plot_curves(
        os.path.join(out_dir, "psnr_per_frame.png"),
        {"PSNR": np.asarray(per_frame["psnr"])},
        "frame index",
        "PSNR (dB)",
        "Held-out PSNR per frame index",
      ),
    }
    return result


@base.register
class Tokenizer(base.Objective):
  name = "tokenizer"
  defaults = {"model": {"scan_layers": False}}
  create_model, batch_spec = staticmethod(create_model), staticmethod(batch_spec)
  check_config, check_data = staticmethod(check_config), staticmethod(common.check_frames)
  loss_fn, eval_step, Evaluator = staticmethod(loss_fn), staticmethod(eval_step), Evaluator

  def configure_eval(self, config, *, context=None, perceptual="", probes=True) -> None:
    super().configure_eval(config, context=context, probes=probes)
    if perceptual:
      from worldmodel import perceptual as perceptual_lib

      perceptual_lib.parse(perceptual)
      config.eval.perceptual = perceptual
