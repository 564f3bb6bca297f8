"""Episode datasets in TFDS format (ArrayRecord files), without TensorFlow.

Layout of a dataset directory DIR (opens with `tfds.builder_from_directory(DIR)`):
  DIR/dataset_info.json, DIR/features.json       TFDS metadata
  DIR/worldmodel_episodes-{split}.array_record-XXXXX-of-YYYYY   shards
  DIR/worldmodel.json                            our sidecar metadata (JSON)

One record = one episode: `video` uint8 [T,H,W,3], optional `action` f32 [T,A],
`state` f32 [T,S], `reward` f32 [T], `label` int64 scalar (a class, for clip classification), and
`episode_id` int64 scalar. The time
dimension is dynamic (shape (None, ...)): episodes may differ in length.
Arrays are stored with `encoding="bytes"`: the default TFDS encoding upcasts
uint8 to an int64 protobuf list (measured ~30x slower to write, ~7x to read).
ArrayRecord compresses chunks itself, so zlib on top gains nothing.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from worldmodel import storage

FORMAT_VERSION = 1
BUILDER_NAME = "worldmodel_episodes"
META_FILE = "worldmodel.json"
SPLITS = ("train", "val", "test")
CANONICAL = ("video", "action", "state", "reward", "label", "episode_id")


class DatasetError(ValueError):
  """A dataset is missing, malformed or unreadable; the message names the culprit."""


class _EpisodeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes already-generated episodes; nothing is downloaded."""

  name = BUILDER_NAME
  VERSION = tfds.core.Version("1.0.0")
  # No code dir: TFDS would otherwise look for a checksums file next to our
  # package and, for editable installs, import the absent `importlib_resources`.
  code_path = None

  def __init__(self, *, features, split_episodes, description, **kwargs):
    self._features = features
    self._split_episodes = split_episodes
    self._description = description
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # disable_shuffling keeps records in generation order (index i = i-th episode).
    return tfds.core.DatasetInfo(
      builder=self, description=self._description, features=self._features, disable_shuffling=True
    )

  def _split_generators(self, dl_manager):
    return {name: self._generate_examples(eps) for name, eps in self._split_episodes.items()}

  def _generate_examples(self, episodes):
    yield from episodes

  # TFDS prints "Downloading and preparing ... to <temp dir>": misleading here.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


def _feature_for(key: str, value: Any) -> tfds.features.FeatureConnector:
  arr = np.asarray(value)
  if arr.ndim == 0:
    return tfds.features.Scalar(dtype=arr.dtype)
  return tfds.features.Tensor(shape=(None,) + arr.shape[1:], dtype=arr.dtype, encoding="bytes")


def _features_from(episode: dict) -> tfds.features.FeaturesDict:
  if "video" not in episode:
    raise DatasetError(f"episode dict has no 'video' (keys: {sorted(episode)})")
  spec = {k: _feature_for(k, v) for k, v in episode.items() if k != "episode_id"}
  spec["episode_id"] = tfds.features.Scalar(dtype=np.int64)
  return tfds.features.FeaturesDict(spec)


def _keyed(split: str, episodes: Iterator[dict], counter: itertools.count, counts: dict):
  """Yields (key, example), assigning episode_id from a global counter if absent."""
  for ep in episodes:
    eid = int(ep["episode_id"]) if "episode_id" in ep else next(counter)
    counts[split] += 1
    yield eid, {**ep, "episode_id": np.int64(eid)}


