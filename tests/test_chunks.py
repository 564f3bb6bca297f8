"""Chunked episodes: same clips as whole-episode reading (same order), only the covering chunks read."""

import os
import shutil

import numpy as np
import pytest
from conftest import run_cli

from worldmodel.data import chunks, pipeline, records


@pytest.fixture(scope="module")
def chunked(tmp_path_factory, dataset):
  out = str(tmp_path_factory.mktemp("chunked") / "d")
  shutil.copytree(dataset, out)
  chunks.migrate(out, chunk=4)
  return out


def test_chunked_clips_equal_whole_episode_clips_and_read_little(chunked):
  whole = records.open_split(chunked, "train")
  src = chunks.ChunkedSource(chunked, "train")
  assert len(src) == len(whole) and src.length(0) == whole[0]["video"].shape[0]
  np.testing.assert_array_equal(src.read(1, 3, 11)["video"], whole[1]["video"][3:11])
  a = pipeline.ClipSampler([whole], seed=3, num_frames=8, frame_stride=1)
  b = pipeline.ClipSampler([src], seed=3, num_frames=8, frame_stride=1)
  for g in range(40):
    ca, cb = a(g), b(g)
    assert ca.keys() == cb.keys()
    for k in ca:
      np.testing.assert_array_equal(ca[k], cb[k])
  amplification = src.frames_decoded / (40 * 8)
  assert amplification <= (8 - 1) / 4 + 1 + 0.25  # expected (span - 1) / chunk + 1 chunks of 4 per 8 frames used


def test_pipeline_opens_the_chunked_copy_and_refuses_a_stale_one(chunked, tmp_path):
  from worldmodel import config as config_lib

  cfg = config_lib.base_config("tokenizer", num_frames=4, total_steps=1, batch_size=1).data
  cfg.dir = chunked
  (src,) = pipeline.open_sources(cfg, "train")
  assert isinstance(src, chunks.ChunkedSource)
  stale = str(tmp_path / "stale")
  shutil.copytree(chunked, stale)
  shard = next(f for f in sorted(os.listdir(stale)) if ".array_record" in f)
  with open(os.path.join(stale, shard), "ab") as f:
    f.write(b"x")  # the records changed after the chunked copy was made
  cfg.dir = stale
  with pytest.raises(records.DatasetError, match="other records"):
    pipeline.open_sources(cfg, "train")


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_compressed_frames_decode_in_the_loader(tmp_path, dataset, encoding):
  out = str(tmp_path / "d")
  shutil.copytree(dataset, out)
  info = chunks.migrate(out, chunk=8, encoding=encoding, quality=95)
  assert info["encoding"] == encoding
  got = chunks.ChunkedSource(out, "test").read(0, 2, 10)["video"]
  want = records.open_split(out, "test")[0]["video"][2:10]
  err = np.abs(got.astype(float) - want).mean()
  assert got.dtype == np.uint8 and got.shape == want.shape
  assert err == 0 if encoding == "png" else err < 3.0


def test_cli_refuses_a_missing_dataset(tmp_path):
  r = run_cli("worldmodel.data.chunks", f"--data={tmp_path / 'nowhere'}", timeout=120)
  assert r.returncode == 2 and "error:" in r.stderr and "nowhere" in r.stderr
