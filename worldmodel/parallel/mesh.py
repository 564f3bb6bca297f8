"""Device mesh from config, and the shardings that place parameters and batches on it.

Axes: `data` (pure data parallel: batch split, parameters replicated), `fsdp` (batch split *and* parameters /
optimizer state split), `tensor` (attention heads and MLP hidden split). Where one dimension per weight cannot take
all of `fsdp`, runtime.build splits it into `fsdp` × `fsdp_sub` (parallel/fsdp_split.py) and every large weight
carries the sub-axis on a second dimension; the batch is split over all three batch axes. Parameters carry their mesh axes as
`nnx.with_partitioning` annotations; `fit_spec` resolves them per mesh: an axis that does not divide its dimension
moves to another dimension it divides, small weights may replicate, and a large weight no rule can shard is an error
naming it. One annotation serves every mesh.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")  # config axes (`mesh.*` keys); `mesh.fsdp` is the total over fsdp × fsdp_sub
FSDP_SUB = "fsdp_sub"  # present only in meshes whose fsdp axis was split (parallel/fsdp_split.py)
BATCH_AXES = ("data", "fsdp", FSDP_SUB)  # the batch dimension is split over all of them


def batch_axes(mesh) -> tuple[str, ...]:
  """The batch axes this mesh has (fsdp_sub only where fsdp was split)."""
  return tuple(a for a in BATCH_AXES if a in mesh.shape)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Resolve -1 ('fill') entries so the product equals the device count."""
  sizes = [int(mesh_cfg[a]) for a in AXES]
  fills = [i for i, s in enumerate(sizes) if s == -1]
  if len(fills) > 1:
    raise ValueError(f"mesh: at most one axis may be -1 (fill), got {dict(zip(AXES, sizes))}")
  fixed = math.prod(s for s in sizes if s != -1)
  if fills:
    if num_devices % fixed:
      raise ValueError(
        f"mesh: {dict(zip(AXES, sizes))} cannot fill {num_devices} devices ({num_devices} is not a multiple of {fixed})"
      )
    sizes[fills[0]] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"mesh: {dict(zip(AXES, sizes))} uses {math.prod(sizes)} devices but {num_devices} are present; "
      "set one axis to -1 to fill"
    )
  return tuple(sizes)


def dcn_shape(mesh_cfg) -> tuple[int, int, int]:
  """Cross-slice (multi-slice TPU) / cross-node sizes per axis: `mesh.dcn.{data,fsdp,tensor}`, default 1."""
  dcn = mesh_cfg.get("dcn") or {}
  sizes = tuple(int(dcn.get(a, 1)) for a in AXES)
  if any(s < 1 for s in sizes):
    raise ValueError(f"mesh.dcn sizes must be >= 1, got {dict(zip(AXES, sizes))}")
  return sizes


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """The (data, fsdp, tensor) mesh. With `mesh.dcn` sizes > 1 it is a hybrid mesh: each axis is (cross-slice size ×
  per-slice size), laid out so that the cross-slice part spans slices (or hosts, where devices have no slice) and
  the fast collectives of the per-slice part stay inside one. `mesh.data/fsdp/tensor` are then per-slice sizes."""
  devices = jax.devices() if devices is None else devices
  dcn = dcn_shape(mesh_cfg)
  # Auto axes: Explicit ones (jax's default) break einops rearranges of sharded arrays (BUILD_NOTES.md).
  auto = (AxisType.Auto,) * len(AXES)
  if math.prod(dcn) == 1:
    return jax.make_mesh(mesh_shape(mesh_cfg, len(devices)), AXES, axis_types=auto, devices=devices)
  if len(devices) % math.prod(dcn):
    raise ValueError(f"mesh.dcn {dict(zip(AXES, dcn))} does not divide the {len(devices)} devices")
  ici = mesh_shape(mesh_cfg, len(devices) // math.prod(dcn))
  has_slices = getattr(devices[0], "slice_index", None) is not None
  granules = {d.slice_index if has_slices else d.process_index for d in devices}
  if len(granules) == math.prod(dcn):
    from jax.experimental import mesh_utils

    array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not has_slices)
  else:  # e.g. fake CPU devices in one process (fit checks): consecutive blocks of devices stand in for slices
    blocks = np.asarray(devices, dtype=object).reshape(dcn + ici)
    array = blocks.transpose(0, 3, 1, 4, 2, 5).reshape([d * i for d, i in zip(dcn, ici)])
  return Mesh(array, AXES, axis_types=auto)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


