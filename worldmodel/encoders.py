"""Pretrained video encoders for downstream code: load one, encode clips, export one on its own.

  python -m worldmodel.encoders --workdir=runs/jepa --out=exports/jepa_encoder

`load_encoder(path)` accepts
  - a worldmodel JEPA workdir: the EMA target encoder of its newest checkpoint (an AC workdir: its frozen encoder;
    a fine-tune workdir: its fine-tuned encoder),
  - an encoder export (this CLI's output: encoder.json + Orbax weights/), which needs no training config or state,
  - a V-JEPA / V-JEPA 2 checkpoint (.pt / .pth / .pth.tar / .safetensors; worldmodel.importers.vjepa).
Every form returns (VideoViT, model config): the config holds VideoViT's keys (frames, size, tubelet, pos, dtype,
remat, scan_layers, encoder), the same block an AC run stores as `model.encoder_model`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from worldmodel import checkpoint as ckpt_lib
from worldmodel import config as config_lib
from worldmodel import objectives, storage
from worldmodel.importers import vjepa
from worldmodel.models import vit

EXPORT_FORMAT = "worldmodel-encoder"
EXPORT_VERSION = 1
_MODEL_KEYS = ("frames", "size", "tubelet", "pos", "dtype", "remat", "scan_layers", "encoder")


def _encoder_config(m: ml_collections.ConfigDict, frames: int | None, size: int | None) -> ml_collections.ConfigDict:
  d = {k: m[k].to_dict() if isinstance(m[k], ml_collections.ConfigDict) else m[k] for k in _MODEL_KEYS}
  d["tubelet"] = tuple(d["tubelet"])
  d["frames"], d["size"] = frames or d["frames"], size or d["size"]
  if d["frames"] % d["tubelet"][0] or d["size"] % d["tubelet"][1]:
    raise ckpt_lib.CheckpointError(
      f"clip {d['frames']}x{d['size']}x{d['size']} does not tile into the encoder's {d['tubelet']} tubelets"
    )
  return ml_collections.ConfigDict(d)


def _workdir_encoder_config(workdir: str, config=None) -> ml_collections.ConfigDict:
  config = config or config_lib.load_workdir_config(workdir)
  model = objectives.get(config.objective).encoder_config(config)
  if model is None:
    have = [n for n in objectives.names() if objectives.get(n).encoder_description]
    raise ckpt_lib.CheckpointError(
      f"{workdir} is a {config.objective!r} run with no encoder to load; use a workdir of {', '.join(have)}"
    )
  return model


def _workdir_encoder(workdir: str) -> tuple[int, dict, ml_collections.ConfigDict]:
  """(step, encoder weights, encoder model config) of a workdir's newest checkpoint."""
  config = config_lib.load_workdir_config(workdir)
  model, objective = _workdir_encoder_config(workdir, config), objectives.get(config.objective)
  step, state = ckpt_lib.read_newest(workdir)
  weights = objective.encoder_weights(state)
  if weights is None:
    raise ckpt_lib.CheckpointError(
      f"{workdir}: the newest checkpoint (step {step}) lacks {objective.encoder_description} "
      f"(extra holds {sorted(state.get('extra', {}))})"
    )
  return step, weights, model


def _source_kind(path: str) -> str:
  """'export', 'workdir' or 'vjepa'; a clear error for anything else."""
  if storage.isdir(path):
    if storage.exists(storage.join(path, "encoder.json")):
      return "export"
    if storage.exists(storage.join(path, "config.json")):
      return "workdir"
    raise ckpt_lib.CheckpointError(
      f"{path} is neither a worldmodel workdir (config.json) nor an encoder export (encoder.json)"
    )
  if path.endswith(vjepa.SUFFIXES):
    if storage.is_remote(path):
      raise ckpt_lib.CheckpointError(f"{path}: copy V-JEPA checkpoint files to a local path first")
    if not os.path.exists(path):
      raise ckpt_lib.CheckpointError(f"{path}: no such file")
    return "vjepa"
  raise ckpt_lib.CheckpointError(
    f"{path}: not a directory and not a known checkpoint file; supported: a workdir, "
    f"an encoder export, or {vjepa.FORMATS}"
  )


def _export_config(path: str) -> ml_collections.ConfigDict:
  meta = json.loads(storage.read_text(storage.join(path, "encoder.json")))
  if meta.get("format") != EXPORT_FORMAT:
    raise ckpt_lib.CheckpointError(f"{path}/encoder.json is not a {EXPORT_FORMAT} export")
  return ml_collections.ConfigDict(meta["model"])


