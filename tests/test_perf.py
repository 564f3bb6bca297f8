"""Visible steps: the peak table, step-rate maths, the profiler window, time-based and keep-every-N checkpoints."""

import glob
import json
import os

import pytest
from conftest import run_cli

from worldmodel import perf


def test_peak_table_and_rates():
  assert perf.peak_for("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert perf.peak_for("NVIDIA H200", "float32") == 494e12
  assert perf.peak_for("NVIDIA A100-SXM4-40GB", "bfloat16") == 312e12
  assert perf.peak_for("TPU v5 lite", "bfloat16") == 197e12
  assert perf.peak_for("TPU v5p", "bfloat16") == perf.peak_for("TPU v5", "bfloat16") == 459e12
  assert perf.peak_for("TPU v4", "float32") == 275e12 and perf.peak_for("TPU v6 lite", "bfloat16") == 918e12
  assert perf.peak_for("cpu", "float32") is None
  r = perf.rate_scalars({"flops_per_step": 2e12, "peak_flops": 10e12}, steps=4, seconds=2.0, batch_size=8)
  assert r["step_time_s"] == 0.5 and r["clips_per_s"] == 16 and r["tflops_per_device"] == 4.0 and r["mfu"] == 0.4


@pytest.mark.slow
def test_profile_window_time_based_saves_and_keep_every(tmp_path, dataset):
  w = tmp_path / "w"
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={w}",
    f"--config.data.dir={dataset}",
    "--config.total_steps=12",
    "--config.log_every_steps=2",
    "--config.checkpoint.every_steps=5",
    "--config.checkpoint.keep=1",
    "--config.checkpoint.keep_every=4",
    "--config.checkpoint.every_minutes=1e-9",  # due at every log step
    "--config.profile.start_step=3",
    "--config.profile.num_steps=2",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "compiled the train step in" in r.stdout and "MFU" in r.stdout
  # 4 and 8 were saved only by the clock (every_steps=5) and outlive keep=1 as multiples of keep_every; 5, 10 go.
  assert sorted(int(p) for p in os.listdir(w / "checkpoints") if p.isdigit()) == [4, 8, 12]
  assert glob.glob(str(w / "profile" / "**" / "*.xplane.pb"), recursive=True)
  rows = [json.loads(x) for x in open(w / "metrics.jsonl")]
  assert rows[0]["compile_s"] > 0 and rows[0]["flops_per_step"] > 0 and all(r["mfu"] > 0 for r in rows)
  assert "compile_s" not in rows[1]
