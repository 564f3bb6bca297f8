"""Tests for the bouncing source, the TFDS episode records and the generate CLI."""

import os
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import run_cli

from worldmodel.data import generate, records
from worldmodel.data.sources import bouncing


def _run_cli(*args):
  return run_cli("worldmodel.data.generate", *args, timeout=120)


# --- bouncing source ---------------------------------------------------------


def test_generate_is_deterministic_for_a_seed():
  a, b = bouncing.generate_episode(7, 8, 32), bouncing.generate_episode(7, 8, 32)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  c = bouncing.generate_episode(8, 8, 32)
  assert not np.array_equal(a["video"], c["video"])


def test_shapes_dtypes_and_ranges():
  ep = bouncing.generate_episode(0, frames=10, size=32, num_balls=2)
  assert ep["video"].shape == (10, 32, 32, 3) and ep["video"].dtype == np.uint8
  assert ep["action"].shape == (10, 2) and ep["action"].dtype == np.float32
  assert ep["state"].shape == (10, bouncing.state_dim(2)) and ep["state"].dtype == np.float32
  assert ep["reward"].shape == (10,) and ep["reward"].dtype == np.float32
  assert np.all(np.abs(ep["action"]) <= 1)
  groups = bouncing.state_groups(2)
  assert sorted(sum(groups.values(), [])) == list(range(bouncing.state_dim(2)))
  pos = ep["state"][:, groups["agent_pos"] + groups["ball_pos"]]
  assert np.all((pos >= 0) & (pos <= 1))
  assert ep["video"].max() > 200 and np.median(ep["video"]) < 40  # bright objects, dark bg


def test_reward_is_negative_distance_to_goal():
  ep = bouncing.generate_episode(3, 12, 32)
  agent_T2 = ep["state"][:, bouncing.STATE_GROUPS["agent_pos"]]
  np.testing.assert_allclose(ep["reward"], -np.linalg.norm(agent_T2 - bouncing.GOAL, axis=1), atol=1e-6)


def test_state_t_and_video_t_show_the_same_instant():
  size = 64
  ep = bouncing.generate_episode(5, 16, size)
  agent_T2 = ep["state"][:, bouncing.STATE_GROUPS["agent_pos"]]
  # The agent is the only near-white object and is painted on top.
  white_THW = np.all(ep["video"] > 200, axis=-1)
  for t in range(16):
    rows, cols = np.nonzero(white_THW[t])
    centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5]) / size  # (x, y)
    assert np.linalg.norm(centroid - agent_T2[t]) < 1.0 / size


def test_action_t_leads_to_frame_t_plus_1():
  """Regress dv[t] = v[t+1] - v[t] on a[t-1], a[t], a[t+1], v[t]: only a[t] matters."""
  vel = bouncing.STATE_GROUPS["agent_vel"]
  rows, targets = [], []
  for seed in range(12):
    ep = bouncing.generate_episode(seed, 32, 16)
    v_T2, a_T2 = ep["state"][:, vel], ep["action"]
    dv = v_T2[2:-1] - v_T2[1:-2]  # t = 1 .. T-3
    for d in range(2):
      rows.append(np.stack([a_T2[:-3, d], a_T2[1:-2, d], a_T2[2:-1, d], v_T2[1:-2, d], np.ones(len(dv))], axis=1))
      targets.append(dv[:, d])
  coef, *_ = np.linalg.lstsq(np.concatenate(rows), np.concatenate(targets), rcond=None)
  prev, now, nxt = coef[:3]
  assert now > 0.5 * bouncing.AGENT_ACCEL
  assert abs(nxt) < 0.2 * now and abs(prev) < 0.2 * now
  # Plain correlation agrees: dv[t] tracks a[t] better than a[t+1].
  a_now, a_next = np.concatenate([r[:, 1] for r in rows]), np.concatenate([r[:, 2] for r in rows])
  dv_all = np.concatenate(targets)
  assert np.corrcoef(dv_all, a_now)[0, 1] > np.corrcoef(dv_all, a_next)[0, 1] + 0.05


# --- records ---------------------------------------------------------------


def _episodes(seeds, frames=6, size=16):
  return [{**bouncing.generate_episode(s, frames, size), "episode_id": np.int64(s)} for s in seeds]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("ds") / "bouncing")
  split_eps = {
    "train": _episodes(range(0, 5)),
    "val": _episodes(range(5, 7)),
    "test": _episodes(range(7, 8), frames=4) + _episodes(range(8, 9)),
  }  # dynamic T
  meta = {"source": "bouncing", "seed": 0, "state_groups": bouncing.STATE_GROUPS}
  records.write_dataset(out, {k: iter(v) for k, v in split_eps.items()}, meta)
  return out, split_eps


def test_builder_from_directory_opens_the_output_dir(written):
  out, split_eps = written
  assert {"dataset_info.json", "features.json", "worldmodel.json"} <= set(os.listdir(out))
  builder = tfds.builder_from_directory(out)
  assert set(builder.info.splits.keys()) == {"train", "val", "test"}
  assert {k: builder.info.splits[k].num_examples for k in split_eps} == {"train": 5, "val": 2, "test": 2}
  first = builder.as_data_source("train")[0]
  np.testing.assert_array_equal(first["video"], split_eps["train"][0]["video"])


