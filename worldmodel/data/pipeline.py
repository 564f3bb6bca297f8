"""Grain pipelines: episodes on disk → clip windows → per-process batches → global jax.Arrays on the mesh.

Training order is a pure function of (seed, global sample index): sample g of the run is drawn from episode
perm(seed, epoch)[g % num_episodes] with a window start from rng(seed, g). The batch for step k holds samples
[k·B, (k+1)·B); process p of P reads its contiguous slice. So resuming needs only the step (saved with every
checkpoint as the data position), and the global batch does not depend on how many processes read it.
"""

from __future__ import annotations

import functools
from typing import Iterator

import grain
import jax
import numpy as np

from worldmodel.data import chunks, records
from worldmodel.parallel import mesh as mesh_lib

KEYS = ("video", "action", "state", "reward")


def data_dirs(data_cfg) -> list[str]:
  """`data.dir` names one dataset or a comma-separated mixture."""
  return [d.strip() for d in str(data_cfg.dir).split(",") if d.strip()]


def feature_map(data_cfg) -> dict | None:
  """data.features with the empty entries dropped (None: the dataset uses our own names)."""
  mapping = {k: v for k, v in dict(data_cfg.features).items() if v}
  return mapping or None


def open_sources(data_cfg, split: str) -> list:
  """One source per dataset; a dataset with a chunked copy (data/chunks.py) is read from it, frames on demand."""
  mapping = feature_map(data_cfg)
  return [
    chunks.ChunkedSource(d, split) if chunks.has_chunks(d) and not mapping else records.open_split(d, split, mapping)
    for d in data_dirs(data_cfg)
  ]


def mixture_weights(data_cfg, n: int) -> np.ndarray:
  w = np.asarray(data_cfg.weights or [1.0] * n, np.float64)
  if len(w) != n or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(
      f"config key 'data.weights' {tuple(w)} must hold {n} non-negative weights, one per "
      f"dataset in data.dir, not all zero"
    )
  return w / w.sum()


def frame_size(data_cfg) -> int:
  """The frame size the pipeline emits: data.resize, or the datasets' own size (which must agree)."""
  if data_cfg.resize:
    return int(data_cfg.resize)
  sizes = {d: records.read_meta(d, feature_map(data_cfg)).get("size") for d in data_dirs(data_cfg)}
  if len(set(sizes.values())) > 1:
    raise records.DatasetError(f"datasets disagree on frame size {sizes}; set --config.data.resize=SIZE")
  return int(next(iter(sizes.values())))


def resize_clip(video_THWC: np.ndarray, size: int) -> np.ndarray:
  """Centre square crop, then area (box) resampling to size×size; a no-op when already that size."""
  T, H, W, _ = video_THWC.shape
  if H == W == size:
    return video_THWC
  from PIL import Image

  s = min(H, W)
  top, left = (H - s) // 2, (W - s) // 2
  crop = video_THWC[:, top : top + s, left : left + s]
  return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BOX)) for f in crop])


