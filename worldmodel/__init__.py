"""worldmodel: video tokenizers, JEPA latent predictors and action-conditioned world models in JAX.

Array names end in their shape, one letter per axis (`video_BTHWC`, `tokens_BND`):
  B batch (clips)              T time (frames; or time slots of tubelets)    H, W height, width    C channels
  N tokens of a clip           D feature width                               M masked / target tokens
  L sequence length            Q, K query and key positions (attention)     S state dimensions
  A action dimensions           E width of one attention head (D / heads)
Planning (planning.py, plan.py) counts candidate action sequences with N and their horizon with H; there tokens are
P, observed context frames C and encoded frames F. Objectives: worldmodel/objectives/base.py holds the contract.

The Python API (worldmodel/api.py; each function imports its heavy parts lazily so `import worldmodel` stays cheap):
  load_config(spec, **overrides)   an experiments/*.py config, "FILE[:VARIANT]"
  train(config, workdir)           train or resume, as `python -m worldmodel.train`
  evaluate(workdir, **kwargs)      evaluate a checkpoint, as `python -m worldmodel.evaluate`
  load_tokenizer(workdir)          clips → codes (encode) and codes → clips (decode)
  load_encoder(path)               a pretrained video encoder (JEPA / AC / fine-tune workdir, export, V-JEPA file)
"""

import importlib

from worldmodel.api import load_config, load_tokenizer


def load_encoder(path: str, **kwargs):
  """(VideoViT, model config) from a JEPA / AC / fine-tune workdir, an encoder export or a V-JEPA checkpoint file;
  see `worldmodel.encoders.load_encoder`. Imported lazily so that `import worldmodel` stays cheap."""
  from worldmodel.encoders import load_encoder as load

  return load(path, **kwargs)


def __getattr__(name: str):
  # worldmodel.train / worldmodel.evaluate are the CLI modules, made callable (api.callable_module): the same name
  # works as `python -m worldmodel.train` and as `worldmodel.train(config, workdir)`.
  if name in ("train", "evaluate"):
    return importlib.import_module(f"worldmodel.{name}")
  raise AttributeError(f"module 'worldmodel' has no attribute {name!r}")


__all__ = ["evaluate", "load_config", "load_encoder", "load_tokenizer", "train"]
