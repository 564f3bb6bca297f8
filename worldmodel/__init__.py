"""worldmodel: video tokenizers, JEPA latent predictors and action-conditioned world models in JAX."""


def load_encoder(path: str, **kwargs):
  """(VideoViT, model config) from a JEPA / AC / fine-tune workdir, an encoder export or a V-JEPA checkpoint file;
  see `worldmodel.encoders.load_encoder`. Imported lazily so that `import worldmodel` stays cheap."""
  from worldmodel.encoders import load_encoder as load

  return load(path, **kwargs)
