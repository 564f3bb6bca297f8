"""Tests for worldmodel.metrics and worldmodel.media (numpy references, file round trips)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodel import media, metrics


def _rand_video(seed, shape=(2, 3, 32, 32, 3)):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


# ---------------------------------------------------------------- metrics
def test_psnr_mse_match_numpy():
  truth = _rand_video(0)
  noise = np.random.default_rng(1).normal(0, 0.05, truth.shape).astype(np.float32)
  pred = np.clip(truth + noise, 0, 1)
  out = jax.jit(metrics.video_psnr_ssim)(truth, pred)
  mse_BT = ((truth - pred) ** 2).mean(axis=(2, 3, 4))
  assert out["psnr_BT"].shape == out["ssim_BT"].shape == out["mse_BT"].shape == (2, 3)
  np.testing.assert_allclose(out["mse_BT"], mse_BT, rtol=1e-5)
  np.testing.assert_allclose(out["psnr_BT"], 10 * np.log10(1.0 / mse_BT), rtol=1e-4)


def test_psnr_known_constant_offset():
  truth = np.full((1, 2, 16, 16, 3), 0.5, np.float32)
  out = metrics.video_psnr_ssim(truth, truth + 0.1)  # MSE = 0.01 -> 20 dB
  np.testing.assert_allclose(out["psnr_BT"], 20.0, atol=1e-3)


def test_identical_frames_clipped_psnr_and_unit_ssim():
  truth = _rand_video(2)
  out = metrics.video_psnr_ssim(truth, truth)
  np.testing.assert_allclose(out["psnr_BT"], metrics.PSNR_MAX_DB)
  assert np.all(np.isfinite(out["psnr_BT"]))
  np.testing.assert_allclose(out["ssim_BT"], 1.0, atol=1e-5)


def test_ssim_drops_with_noise():
  truth = _rand_video(3)
  rng = np.random.default_rng(4)
  ssims = []
  for sigma in (0.02, 0.1, 0.3):
    pred = np.clip(truth + rng.normal(0, sigma, truth.shape), 0, 1).astype(np.float32)
    ssims.append(float(jnp.mean(metrics.video_psnr_ssim(truth, pred)["ssim_BT"])))
  assert 1.0 > ssims[0] > ssims[1] > ssims[2]


def test_code_stats_uniform_subset():
  stats = metrics.CodeStats(num_codes=16)
  k = 4
  stats.update(np.arange(k).repeat(5).reshape(4, 5))  # uniform over k codes, 2-D input
  stats.update(np.array([[0, 1], [2, 3]]))  # stays uniform
  assert stats.usage() == pytest.approx(k / 16)
  assert stats.perplexity() == pytest.approx(k)
  assert stats.entropy_bits() == pytest.approx(math.log2(k))


def test_code_stats_skewed_and_range_check():
  stats = metrics.CodeStats(num_codes=8)
  stats.update(np.array([0, 0, 0, 1]))
  h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
  assert stats.entropy_bits() == pytest.approx(h)
  assert stats.perplexity() == pytest.approx(2**h)
  with pytest.raises(ValueError):
    stats.update(np.array([8]))
  assert metrics.CodeStats(4).entropy_bits() == 0.0  # empty is defined


def test_bits_per_pixel():
  # 1024 codes = 10 bits; 4*16*16 tokens over 16 frames of 64x64.
  bpp = metrics.bits_per_pixel(4 * 16 * 16, 1024, 16, 64, 64)
  assert bpp == pytest.approx(10 * 1024 / (16 * 64 * 64))


def test_running_mean_partial_batch():
  rm = metrics.RunningMean()
  # Two full batches of 4 clips and a partial one of 2: per-clip mean must weight by clips.
  per_clip_psnr = np.array([10, 12, 14, 16, 20, 22, 24, 26, 30, 32], np.float64)
  per_clip_T = np.stack([per_clip_psnr, 2 * per_clip_psnr], axis=1)  # a per-frame array [N, 2]
  for start, n in ((0, 4), (4, 4), (8, 2)):
    sl = slice(start, start + n)
    rm.update({"psnr": per_clip_psnr[sl].mean(), "psnr_T": jnp.asarray(per_clip_T[sl].mean(0))}, weight=n)
  res = rm.result()
  assert isinstance(res["psnr"], float)
  assert res["psnr"] == pytest.approx(per_clip_psnr.mean())
  np.testing.assert_allclose(res["psnr_T"], per_clip_T.mean(0))
  assert rm.total_weight() == 10
  rm.reset()
  assert rm.result() == {}


# ---------------------------------------------------------------- media
def _blocky_video(T=6, H=16, W=20):
  """Few flat colours, different every frame: survives GIF palettes and Pillow's dedup."""
  colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.uint8)
  v = np.zeros((T, H, W, 3), np.uint8)
  for t in range(T):
    v[t, : H // 2] = colours[t % 4]
    v[t, H // 2 :] = colours[(t + 1) % 4]
    v[t, :, : t + 1] = 0  # a growing black bar keeps frames distinct
  return v


def test_to_uint8_and_side_by_side():
  u8 = media.to_uint8(jnp.array([-0.5, 0.0, 0.5, 1.0, 2.0]))
  np.testing.assert_array_equal(u8, [0, 0, 128, 255, 255])
  a, b = _blocky_video(), _blocky_video()[:, :, ::-1]
  sbs = media.side_by_side([a, b], pad=2)
  assert sbs.shape == (6, 16, (20 + 2) * 2, 3) and sbs.dtype == np.uint8
  np.testing.assert_array_equal(sbs[:, :, :20], a)
  np.testing.assert_array_equal(sbs[:, :, 22:42], b)
  assert np.all(sbs[:, :, 20:22] == 255)


def test_gif_round_trip(tmp_path):
  import imageio.v3 as iio

  video = _blocky_video()
  path = media.write_gif(tmp_path / "sub" / "v.gif", video, fps=8, scale=2)
  back = np.asarray(iio.imread(path, index=None))[..., :3]
  assert back.shape == (6, 32, 40, 3)
  np.testing.assert_array_equal(back[:, ::2, ::2], video)  # few colours: palette is exact


def test_mp4_round_trip_odd_size(tmp_path):
  import av

  # Smooth content: saturated hard colour edges are legitimately smeared by 4:2:0 chroma.
  t, y, x = np.meshgrid(np.arange(8), np.arange(15), np.arange(21), indexing="ij")
  video = media.to_uint8(np.stack([(x + t) / 29, y / 15, np.full(x.shape, 0.5)], -1))  # odd H, W
  path = media.write_mp4(tmp_path / "sub" / "v.mp4", video, fps=8, scale=1)
  with av.open(path) as container:
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  back = np.stack(frames)
  assert back.shape == (8, 16, 22, 3)
  assert np.abs(back[:, :15, :21].astype(int) - video).mean() < 6


def test_plot_curves_png(tmp_path):
  path = media.plot_curves(
    tmp_path / "plots" / "psnr.png",
    {"recon": np.linspace(20, 30, 10), "rollout": np.linspace(25, 15, 10)},
    xlabel="frame",
    ylabel="PSNR (dB)",
    title="PSNR per frame",
    x=np.arange(1, 11),
  )
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