def read_encoder(
  path: str, *, frames: int | None = None, size: int | None = None, key: str | None = None, heads: int | None = None
) -> tuple[dict, ml_collections.ConfigDict]:
  """(encoder weights as a pure dict, model config) from a workdir, an encoder export or a V-JEPA checkpoint file:
  what `load_encoder` builds from, and what fine-tuning and AC runs start from. `key`: a V-JEPA file's entry."""
  kind = _source_kind(path)
  if kind == "export":
    m = _encoder_config(_export_config(path), frames, size)
    return ckpt_lib.read_numpy(storage.join(storage.absolute(path), "weights")), m
  if kind == "workdir":
    _, weights, model = _workdir_encoder(path)
    return weights, _encoder_config(model, frames, size)
  return vjepa.read_vjepa_encoder(path, frames=frames, size=size, key=key, heads=heads)


def read_encoder_config(
  path: str, *, frames: int | None = None, size: int | None = None, key: str | None = None, heads: int | None = None
) -> ml_collections.ConfigDict:
  """The model config `read_encoder` would return, without reading the weights for a workdir or an export (a
  config step should not load gigabytes twice). A V-JEPA file's shapes are in its tensors, so it is read whole."""
  kind = _source_kind(path)
  if kind == "export":
    return _encoder_config(_export_config(path), frames, size)
  if kind == "workdir":
    return _encoder_config(_workdir_encoder_config(path), frames, size)
  return vjepa.read_vjepa_encoder(path, frames=frames, size=size, key=key, heads=heads)[1]


def load_encoder(
  path: str, *, frames: int | None = None, size: int | None = None, key: str | None = None, heads: int | None = None
):
  """(encoder module, model config) from a workdir, an encoder export or a V-JEPA checkpoint file.

  frames / size: the clip shape to encode (positions are regenerated for it); default: what it was trained on.
  heads: a V-JEPA file's attention heads, for widths without a published count.
  """
  weights, m = read_encoder(path, frames=frames, size=size, key=key, heads=heads)
  return vit.build(m, weights), m


@nnx.jit
def _encode(encoder: nnx.Module, video_BTHWC: jax.Array) -> jax.Array:
  if video_BTHWC.dtype == jnp.uint8:
    video_BTHWC = video_BTHWC.astype(jnp.float32) / 255.0
  return encoder(video_BTHWC).astype(jnp.float32)


def encode(encoder: nnx.Module, video_BTHWC_uint8) -> jax.Array:
  """Features [B, N, width] (f32) of uint8 clips [B, T, H, W, 3] (float clips in [0, 1] work too); jitted."""
  return _encode(encoder, jnp.asarray(video_BTHWC_uint8))


def export_encoder(workdir: str, out_dir: str) -> str:
  """Write a workdir's target encoder as an encoder-only export: out_dir/weights (Orbax) + out_dir/encoder.json."""
  import orbax.checkpoint as ocp

  step, weights, model = _workdir_encoder(workdir)
  m = _encoder_config(model, None, None)
  vit.build(m, weights)  # checks names and shapes before anything is written
  out_dir = storage.absolute(out_dir)
  storage.makedirs(out_dir)
  target = storage.join(out_dir, "weights")
  if storage.exists(target):
    storage.rmtree(target)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(target, weights)
  checkpointer.wait_until_finished()
  checkpointer.close()
  meta = {
    "format": EXPORT_FORMAT,
    "version": EXPORT_VERSION,
    "model": config_lib.to_dict(m),
    "source": storage.absolute(workdir),
    "step": int(step),
  }
  storage.write_text(storage.join(out_dir, "encoder.json"), json.dumps(meta, indent=2, sort_keys=True))
  return out_dir


def main(argv):
  from absl import flags

  if len(argv) > 1:
    config_lib.die(f"unexpected arguments {argv[1:]}")
  try:
    out = export_encoder(flags.FLAGS.workdir, flags.FLAGS.out)
  except (ckpt_lib.CheckpointError, config_lib.ConfigError, OSError, ValueError) as e:
    config_lib.die(str(e))
  print(f"exported the encoder of {flags.FLAGS.workdir} to {out}", flush=True)


if __name__ == "__main__":
  from absl import app, flags

  # Flags are defined only when run as a script: importing this module next to other CLIs must not redefine them.
  flags.DEFINE_string("workdir", None, "A JEPA workdir: its newest checkpoint's EMA target encoder is exported.")
  flags.DEFINE_string("out", None, "Output directory: encoder.json and weights/ (Orbax) are written there.")
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main, flags_parser=config_lib.flags_parser)
