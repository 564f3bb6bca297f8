"""The fit check compiles the sharded train step for a fake device count and reports per-device memory."""

import json

from conftest import run_cli


def test_aot_reports_memory_and_refuses_what_does_not_fit():
  args = ["--config=experiments/tokenizer.py:tiny", "--devices=8", "--mesh=data:2,fsdp:4,tensor:1"]
  r = run_cli("worldmodel.aot", *args)
  assert r.returncode == 0, r.stderr[-2000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1} and result["flops_per_device_per_step"] > 0
  assert 0 < result["per_device_gib"]["params"] < result["per_device_total_gib"]
  assert "GiB per device" in r.stdout and "h100" in r.stdout
  too_small = run_cli("worldmodel.aot", *args, "--hbm_gib=0.000001")
  assert too_small.returncode == 1 and "more than --hbm_gib" in too_small.stderr
