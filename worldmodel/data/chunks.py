"""Chunked episodes: a clip reads only the frames it uses.

  python -m worldmodel.data.chunks --data=DIR [--chunk=4] [--frames=raw|jpeg|png] [--quality=95]

writes DIR/chunks/ next to an existing dataset (which stays valid and untouched): every episode of every split is cut
into records of `chunk` consecutive steps, keyed (episode, chunk) in order, and DIR/chunks/chunks.json stores the
chunk size, frame encoding and every episode's length. From then on the training pipeline opens the chunked copy
(pipeline.open_sources), learns lengths from the metadata (nothing is decoded to learn a length) and reads the
ceil((offset + span) / chunk) chunks a window covers: for 16-frame clips and 4-step chunks, 19 frames on average
per 16 used (1.19×) instead of the whole episode. Frames may be stored as JPEG / PNG, decoded in the loader (grain
threads / worker processes).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

CHUNK_DIR = "chunks"
META = "chunks.json"
ENCODINGS = ("raw", "jpeg", "png")


def _encode_chunk(chunk: dict, encoding: str, quality: int) -> bytes:
  arrays = dict(chunk)
  if encoding != "raw":
    from PIL import Image

    frames = []
    for frame in chunk["video"]:
      buf = io.BytesIO()
      Image.fromarray(frame).save(buf, format=encoding.upper(), **({"quality": quality} if encoding == "jpeg" else {}))
      frames.append(np.frombuffer(buf.getvalue(), np.uint8))
    arrays["video"] = np.concatenate(frames)
    arrays["video_sizes"] = np.asarray([len(f) for f in frames], np.int64)
    arrays["video_shape"] = np.asarray(chunk["video"].shape, np.int64)
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def _decode_chunk(raw: bytes, encoding: str) -> dict:
  with np.load(io.BytesIO(raw)) as z:
    arrays = {k: z[k] for k in z.files}
  if encoding != "raw":
    from PIL import Image

    ends = np.cumsum(arrays.pop("video_sizes"))
    shape = tuple(arrays.pop("video_shape"))
    blob = arrays["video"]
    frames = [np.asarray(Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB")) for a, b in zip([0, *ends], ends)]
    arrays["video"] = np.stack(frames).reshape(shape) if frames else np.zeros(shape, np.uint8)
  return arrays


def migrate(data_dir: str, chunk: int = 4, encoding: str = "raw", quality: int = 95) -> dict:
  """Write DIR/chunks/ from the episodes of every split; returns the metadata written."""
  from array_record.python.array_record_module import ArrayRecordWriter

  from worldmodel.data import records

  if chunk < 1 or encoding not in ENCODINGS:
    raise ValueError(f"--chunk must be >= 1 and --frames one of {ENCODINGS}; got {chunk}, {encoding!r}")
  meta = records.read_meta(data_dir)
  out_dir = os.path.join(data_dir, CHUNK_DIR)
  os.makedirs(out_dir, exist_ok=True)
  info = {"chunk": chunk, "encoding": encoding, "source": fingerprint(data_dir), "splits": {}}
  for split, count in meta.get("splits", {}).items():
    if not count:
      continue
    src = records.open_split(data_dir, split)
    path = os.path.join(out_dir, f"{split}.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")  # one record per group: a read decodes only its chunk
    lengths, bytes_written = [], 0
    for i in range(len(src)):
      ep = src[i]
      T = ep["video"].shape[0]
      lengths.append(int(T))
      for start in range(0, T, chunk):
        part = {k: v[start : start + chunk] for k, v in ep.items() if np.ndim(v) and v.shape[0] == T}
        part.update({k: v for k, v in ep.items() if not (np.ndim(v) and v.shape[0] == T)})
        rec = _encode_chunk(part, encoding, quality)
        bytes_written += len(rec)
        writer.write(rec)
    writer.close()
    info["splits"][split] = {"file": os.path.basename(path), "lengths": lengths, "bytes": bytes_written}
  with open(os.path.join(out_dir, META), "w") as f:
    json.dump(info, f)
  return info


def fingerprint(data_dir: str) -> dict:
  """Names and sizes of the dataset's record files: a chunked copy of other records is stale."""
  return {f: os.path.getsize(os.path.join(data_dir, f)) for f in sorted(os.listdir(data_dir)) if ".array_record" in f}


