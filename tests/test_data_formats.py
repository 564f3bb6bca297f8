"""Foreign TFDS / RLDS datasets, mixtures, resizing and corrupt files through the same pipeline."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import make_dataset, run_cli

from worldmodel import config as config_lib
from worldmodel.data import pipeline, records


class RldsToy(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """RLDS layout (episodes of `steps` with observation/image and action), written without TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # TFDS probes the builder's source file otherwise

  def _info(self):
    step = {
      "observation": {
        "image": tfds.features.Tensor(shape=(48, 40, 3), dtype=np.uint8, encoding="bytes"),
        "joint": tfds.features.Tensor(shape=(3,), dtype=np.float32),
      },
      "action": tfds.features.Tensor(shape=(2,), dtype=np.float32),
    }
    return tfds.core.DatasetInfo(
      builder=self, features=tfds.features.FeaturesDict({"steps": tfds.features.Dataset(step)})
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 6), "test": self._generate_examples(6, 8)}

  def _generate_examples(self, lo, hi):
    for i in range(lo, hi):
      yield (
        i,
        {
          "steps": [
            {
              "observation": {"image": np.full((48, 40, 3), 10 * t + i, np.uint8), "joint": np.full(3, t, np.float32)},
              "action": np.full(2, t + 0.5, np.float32),
            }
            for t in range(8 + i)
          ]
        },
      )


@pytest.fixture(scope="module")
def rlds_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("rlds")
  RldsToy(data_dir=str(root), file_format="array_record").download_and_prepare()
  return os.path.dirname(next(root.glob("**/dataset_info.json")))


RLDS_FEATURES = dict(video="steps/observation/image", action="steps/action", state="steps/observation/joint")


def _cfg(data_dir, **kw):
  c = config_lib.base_config("tokenizer", num_frames=4, total_steps=1, batch_size=1).data
  c.update(dir=data_dir, read_threads=1, prefetch=2, **kw)
  return c


def test_rlds_layout_is_read_through_a_feature_mapping(rlds_dir):
  src = records.open_split(rlds_dir, "train", RLDS_FEATURES)
  ep = next(src[i] for i in range(len(src)) if len(src[i]["video"]) == 10)  # TFDS shuffles episode order
  assert ep["video"].shape == (10, 48, 40, 3) and ep["action"].shape == (10, 2) and ep["state"].shape == (10, 3)
  np.testing.assert_array_equal(ep["video"][:, 0, 0, 0], 10 * np.arange(10) + 2)  # steps stacked in order
  np.testing.assert_array_equal(ep["action"][:, 0], np.arange(10) + 0.5)  # action[t] stays with step t
  with pytest.raises(records.DatasetError, match="no feature 'steps/observation/rgb'.*data.features.video"):
    records.open_split(rlds_dir, "train", {"video": "steps/observation/rgb"})[0]


def test_rlds_clips_are_cropped_and_resized(rlds_dir):
  cfg = _cfg(rlds_dir, resize=32, features=RLDS_FEATURES)
  assert pipeline.frame_size(cfg) == 32
  batch = next(
    iter(
      pipeline.train_dataset(cfg, seed=0, global_batch=4, start_step=0, num_steps=1, process_index=0, process_count=1)
    )
  )
  assert batch["video"].shape == (4, 4, 32, 32, 3) and batch["action"].shape == (4, 4, 2)
  # Frames are flat colours 10 * step + episode, so the area resize keeps each frame's value: step t's frame comes
  # with step t's action, and every frame of a clip comes from one episode.
  v = batch["video"][:, :, 0, 0, 0].astype(np.int64)
  np.testing.assert_array_equal(v // 10, batch["action"][:, :, 0] - 0.5)
  np.testing.assert_array_equal(v % 10, np.broadcast_to(v[:, :1] % 10, v.shape))


@pytest.mark.slow
def test_tokenizer_trains_and_evaluates_on_an_rlds_dataset(rlds_dir, tmp_path):
  args = [
    f"--config.data.dir={rlds_dir}",
    "--config.data.resize=64",
    *[f"--config.data.features.{k}={v}" for k, v in RLDS_FEATURES.items()],
  ]
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={tmp_path / 'w'}",
    "--config.total_steps=3",
    *args,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  r = run_cli("worldmodel.evaluate", f"--workdir={tmp_path / 'w'}", "--split=test")
  assert r.returncode == 0 and "psnr" in r.stdout, r.stderr[-2000:]


def test_mixture_weights_pick_datasets(tmp_path, dataset):
  other = make_dataset(str(tmp_path / "other"), episodes=8, frames=16, size=64)

  def sources_of(weights):
    cfg = _cfg(f"{dataset},{other}", weights=weights)
    srcs = pipeline.open_sources(cfg, "train")
    sampler = pipeline.ClipSampler(srcs, 0, 4, 1, weights=pipeline.mixture_weights(cfg, 2))
    return [sampler.locate(g)[0] for g in range(200)]

  assert set(sources_of((1.0, 0.0))) == {0}
  mixed = sources_of((0.25, 0.75))
  assert 0.6 < np.mean(mixed) < 0.9
  with pytest.raises(ValueError, match="data.weights"):
    pipeline.mixture_weights(_cfg(f"{dataset},{other}", weights=(1.0,)), 2)


def test_datasets_of_different_sizes_need_a_resize(tmp_path, dataset):
  small = make_dataset(str(tmp_path / "s"), episodes=8, frames=16, size=32)
  with pytest.raises(records.DatasetError, match="disagree on frame size"):
    pipeline.frame_size(_cfg(f"{dataset},{small}"))
  assert pipeline.frame_size(_cfg(f"{dataset},{small}", resize=64)) == 64


def test_resume_on_another_process_count_has_no_repeat_and_no_gap(dataset):
  cfg = _cfg(dataset)
  straight = list(
    pipeline.train_dataset(cfg, seed=5, global_batch=8, start_step=0, num_steps=6, process_index=0, process_count=1)
  )
  for n in (2, 4):
    parts = [
      list(
        pipeline.train_dataset(cfg, seed=5, global_batch=8, start_step=3, num_steps=3, process_index=p, process_count=n)
      )
      for p in range(n)
    ]
    for k in range(3):
      joined = np.concatenate([parts[p][k]["state"] for p in range(n)])
      np.testing.assert_array_equal(joined, straight[3 + k]["state"])


def test_truncated_shard_is_named(tmp_path, dataset):
  bad = tmp_path / "bad"
  shutil.copytree(dataset, bad)
  shard = next(f for f in os.listdir(bad) if "-train.array_record" in f)
  with open(bad / shard, "r+b") as f:
    f.truncate(os.path.getsize(bad / shard) // 2)
  with pytest.raises(records.DatasetError, match=f"{shard} is corrupt or truncated"):
    records.open_split(str(bad), "train")[0]
