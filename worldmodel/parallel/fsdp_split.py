"""Split the `fsdp` mesh axis into `fsdp` × `fsdp_sub` when no single dimension of some large weight can take all of it.

jax shards evenly, so fsdp=256 cannot shard ViT-g's [40, 1408, 4224] qkv kernel on one dimension (1408 = 2^7·11,
4224 = 2^7·33). As fsdp=128 × fsdp_sub=2 it is 128-way on 1408 and 2-way on 4224: 256-way in all. The split is chosen
from the model's abstract parameter shapes: the smallest fsdp_sub that lets `fit_spec` shard every weight, 1 (today's
mesh, specs and checkpoints unchanged) whenever that works. `mesh.fsdp` stays the total.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from jax.sharding import AbstractMesh, Mesh
from jax.sharding import PartitionSpec as P

from worldmodel.parallel import mesh as mesh_lib


def leaves(trees, spec_trees) -> list[tuple[str, tuple[int, ...], P]]:
  """(name, shape, annotated spec) of every array in matching (tree, spec tree) pairs."""
  out = []
  for tree, specs in zip(trees, spec_trees):
    jax.tree_util.tree_map_with_path(
      lambda path, s, x: out.append((mesh_lib.param_name(path), tuple(np.shape(x)), s)),
      specs,
      tree,
      is_leaf=lambda x: isinstance(x, P),
    )
  return out


def split(mesh, sub: int):
  """The mesh with its fsdp axis reshaped to (fsdp / sub, sub); fsdp_sub is the minor (fastest-linked) part.
  Works for a device Mesh and an AbstractMesh."""
  names = list(mesh.axis_names)
  i = names.index("fsdp")
  sizes = [mesh.shape[n] for n in names]
  sizes[i : i + 1] = [sizes[i] // sub, sub]
  names.insert(i + 1, mesh_lib.FSDP_SUB)
  types = list(mesh.axis_types)
  types.insert(i + 1, types[i])
  if isinstance(mesh, AbstractMesh):
    return AbstractMesh(tuple(sizes), tuple(names), axis_types=tuple(types))
  return Mesh(mesh.devices.reshape(sizes), tuple(names), axis_types=tuple(types))


def choose(mesh, arrays: list) -> int:
  """Smallest fsdp_sub under which every (name, shape, spec) resolves; raises fit_spec's error at fsdp_sub=1 where
  no split works."""
  F = mesh.shape.get("fsdp", 1)
  first = None
  for sub in [s for s in range(1, F) if F % s == 0]:
    trial = mesh if sub == 1 else split(AbstractMesh(tuple(mesh.shape.values()), tuple(mesh.axis_names)), sub)
    try:
      for name, shape, spec in arrays:
        mesh_lib.fit_spec(spec, shape, trial, name)
      return sub
    except ValueError as e:
      first = first or e
  if first is not None:
    raise first
  return 1


def fit_mesh(mesh, trees, spec_trees):
  """`mesh`, with fsdp split where the model's weights need it (logged)."""
  if mesh.shape.get("fsdp", 1) <= 1 or mesh_lib.FSDP_SUB in mesh.shape:
    return mesh
  sub = choose(mesh, leaves(trees, spec_trees))
  if sub == 1:
    return mesh
  F = mesh.shape["fsdp"]
  logging.warning(
    "mesh: fsdp=%d divides no single dimension of some weights; split into fsdp=%d × %s=%d (weights sharded over "
    "two dimensions, batch over data × fsdp × %s)",
    F,
    F // sub,
    mesh_lib.FSDP_SUB,
    sub,
    mesh_lib.FSDP_SUB,
  )
  return split(mesh, sub)
