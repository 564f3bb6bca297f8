"""Models (Flax NNX). Their variables carry mesh-axis annotations; the runtime shards them once, inside its jitted
init, so eager per-variable sharding (which needs a mesh at construction and compiles once per variable) is off."""

from flax import nnx

nnx.use_eager_sharding(False)
