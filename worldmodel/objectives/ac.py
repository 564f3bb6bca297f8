"""Action-conditioned world model in a frozen JEPA encoder's latent space (V-JEPA 2-AC style).

Each frame is encoded on its own (repeated to fill a tubelet) by a pretrained encoder (`model.encoder_source`: a
JEPA workdir's target encoder, an encoder export, or a V-JEPA / V-JEPA 2 file), and layer-normed: z_t [N, D]. The predictor learns P(z_{t+1} | z_≤t, a_≤t):
loss = L1 teacher forcing over the clip + L1 of a `model.rollout_steps`-step autoregressive rollout from frame 0
(`model.loss_exp=2`: half the squared error instead, as in the JEPA objective).
The encoder's weights are `Frozen` variables: no gradients, no optimizer state, saved with every checkpoint.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from worldmodel import checkpoint as ckpt_lib
from worldmodel import encoders
from worldmodel.data import pipeline, records
from worldmodel.models import vit
from worldmodel.models.ac_predictor import ACPredictor
from worldmodel.models.jepa import Frozen, retyped
from worldmodel.objectives import tokenizer as tok_obj
from worldmodel.objectives.jepa import layer_norm, regression_loss


class ACModel(nnx.Module):
  def __init__(self, m: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    e = m.encoder_model
    self.tubelet, self.rollout_steps = tuple(e.tubelet), m.rollout_steps
    self.loss_exp = float(m.get("loss_exp", 1.0))
    self.context_frames = int(m.get("context_frames", 1))  # observed frames before an evaluation / planning rollout
    self.encoder = retyped(vit.VideoViT(e, e.encoder, rngs=rngs), Frozen)
    self.predictor = ACPredictor(m, e.encoder.width, self.encoder.grid[1:], rngs=rngs)

  def encode(self, frames_BTHWC: jax.Array) -> jax.Array:
    """uint8 or [0, 1] frames → layer-normed features [B, T, N, D], every frame on its own."""
    if frames_BTHWC.dtype == jnp.uint8:
      frames_BTHWC = tok_obj.to_float(frames_BTHWC)
    B, T, H, W, C = frames_BTHWC.shape
    clips = jnp.repeat(frames_BTHWC.reshape(B * T, 1, H, W, C), self.tubelet[0], axis=1)
    z = layer_norm(self.encoder(clips))
    return jax.lax.stop_gradient(z.reshape(B, T, z.shape[1], z.shape[2]))

  def rollout(self, z_ctx_BCND: jax.Array, a_BKA: jax.Array, horizon: int) -> jax.Array:
    """Context features of frames 0..C-1 and actions 0..C+horizon-2 → predicted frames C..C+horizon-1,
    one frame at a time with cached keys / values; each prediction is layer-normed and fed back."""
    B, C = z_ctx_BCND.shape[:2]
    cache = self.predictor.init_cache(B, C + horizon)
    for t in range(C):
      pred, cache = self.predictor.step(cache, t, z_ctx_BCND[:, t], a_BKA[:, t])
    preds = [layer_norm(pred)]
    for h in range(1, horizon):
      t = C - 1 + h
      pred, cache = self.predictor.step(cache, t, preds[-1], a_BKA[:, t])
      preds.append(layer_norm(pred))
    return jnp.stack(preds, axis=1)


def resolve_config(config: ml_collections.ConfigDict) -> None:
  """Copy the encoder's architecture from its source (and the action size from the data) into the config, so an
  AC workdir's config.json is self-contained."""
  m = config.model
  if not m.encoder_source:
    raise ValueError(
      "config key 'model.encoder_source' must name a pretrained encoder: a JEPA workdir (python -m "
      "worldmodel.train --config=experiments/jepa.py:...), an encoder export, or a V-JEPA .pt / "
      ".safetensors file; it is the frozen encoder of this model"
    )
  enc = encoders.read_encoder_config(
    m.encoder_source, key=m.get("encoder_key") or None, heads=m.get("encoder_heads") or None
  )
  enc.frames, enc.remat = enc.tubelet[0], "none"  # every frame is encoded on its own (one tubelet)
  m.encoder_model = enc
  m.size = enc.size
  if not m.action_dim:
    meta = records.read_meta(pipeline.data_dirs(config.data)[0], pipeline.feature_map(config.data))
    if not meta.get("action_dim"):
      raise records.DatasetError(
        f"{config.data.dir}: no actions in this dataset (worldmodel.json has no "
        "action_dim); an action-conditioned model needs the 'action' feature"
      )
    m.action_dim = int(meta["action_dim"])


def create_model(config: ml_collections.ConfigDict, rngs) -> ACModel:
  return ACModel(config.model, rngs=rngs)


