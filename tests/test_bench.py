"""The benchmark CLI prints one JSON line last with the documented keys; speeds are for BUILD_NOTES, not asserted,
but every figure must be consistent with the others."""

import json

from conftest import run_cli


def test_bench_prints_step_and_loader_figures():
  r = run_cli("worldmodel.bench", "--config=experiments/tokenizer.py:tiny", "--steps=2", "--matmul_size=256")
  assert r.returncode == 0, r.stderr[-2000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  for key in ("step_time_s", "clips_per_s", "flops_per_step", "peak_flops_per_s", "mfu"):
    assert result[key] > 0, key
  assert 0 <= result["data_wait_frac"] < 1, result
  assert result["batch_size"] == 8 and result["steps"] == 2 and result["step_time_min_s"] <= result["step_time_s"]
  assert abs(result["clips_per_s"] * result["step_time_s"] - result["batch_size"]) < 1e-6, result
  assert abs(result["mfu"] - result["flops_per_step"] / result["step_time_s"] / result["peak_flops_per_s"]) < 1e-6, (
    result
  )
  r = run_cli("worldmodel.bench", "--config=experiments/tokenizer.py:tiny", "--loader_workers=0", "--loader_batches=3")
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])["loader_clips_per_s"]["0"] > 0
