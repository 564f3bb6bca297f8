"""Golden RESOLVED partition specs per model × topology (abstract shapes, an AbstractMesh: no devices needed), and no
silent replication: per-device parameter bytes stay within 1.25× of total / (fsdp × tensor).

Regenerate after an intended change with: WM_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_resolved_specs.py
"""

import json
import math
import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P
from test_partitioning import GOLDEN, _config

from worldmodel import runtime
from worldmodel.parallel import mesh as mesh_lib

TOPOLOGIES = {  # (data, fsdp, tensor)
  ("jepa", "vit_g"): [(1, 64, 4), (2, 128, 1), (32, 8, 1)],
  ("jepa", "bench"): [(1, 8, 1), (2, 2, 2)],
  ("tokenizer", "jasmine"): [(1, 8, 1), (1, 4, 2)],
  ("ac", "dmc"): [(1, 8, 1), (1, 4, 2)],
}


def _resolved(name, variant, sizes):
  config = _config(name, variant)
  objective = runtime.get_objective(config.objective)
  _, variables = nnx.split(nnx.eval_shape(lambda: objective.create_model(config, nnx.Rngs(0))))
  specs = dict(
    jax.tree_util.tree_leaves_with_path(
      nnx.to_pure_dict(nnx.get_partition_spec(variables)), is_leaf=lambda x: isinstance(x, P)
    )
  )
  mesh = AbstractMesh(sizes, mesh_lib.AXES)
  out, total, per_device = {}, 0, 0
  for path, x in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(variables)):
    name_ = mesh_lib.param_name(path)
    spec = mesh_lib.fit_spec(specs[path], x.shape, mesh, name_)
    split = [math.prod(mesh.shape[a] for a in ([d] if isinstance(d, str) else d or [])) for d in spec]
    nbytes = math.prod(x.shape) * x.dtype.itemsize
    total, per_device = total + nbytes, per_device + nbytes / math.prod(split)
    out[name_] = [d if d is None or isinstance(d, str) else list(d) for d in spec]
  return out, total, per_device


@pytest.mark.parametrize("model", list(TOPOLOGIES), ids=lambda m: "_".join(m))
def test_resolved_specs_match_golden_and_shard_fully(model):
  got, ratios = {}, {}
  for sizes in TOPOLOGIES[model]:
    key = "data{}_fsdp{}_tensor{}".format(*sizes)
    got[key], total, per_device = _resolved(*model, sizes)
    ratios[key] = per_device / (total / (sizes[1] * sizes[2]))
  path = os.path.join(GOLDEN, "resolved_specs_{}_{}.json".format(*model))
  if os.environ.get("WM_UPDATE_GOLDEN"):
    with open(path, "w") as f:
      json.dump(got, f, indent=1, sort_keys=True)
  with open(path) as f:
    assert got == json.load(f)
  for key, ratio in ratios.items():
    assert ratio <= 1.25, f"{model} at {key}: {ratio:.2f}x the fully sharded bytes per device"


def test_vit_g_at_fsdp_256_is_refused_naming_the_weight():
  """1408 = 2^7·11 and 4224 = 2^7·33: no dimension of ViT-g's attention kernels divides 256 (BUILD_NOTES.md)."""
  with pytest.raises(ValueError, match=r"fsdp=256 cannot shard encoder/blocks/blocks/attn/.*kernel of shape"):
    _resolved("jepa", "vit_g", (1, 256, 1))


def test_fit_spec_moves_an_axis_to_a_dimension_it_divides_or_refuses():
  mesh = AbstractMesh((1, 4, 2), mesh_lib.AXES)
  assert mesh_lib.fit_spec(P("fsdp", "tensor"), (8, 6), mesh) == P("fsdp", "tensor")
  assert mesh_lib.fit_spec(P("fsdp", "tensor"), (6, 512), mesh, "w") == P(None, ("tensor", "fsdp"))
  assert mesh_lib.fit_spec(P(None, "tensor"), (512, 512), mesh) == P("fsdp", "tensor")  # implicit fsdp, big_vision
  assert mesh_lib.fit_spec(P("fsdp"), (6,), mesh) == P(None)  # tiny: replicates
  with pytest.raises(ValueError, match="cannot shard big/w of shape \\(257, 257\\)"):
    mesh_lib.fit_spec(P("fsdp", None), (257, 257), mesh, "big/w")
  np.testing.assert_equal(mesh_lib.MIN_SHARDED_SIZE, 2**16)