def has_chunks(data_dir: str) -> bool:
  """A chunked copy exists; one made from other records than today's is an error, not silently used."""
  path = os.path.join(data_dir, CHUNK_DIR, META)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    source = json.load(f).get("source")
  if source != fingerprint(data_dir):
    from worldmodel.data import records

    raise records.DatasetError(
      f"{data_dir}/{CHUNK_DIR} was made from other records than the dataset now holds; re-run "
      f"python -m worldmodel.data.chunks --data={data_dir} (or delete {data_dir}/{CHUNK_DIR})"
    )
  return True


class ChunkedSource:
  """Episode source over DIR/chunks/: `length(i)` from metadata, `read(i, start, stop)` reads only covering chunks.

  `src[i]` (the whole episode) still works, for code that wants it. Pickles cheaply (the reader is reopened)."""

  def __init__(self, data_dir: str, split: str):
    with open(os.path.join(data_dir, CHUNK_DIR, META)) as f:
      info = json.load(f)
    if split not in info["splits"]:
      from worldmodel.data import records

      raise records.DatasetError(f"{data_dir}/{CHUNK_DIR}: no split {split!r}; available: {sorted(info['splits'])}")
    self.data_dir, self.split = data_dir, split
    self.chunk, self.encoding = int(info["chunk"]), info["encoding"]
    s = info["splits"][split]
    self.path = os.path.join(data_dir, CHUNK_DIR, s["file"])
    self.lengths = [int(n) for n in s["lengths"]]
    per_episode = [-(-n // self.chunk) for n in self.lengths]
    self._first = np.cumsum([0] + per_episode).tolist()
    self._reader = None
    self.bytes_read = 0  # of stored records, for the read-amplification benchmark
    self.frames_decoded = 0

  def __len__(self) -> int:
    return len(self.lengths)

  def __repr__(self) -> str:
    return f"ChunkedSource({self.data_dir!r}, split={self.split!r}, len={len(self)}, chunk={self.chunk})"

  def __getstate__(self):
    return {**self.__dict__, "_reader": None}

  def length(self, i: int) -> int:
    return self.lengths[i]

  def read(self, i: int, start: int, stop: int) -> dict:
    """Steps [start, stop) of episode i (per-step arrays sliced; per-episode values such as `label` whole)."""
    if self._reader is None:
      from grain import sources

      self._reader = sources.ArrayRecordDataSource([self.path])
    first, last = start // self.chunk, (stop - 1) // self.chunk
    raws = [self._reader[self._first[i] + c] for c in range(first, last + 1)]
    self.bytes_read += sum(len(r) for r in raws)
    parts = [_decode_chunk(r, self.encoding) for r in raws]
    self.frames_decoded += sum(len(p["video"]) for p in parts)
    off, steps = start - first * self.chunk, len(parts[0]["video"])
    return {
      k: np.concatenate([p[k] for p in parts])[off : off + stop - start] if np.ndim(v) and v.shape[0] == steps else v
      for k, v in parts[0].items()
    }

  def __getitem__(self, i: int) -> dict:
    return self.read(int(i), 0, self.lengths[int(i)])


def main(argv):
  from absl import flags

  from worldmodel import config as config_lib

  F = flags.FLAGS
  if len(argv) > 1:
    config_lib.die(f"unexpected arguments {argv[1:]}")
  if not F.data or not os.path.isdir(F.data):
    config_lib.die(f"--data={F.data!r} is not a dataset directory")
  try:
    info = migrate(F.data, F.chunk, F.frames, F.quality)
  except ValueError as e:
    config_lib.die(str(e))
  for split, s in info["splits"].items():
    print(f"{split}: {len(s['lengths'])} episodes, {sum(s['lengths'])} steps, {s['bytes'] / 2**20:.1f} MiB")
  print(f"wrote {os.path.join(F.data, CHUNK_DIR)} (chunk={info['chunk']}, frames={info['encoding']})")


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("data", None, "Dataset directory (written by worldmodel.data.generate or any TFDS dataset).")
  flags.DEFINE_integer("chunk", 4, "Steps per record: smaller reads fewer unused frames, larger has fewer records.")
  flags.DEFINE_enum("frames", "raw", list(ENCODINGS), "How frames are stored: raw uint8, or JPEG / PNG bytes.")
  flags.DEFINE_integer("quality", 95, "JPEG quality (--frames=jpeg).")
  app.run(main)
