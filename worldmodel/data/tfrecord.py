"""Random access to TFDS datasets stored as TFRecord shards (how RLDS / Open X-Embodiment / DROID are published).

TFRecord files have no index: one record is [uint64 length][uint32 masked CRC of the length][data][uint32 masked CRC
of the data]. A shard is indexed on first use by hopping from header to header (12 bytes read per record, the data
is skipped), after which an episode is one seek + read; TFDS's own feature spec (features.json) decodes it, PNG / JPEG
images included (through PIL). Reading needs no TensorFlow; the `rlds` extra (tensorflow-cpu) is what writes such
datasets with TFDS, e.g. in tests/test_rlds.py.
"""

from __future__ import annotations

import bisect
import os
import struct

import numpy as np

HEADER = 12  # uint64 length + uint32 CRC
FOOTER = 4  # uint32 CRC of the data


def is_tfrecord(paths: list[str]) -> bool:
  return bool(paths) and all(".tfrecord" in os.path.basename(p) for p in paths)


def index_shard(path: str) -> list[tuple[int, int]]:
  """(data offset, length) of every record in a TFRecord file; a truncated file is an error naming it."""
  out, pos = [], 0
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    while pos < size:
      header = f.read(HEADER)
      if len(header) < HEADER:
        raise ValueError(f"{os.path.basename(path)}: truncated record header at byte {pos}")
      (length,) = struct.unpack("<Q", header[:8])
      end = pos + HEADER + length + FOOTER
      if end > size:
        raise ValueError(f"{os.path.basename(path)}: record at byte {pos} runs past the end of the file (truncated?)")
      out.append((pos + HEADER, length))
      f.seek(end)
      pos = end
  return out


class TFRecordSource:
  """Raw serialized records of several shards by global index, like grain's ArrayRecordDataSource."""

  def __init__(self, paths: list[str], shard_lengths: list[int]):
    self.paths = list(paths)
    self.offsets = np.cumsum([0] + list(shard_lengths)).tolist()
    self._index: dict[int, list[tuple[int, int]]] = {}

  def __len__(self) -> int:
    return self.offsets[-1]

  def _records(self, shard: int) -> list[tuple[int, int]]:
    if shard not in self._index:
      records = index_shard(self.paths[shard])
      expected = self.offsets[shard + 1] - self.offsets[shard]
      if len(records) != expected:
        raise ValueError(
          f"{os.path.basename(self.paths[shard])} holds {len(records)} records; dataset_info.json says {expected}"
        )
      self._index[shard] = records
    return self._index[shard]

  def __getitem__(self, index: int) -> bytes:
    shard = bisect.bisect_right(self.offsets, index) - 1
    start, length = self._records(shard)[index - self.offsets[shard]]
    with open(self.paths[shard], "rb") as f:
      f.seek(start)
      data = f.read(length)
    if len(data) != length:
      raise ValueError(f"{os.path.basename(self.paths[shard])}: short read at byte {start}")
    return data
