"""worldmodel: video tokenizers, JEPA latent predictors and action-conditioned world models in JAX.

Array names end in their shape, one letter per axis (`video_BTHWC`, `tokens_BND`):
  B batch (clips)              T time (frames; or time slots of tubelets)    H, W height, width    C channels
  N tokens of a clip           D feature width                               M masked / target tokens
  L sequence length            Q, K query and key positions (attention)     S state dimensions
  A action dimensions
Planning (planning.py, plan.py) counts candidate action sequences with N and their horizon with H; there tokens are
P, observed context frames C and encoded frames F. Objectives: worldmodel/objectives/base.py holds the contract.
"""


def load_encoder(path: str, **kwargs):
  """(VideoViT, model config) from a JEPA / AC / fine-tune workdir, an encoder export or a V-JEPA checkpoint file;
  see `worldmodel.encoders.load_encoder`. Imported lazily so that `import worldmodel` stays cheap."""
  from worldmodel.encoders import load_encoder as load

  return load(path, **kwargs)
