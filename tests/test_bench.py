"""The benchmark CLI prints one JSON line last with the documented keys (numbers are for BUILD_NOTES, not asserted)."""

import json

import pytest
from conftest import run_cli


def test_bench_prints_step_and_loader_figures():
  r = run_cli("worldmodel.bench", "--config=experiments/tokenizer.py:tiny", "--steps=2", "--matmul_size=256")
  assert r.returncode == 0, r.stderr[-2000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  for key in ("step_time_s", "clips_per_s", "flops_per_step", "peak_flops_per_s", "mfu", "data_wait_frac"):
    assert result[key] > 0 or key == "data_wait_frac", key
  r = run_cli("worldmodel.bench", "--config=experiments/tokenizer.py:tiny", "--loader_workers=0", "--loader_batches=3")
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])["loader_clips_per_s"]["0"] > 0


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
