"""Fit check before launch: compile the train step for N devices on this machine, without running it.

  python -m worldmodel.aot --config=experiments/tokenizer.py:jasmine --devices=256 --mesh=data:32,fsdp:8,tensor:1
      [--hbm_gib=80] [--accelerators=h100,tpu_v5p] [--config.batch_size=1024]

Uses N fake CPU devices, so what it compiles is the real SPMD-partitioned program for that mesh. Prints per-device
memory (parameters, optimizer state, other state, batch, XLA temporaries), FLOPs per step per device, and an estimated
step time / MFU on the named accelerators from their peak bf16 rates. Exits 1 when the per-device total does not fit
--hbm_gib. (XLA:CPU's memory planning and fusion differ from GPU/TPU: treat the temporaries as an estimate.)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from worldmodel import config as config_lib

if __name__ == "__main__":  # flags only for the CLI: importing several CLI modules must not redefine them
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].", lock_config=True)
  _DEVICES = flags.DEFINE_integer("devices", 8, "Number of devices to compile for (fake CPU devices here).")
  _MESH = flags.DEFINE_string(
    "mesh", "", "Mesh as data:A,fsdp:B,tensor:C (-1 fills; fsdp may split into fsdp × fsdp_sub); default: config's."
  )
  _HBM = flags.DEFINE_float(
    "hbm_gib", 0.0, "Fail (exit 1) if the per-device total exceeds this many GiB (0: no check)."
  )
  _ACCEL = flags.DEFINE_list("accelerators", ["h100", "tpu_v5p"], "Accelerators to estimate step time for.")
  _MFU = flags.DEFINE_float("assumed_mfu", 0.4, "MFU assumed for the step-time estimate.")
  flags.mark_flags_as_required(["config"])

# Dense bf16 peak FLOP/s and memory per chip, from the vendors' data sheets.
ACCELERATORS = {
  "h100": (989e12, 80),
  "h200": (989e12, 141),
  "tpu_v5p": (459e12, 95),
  "tpu_v5e": (197e12, 16),
  "a100": (312e12, 80),
}
GIB = 1024**3


def parse_mesh(text: str) -> dict:
  out = {"data": -1, "fsdp": 1, "tensor": 1}
  for part in filter(None, text.split(",")):
    name, _, size = part.partition(":")
    if name not in out or not size.lstrip("-").isdigit():
      raise ValueError(f"--mesh={text!r}: expected data:A,fsdp:B,tensor:C, got {part!r}")
    out[name] = int(size)
  return out


def per_device_bytes(tree, mesh) -> float:
  """Bytes one device holds of a pytree of ShapeDtypeStructs with NamedShardings (replicated leaves count fully)."""
  import jax
  import numpy as np

  total = 0
  for leaf in jax.tree.leaves(tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shard)) * leaf.dtype.itemsize
  return total


def fit_check(config, devices: int, mesh_text: str) -> dict:
  import jax

  from worldmodel import runtime
  from worldmodel.parallel import mesh as mesh_lib

  with config.unlocked():
    if mesh_text:
      config.mesh.update(parse_mesh(mesh_text))
  rt = runtime.build(config, mesh_lib.make_mesh(config.mesh))
  mesh = rt.mesh  # fsdp may have been split into fsdp × fsdp_sub for the model's shapes
  batch = rt.objective.batch_spec(config, mesh_lib.batch_sharding(mesh))
  t0 = time.time()
  compiled = rt.train_step.lower(rt.abstract_state, batch).compile()
  compile_s = time.time() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  parts = {
    "params": per_device_bytes(rt.abstract_state["params"], mesh),
    "optimizer": per_device_bytes(rt.abstract_state["opt"], mesh),
    "other_state": per_device_bytes(rt.abstract_state["extra"], mesh),
    "batch": per_device_bytes(batch, mesh),
    "temporaries": float(getattr(mem, "temp_size_in_bytes", 0) or 0),
  }
  total = parts["params"] + parts["optimizer"] + parts["other_state"] + parts["batch"] + parts["temporaries"]
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(rt.abstract_state["params"]))
  return {
    "devices": devices,
    "mesh": dict(mesh.shape),
    "params": n_params,
    "per_device_gib": {k: v / GIB for k, v in parts.items()},
    "per_device_total_gib": total / GIB,
    "flops_per_device_per_step": float(cost.get("flops", float("nan"))),
    "compile_s": compile_s,
  }


def main(argv):
  config_lib.die(f"unexpected arguments {argv[1:]}") if len(argv) > 1 else None
  # Fake devices must be configured before jax starts a backend.
  os.environ.pop("XLA_FLAGS", None)
  import jax

  jax.config.update("jax_num_cpu_devices", _DEVICES.value)
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  try:
    result = fit_check(_CONFIG.value, _DEVICES.value, _MESH.value)
  except ValueError as e:
    config_lib.die(str(e))
  flops = result["flops_per_device_per_step"]
  print(
    f"{result['params'] / 1e6:.1f}M parameters on {result['devices']} devices, mesh {result['mesh']}; "
    f"compiled in {result['compile_s']:.0f}s"
  )
  print("per-device memory:")
  for k, v in result["per_device_gib"].items():
    print(f"  {k:<12} {v:8.3f} GiB")
  print(f"  {'total':<12} {result['per_device_total_gib']:8.3f} GiB per device")
  print(f"FLOPs per step per device: {flops:.3e}")
  if _CONFIG.value.model.scan_layers or _CONFIG.value.optim.microbatches > 1:
    print(
      "warning: with model.scan_layers or optim.microbatches > 1 XLA's cost analysis counts a scan body once: "
      "FLOPs and the estimates below are too low; run with --config.model.scan_layers=False and "
      "--config.optim.microbatches=1 for FLOPs"
    )
  for name in _ACCEL.value:
    if name not in ACCELERATORS:
      config_lib.die(f"unknown accelerator {name!r}; known: {sorted(ACCELERATORS)}")
    peak, hbm = ACCELERATORS[name]
    est = flops / (peak * _MFU.value)
    fits = "fits" if result["per_device_total_gib"] <= hbm else "DOES NOT FIT"
    print(f"  {name}: ~{est * 1e3:.2f} ms/step at {_MFU.value:.0%} MFU; {fits} in {hbm} GiB")
    result[f"est_step_s_{name}"] = est
  print(json.dumps(result))
  if _HBM.value and result["per_device_total_gib"] > _HBM.value:
    print(
      f"error: needs {result['per_device_total_gib']:.2f} GiB per device, more than --hbm_gib={_HBM.value}: "
      "add fsdp / tensor parallelism, remat (--config.model.remat=full) or a smaller batch",
      file=sys.stderr,
    )
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.flags_parser)