class ClipSampler:
  """Maps a global sample index to a clip window (deterministic, topology-free).

  One dataset: epochs of a seeded permutation (every episode once per epoch). A mixture: each sample picks its
  dataset by weight and an episode uniformly, both from rng(seed, g), so it stays a pure function of g.
  """

  def __init__(self, sources: list, seed: int, num_frames: int, frame_stride: int, *, weights=None, size: int = 0):
    self.sources = list(sources)
    self.weights = np.ones(len(self.sources)) / len(self.sources) if weights is None else np.asarray(weights)
    self.seed, self.size = seed, size
    self.num_frames, self.stride = num_frames, frame_stride
    self.span = (num_frames - 1) * frame_stride + 1

  @functools.lru_cache(maxsize=4)
  def _perm(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.sources[0]))

  def locate(self, g: int) -> tuple[int, int]:
    if len(self.sources) == 1:
      n = len(self.sources[0])
      return 0, int(self._perm(g // n)[g % n])
    rng = np.random.default_rng([self.seed, g, 13])
    d = int(rng.choice(len(self.sources), p=self.weights))
    return d, int(rng.integers(len(self.sources[d])))

  def __call__(self, g: int) -> dict:
    d, episode = self.locate(g)
    src = self.sources[d]
    chunked = hasattr(src, "read")  # reads only the chunks the window covers; the length comes from metadata
    ep = None if chunked else src[episode]
    length = src.length(episode) if chunked else ep["video"].shape[0]
    if length < self.span:
      raise records.DatasetError(
        f"{src.data_dir}: episode {episode} has {length} frames; a clip needs {self.span} "
        f"(num_frames={self.num_frames}, frame_stride={self.stride})"
      )
    start = int(np.random.default_rng([self.seed, g, 11]).integers(0, length - self.span + 1))
    if chunked:
      ep, start = src.read(episode, start, start + self.span), 0
    return checked_clip(window(ep, start, self.span, self.stride), self.size, src, episode)


def checked_clip(clip: dict, size: int, src, episode: int) -> dict:
  if size:
    clip["video"] = resize_clip(clip["video"], size)
  shape = clip["video"].shape
  if len(shape) != 4 or shape[-1] != 3 or (size and shape[1:3] != (size, size)):
    raise records.DatasetError(
      f"{src.data_dir}: split {src.split!r} episode {episode} has video of shape {shape}; "
      f"expected [T,{size or 'H'},{size or 'W'},3]"
    )
  return clip


def window(ep: dict, start: int, span: int, stride: int) -> dict:
  """Slice every per-step array the same way, so action[t] / state[t] stay aligned with video[t]; a clip keeps
  its episode's class label."""
  clip = {k: np.asarray(ep[k][start : start + span : stride]) for k in KEYS if k in ep}
  if "label" in ep:
    clip["label"] = np.asarray(ep["label"], np.int32)
  return clip


class _Sample:
  """Picklable grain map: local element i → global sample index → clip."""

  def __init__(
    self, sampler: ClipSampler, start_step: int, global_batch: int, local_batch: int, process: int, transform=None
  ):
    self.sampler, self.start_step, self.transform = sampler, start_step, transform
    self.global_batch, self.local_batch, self.process = global_batch, local_batch, process

  def __call__(self, i: int) -> dict:
    step, j = divmod(int(i), self.local_batch)
    g = (self.start_step + step) * self.global_batch + self.process * self.local_batch + j
    clip = self.sampler(g)
    return self.transform(clip, g) if self.transform else clip


def train_dataset(
  data_cfg,
  *,
  seed: int,
  global_batch: int,
  start_step: int,
  num_steps: int,
  process_index: int | None = None,
  process_count: int | None = None,
  transform=None,
  sources: list | None = None,
) -> grain.IterDataset:
  """The per-process iterator for steps [start_step, start_step + num_steps).

  `transform(clip, g)` adds per-sample extras (e.g. JEPA masks) as a pure function of the global sample index g.
  `sources`: the train split already opened (`open_sources`; the trainer's preflight does); default: open it here.
  """
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  if global_batch % n:
    raise ValueError(f"batch_size {global_batch} is not divisible by the {n} processes")
  local = global_batch // n
  sources = sources if sources is not None else open_sources(data_cfg, data_cfg.train_split)
  sampler = ClipSampler(
    sources,
    seed,
    data_cfg.num_frames,
    data_cfg.frame_stride,
    weights=mixture_weights(data_cfg, len(sources)),
    size=frame_size(data_cfg),
  )
  ds = grain.MapDataset.range(num_steps * local).map(_Sample(sampler, start_step, global_batch, local, p, transform))
  ds = ds.batch(local, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.read_threads, prefetch_buffer_size=data_cfg.prefetch))
  if data_cfg.workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.workers))
  return it


def eval_windows(sources, num_frames: int, stride: int, max_clips: int | None = None) -> list[tuple[int, int, int]]:
  """Every non-overlapping clip window of every episode of a split: (dataset, episode, start)."""
  span = (num_frames - 1) * stride + 1
  out = []
  for d, source in enumerate(sources):
    for e in range(len(source)):
      length = source[e]["video"].shape[0]
      out += [(d, e, s) for s in range(0, length - span + 1, span)]
      if max_clips and len(out) >= max_clips:
        return out[:max_clips]
  return out


def eval_batches(
  data_cfg, split: str, batch_size: int, max_clips: int | None = None, transform=None
) -> tuple[Iterator[dict], int]:
  """Deterministic pass over a split; the last batch is padded and carries `valid` (1 real clip, 0 padding).

  `transform(clip, k)` as in train_dataset, with k the clip's index in the split.
  """
  sources = open_sources(data_cfg, split)
  size = frame_size(data_cfg)
  wins = eval_windows(sources, data_cfg.num_frames, data_cfg.frame_stride, max_clips)
  if not wins:
    raise records.DatasetError(
      f"{data_cfg.dir} split {split!r}: no episode is long enough for a "
      f"{data_cfg.num_frames}-frame clip at stride {data_cfg.frame_stride}"
    )
  span = (data_cfg.num_frames - 1) * data_cfg.frame_stride + 1

  def load(k: int) -> dict:
    d, e, s = wins[min(k, len(wins) - 1)]
    clip = checked_clip(window(sources[d][e], s, span, data_cfg.frame_stride), size, sources[d], e)
    clip["valid"] = np.float32(k < len(wins))
    return transform(clip, k) if transform else clip

  padded = -(-len(wins) // batch_size) * batch_size
  ds = grain.MapDataset.range(padded).map(load).batch(batch_size)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.read_threads, prefetch_buffer_size=data_cfg.prefetch))
  return iter(it), len(wins)


def to_global(batch: dict, mesh) -> dict:
  """Per-process numpy batch → global jax.Arrays split over the mesh's batch axes."""
  sharding = mesh_lib.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