def test_open_split_round_trips_exactly(written):
  out, split_eps = written
  for split, eps in split_eps.items():
    src = records.open_split(out, split)
    assert len(src) == len(eps)
    for i, ep in enumerate(eps):
      got = src[i]
      assert set(got) == {"video", "action", "state", "reward", "episode_id"}
      for key in ep:
        assert got[key].dtype == np.asarray(ep[key]).dtype, key
        np.testing.assert_array_equal(got[key], ep[key])
  assert records.open_split(out, "test")[0]["video"].shape[0] == 4  # dynamic time dimension


def test_meta_sidecar(written):
  out, _ = written
  meta = records.read_meta(out)
  assert meta["splits"] == {"train": 5, "val": 2, "test": 2}
  assert (meta["size"], meta["action_dim"], meta["state_dim"]) == (16, 2, bouncing.state_dim(3))
  assert meta["state_groups"] == bouncing.STATE_GROUPS and meta["format_version"] == 1


def test_source_pickles_and_feeds_grain(written):
  import grain

  out, split_eps = written
  src = pickle.loads(pickle.dumps(records.open_split(out, "train")))
  ds = grain.MapDataset.source(src).map(lambda ep: ep["video"][:3])
  assert len(ds) == 5 and ds[4].shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(src[-1]["action"], split_eps["train"][-1]["action"])


def test_errors_name_the_cause(written, tmp_path):
  out, _ = written
  with pytest.raises(records.DatasetError, match="does not exist"):
    records.open_split(str(tmp_path / "missing"), "train")
  (tmp_path / "plain").mkdir()
  with pytest.raises(records.DatasetError, match="not a worldmodel/TFDS dataset"):
    records.open_split(str(tmp_path / "plain"), "train")
  with pytest.raises(records.DatasetError, match=r"unknown split 'nope'.*train.*val"):
    records.open_split(out, "nope")


def test_empty_split_error(tmp_path):
  out = str(tmp_path / "ds")
  records.write_dataset(out, {"train": _episodes([1]), "val": [], "test": []}, {"source": "x"})
  assert records.read_meta(out)["splits"] == {"train": 1, "val": 0, "test": 0}
  with pytest.raises(records.DatasetError, match="'val' is empty"):
    records.open_split(out, "val")


def test_undecodable_record_error(tmp_path):
  from array_record.python import array_record_module

  out = str(tmp_path / "ds")
  records.write_dataset(out, {"train": _episodes([1, 2])}, {"source": "x"})
  shard = next(f for f in os.listdir(out) if "-train.array_record" in f)
  writer = array_record_module.ArrayRecordWriter(os.path.join(out, shard), "group_size:1")
  for _ in range(2):
    writer.write(b"\xff not a tf.train.Example")
  writer.close()
  src = records.open_split(out, "train")
  with pytest.raises(records.DatasetError, match=rf"'train' episode 1 \({shard} record 1\)"):
    src[1]


# --- CLI -------------------------------------------------------------------


def test_split_counts():
  assert generate.split_counts(3, 0.1, 0.1) == {"train": 1, "val": 1, "test": 1}
  assert generate.split_counts(100, 0.1, 0.2) == {"train": 70, "val": 10, "test": 20}
  assert generate.split_counts(1, 0.1, 0.1) == {"train": 1, "val": 0, "test": 0}


def test_cli_end_to_end(tmp_path):
  out = str(tmp_path / "gen")
  args = ["--source=bouncing", f"--out={out}", "--episodes=6", "--frames=5", "--size=16", "--seed=3", "--num_balls=2"]
  res = _run_cli(*args)
  assert res.returncode == 0, res.stderr
  assert "6/6 episodes" in res.stdout and "train 4, val 1, test 1" in res.stdout
  meta = records.read_meta(out)
  assert meta["splits"] == {"train": 4, "val": 1, "test": 1} and meta["seed"] == 3
  assert meta["state_dim"] == bouncing.state_dim(2) and meta["frames"] == 5
  assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]  # temp dir renamed away
  # Disjoint splits: distinct episode ids and no identical video in two splits.
  ids, videos = {}, {}
  for split in ("train", "val", "test"):
    src = records.open_split(out, split)
    ids[split] = {int(src[i]["episode_id"]) for i in range(len(src))}
    videos[split] = {src[i]["video"].tobytes() for i in range(len(src))}
  assert ids == {"train": {0, 1, 2, 3}, "val": {4}, "test": {5}}
  assert not (videos["train"] & videos["val"] or videos["train"] & videos["test"] or videos["val"] & videos["test"])
  # Episode i is reproducible from (seed, i) alone.
  expect = bouncing.generate_episode(generate.episode_seed(3, 4), 5, 16, 2)
  np.testing.assert_array_equal(records.open_split(out, "val")[0]["video"], expect["video"])

  res = _run_cli(*args)  # non-empty OUT without --overwrite
  assert res.returncode != 0 and "--overwrite" in res.stderr and "Traceback" not in res.stderr
  assert _run_cli(*args, "--overwrite").returncode == 0


def test_cli_unknown_source(tmp_path):
  res = _run_cli("--source=nosuch", f"--out={tmp_path / 'x'}", "--episodes=3")
  assert res.returncode != 0
  assert "unknown --source='nosuch'" in res.stderr and "bouncing" in res.stderr
  assert "Traceback" not in res.stderr
  assert not os.path.exists(tmp_path / "x")
