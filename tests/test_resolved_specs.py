"""Golden RESOLVED partition specs per model × topology (abstract shapes, an AbstractMesh: no devices needed), and no
silent replication: per-device parameter bytes stay within 1.25× of total / (fsdp × tensor). Where one dimension per
weight cannot take all of fsdp (ViT-g at 256), the mesh splits it into fsdp × fsdp_sub (parallel/fsdp_split.py).

Regenerate after an intended change with: WM_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_resolved_specs.py
"""

import json
import math
import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, Mesh
from jax.sharding import PartitionSpec as P
from test_partitioning import GOLDEN, _config

from worldmodel import objectives
from worldmodel.parallel import fsdp_split
from worldmodel.parallel import mesh as mesh_lib

TOPOLOGIES = {  # (data, fsdp, tensor)
  ("jepa", "vit_g"): [(1, 256, 1), (1, 64, 4), (2, 128, 1), (32, 8, 1)],
  ("jepa", "bench"): [(1, 8, 1), (2, 2, 2)],
  ("tokenizer", "jasmine"): [(1, 8, 1), (1, 4, 2)],
  ("ac", "dmc"): [(1, 8, 1), (1, 4, 2)],
}


def _abstract(name, variant):
  config = _config(name, variant)
  objective = objectives.get(config.objective)
  _, variables = nnx.split(nnx.eval_shape(lambda: objective.create_model(config, nnx.Rngs(0))))
  return variables, nnx.to_pure_dict(nnx.get_partition_spec(variables))


def _resolved(name, variant, sizes):
  variables, spec_tree = _abstract(name, variant)
  specs = dict(jax.tree_util.tree_leaves_with_path(spec_tree, is_leaf=lambda x: isinstance(x, P)))
  mesh = fsdp_split.fit_mesh(AbstractMesh(sizes, mesh_lib.AXES), (nnx.to_pure_dict(variables),), (spec_tree,))
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


def test_fsdp_splits_only_where_one_dimension_cannot_take_it():
  """1408 = 2^7·11 and 4224 = 2^7·33: no dimension of ViT-g's attention kernels divides 256, so fsdp=256 becomes
  128 × 2 on two dimensions; every mesh a single dimension serves keeps today's mesh (and specs, checkpoints)."""
  variables, spec_tree = _abstract("jepa", "vit_g")
  fit = lambda sizes: dict(  # noqa: E731
    fsdp_split.fit_mesh(AbstractMesh(sizes, mesh_lib.AXES), (nnx.to_pure_dict(variables),), (spec_tree,)).shape
  )
  assert fit((1, 256, 1)) == {"data": 1, "fsdp": 128, "fsdp_sub": 2, "tensor": 1}
  assert fit((1, 64, 4)) == {"data": 1, "fsdp": 64, "tensor": 4}
  with pytest.raises(ValueError, match=r"fsdp=257 cannot shard encoder/.* of shape"):  # prime: no split helps
    fit((1, 257, 1))


def test_split_mesh_keeps_device_order_and_batch_axes():
  devices = [type("D", (), {"id": i, "process_index": 0})() for i in range(8)]
  auto = (jax.sharding.AxisType.Auto,) * 3
  mesh = fsdp_split.split(Mesh(np.asarray(devices).reshape(2, 4, 1), mesh_lib.AXES, axis_types=auto), 2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "fsdp_sub": 2, "tensor": 1}
  assert [d.id for d in mesh.devices.ravel()] == list(range(8))  # fsdp_sub: neighbouring devices
  assert mesh_lib.batch_axes(mesh) == ("data", "fsdp", "fsdp_sub")
  assert mesh_lib.batch_axes(AbstractMesh((2, 4, 1), mesh_lib.AXES)) == ("data", "fsdp")  # unsplit: as before
  assert mesh_lib.fit_spec(P("fsdp", None), (1408, 66), mesh) == P(("fsdp", "fsdp_sub"), None)  # room: stacks
  assert mesh_lib.fit_spec(P("fsdp", None), (1406, 66), mesh) == P("fsdp", "fsdp_sub")  # 1406 = 2·703: next dim
  assert mesh_lib.fit_spec(P("fsdp", None), (6, 8), mesh) == P("fsdp", None)  # small: replicates over fsdp_sub


def test_fit_spec_moves_an_axis_to_a_dimension_it_divides_or_refuses():
  mesh = AbstractMesh((1, 4, 2), mesh_lib.AXES)
  assert mesh_lib.fit_spec(P("fsdp", "tensor"), (8, 6), mesh) == P("fsdp", "tensor")
  assert mesh_lib.fit_spec(P("fsdp", "tensor"), (6, 512), mesh, "w") == P(None, ("tensor", "fsdp"))
  assert mesh_lib.fit_spec(P(None, "tensor"), (512, 512), mesh) == P("fsdp", "tensor")  # implicit fsdp, big_vision
  assert mesh_lib.fit_spec(P("fsdp"), (6,), mesh) == P(None)  # tiny: replicates
  with pytest.raises(ValueError, match="cannot shard big/w of shape \\(257, 257\\)"):
    mesh_lib.fit_spec(P("fsdp", None), (257, 257), mesh, "big/w")
  np.testing.assert_equal(mesh_lib.MIN_SHARDED_SIZE, 2**16)
