"""The Python API: what the CLIs do, callable from a script or a notebook (errors raise; nothing calls sys.exit).

import worldmodel as wm
config = wm.load_config("experiments/tokenizer.py:tiny", **{"data.dir": "data/bouncing", "total_steps": 200})
wm.train(config, "runs/tok")                    # resumes when runs/tok holds a checkpoint of the same model
result = wm.evaluate("runs/tok", split="test")  # metrics dict; media under runs/tok/eval/<step>/
tok = wm.load_tokenizer("runs/tok")
codes = tok.encode(video_BTHWC_uint8)           # int32 [B, T', H'*W'] code indices
video = tok.decode(codes)                       # uint8 [B, T, H, W, 3]
encoder, model_cfg = wm.load_encoder("runs/jepa")  # JEPA / AC / fine-tune workdirs, exports, V-JEPA files
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any

import ml_collections


def load_config(spec: str, **overrides: Any) -> ml_collections.ConfigDict:
  """An experiment config from "FILE[:VARIANT]" (as --config takes it); keyword overrides use dotted keys as
  --config.KEY=VALUE does (pass them with **{"data.dir": ...}). Unknown keys raise ConfigError."""
  from worldmodel import config as config_lib

  path, _, variant = spec.partition(":")
  if not os.path.exists(path):
    raise config_lib.ConfigError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"_wm_experiment_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  for key, value in overrides.items():
    set_key(config, key, value)
  return config


def set_key(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  from worldmodel import config as config_lib

  *parents, leaf = dotted.split(".")
  node = config
  for part in parents:
    if part not in node:
      raise config_lib.ConfigError(f"unknown config key {dotted!r}")
    node = node[part]
  if leaf not in node:
    raise config_lib.ConfigError(f"unknown config key {dotted!r}")
  node[leaf] = value


def train(config: ml_collections.ConfigDict | str, workdir: str, **overrides: Any) -> dict:
  """Train (or resume) in this process; returns the last logged metrics with the step. `config`: a ConfigDict or a
  "FILE[:VARIANT]" spec. Same loop, checkpoints, logs and in-training evaluation as `python -m worldmodel.train`."""
  from worldmodel import trainer

  if isinstance(config, str):
    config = load_config(config, **overrides)
  else:
    config = config.copy_and_resolve_references()
    for key, value in overrides.items():
      set_key(config, key, value)
  return trainer.train(config, workdir)


def evaluate(workdir: str, **kwargs: Any) -> dict:
  """Evaluate a checkpoint (the newest, or step=N) as `python -m worldmodel.evaluate` does; keyword arguments:
  split, data_dir, step, out_dir, batch_size, max_clips, probes, perceptual, context. Returns the metrics dict."""
  from worldmodel import evaluate as evaluate_lib

  return evaluate_lib.evaluate(workdir, **kwargs)


class Tokenizer:
  """A trained video tokenizer: clips ↔ discrete codes. Built by `load_tokenizer`."""

  def __init__(self, model, config: ml_collections.ConfigDict, step: int):
    import jax

    self.model, self.config, self.step = model, config, step
    m = config.model
    self.clip_shape = (m.frames, m.size, m.size, 3)
    self.grid = model.grid  # (T', H', W') latent tokens per clip
    self.num_codes = model.quantizer.num_codes
    self._encode = jax.jit(lambda v: model.tokenize(v.astype("float32") / 255.0))
    self._decode = jax.jit(lambda c: model.detokenize(c))

  def encode(self, video_BTHWC) -> Any:
    """uint8 clips [B, T, H, W, 3] (the trained clip shape) → int32 code indices [B, T', H'·W'] (numpy)."""
    import numpy as np

    video = np.asarray(video_BTHWC)
    if video.dtype != np.uint8 or video.ndim != 5 or video.shape[1:] != self.clip_shape:
      raise ValueError(
        f"encode: want uint8 clips [B, {', '.join(map(str, self.clip_shape))}], got {video.dtype} {video.shape}"
      )
    return np.asarray(self._encode(video))

  def decode(self, codes_BTN) -> Any:
    """Code indices [B, T', H'·W'] → uint8 clips [B, T, H, W, 3] (numpy)."""
    import numpy as np

    codes = np.asarray(codes_BTN)
    t, h, w = self.grid
    if codes.ndim != 3 or codes.shape[1:] != (t, h * w) or codes.min() < 0 or codes.max() >= self.num_codes:
      raise ValueError(f"decode: want int codes [B, {t}, {h * w}] in [0, {self.num_codes}), got {codes.shape}")
    recon = np.asarray(self._decode(codes.astype(np.int32)))
    return np.round(np.clip((recon + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)


def load_tokenizer(workdir: str, *, step: int | None = None) -> Tokenizer:
  """The tokenizer of a tokenizer workdir's newest checkpoint (or `step`), on the default device."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from worldmodel import checkpoint as ckpt_lib
  from worldmodel import config as config_lib
  from worldmodel.models.tokenizer import VideoTokenizer

  config = config_lib.load_workdir_config(workdir)
  if config.objective != "tokenizer":
    raise ckpt_lib.CheckpointError(
      f"{workdir} is a {config.objective!r} run; load_tokenizer needs a tokenizer workdir (load_encoder loads encoders)"
    )
  step, state = ckpt_lib.read_newest(workdir, step)
  graphdef, params, extra = nnx.split(
    nnx.eval_shape(lambda: VideoTokenizer(config.model, rngs=nnx.Rngs(0))), nnx.Param, ...
  )
  for abstract, saved, what in ((params, state["params"], "params"), (extra, state.get("extra", {}), "extra")):
    values = ckpt_lib.conform(saved, nnx.to_pure_dict(abstract), f"tokenizer {what}")
    nnx.replace_by_pure_dict(abstract, jax.tree.map(jnp.asarray, values))
  return Tokenizer(nnx.merge(graphdef, params, extra), config, step)


def callable_module(name: str, fn) -> None:
  """Make module `name` callable as `fn`: `worldmodel.train(...)` calls api.train while `python -m worldmodel.train`
  and `from worldmodel import train` (the module) keep working."""

  class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
      return fn(*args, **kwargs)

  sys.modules[name].__class__ = _CallableModule