MIN_SHARDED_SIZE = 2**16  # elements: smaller weights (biases, norms) may replicate when no dimension fits an axis


def fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh, name: str = "a parameter") -> P:
  """The annotation, resolved for this mesh; never a silent replication of a large weight.

  An annotated axis that does not divide its dimension moves to the largest other dimension it divides (big_vision's
  fsdp rule), stacking with axes already there; a large weight annotated without fsdp gets it the same way. Where
  none fits, weights under MIN_SHARDED_SIZE elements replicate over that axis (a rounding error of memory); larger
  ones are refused with their name. A split fsdp axis puts `fsdp_sub` on a second dimension of every large weight
  that holds `fsdp` (the largest it divides, stacking where the first one has room); small ones replicate over it."""
  dims = [_axis_names(a, mesh) for a in tuple(spec) + (None,) * (len(shape) - len(spec))]
  homeless = []
  for i, names in enumerate(dims):
    kept = []
    for n in names:  # keep the leading axes whose product divides the dimension
      if shape[i] % (math.prod(mesh.shape[k] for k in kept) * mesh.shape[n]) == 0:
        kept.append(n)
      else:
        homeless.append(n)
    dims[i] = kept
  large = math.prod(shape) >= MIN_SHARDED_SIZE
  if large and mesh.shape.get("fsdp", 1) > 1 and not any("fsdp" in d for d in dims) and "fsdp" not in homeless:
    _place(dims, shape, mesh, "fsdp")  # big_vision's fsdp rule shards every large weight; none fits: as annotated
  for n in sorted(homeless, key=lambda n: -mesh.shape[n]):
    if not _place(dims, shape, mesh, n) and large:
      raise _refusal(n, name, shape, mesh)
  if large and mesh.shape.get(FSDP_SUB, 1) > 1 and any("fsdp" in d for d in dims):  # after fsdp has its dimension
    if not _place(dims, shape, mesh, FSDP_SUB):
      raise _refusal(FSDP_SUB, name, shape, mesh)
  return P(*[(d[0] if len(d) == 1 else tuple(d)) if d else None for d in dims])


def _refusal(n: str, name: str, shape, mesh) -> ValueError:
  return ValueError(
    f"mesh axis {n}={mesh.shape[n]} cannot shard {name} of shape {tuple(shape)}: it divides no dimension. "
    f"Choose mesh sizes that divide it (e.g. a smaller {n} with a larger data axis)"
  )


def _place(dims: list, shape, mesh, n: str) -> bool:
  """Add axis n to the largest dimension it divides (with the axes already there); False where none."""
  fits = [i for i in range(len(shape)) if shape[i] % (math.prod(mesh.shape[k] for k in dims[i]) * mesh.shape[n]) == 0]
  if fits:
    dims[max(fits, key=lambda i: (shape[i], -i))].append(n)
  return bool(fits)


def _axis_names(axes, mesh) -> list[str]:
  names = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return [n for n in names if n in mesh.shape]


def param_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def shardings_for(tree: Any, specs: Any, mesh: Mesh) -> Any:
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) given a matching pytree of PartitionSpecs."""
  return jax.tree_util.tree_map_with_path(
    lambda path, s, x: NamedSharding(mesh, fit_spec(s, np.shape(x), mesh, param_name(path))),
    specs,
    tree,
    is_leaf=lambda x: isinstance(x, P),
  )


def describe(mesh: Mesh) -> str:
  return (
    " × ".join(f"{n}={s}" for n, s in mesh.shape.items()) + f" ({mesh.size} devices, {jax.process_count()} processes)"
  )
