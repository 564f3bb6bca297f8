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

from worldmodel import checkpoint as ckpt_lib
from worldmodel import common, encoders
from worldmodel.common import layer_norm, regression_loss
from worldmodel.models.ac import ACModel
from worldmodel.objectives import base


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
  enc = encoders.read_encoder_config(m.encoder_source, key=m.encoder_key or None, heads=m.encoder_heads or None)
  enc.frames, enc.remat = enc.tubelet[0], "none"  # every frame is encoded on its own (one tubelet)
  m.encoder_model = enc
  m.size = enc.size
  common.fill_action_dim(config, "an action-conditioned model needs the 'action' feature")


def create_model(config: ml_collections.ConfigDict, rngs) -> ACModel:
  return ACModel(config.model, rngs=rngs)


def batch_spec(config: ml_collections.ConfigDict, sharding) -> dict:
  return common.video_action_spec(config, sharding)


def check_config(config: ml_collections.ConfigDict) -> None:
  m = config.model
  for key in ("frames", "max_frames", "action_dim", "rollout_steps"):
    common.check_ints(f"model.{key}", (m[key],), minimum=1)
  for key in ("width", "depth", "heads"):
    common.check_ints(f"model.predictor.{key}", (m.predictor[key],), minimum=1)
  if m.predictor.width % m.predictor.heads:
    raise ValueError(
      f"config key 'model.predictor.width' ({m.predictor.width}) must be divisible by "
      f"'model.predictor.heads' ({m.predictor.heads})"
    )
  if m.loss_exp not in (1, 2):
    raise ValueError(f"config key 'model.loss_exp' ({m.loss_exp}) must be 1 (L1) or 2 (squared error)")
  if m.frames < 2 or m.frames > m.max_frames:
    raise ValueError(f"config key 'model.frames' ({m.frames}) must be in 2..model.max_frames ({m.max_frames})")
  if not 1 <= m.context_frames < m.frames:
    raise ValueError(
      f"config key 'model.context_frames' ({m.context_frames}) must be in 1..model.frames - 1 "
      f"({m.frames - 1}): a rollout needs at least one frame to predict"
    )
  if m.rollout_steps >= m.frames:
    raise ValueError(f"config key 'model.rollout_steps' ({m.rollout_steps}) must be < model.frames ({m.frames})")


def initialize(rt, state: dict) -> dict:
  """A fresh run starts from the pretrained encoder (a JEPA run's target encoder at its newest checkpoint, an
  export, or an imported V-JEPA encoder)."""
  m = rt.config.model
  weights, _ = encoders.read_encoder(m.encoder_source, key=m.encoder_key or None, heads=m.encoder_heads or None)
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


from worldmodel.objectives.ac_eval import Evaluator  # noqa: E402


@base.register
class AC(base.Objective):
  name = "ac"
  defaults = {
    "model": {
      "encoder_key": "",
      "encoder_heads": 0,
      "loss_exp": 1.0,
      "context_frames": 1,
      "residual": False,
      "scan_layers": False,
    }
  }
  create_model, batch_spec = staticmethod(create_model), staticmethod(batch_spec)
  check_config, check_data = staticmethod(check_config), staticmethod(common.check_frames)
  loss_fn, eval_step, Evaluator = staticmethod(loss_fn), staticmethod(eval_step), Evaluator
  resolve_config, initialize = staticmethod(resolve_config), staticmethod(initialize)
  plannable = True
  encoder_description = "the frozen encoder it was trained on"

  def configure_eval(self, config, *, context=None, perceptual="", probes=True) -> None:
    super().configure_eval(config, perceptual=perceptual, probes=probes)
    if context is not None:
      config.model.context_frames = context
      check_config(config)  # e.g. a context as long as the clips leaves nothing to predict

  def encoder_config(self, config):
    return config.model.encoder_model

  def encoder_weights(self, state: dict):
    return state.get("extra", {}).get("encoder")
