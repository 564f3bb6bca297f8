"""A pretrained video encoder (all, part or none of it frozen) under an attentive task head. Objective:
objectives/finetune.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from worldmodel import common
from worldmodel import config as config_lib
from worldmodel.models import heads, vit
from worldmodel.models.variables import Frozen, retyped

MODES = ("frozen", "partial", "full")  # model.mode: which encoder parts train
TASKS = ("state", "classify")  # model.task: what the head predicts


def freeze(encoder: vit.VideoViT, mode: str, trainable_blocks: int) -> vit.VideoViT:
  """Retype the parts that do not train as `Frozen`: all of it (frozen), or all but the last blocks (partial)."""
  if mode == "frozen":
    return retyped(encoder, Frozen)
  if mode == "partial":
    encoder.patch_embed = retyped(encoder.patch_embed, Frozen)
    blocks = encoder.blocks.blocks
    for i in range(len(blocks) - trainable_blocks):
      blocks[i] = retyped(blocks[i], Frozen)
  return encoder


class FinetuneModel(nnx.Module):
  def __init__(self, m: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    e = m.encoder_model
    self.task, self.slot_frames = m.task, e.tubelet[0]
    self.state_mean, self.state_std = tuple(m.state_mean), tuple(m.state_std)
    self.periodic = tuple(m.periodic_state)
    self.encoder = freeze(vit.VideoViT(e, e.encoder, rngs=rngs), m.mode, m.trainable_blocks)
    self.head = heads.AttentiveHead(
      e.encoder.width,
      output_dim(m),
      heads=m.head.heads,
      queries=m.head.queries,
      rngs=rngs,
      dtype=config_lib.compute_dtype(e.dtype),
    )

  def __call__(self, video_BTHWC: jax.Array) -> jax.Array:
    if video_BTHWC.dtype == jnp.uint8:
      video_BTHWC = common.to_float(video_BTHWC)
    return self.head(self.encoder(video_BTHWC))


def output_dim(m: ml_collections.ConfigDict) -> int:
  if m.task == "classify":
    return len(m.classes)
  return (m.frames // m.encoder_model.tubelet[0]) * len(m.state_mean)
