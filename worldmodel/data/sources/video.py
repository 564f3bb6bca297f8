"""User video files -> episodes (`--source=video:GLOB`), decoded with PyAV.

Every file PyAV (FFmpeg) opens works: mp4, webm, avi, mov, mkv, gif, ...

EPISODES. One file gives one episode holding all of its (resampled) frames,
so the training pipeline can draw clip windows from anywhere in it. Files
longer than `max_frames` are cut into consecutive episodes of `max_frames`
frames (bounding record size and memory); a trailing remainder shorter than
`min_frames` is dropped. A file with fewer than `min_frames` frames after
resampling is skipped (`DecodeError`), as is one FFmpeg cannot decode.

FRAME RATE. Frames are resampled by timestamp to `fps`: for target times
0, 1/fps, 2/fps, ... (relative to the first frame, up to the last one) the
decoded frame with the nearest presentation time is taken (ties: the earlier).
So 24/30/60 fps footage, and GIFs with per-frame delays, all give the same
time spacing. fps <= 0 keeps every decoded frame.

RESIZE. Centre-crop to a square (exact, in RGB at full resolution), then
area-downsample to `size` with swscale's AREA filter. Per 720p frame this
costs ~6 ms, whatever `size` (measured: an oversample-then-crop variant that
avoids full-res RGB was no faster and only approximately centred). Rotation
metadata and non-square sample aspect ratios are ignored.

SPLITS. A file's split is a pure function of (seed, its path relative to the
glob's fixed prefix): a SHA-256 of both, as a number u in [0, 1), puts it in
test if u < test_fraction, val if u < test_fraction + val_fraction, else train.
Splits are disjoint (all episodes of a file share its split), deterministic,
independent of the other files (adding files never moves existing ones), and
of the dataset's location; the fractions hold in expectation, not exactly.
"""

from __future__ import annotations

import glob
import hashlib
import os
from typing import Iterable, Iterator

import av
import numpy as np

TIME_EPS = 1e-6  # seconds; absorbs float error in pts * time_base


class DecodeError(Exception):
  """This file gives no usable episode; the message is the reason."""


def find_files(pattern: str) -> list[str]:
  """Sorted regular files matching `pattern` ('**' recurses); ValueError if none."""
  paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
  if not paths:
    raise ValueError(f"no files match the glob {pattern!r}")
  return paths


def class_of(path: str) -> str:
  """A file's class under the CLASS/clip.mp4 layout: its parent folder's name."""
  return os.path.basename(os.path.dirname(os.path.abspath(path)))


def class_names(paths: list[str]) -> list[str]:
  """Sorted class names; label i is names[i]. ValueError if there are fewer than two classes."""
  names = sorted({class_of(p) for p in paths})
  if len(names) < 2:
    raise ValueError(
      f"--labels=dirname found {len(names)} class folder(s) {names}; clip classification needs "
      "files in at least two folders (CLASS/clip.mp4)"
    )
  return names


def glob_root(pattern: str) -> str:
  """The leading directories of `pattern` without wildcards (what paths are relative to)."""
  parts = os.path.expanduser(pattern).split(os.sep)
  fixed = []
  for part in parts[:-1]:
    if glob.has_magic(part):
      break
    fixed.append(part)
  return os.sep.join(fixed) or "."


