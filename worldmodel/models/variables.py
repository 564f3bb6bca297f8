"""Variable types besides nnx.Param. The runtime differentiates and optimises Params only; every other variable is
carried in the train state's "extra" (saved with every checkpoint, no gradients, no optimizer state)."""

from __future__ import annotations

import jax
from flax import nnx


class EMA(nnx.Variable):
  """A weight that follows an exponential moving average of a Param (the target encoder)."""


class Frozen(nnx.Variable):
  """A weight that is used but never trained (e.g. a pretrained encoder under an action-conditioned predictor)."""


def retyped(module: nnx.Module, cls: type[nnx.Variable]) -> nnx.Module:
  """A copy of `module` whose variables are of type `cls` (same values and sharding annotations)."""
  graphdef, state = nnx.split(nnx.clone(module))
  state = jax.tree.map(lambda v: cls(v[...], **v.get_metadata()), state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)
