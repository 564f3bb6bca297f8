"""V-JEPA: context encoder + EMA target encoder + predictor over masked spatiotemporal tubes.

The target encoder's weights are `EMA` variables, not `nnx.Param`: the runtime differentiates and optimises Params
only, so the target gets no gradients and no optimizer state; the objective's `after_update` moves it toward the
encoder after every optimizer step.
"""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from worldmodel.models import vit


class EMA(nnx.Variable):
  """A weight that follows an exponential moving average of a Param (the target encoder)."""


class Frozen(nnx.Variable):
  """A weight that is used but never trained (e.g. a pretrained encoder under an action-conditioned predictor)."""


def retyped(module: nnx.Module, cls: type[nnx.Variable]) -> nnx.Module:
  """A copy of `module` whose variables are of type `cls` (same values and sharding annotations)."""
  graphdef, state = nnx.split(nnx.clone(module))
  state = jax.tree.map(lambda v: cls(v[...], **v.get_metadata()), state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


class JEPA(nnx.Module):
  def __init__(self, m: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.encoder = vit.VideoViT(m, m.encoder, rngs=rngs)
    self.target_encoder = retyped(self.encoder, EMA)  # starts equal to the encoder, as in V-JEPA
    self.predictor = vit.Predictor(m, num_mask_tokens=len(m.masks), rngs=rngs)
    self.loss_exp = float(m.get("loss_exp", 1.0))