def split_of(relpath: str, seed: int, val_fraction: float, test_fraction: float) -> str:
  digest = hashlib.sha256(f"{seed}\0{relpath}".encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  if u < test_fraction:
    return "test"
  return "val" if u < test_fraction + val_fraction else "train"


def split_files(
  paths: list[str], root: str, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[str]]:
  """split name -> its files (in sorted order); see SPLITS in the module doc."""
  out = {"train": [], "val": [], "test": []}
  for p in paths:
    rel = os.path.relpath(p, root).replace(os.sep, "/")
    out[split_of(rel, seed, val_fraction, test_fraction)].append(p)
  return out


def nearest_in_time(timed: Iterable[tuple[float, object]], fps: float) -> Iterator[object]:
  """Resamples (time_s, item) pairs in time order to fps, picking the nearest item per target.

  Streams: holds only the previous item, so unselected frames are never converted.
  """
  prev, t0, k = None, 0.0, 0
  for t, item in timed:
    if prev is None:
      t0 = t
    elif t <= prev[0] + t0:
      continue  # duplicate or backwards timestamp: keep the first
    while prev is not None and k / fps <= t - t0 + TIME_EPS:
      target = k / fps
      yield prev[1] if target - prev[0] <= (t - t0) - target + TIME_EPS else item
      k += 1
    prev = (t - t0, item)
  if prev is not None and k == 0:  # a single frame: target 0 is the frame itself
    yield prev[1]


def _timed_frames(container, stream, stats: dict) -> Iterator[tuple[float, "av.VideoFrame"]]:
  """(presentation time in s, frame) in decode order; counts them into stats['decoded']."""
  rate = float(stream.average_rate or stream.guessed_rate or 0)
  for i, frame in enumerate(container.decode(stream)):
    stats["decoded"] = i + 1
    t = frame.time
    if t is None:  # some AVI/raw streams: fall back to the nominal rate
      if not rate:
        raise DecodeError("frames have no timestamps and the stream no frame rate")
      t = i / rate
    yield t, frame


def square_rgb(frame: "av.VideoFrame", size: int) -> np.ndarray:
  """Centre square crop, area-downsampled (swscale AREA) to uint8 [size, size, 3]."""
  rgb_HWC = frame.to_ndarray(format="rgb24")
  h, w, _ = rgb_HWC.shape
  side = min(h, w)
  y0, x0 = (h - side) // 2, (w - side) // 2
  crop_HWC = np.ascontiguousarray(rgb_HWC[y0 : y0 + side, x0 : x0 + side])
  square = av.VideoFrame.from_ndarray(crop_HWC, format="rgb24")
  return square.reformat(width=size, height=size, interpolation="AREA").to_ndarray()


def _check_complete(decoded: int, indexed: int) -> None:
  """FFmpeg stops quietly at a cut-off mp4/mov whose index survived: compare with the index."""
  if indexed > 0 and decoded < indexed - max(2, indexed // 100):  # slack: priming, edit lists
    raise DecodeError(f"truncated: decoded {decoded} of the {indexed} frames in its index")


def decode(path: str, fps: float, size: int) -> np.ndarray:
  """All frames of the file's first video stream, resampled and resized: uint8 [T,size,size,3]."""
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise DecodeError("no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"  # frame + slice threads; decoding dominates the cost
      stats = {"decoded": 0}
      timed = _timed_frames(container, stream, stats)
      frames = nearest_in_time(timed, fps) if fps > 0 else (f for _, f in timed)
      frames_HWC = [square_rgb(f, size) for f in frames]
      _check_complete(stats["decoded"], stream.frames)
  except av.FFmpegError as e:  # strerror: str(e) would repeat the path
    raise DecodeError(f"cannot decode: {e.strerror or e}") from None
  except OSError as e:
    raise DecodeError(f"cannot read: {e}") from None
  if not frames_HWC:
    raise DecodeError("no frames decoded")
  return np.stack(frames_HWC)


def episodes(path: str, fps: float, size: int, min_frames: int, max_frames: int = 0) -> list[dict]:
  """The file's episodes ({'video': uint8 [T,H,W,3]}); DecodeError if it gives none."""
  video_THWC = decode(path, fps, size)
  n = len(video_THWC)
  if n < min_frames:
    rate = f"at {fps:g} fps" if fps > 0 else "(native rate)"
    raise DecodeError(f"too short: {n} frames {rate}, need at least {min_frames} (--frames)")
  step = max_frames if max_frames > 0 else n
  chunks_THWC = [video_THWC[i : i + step] for i in range(0, n, step)]
  return [{"video": c} for c in chunks_THWC if len(c) >= min_frames]
