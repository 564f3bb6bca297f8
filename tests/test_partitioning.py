"""Golden partition specs: every parameter's mesh axes per model, so a sharding change is always deliberate.

Regenerate after an intended change with: WM_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_partitioning.py
"""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from conftest import experiment_config
from flax import nnx
from jax.sharding import PartitionSpec as P

from worldmodel import objectives
from worldmodel.parallel import mesh as mesh_lib

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def _config(name, variant):
  config = experiment_config(name, variant)
  if name == "ac":  # what resolve_config fills in from a JEPA workdir: the dmc JEPA's encoder
    jepa = experiment_config("jepa", "dmc").model
    config.model.encoder_model = ml_collections.ConfigDict(
      dict(
        frames=2,
        size=jepa.size,
        tubelet=jepa.tubelet,
        pos=jepa.pos,
        dtype=jepa.dtype,
        remat="none",
        scan_layers=False,
        encoder=jepa.encoder.to_dict(),
      )
    )
    config.model.update(size=jepa.size, action_dim=2)
  return config


def _specs(config: ml_collections.ConfigDict) -> dict:
  """Every variable's spec: Params and the rest (EMA target, frozen encoder, VQ codebook state)."""
  objective = objectives.get(config.objective)
  _, variables = nnx.split(nnx.eval_shape(lambda: objective.create_model(config, nnx.Rngs(0))))
  flat = jax.tree_util.tree_leaves_with_path(
    nnx.to_pure_dict(nnx.get_partition_spec(variables)), is_leaf=lambda x: isinstance(x, P)
  )
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): [a if a is None or isinstance(a, str) else list(a) for a in spec]
    for path, spec in flat
  }


@pytest.mark.parametrize(
  "name,variant",
  [("tokenizer", "small"), ("tokenizer", "jasmine"), ("jepa", "bench"), ("jepa", "vit_g"), ("ac", "dmc")],
)
def test_partition_specs_match_the_golden_file(name, variant):
  got = _specs(_config(name, variant))
  path = os.path.join(GOLDEN, f"partition_specs_{name}_{variant}.json")
  if os.environ.get("WM_UPDATE_GOLDEN"):
    with open(path, "w") as f:
      json.dump(got, f, indent=1, sort_keys=True)
  with open(path) as f:
    assert got == json.load(f)
  # every matrix is sharded somewhere; nothing names an axis the mesh does not have
  for name, spec in got.items():
    axes = {a for s in spec for a in ([s] if isinstance(s, str) else s or [])}
    assert axes <= set(mesh_lib.AXES), name
    if name.endswith("kernel") and "embed" not in name:
      assert axes, f"{name} is replicated on every mesh"


def test_fit_spec_keeps_axes_that_divide():
  devices = jax.devices()[:1]
  mesh = jax.make_mesh((1, 1, 1), mesh_lib.AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  assert mesh_lib.fit_spec(P("fsdp", "tensor"), (8, 6), mesh) == P("fsdp", "tensor")
  fake = type("M", (), {"shape": {"data": 2, "fsdp": 4, "tensor": 2}})()
  assert mesh_lib.fit_spec(P("fsdp", "tensor"), (8, 6), fake) == P("fsdp", "tensor")
  assert mesh_lib.fit_spec(P("fsdp", "tensor"), (6, 3), fake) == P("tensor", None)  # tensor moves; fsdp: small
  assert mesh_lib.fit_spec(P(("data", "fsdp"), None), (16, 3), fake) == P(("data", "fsdp"), None)


def test_mesh_shape_fills_and_refuses_bad_sizes():
  assert mesh_lib.mesh_shape({"data": -1, "fsdp": 4, "tensor": 1}, 8) == (2, 4, 1)
  with pytest.raises(ValueError, match="at most one axis"):
    mesh_lib.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="not a multiple"):
    mesh_lib.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="uses 4 devices"):
    mesh_lib.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)


def test_hybrid_mesh_puts_cross_slice_factors_outermost():
  devices = [type("D", (), {"id": i, "process_index": 0, "slice_index": None})() for i in range(16)]
  mesh = mesh_lib.make_mesh(
    {"data": 1, "fsdp": -1, "tensor": 2, "dcn": {"data": 2, "fsdp": 2, "tensor": 1}}, devices=devices
  )
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 2}
  ids = np.vectorize(lambda d: d.id)(mesh.devices)
  # Blocks of 4 consecutive devices stand in for slices: only the dcn factors (data, outer fsdp) cross them.
  assert {int(x) // 4 for x in ids[0, :2].ravel()} == {0} and {int(x) // 4 for x in ids[1, 2:].ravel()} == {3}
  assert mesh_lib.dcn_shape({"data": 1}) == (1, 1, 1)
  with pytest.raises(ValueError, match="does not divide"):
    mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1, "dcn": {"data": 3}}, devices=devices)
