"""A real multi-process run on localhost (launch/local.py, jax.distributed, gloo): same losses as one process."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def _launch(num_processes, devices, workdir, data, steps=4):
  cmd = [sys.executable, os.path.join(REPO, "launch", "local.py"), f"--num_processes={num_processes}",
         f"--devices_per_process={devices}", "--", sys.executable, "-m", "worldmodel.train",
         "--config=experiments/tokenizer.py:tiny", f"--workdir={workdir}", f"--config.data.dir={data}",
         f"--config.total_steps={steps}", "--config.log_every_steps=1", "--config.mesh.fsdp=2"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def _losses(workdir):
  return {r["step"]: r["loss"] for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))}


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, dataset):
  two = _launch(2, 2, tmp_path / "two", dataset)
  assert two.returncode == 0, two.stdout[-3000:]
  assert "[p1]" in two.stdout and "(4 devices, 2 processes)" in two.stdout
  one = _launch(1, 4, tmp_path / "one", dataset)
  assert one.returncode == 0, one.stdout[-3000:]
  a, b = _losses(tmp_path / "two"), _losses(tmp_path / "one")
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  for step in a:
    assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])


def test_a_failing_process_stops_the_job_with_its_exit_code(tmp_path):
  r = _launch(2, 1, tmp_path / "w", tmp_path / "no-such-data")
  assert r.returncode != 0
  assert "dataset directory does not exist" in r.stdout