def write_dataset(out_dir: str, episodes: dict[str, Iterable[dict]], meta: dict) -> None:
  """Writes split name -> iterable of episode dicts as a TFDS dataset directly in out_dir.

  Empty splits are recorded in worldmodel.json with 0 episodes but have no
  TFDS split (TFDS refuses to write a split without examples).
  """
  if os.path.exists(os.path.join(out_dir, "dataset_info.json")):
    raise DatasetError(f"{out_dir}: already holds a dataset; refusing to overwrite")
  iters, first = {}, None
  for split, eps in episodes.items():  # peek one episode per split to find the features
    it = iter(eps)
    head = next(it, None)
    if head is not None:
      iters[split] = itertools.chain([head], it)
      first = first if first is not None else head
  if first is None:
    raise DatasetError(f"{out_dir}: no episodes in any split {sorted(episodes)}")
  features = _features_from(first)
  counts = {split: 0 for split in episodes}
  counter = itertools.count()
  split_eps = {s: _keyed(s, it, counter, counts) for s, it in iters.items()}

  os.makedirs(out_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tfds-build-", dir=out_dir)
  try:
    builder = _EpisodeBuilder(
      features=features,
      split_episodes=split_eps,
      description=f"worldmodel episodes: {meta.get('source', '?')}",
      data_dir=tmp,
      file_format="array_record",
    )
    _quiet_prepare(builder)
    for name in os.listdir(builder.data_dir):  # tmp/name/version/* -> out_dir/*
      shutil.move(os.path.join(builder.data_dir, name), os.path.join(out_dir, name))
  except DatasetError:
    raise
  except Exception as e:  # name the directory; TFDS errors name the split/feature
    raise DatasetError(f"{out_dir}: writing failed: {e}") from e
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  _write_meta(out_dir, _derived_meta(features, first), counts, meta)


def _quiet_prepare(builder) -> None:
  """download_and_prepare without TFDS's progress bars (callers report their own)."""
  was_active = tqdm_utils._active
  tqdm_utils.display_progress_bar(False)
  try:
    builder.download_and_prepare()
  finally:
    tqdm_utils.display_progress_bar(was_active)


def _write_meta(out_dir: str, derived: dict, counts: dict, meta: dict) -> None:
  full = dict(derived)
  full.update({k: v for k, v in meta.items() if v is not None or k not in full})  # caller wins
  full["splits"] = counts
  full["format_version"] = FORMAT_VERSION
  with open(os.path.join(out_dir, META_FILE), "w") as f:
    json.dump(full, f, indent=2, sort_keys=True)


def _derived_meta(features, episode: dict | None = None) -> dict:
  """Meta keys readable from the features (frames only from an episode: T is dynamic)."""

  def last_dim(key):
    return int(features[key].shape[-1]) if key in features else 0

  frames = len(episode["video"]) if episode is not None else None
  return {
    "size": int(features["video"].shape[1]),
    "action_dim": last_dim("action"),
    "state_dim": last_dim("state"),
    "frames": frames,
  }


def local_dir(data_dir: str) -> str:
  """The local folder to read `data_dir` from: itself, or for a gs:// / s3:// dataset a cached copy (ArrayRecord
  reads local files only). Errors name the URL: a missing bucket or dataset fails here, before any compile."""
  if not storage.is_remote(data_dir):
    return data_dir
  try:
    storage.check_reachable(data_dir)
    if not storage.exists(storage.join(data_dir, "dataset_info.json")):
      if not storage.isdir(data_dir):
        raise DatasetError(f"{data_dir}: dataset directory does not exist")
      raise DatasetError(f"{data_dir}: not a worldmodel/TFDS dataset: no dataset_info.json")
    return storage.local_copy(data_dir)
  except storage.StorageError as e:
    raise DatasetError(str(e)) from None


def _check_dir(data_dir: str) -> None:
  if not os.path.isdir(data_dir):
    raise DatasetError(f"{data_dir}: dataset directory does not exist")
  if not os.path.exists(os.path.join(data_dir, "dataset_info.json")):
    raise DatasetError(
      f"{data_dir}: not a worldmodel/TFDS dataset: no dataset_info.json "
      "(generate one with `python -m worldmodel.data.generate`)"
    )


def _builder(data_dir: str):
  data_dir = local_dir(data_dir)
  _check_dir(data_dir)
  try:
    return tfds.builder_from_directory(data_dir)
  except Exception as e:
    raise DatasetError(f"{data_dir}: cannot open as a TFDS dataset: {e}") from e


def read_meta(data_dir: str, features: dict | None = None) -> dict:
  """worldmodel.json, or the same keys derived from the dataset itself if it is missing."""
  data_dir = local_dir(data_dir)
  path = os.path.join(data_dir, META_FILE)
  if os.path.exists(path):
    _check_dir(data_dir)
    try:
      with open(path) as f:
        return json.load(f)
    except json.JSONDecodeError as e:
      raise DatasetError(f"{path}: invalid JSON: {e}") from e
  info = _builder(data_dir).info
  meta = {"source": "tfds", "state_groups": {}, "seed": None, "format_version": FORMAT_VERSION}
  meta["splits"] = {name: split.num_examples for name, split in info.splits.items()}
  if "video" in info.features and not features:
    meta.update(_derived_meta(info.features))
    return meta
  split = next((s for s in ("train", *meta["splits"]) if meta["splits"].get(s)), None)
  if split is None:
    raise DatasetError(f"{data_dir}: every split is empty")
  first = open_split(data_dir, split, features)[0]
  if "video" not in first:
    raise DatasetError(
      f"{data_dir}: no 'video' feature; map one with --config.data.features.video=PATH (features: {sorted(first)})"
    )
  meta.update(
    size=int(first["video"].shape[1]),
    frames=None,
    action_dim=int(first["action"].shape[-1]) if "action" in first else 0,
    state_dim=int(first["state"].shape[-1]) if "state" in first else 0,
  )
  return meta


def open_split(data_dir: str, split: str, features: dict | None = None) -> "EpisodeSource":
  """Random-access source of one split: len(src), src[i] -> dict of numpy arrays.

  `features` maps our names to paths in a foreign TFDS dataset, e.g. for the RLDS layout
  {"video": "steps/observation/image", "action": "steps/action"}; nested features and per-step
  `tfds.features.Dataset` sequences are flattened to "a/b/c" keys and stacked over time.
  """
  data_dir = local_dir(data_dir)
  info = _builder(data_dir).info
  declared = read_meta(data_dir).get("splits", {}) if os.path.exists(os.path.join(data_dir, META_FILE)) else {}
  if split not in info.splits:
    if declared.get(split) == 0:
      raise DatasetError(f"{data_dir}: split {split!r} is empty (0 episodes)")
    known = sorted(set(info.splits.keys()) | set(declared))
    raise DatasetError(f"{data_dir}: unknown split {split!r}; available: {known}")
  split_info = info.splits[split]
  if split_info.num_examples == 0:
    raise DatasetError(f"{data_dir}: split {split!r} is empty (0 episodes)")
  paths = [os.fspath(p) for p in split_info.filepaths]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise DatasetError(f"{data_dir}: split {split!r} is missing shard files {missing}")
  return EpisodeSource(data_dir, split, paths, list(split_info.shard_lengths), features)


class EpisodeSource:
  """Random access over one split; holds only paths, opens readers lazily.

  Pickles cheaply (readers and features are dropped and re-opened), so it
  can be handed to `grain.MapDataset.source(...)` and grain worker processes.
  """

  def __init__(
    self, data_dir: str, split: str, paths: list[str], shard_lengths: list[int], features: dict | None = None
  ):
    self.data_dir, self.split = data_dir, split
    self.mapping = {k: v for k, v in (features or {}).items() if v}
    self.paths, self.shard_lengths = paths, shard_lengths
    self._offsets = np.cumsum([0] + shard_lengths).tolist()
    self._reader = None
    self._features = None

  def __len__(self) -> int:
    return self._offsets[-1]

  def __repr__(self) -> str:
    return f"EpisodeSource({self.data_dir!r}, split={self.split!r}, len={len(self)})"

  def __getstate__(self):
    return {**self.__dict__, "_reader": None, "_features": None}

  def _open(self):
    from grain import sources  # grain imports are slow; keep them off module import

    from worldmodel.data import tfrecord  # RLDS / TFDS datasets published as TFRecord shards

    self._features = tfds.features.FeatureConnector.from_config(self.data_dir)
    try:
      if tfrecord.is_tfrecord(self.paths):
        self._reader = tfrecord.TFRecordSource(self.paths, self.shard_lengths)
      else:
        self._reader = sources.ArrayRecordDataSource(self.paths)
    except Exception as e:  # a truncated / corrupt shard fails here: find and name it
      raise DatasetError(
        f"{self.data_dir}: split {self.split!r}: {self._bad_shard()} is corrupt or truncated ({e})"
      ) from e

  def _bad_shard(self) -> str:
    from grain import sources

    for path in self.paths:
      try:
        sources.ArrayRecordDataSource([path])
      except Exception:  # noqa: BLE001 - probing which file is at fault
        return os.path.basename(path)
    return "a shard file"

  def _locate(self, index: int) -> str:
    shard = bisect.bisect_right(self._offsets, index) - 1
    return f"{os.path.basename(self.paths[shard])} record {index - self._offsets[shard]}"

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"{self!r}: index {index} out of range")
    if self._reader is None:
      self._open()
    try:
      raw = self._reader[index]
    except Exception as e:
      raise DatasetError(
        f"{self.data_dir}: split {self.split!r} episode {index} ({self._locate(index)}) "
        f"could not be read (corrupt or truncated file?): {e}"
      ) from e
    try:
      example = self._features.deserialize_example_np(raw)
    except Exception as e:
      raise DatasetError(
        f"{self.data_dir}: split {self.split!r} episode {index} ({self._locate(index)}) could not be decoded: {e}"
      ) from e
    flat = _flatten(example)
    if not self.mapping:
      return flat
    out = {k: v for k, v in flat.items() if k in CANONICAL}  # unmapped names keep their own feature
    for name, path in self.mapping.items():
      if path not in flat:
        raise DatasetError(
          f"{self.data_dir}: split {self.split!r} episode {index} has no feature {path!r} "
          f"(config key data.features.{name}); features: {sorted(flat)}"
        )
      out[name] = flat[path]
    return out


def _flatten(example: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested feature dicts -> {"a/b": array}; a per-step sequence (RLDS `steps`) is stacked over time."""
  if isinstance(example, dict):
    out = {}
    for k, v in example.items():
      out.update(_flatten(v, f"{prefix}{k}/"))
    return out
  if (
    not isinstance(example, (np.ndarray, bytes, str))
    and hasattr(example, "__len__")
    and hasattr(example, "__getitem__")
  ):
    steps = [_flatten(example[i]) for i in range(len(example))]  # tfds.features.Dataset decodes lazily
    keys = steps[0].keys() if steps else ()
    return {f"{prefix}{k}": np.stack([s[k] for s in steps]) for k in keys}
  return {prefix.rstrip("/"): np.asarray(example)}
