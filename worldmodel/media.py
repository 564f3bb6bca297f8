"""Writers for evaluation artefacts: side-by-side videos, GIF/MP4 files and metric curves.

matplotlib and av are imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import os

import numpy as np


def _prepare_path(path) -> str:
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  return path


def to_uint8(video_float01) -> np.ndarray:
  """Float video in [0, 1] (any shape, jax or numpy) -> uint8, clipped and rounded."""
  v = np.asarray(video_float01, dtype=np.float32)
  return np.round(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_video(frames_THWC: np.ndarray) -> np.ndarray:
  frames_THWC = np.asarray(frames_THWC)
  if frames_THWC.dtype != np.uint8:
    raise TypeError(f"expected uint8 frames, got {frames_THWC.dtype} (use to_uint8)")
  if frames_THWC.ndim != 4 or frames_THWC.shape[-1] != 3:
    raise ValueError(f"expected [T,H,W,3], got {frames_THWC.shape}")
  return frames_THWC


def _upscale(frames_THWC: np.ndarray, scale: int) -> np.ndarray:
  # Nearest neighbour keeps pixels crisp: 64x64 frames are too small to inspect otherwise.
  if scale == 1:
    return frames_THWC
  return np.repeat(np.repeat(frames_THWC, scale, axis=1), scale, axis=2)


def side_by_side(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
  """Concatenate [T,H,W,3] uint8 videos along width, each followed by a `pad`-px white separator.

  Returns [T, H, (W + pad) * n, 3] uint8. Videos must share T and H (W may differ).
  """
  if not rows:
    raise ValueError("side_by_side needs at least one video")
  rows = [_check_video(r) for r in rows]
  T, H = rows[0].shape[:2]
  panels = []
  for r in rows:
    if r.shape[:2] != (T, H):
      raise ValueError(f"shape mismatch: {r.shape} vs T={T}, H={H}")
    sep_THPC = np.full((T, H, pad, 3), 255, dtype=np.uint8)
    panels += [r, sep_THPC]
  return np.concatenate(panels, axis=2)


def write_gif(path, frames_THWC: np.ndarray, fps: int = 8, scale: int = 1, captions: list[str] | None = None) -> str:
  """Looping GIF via imageio/Pillow. Note Pillow merges identical consecutive frames
  (summing their durations), so a static stretch reads back as fewer frames. `captions`: one label per equally wide
  panel (side_by_side's columns), written in a strip above them."""
  import imageio.v3 as iio

  frames_THWC = _upscale(_check_video(frames_THWC), scale)
  if captions:
    frames_THWC = caption(frames_THWC, captions)
  path = _prepare_path(path)
  iio.imwrite(path, frames_THWC, extension=".gif", duration=1000.0 / fps, loop=0)
  return path


def caption(frames_THWC: np.ndarray, labels: list[str], height: int = 14) -> np.ndarray:
  """A white strip on top with each label centred over its panel (the width split into len(labels) equal panels)."""
  from PIL import Image, ImageDraw

  T, _, W, _ = frames_THWC.shape
  strip = Image.new("RGB", (W, height), (255, 255, 255))
  draw = ImageDraw.Draw(strip)
  panel = W / len(labels)
  for i, label in enumerate(labels):
    while label and draw.textlength(label) > panel - 2:  # too long for a small panel: cut, not overlap
      label = label[:-1]
    draw.text((i * panel + (panel - draw.textlength(label)) / 2, 1), label, fill=(0, 0, 0))
  strip_THWC = np.broadcast_to(np.asarray(strip, np.uint8)[None], (T, height, W, 3))
  return np.concatenate([strip_THWC, frames_THWC], axis=1)


def _pick_codec(av) -> str:
  # Prefer H.264 (small, plays everywhere); fall back to MPEG-4 Part 2 on builds without x264.
  for name in ("libx264", "mpeg4"):
    try:
      av.codec.Codec(name, "w")
      return name
    except Exception:
      continue
  raise RuntimeError("PyAV has neither libx264 nor mpeg4 encoders")


def write_mp4(path, frames_THWC: np.ndarray, fps: int = 8, scale: int = 1) -> str:
  """MP4 (yuv420p) via PyAV. Odd H/W are edge-padded by one pixel: 4:2:0 chroma needs even sizes."""
  import av

  frames_THWC = _upscale(_check_video(frames_THWC), scale)
  T, H, W, _ = frames_THWC.shape
  frames_THWC = np.pad(frames_THWC, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
  path = _prepare_path(path)
  codec = _pick_codec(av)
  with av.open(path, mode="w") as container:
    stream = container.add_stream(codec, rate=int(fps))
    stream.width, stream.height = frames_THWC.shape[2], frames_THWC.shape[1]
    stream.pix_fmt = "yuv420p"
    # Near-lossless settings: these videos are for judging reconstructions, not for size.
    stream.options = {"crf": "12"} if codec == "libx264" else {"qscale": "2"}
    for frame_HWC in frames_THWC:
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HWC), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():  # flush delayed frames
      container.mux(packet)
  return path


def plot_curves(path, curves: dict[str, np.ndarray], xlabel: str, ylabel: str, title: str, x=None) -> str:
  """Line plot of named 1-D curves to PNG. `x` is shared; default is 0..len-1 per curve."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  # An explicit Agg canvas (not pyplot): headless, and no global figure state to leak.
  fig = Figure(figsize=(6, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  integer_x = True
  for name, y in curves.items():
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    xs = np.arange(len(y)) if x is None else np.asarray(x).reshape(-1)[: len(y)]
    ax.plot(xs, y, label=name, marker="o" if len(y) < 30 else None, markersize=3)
    integer_x = integer_x and np.allclose(xs, np.round(xs))
  if integer_x:  # frame indices and steps: no 0.5 ticks
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  if curves:
    ax.legend()
  fig.tight_layout()
  path = _prepare_path(path)
  fig.savefig(path, format="png")
  return path


def plot_bars(path, values: dict[str, dict[str, float]], ylabel: str, title: str) -> str:
  """Grouped bar chart: values[series][category] (e.g. R² per state group for each encoder) to PNG."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(7, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  categories = list(dict.fromkeys(c for series in values.values() for c in series))
  width = 0.8 / max(len(values), 1)
  for i, (name, series) in enumerate(values.items()):
    xs = np.arange(len(categories)) + i * width
    ax.bar(xs, [series.get(c, np.nan) for c in categories], width, label=name)
  ax.set_xticks(np.arange(len(categories)) + width * (len(values) - 1) / 2, categories)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.axhline(0.0, color="black", linewidth=0.5)
  ax.grid(True, axis="y", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = _prepare_path(path)
  fig.savefig(path, format="png")
  return path
