"""The benchmark CLI prints one JSON line last with the documented keys; speeds are for BUILD_NOTES, not asserted,
but every figure must be consistent with the others."""

import json

import pytest
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


def test_bench_fills_what_the_objective_takes_from_the_data():
  """A world model's action size comes from the data (train's preflight fills it; bench must too)."""
  r = run_cli("worldmodel.bench", "--config=experiments/wm.py:tiny", "--steps=1", "--matmul_size=128")
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])["step_time_s"] > 0


@pytest.mark.slow
def test_bench_input_only_reports_read_amplification():
  """4-frame clips from 32-frame episodes: whole episodes decode 8x the frames used, 4-step chunks < 2x."""
  got = {}
  for chunk in (0, 4):
    r = run_cli(
      "worldmodel.bench",
      "--config=experiments/tokenizer.py:tiny",
      "--input_only",
      f"--chunk={chunk}",
      "--loader_batches=2",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got[chunk] = json.loads(r.stdout.strip().splitlines()[-1])
  assert got[0]["frames_read_per_used"] == 8.0 and got[0]["chunked"] == [False]
  assert got[4]["frames_read_per_used"] < 2.0 and got[4]["chunked"] == [True]
  assert got[4]["loader_clips_per_s"]["0"] > 0