def batch_spec(config: ml_collections.ConfigDict, sharding) -> dict:
  m, B = config.model, config.batch_size
  return {
    "video": jax.ShapeDtypeStruct((B, m.frames, m.size, m.size, 3), jnp.uint8, sharding=sharding),
    "action": jax.ShapeDtypeStruct((B, m.frames, m.action_dim), jnp.float32, sharding=sharding),
  }


def check_config(config: ml_collections.ConfigDict) -> None:
  m = config.model
  for key in ("frames", "max_frames", "action_dim", "rollout_steps"):
    tok_obj._ints(f"model.{key}", (m[key],), minimum=1)
  for key in ("width", "depth", "heads"):
    tok_obj._ints(f"model.predictor.{key}", (m.predictor[key],), minimum=1)
  if m.predictor.width % m.predictor.heads:
    raise ValueError(
      f"config key 'model.predictor.width' ({m.predictor.width}) must be divisible by "
      f"'model.predictor.heads' ({m.predictor.heads})"
    )
  if m.get("loss_exp", 1.0) not in (1, 2):
    raise ValueError(f"config key 'model.loss_exp' ({m.loss_exp}) must be 1 (L1) or 2 (squared error)")
  if m.frames < 2 or m.frames > m.max_frames:
    raise ValueError(f"config key 'model.frames' ({m.frames}) must be in 2..model.max_frames ({m.max_frames})")
  if not 1 <= m.get("context_frames", 1) < m.frames:
    raise ValueError(
      f"config key 'model.context_frames' ({m.get('context_frames')}) must be in 1..model.frames - 1 "
      f"({m.frames - 1}): a rollout needs at least one frame to predict"
    )
  if m.rollout_steps >= m.frames:
    raise ValueError(f"config key 'model.rollout_steps' ({m.rollout_steps}) must be < model.frames ({m.frames})")


def check_data(config: ml_collections.ConfigDict, frame_size: int) -> None:
  tok_obj.check_data(config, frame_size)


def initialize(rt, state: dict) -> dict:
  """A fresh run starts from the pretrained encoder (a JEPA run's target encoder at its newest checkpoint, an
  export, or an imported V-JEPA encoder)."""
  m = rt.config.model
  weights, _ = encoders.read_encoder(
    m.encoder_source, key=m.get("encoder_key") or None, heads=m.get("encoder_heads") or None
  )
  weights = ckpt_lib.conform(weights, state["extra"]["encoder"], f"{m.encoder_source} encoder")
  state["extra"]["encoder"] = jax.device_put(jax.tree.map(jnp.asarray, weights), rt.state_shardings["extra"]["encoder"])
  print(f"frozen encoder: target encoder of {m.encoder_source}", flush=True)
  return state


def _l1(a, b, axis=None):
  return jnp.mean(jnp.abs(a.astype(jnp.float32) - b), axis=axis)


def loss_fn(model: ACModel, batch: dict, *, rng: jax.Array, train: bool):
  del rng, train
  z = model.encode(batch["video"])
  a = batch["action"].astype(jnp.float32)
  exp = model.loss_exp  # 1: V-JEPA 2-AC's L1; evaluation always reports L1
  teacher = regression_loss(model.predictor(z[:, :-1], a[:, :-1]).astype(jnp.float32), z[:, 1:], exp)
  seq, roll = z[:, :1], []
  for s in range(1, min(model.rollout_steps, z.shape[1] - 1) + 1):  # differentiable, recomputed each step
    out = model.predictor(seq, a[:, :s])[:, -1]
    roll.append(regression_loss(out.astype(jnp.float32), z[:, s], exp))
    seq = jnp.concatenate([seq, layer_norm(out)[:, None]], axis=1)
  rollout = sum(roll) / len(roll)
  return teacher + rollout, {"loss": teacher + rollout, "loss/teacher_forcing": teacher, "loss/rollout": rollout}


def eval_step(model: ACModel, batch: dict) -> dict:
  """Per clip and horizon h = 1..T-C: L1 and MSE of the cached rollout from the first C = `model.context_frames`
  frames, and of copying frame C-1 (L1 is V-JEPA 2-AC's metric; MSE is what a `loss_exp=2` model optimises, and
  the two can rank models differently)."""
  z = model.encode(batch["video"])
  a = batch["action"].astype(jnp.float32)
  T, C = z.shape[1], model.context_frames
  preds = model.rollout(z[:, :C], a, T - C)
  teacher = _l1(model.predictor(z[:, :-1], a[:, :-1]), z[:, 1:], axis=(1, 2, 3))
  out = {"teacher_B": teacher}
  for name, guess in (("rollout", preds), ("copy_last", z[:, C - 1 : C])):
    err = guess.astype(jnp.float32) - z[:, C:]
    out[f"{name}_BH"] = jnp.mean(jnp.abs(err), axis=(2, 3))
    out[f"{name}_mse_BH"] = jnp.mean(err**2, axis=(2, 3))
  return out


from worldmodel.objectives.ac_eval import Evaluator  # noqa: E402,F401
