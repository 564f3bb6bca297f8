"""Tests for the video-file source (`--source=video:GLOB`) and its generate CLI path."""

import os

import av
import imageio.v2 as imageio
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import run_cli as conftest_run_cli

from worldmodel.data import records
from worldmodel.data.sources import video

H, W = 96, 128  # source clips are landscape: exercises the centre crop
SQUARE = 24  # px side of the moving white square
SPEED = 36.0  # the square stays inside the centre crop for 2 s  # px per second, left to right
SECONDS = 2.0


def square_x(t: float) -> float:
  """Left edge of the square at time t (same motion in every clip)."""
  return 16 + SPEED * t


def draw(t: float) -> np.ndarray:
  img_HWC = np.zeros((H, W, 3), np.uint8)
  x = int(round(square_x(t)))
  img_HWC[36 : 36 + SQUARE, x : x + SQUARE] = 255
  return img_HWC


def write_clip(path: str, fps: int, codec: str = "libx264", options: dict | None = None) -> None:
  with av.open(path, "w", options=options or {}) as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    for i in range(int(SECONDS * fps)):
      frame = av.VideoFrame.from_ndarray(draw(i / fps), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  """30 fps h264 mp4, 15 fps mpeg4 mp4 (in sub/), 10 fps GIF; bad: corrupt, 2 truncated mp4s."""
  root = tmp_path_factory.mktemp("clips")
  os.makedirs(root / "sub")
  write_clip(str(root / "a30.mp4"), 30)
  write_clip(str(root / "sub" / "b15.mp4"), 15, codec="mpeg4")
  imageio.mimsave(str(root / "c10.gif"), [draw(i / 10) for i in range(int(SECONDS * 10))], duration=100, loop=0)
  (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
  data = (root / "a30.mp4").read_bytes()
  (root / "trunc.mp4").write_bytes(data[: len(data) // 2])  # moov atom (at the end) is lost
  write_clip(str(root / "faststart.mp4"), 30, options={"movflags": "faststart"})
  data = (root / "faststart.mp4").read_bytes()
  (root / "faststart.mp4").write_bytes(data[: len(data) * 2 // 3])  # index kept, frames cut
  return root


def run_cli(*args):
  return conftest_run_cli("worldmodel.data.generate", *args, timeout=120)


def square_centre(frame_HWC: np.ndarray) -> float:
  """x of the bright square's centre in output pixels (column-mass centroid: sub-pixel)."""
  cols = frame_HWC.astype(np.float64).mean(axis=(0, 2))
  return float((cols * (np.arange(len(cols)) + 0.5)).sum() / cols.sum())


def test_nearest_in_time_picks_nearest_frame():
  times = [i / 30 for i in range(30)]
  got = list(video.nearest_in_time(((t, t) for t in times), fps=8))
  assert len(got) == 8  # targets 0, 1/8, ..., 7/8 <= 29/30
  for k, t in enumerate(got):
    assert abs(t - k / 8) <= 1 / 60 + 1e-9
  assert list(video.nearest_in_time([(5.0, "only")], fps=8)) == ["only"]
  # Timestamps need not start at 0 nor be regular (GIF delays, dropped frames).
  assert list(video.nearest_in_time([(1.0, "a"), (1.3, "b"), (1.5, "c")], fps=4)) == ["a", "b", "c"]


def test_split_is_stable_and_respects_fractions():
  names = [f"dir/clip{i}.mp4" for i in range(2000)]
  splits = [video.split_of(n, 0, 0.1, 0.2) for n in names]
  assert splits == [video.split_of(n, 0, 0.1, 0.2) for n in names]
  assert abs(splits.count("val") / 2000 - 0.1) < 0.03
  assert abs(splits.count("test") / 2000 - 0.2) < 0.03
  assert video.glob_root("/data/clips/**/*.mp4") == "/data/clips"


def test_frame_rate_normalisation_and_resize(clips):
  eps = {
    name: video.episodes(str(clips / name), fps=5, size=32, min_frames=4)
    for name in ("a30.mp4", "sub/b15.mp4", "c10.gif")
  }
  videos = {k: v[0]["video"] for k, v in eps.items()}
  for v in videos.values():
    assert v.dtype == np.uint8 and v.shape[1:] == (32, 32, 3)
    assert len(v) == 10  # t = 0, 0.2, ..., 1.8 s: the same whatever the source rate
  scale = 32 / H  # short side H -> 32; the crop drops (W - H) / 2 columns
  expect = [(square_x(k / 5) + SQUARE / 2 - (W - H) / 2) * scale for k in range(10)]
  for name, v in videos.items():
    got = [square_centre(f) for f in v]
    np.testing.assert_allclose(got, expect, atol=0.6, err_msg=name)
  # Default 8 fps: nearest-frame picking differs by at most half a source frame interval.
  a, b = (video.episodes(str(clips / n), 8, 32, 4)[0]["video"] for n in ("a30.mp4", "sub/b15.mp4"))
  assert len(a) == len(b) == 16
  diff = np.abs(np.array([square_centre(f) for f in a]) - [square_centre(f) for f in b])
  assert diff.max() <= (SPEED / 30 + SPEED / 60) * scale + 0.5


def test_long_files_are_cut_and_short_ones_rejected(clips):
  chunks = video.episodes(str(clips / "a30.mp4"), fps=10, size=16, min_frames=4, max_frames=8)
  assert [len(c["video"]) for c in chunks] == [8, 8, 4]  # 20 frames at 10 fps
  with pytest.raises(video.DecodeError, match="too short: 20 frames"):
    video.episodes(str(clips / "a30.mp4"), fps=10, size=16, min_frames=21)
  with pytest.raises(video.DecodeError, match="cannot decode"):
    video.episodes(str(clips / "corrupt.mp4"), fps=10, size=16, min_frames=2)


def test_cli_end_to_end_skips_bad_files(clips, tmp_path):
  out = tmp_path / "ds"
  res = run_cli(
    f"--source=video:{clips}/**/*",
    f"--out={out}",
    "--frames=8",
    "--size=32",
    "--fps=8",
    "--val_fraction=0",
    "--test_fraction=0",
  )
  assert res.returncode == 0, res.stderr
  assert "Traceback" not in res.stderr
  for bad in ("corrupt.mp4", "trunc.mp4"):
    assert f"warning: skipping {clips / bad}: cannot decode" in res.stderr
  assert f"warning: skipping {clips / 'faststart.mp4'}: truncated: decoded" in res.stderr
  assert "3 files skipped: " in res.stdout and "wrote 3 episodes (train 3, val 0, test 0)" in res.stdout
  builder = tfds.builder_from_directory(str(out))
  assert builder.info.splits["train"].num_examples == 3
  train = records.open_split(str(out), "train")
  assert len(train) == 3
  for i in range(3):
    ep = train[i]
    assert set(ep) == {"video", "episode_id"}
    assert ep["video"].shape == (16, 32, 32, 3) and ep["video"].dtype == np.uint8
  meta = records.read_meta(str(out))
  assert meta["fps"] == 8 and meta["input_files"] == 6 and meta["splits"]["train"] == 3


def test_cli_strict_names_the_file(clips, tmp_path):
  res = run_cli(
    f"--source=video:{clips}/[ac]*.mp4",
    f"--out={tmp_path / 'ds'}",
    "--frames=8",
    "--size=16",
    "--strict",
    "--val_fraction=0",
    "--test_fraction=0",
  )  # corrupt.mp4 after a30.mp4: mid-write
  assert res.returncode != 0
  assert "Traceback" not in res.stderr
  assert "error:" in res.stderr and str(clips / "corrupt.mp4") in res.stderr
  assert not (tmp_path / "ds").exists()


def test_cli_empty_glob_and_all_skipped(clips, tmp_path):
  res = run_cli(f"--source=video:{clips}/*.nosuch", f"--out={tmp_path / 'ds'}")
  assert res.returncode != 0 and "Traceback" not in res.stderr
  assert f"no files match the glob '{clips}/*.nosuch'" in res.stderr
  res = run_cli(f"--source=video:{clips}/corrupt.mp4", f"--out={tmp_path / 'ds'}")
  assert res.returncode != 0 and "Traceback" not in res.stderr
  assert "1 files skipped" in res.stderr and "no episodes" in res.stderr
