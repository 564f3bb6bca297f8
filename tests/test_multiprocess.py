"""A real multi-process run on localhost (launch/local.py, jax.distributed, gloo): same losses as one process."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, cli_env, local_launch_cmd, losses

from worldmodel import eval_hook
from worldmodel.checkpoint import read_numpy


def _launch(num_processes, devices, workdir, data, steps=4):
  # checkpoint.every_steps=2: the 4-step runs leave a checkpoint at step 4 for the topology-change continuation
  cmd = local_launch_cmd(
    num_processes,
    devices,
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={workdir}",
    f"--config.data.dir={data}",
    f"--config.total_steps={steps}",
    "--config.log_every_steps=1",
    "--config.mesh.fsdp=2",
    "--config.checkpoint.every_steps=2",
    "--config.eval.every_steps=2",  # in-training evaluation: every process runs the same jitted calls
    "--config.eval.train_max_clips=8",
  )
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=cli_env())


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, dataset):
  two = _launch(2, 2, tmp_path / "two", dataset)
  assert two.returncode == 0, two.stdout[-3000:]
  assert "[p1]" in two.stdout and "(4 devices, 2 processes)" in two.stdout
  one = _launch(1, 4, tmp_path / "one", dataset)
  assert one.returncode == 0, one.stdout[-3000:]
  a, b = losses(tmp_path / "two"), losses(tmp_path / "one")
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  for step in a:
    assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])
  ev_two, ev_one = eval_hook.read_rows(str(tmp_path / "two")), eval_hook.read_rows(str(tmp_path / "one"))
  assert [r["step"] for r in ev_two] == [r["step"] for r in ev_one] == [2, 4]
  assert abs(ev_two[-1]["psnr"] - ev_one[-1]["psnr"]) <= 1e-3 and "eval val step 4:" in two.stdout

  # The 2-process checkpoint continues on 1 process x 4 devices as it does on 2 x 2 (restore onto the new mesh's
  # shardings; the data order is a function of the step, not the topology). Cross-process all-reduces (gloo) sum in
  # another order than in-process ones, so the parameters agree to float rounding, not bit for bit (Adam's
  # normalised update magnifies rounding in near-zero gradients to ~1e-6 on parameters of that size).
  shutil.copytree(tmp_path / "two", tmp_path / "moved")
  shutil.copytree(tmp_path / "two", tmp_path / "stayed")
  assert _launch(1, 4, tmp_path / "moved", dataset, steps=6).returncode == 0
  assert _launch(2, 2, tmp_path / "stayed", dataset, steps=6).returncode == 0
  moved, stayed = _params(tmp_path / "moved", 6), _params(tmp_path / "stayed", 6)
  assert moved.keys() == stayed.keys()
  for k in moved:
    np.testing.assert_allclose(moved[k], stayed[k], rtol=1e-4, atol=2e-5, err_msg=k)


def _params(workdir, step):
  tree = read_numpy(os.path.join(workdir, "checkpoints", str(step), "state"))
  out = {}

  def walk(x, k):
    if isinstance(x, dict):
      for kk, v in x.items():
        walk(v, f"{k}/{kk}")
    else:
      out[k] = np.asarray(x)

  walk(tree["params"], "")
  return out


def test_a_failing_process_stops_the_job_with_its_exit_code(tmp_path):
  r = _launch(2, 1, tmp_path / "w", tmp_path / "no-such-data")
  assert r.returncode != 0
  assert "dataset directory does not exist" in r.stdout


def _solo(tmp_path, data, process_id, port, *extra):
  cmd = [
    sys.executable,
    "-m",
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={tmp_path / 'w'}",
    f"--config.data.dir={data}",
    "--config.total_steps=100000",
    "--config.log_every_steps=1",
    "--config.checkpoint.every_steps=100000",
    f"--coordinator_address=localhost:{port}",
    "--num_processes=2",
    f"--process_id={process_id}",
    "--cpu_devices=1",
    "--init_timeout_s=8",
    "--heartbeat_timeout_s=5",
    *extra,
  ]
  return subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _free_port():
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_a_peer_that_never_arrives_stops_the_others_in_bounded_time(tmp_path, dataset):
  import time

  t0 = time.time()
  p = _solo(tmp_path, dataset, 0, _free_port())
  out, _ = p.communicate(timeout=120)
  assert p.returncode == 3, out[-2000:]
  assert "not all 2 processes joined" in out and time.time() - t0 < 40


def test_a_peer_that_dies_mid_run_stops_the_others_in_bounded_time(tmp_path, dataset):
  import threading
  import time

  port = _free_port()
  p0, p1 = _solo(tmp_path, dataset, 0, port), _solo(tmp_path, dataset, 1, port)
  lines = []
  threading.Thread(target=lambda: lines.extend(p0.stdout), daemon=True).start()
  deadline = time.time() + 120
  while not any("step 3/" in line for line in lines) and time.time() < deadline:
    time.sleep(0.2)
  assert any("step 3/" in line for line in lines), "".join(lines)[-2000:]
  p1.kill()  # kill -9 of one process mid-run
  t0 = time.time()
  try:
    p0.wait(timeout=90)
  finally:
    p0.kill()
  time.sleep(0.5)
  out = "".join(lines)
  assert p0.returncode != 0 and time.time() - t0 < 60, out[-2000:]
  # The survivor learns of the dead peer from the coordination service or from its next collective (gloo).
  assert re.search(r"Task 1 heartbeat timeout|Connection (closed|reset) by peer", out), out[-3000:]
