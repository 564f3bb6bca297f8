"""The grain pipeline: deterministic for a seed, topology-free, process slices disjoint and covering the batch."""

import numpy as np
import pytest

from worldmodel import config as config_lib
from worldmodel.data import pipeline, records


def _data_cfg(data_dir, num_frames=4, stride=2):
  c = config_lib.base_config("tokenizer", num_frames=num_frames, total_steps=1, batch_size=1).data
  c.update(dir=data_dir, frame_stride=stride, prefetch=2)
  return c


def _batches(cfg, *, seed=0, global_batch=8, start=0, steps=3, p=0, n=1):
  it = pipeline.train_dataset(
    cfg, seed=seed, global_batch=global_batch, start_step=start, num_steps=steps, process_index=p, process_count=n
  )
  return list(it)


def test_same_seed_same_batches_other_seed_differs(dataset):
  cfg = _data_cfg(dataset)
  a, b, c = _batches(cfg, seed=1), _batches(cfg, seed=1), _batches(cfg, seed=2)
  assert len(a) == 3 and a[0]["video"].shape == (8, 4, 64, 64, 3) and a[0]["video"].dtype == np.uint8
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]["video"], c[0]["video"])


@pytest.mark.parametrize("n", [2, 4])
def test_process_slices_are_disjoint_and_cover_the_global_batch(dataset, n):
  cfg = _data_cfg(dataset)
  whole = _batches(cfg, seed=3, steps=2)
  parts = [_batches(cfg, seed=3, steps=2, p=p, n=n) for p in range(n)]
  for step in range(2):
    joined = np.concatenate([parts[p][step]["video"] for p in range(n)])
    np.testing.assert_array_equal(joined, whole[step]["video"])
    # the slices hold different clips
    assert len({parts[p][step]["state"].tobytes() for p in range(n)}) == n


def test_resume_position_continues_the_sequence(dataset):
  cfg = _data_cfg(dataset)
  straight = _batches(cfg, seed=4, steps=5)
  resumed = _batches(cfg, seed=4, start=3, steps=2)
  for x, y in zip(straight[3:], resumed):
    np.testing.assert_array_equal(x["video"], y["video"])


def test_every_episode_is_seen_once_per_epoch(dataset):
  n = len(records.open_split(dataset, "train"))
  sampler = pipeline.ClipSampler([records.open_split(dataset, "train")], 0, 4, 2)
  epochs = [[sampler.locate(g) for g in range(e * n, (e + 1) * n)] for e in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == [(0, i) for i in range(n)]  # every episode once, from the one dataset
  assert epochs[0] != epochs[1]  # reshuffled every epoch


def test_windows_keep_action_state_aligned_with_frames(dataset):
  src = records.open_split(dataset, "train")
  ep = src[0]
  clip = pipeline.window(ep, start=3, span=7, stride=2)
  np.testing.assert_array_equal(clip["video"], ep["video"][3:10:2])
  np.testing.assert_array_equal(clip["action"], ep["action"][3:10:2])
  np.testing.assert_array_equal(clip["state"], ep["state"][3:10:2])


def test_eval_batches_cover_the_split_once_with_padding(dataset):
  cfg = _data_cfg(dataset, num_frames=4, stride=1)
  batches, num = pipeline.eval_batches(cfg, "test", batch_size=5)
  batches = list(batches)
  episodes = len(records.open_split(dataset, "test"))
  assert num == episodes * (16 // 4)  # non-overlapping windows of every episode
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.sum() == num and len(valid) % 5 == 0 and len(valid) - num < 5


def test_too_short_episodes_give_a_clear_error(dataset):
  cfg = _data_cfg(dataset, num_frames=40, stride=1)
  with pytest.raises(records.DatasetError, match="40-frame clip"):
    pipeline.eval_batches(cfg, "test", batch_size=4)
