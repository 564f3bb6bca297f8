"""A mesh whose fsdp axis is split into fsdp × fsdp_sub trains like a data-parallel one (8 real CPU devices)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, cli_env

SCRIPT = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
import numpy as np
from conftest import experiment_config, make_dataset
from worldmodel import runtime
from worldmodel.data import pipeline

data = make_dataset(sys.argv[1], episodes=8, frames=8)
out = {}
for fsdp, K in ((1, 1), (8, 2)):  # 260 = 4 * 65: fsdp=8 fits no dimension of the qkv kernel [260, 780]
  c = experiment_config("jepa", "tiny")
  c.data.dir, c.batch_size, c.optim.microbatches = data, 16, K
  c.mesh.update(data=-1, fsdp=fsdp, tensor=1)
  c.model.encoder.update(width=260, depth=1)
  c.model.predictor.update(depth=1)
  rt = runtime.build(c)
  state = rt.init_fn()
  ds = pipeline.train_dataset(c.data, seed=0, global_batch=16, start_step=0, num_steps=1,
                              transform=runtime.sample_transform(c))
  batch = pipeline.to_global(next(iter(ds)), rt.mesh)
  for _ in range(2):  # step 0 has lr 0: the second step moves the weights
    state, logs = rt.train_step(state, batch)
  qkv = state["params"]["encoder"]["blocks"]["blocks"][0]["attn"]["qkv"]["kernel"]
  out[fsdp] = dict(mesh=dict(rt.mesh.shape), loss=float(logs["loss"]), spec=str(qkv.sharding.spec),
                   qkv=np.asarray(qkv).ravel()[:4096].tolist())
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_split_fsdp_mesh_trains_like_data_parallel(tmp_path):
  env = cli_env({"PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")])})
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT, str(tmp_path / "data")],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT ", 1)[1])
  plain, split = out["1"], out["8"]
  assert plain["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert split["mesh"] == {"data": 1, "fsdp": 4, "fsdp_sub": 2, "tensor": 1}
  assert "fsdp_sub" in split["spec"] and "fsdp" in split["spec"].replace("fsdp_sub", "")
  assert split["loss"] == pytest.approx(plain["loss"], rel=1e-4)
  assert max(abs(a - b) for a, b in zip(plain["qkv"], split["qkv"])) < 1e-5
  assert "split into fsdp=4 × fsdp_sub=2" in proc.stderr
