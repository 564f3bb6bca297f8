"""V-JEPA: context encoder + EMA target encoder + predictor over masked spatiotemporal tubes.

The target encoder's weights are `EMA` variables, not `nnx.Param`: the runtime differentiates and optimises Params
only, so the target gets no gradients and no optimizer state; the objective's `after_update` moves it toward the
encoder after every optimizer step.
"""

from __future__ import annotations

import ml_collections
from flax import nnx

from worldmodel.models import vit
from worldmodel.models.variables import EMA, retyped


class JEPA(nnx.Module):
  def __init__(self, m: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.encoder = vit.VideoViT(m, m.encoder, rngs=rngs)
    self.target_encoder = retyped(self.encoder, EMA)  # starts equal to the encoder, as in V-JEPA
    self.predictor = vit.Predictor(m, num_mask_tokens=len(m.masks), rngs=rngs)
    self.loss_exp = float(m.loss_exp)
    self.reg = tuple((k, float(v)) for k, v in sorted(m.reg.items()))  # small-scale options' weights (static)
