"""Visible steps: the peak table and the step-rate maths (the profiler window, compile cache and time-based saves
are exercised end to end in test_storage.py)."""

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
