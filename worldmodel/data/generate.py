"""Generate an episode dataset (TFDS/ArrayRecord) for world-model training.

Example:
  python -m worldmodel.data.generate --source=bouncing --out=data/generated/bouncing64 \\
      --episodes=500 --frames=32 --size=64 --seed=0
  python -m worldmodel.data.generate --source=tworoom --out=data/generated/tworoom64 \\
      --episodes=4000 --frames=16 --size=64 --action_repeat=5

The output directory opens with `tfds.builder_from_directory(OUT)` and with
`worldmodel.data.records.open_split(OUT, "train")`. Episode i (0-based, over
all splits) is generated from seed (--seed, i); train takes the first indices,
then val, then test, so splits never share an episode.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Callable, Iterator

import numpy as np
from absl import app, flags, logging

from worldmodel import storage
from worldmodel.data import records

FLAGS = flags.FLAGS
if __name__ == "__main__":  # flags only for the CLI: importing several CLI modules must not redefine them
  flags.DEFINE_string(
    "source",
    "bouncing",
    "Where episodes come from. One of the registered sources, optionally with an "
    "argument after ':' (e.g. 'bouncing'). An unknown name lists the known ones.",
  )
  flags.DEFINE_string(
    "out",
    None,
    "Output dataset directory (created; must be empty or absent unless --overwrite); a gs:// or s3:// URL "
    "writes locally, then uploads.",
  )
  flags.DEFINE_integer(
    "episodes", 100, "Total number of episodes, over all splits (video: ignored; the files decide).", lower_bound=1
  )
  flags.DEFINE_integer("frames", 32, "Frames per episode (T).", lower_bound=2)
  flags.DEFINE_integer("size", 64, "Frame height and width in pixels.", lower_bound=8)
  flags.DEFINE_integer("seed", 0, "Base seed; episode i uses SeedSequence([seed, i]).")
  flags.DEFINE_integer("num_balls", 3, "bouncing: number of passive balls besides the agent.", lower_bound=0)
  flags.DEFINE_integer("camera", 0, "dmc: MuJoCo camera id to render (-1 = free camera).", lower_bound=-1)
  flags.DEFINE_integer(
    "action_repeat", 1, "dmc, tworoom: env steps per recorded frame (action held; the frame skip).", lower_bound=1
  )
  flags.DEFINE_bool(
    "render_target",
    True,
    "dmc: draw the task's `target` geom (reacher's goal sphere). --render_target=0 hides it, as LeWM's reacher data "
    "does: a static distractor the encoder would otherwise spend capacity on; physics and rewards are unchanged.",
  )
  flags.DEFINE_integer(
    "workers",
    min(2, os.cpu_count() or 1),
    "dmc: episode-generating processes (1 = serial, in this process).",
    lower_bound=1,
  )
  flags.DEFINE_float(
    "val_fraction", 0.1, "Fraction of episodes for the 'val' split (at least 1 episode when --episodes >= 3)."
  )
  flags.DEFINE_float(
    "test_fraction", 0.1, "Fraction of episodes for the 'test' split (at least 1 episode when --episodes >= 3)."
  )
  flags.DEFINE_bool("overwrite", False, "Replace OUT if it already holds files.")
  flags.DEFINE_float(
    "fps",
    8.0,
    "video: resample every file to this frame rate by timestamp "
    "(nearest frame per target time; <= 0 keeps every decoded frame). At 8 fps "
    "a 32-frame clip spans 4 s.",
  )
  flags.DEFINE_integer(
    "max_frames",
    512,
    "video: files longer than this (after resampling) are "
    "cut into consecutive episodes of this many frames; 0 = one episode per "
    "file. Files shorter than --frames are skipped.",
    lower_bound=0,
  )
  flags.DEFINE_bool(
    "strict", False, "video: exit with an error on the first unusable file instead of skipping it with a warning."
  )
  flags.DEFINE_enum(
    "labels",
    "none",
    ["none", "dirname"],
    "video: 'dirname' gives every episode a class `label` (int64): the index of its file's "
    "parent folder name among all of them, sorted (the UCF-101 / Kinetics layout "
    "CLASS/clip.mp4); the class names go to worldmodel.json 'classes'. For clip "
    "classification (experiments/finetune.py:...,classify).",
  )


@dataclasses.dataclass(frozen=True)
class Config:
  """What every source gets: the common flags (plus source-specific ones)."""

  frames: int
  size: int
  num_balls: int = 3
  camera: int = 0  # dmc
  action_repeat: int = 1  # dmc, tworoom
  render_target: bool = True  # dmc
  workers: int = 1  # dmc
  fps: float = 8.0  # video
  max_frames: int = 512  # video
  strict: bool = False  # file sources: an unusable file is an error, not a skip
  labels: str = "none"  # video: 'dirname' = class label from the parent folder


@dataclasses.dataclass(frozen=True)
class Source:
  """make_episode(seed) -> episode dict (video uint8 [T,H,W,3], optional action/state/reward)."""

  make_episode: Callable[[int], dict]
  meta: dict
  # Optional batched form (e.g. a process pool): seeds -> episodes in the same order.
  make_episodes: Callable[[list[int]], Iterator[dict]] | None = None
  # File-backed sources (video:GLOB) set files(seed, val_fraction, test_fraction) ->
  # {split: [path, ...]}; make_episode(path) then returns a list of episodes or raises
  # SkipFile(reason), and --episodes is ignored.
  files: Callable[[int, float, float], dict[str, list[str]]] | None = None


def _bouncing(arg: str, cfg: Config) -> Source:
  from worldmodel.data.sources import bouncing

  if arg:
    raise ValueError(f"source 'bouncing' takes no ':' argument (got {arg!r})")

  def make_episode(seed: int) -> dict:
    return bouncing.generate_episode(seed, cfg.frames, cfg.size, cfg.num_balls)

  return Source(make_episode, {"state_groups": bouncing.state_groups(cfg.num_balls), "num_balls": cfg.num_balls})


def _dmc(arg: str, cfg: Config) -> Source:
  from worldmodel.data.sources import dmc

  domain, task = dmc.parse_task(arg)
  gen = dmc.Generator(
    dmc.Spec(domain, task, cfg.frames, cfg.size, cfg.camera, cfg.action_repeat, cfg.render_target), cfg.workers
  )
  return Source(gen.make_episode, gen.meta, gen.make_episodes)


def _tworoom(arg: str, cfg: Config) -> Source:
  from worldmodel.data.sources import tworoom

  if arg:
    raise ValueError(f"source 'tworoom' takes no ':' argument (got {arg!r})")

  def make_episode(seed: int) -> dict:
    return tworoom.generate_episode(seed, cfg.frames, cfg.size, cfg.action_repeat)

  return Source(
    make_episode, {"state_groups": tworoom.STATE_GROUPS, "env": "tworoom", "action_repeat": cfg.action_repeat}
  )


class SkipFile(Exception):
  """Raised by a file source's make_episode: this file gives no episode (message: why)."""


def _video(arg: str, cfg: Config) -> Source:
  from worldmodel.data.sources import video

  if not arg:
    raise ValueError("source 'video' needs a glob, e.g. video:/data/clips/**/*.mp4")
  if 0 < cfg.max_frames < cfg.frames:
    raise ValueError(f"--max_frames={cfg.max_frames} is below --frames={cfg.frames}")
  paths = video.find_files(arg)  # ValueError naming the glob if it matches nothing
  classes = video.class_names(paths) if cfg.labels == "dirname" else []

  def files(seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    return video.split_files(paths, video.glob_root(arg), seed, val_fraction, test_fraction)

  def make_episode(path: str) -> list[dict]:
    try:
      episodes = video.episodes(path, cfg.fps, cfg.size, cfg.frames, cfg.max_frames)
    except video.DecodeError as e:
      raise SkipFile(str(e)) from None
    if classes:
      label = np.int64(classes.index(video.class_of(path)))
      episodes = [{**ep, "label": label} for ep in episodes]
    return episodes

  meta = {
    "fps": cfg.fps,
    "max_frames": cfg.max_frames,
    "min_frames": cfg.frames,
    "input_files": len(paths),
    "state_groups": {},
  }
  if classes:
    meta["classes"] = classes
  return Source(make_episode, meta, files=files)


# name -> factory(arg after ':', Config) -> Source: --source=NAME[:ARG]. A new source is one entry here.
SOURCES: dict[str, Callable[[str, Config], Source]] = {
  "bouncing": _bouncing,
  "dmc": _dmc,
  "tworoom": _tworoom,
  "video": _video,
}


class UserError(Exception):
  """A mistake in the command line: printed as one message, no traceback."""


def split_counts(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
  """Episodes per split; val and test get >= 1 each when n >= 3, train keeps >= 1."""
  if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
    raise UserError("--val_fraction and --test_fraction must be in [0, 1)")
  n_val, n_test = round(n * val_fraction), round(n * test_fraction)
  if n >= 3:
    n_val, n_test = max(1, n_val), max(1, n_test)
  if n - n_val - n_test < 1:
    raise UserError(f"--val_fraction + --test_fraction leave no training episodes out of {n}")
  return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def episode_seed(seed: int, index: int) -> int:
  """Independent per-episode seed from (base seed, global episode index)."""
  return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def make_source(spec: str, cfg: Config) -> Source:
  name, _, arg = spec.partition(":")
  if name not in SOURCES:
    raise UserError(f"unknown --source={spec!r}; known sources: {sorted(SOURCES)}")
  try:
    return SOURCES[name](arg, cfg)
  except ValueError as e:
    raise UserError(f"--source={spec!r}: {e}") from None


class Progress:
  """Prints 'done/total episodes, episodes/s' at most every ~2 s (and at the end)."""

  def __init__(self, total: int, unit: str = "episodes"):
    self.total, self.done, self.start, self.last = total, 0, time.time(), 0.0
    self.unit = unit

  def tick(self) -> None:
    self.done += 1
    now = time.time()
    if now - self.last >= 2.0 or self.done == self.total:
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      print(f"  {self.done}/{self.total} {self.unit}  {rate:.1f} {self.unit}/s", flush=True)


def _episodes(source: Source, seed: int, indices: range, progress: Progress) -> Iterator[dict]:
  seeds = [episode_seed(seed, i) for i in indices]
  make_all = source.make_episodes or (lambda s: map(source.make_episode, s))
  for i, episode in zip(indices, make_all(seeds)):
    progress.tick()
    yield {**episode, "episode_id": np.int64(i)}


def _file_episodes(source: Source, paths: list[str], split: str, state: dict, strict: bool) -> Iterator[dict]:
  """Episodes of each file in turn; unusable files are skipped (into state) or, strict, fatal."""
  for path in paths:
    try:
      episodes = source.make_episode(path)
    except SkipFile as e:
      if strict:
        raise UserError(f"{path}: {e} (--strict)") from None
      print(f"warning: skipping {path}: {e}", file=sys.stderr, flush=True)
      state["skipped"].append(f"{path} ({e})")
      episodes = []
    state["progress"].tick()
    for episode in episodes:
      state["counts"][split] += 1
      yield {**episode, "episode_id": np.int64(next(state["ids"]))}


def _file_splits(
  source: Source, seed: int, val_fraction: float, test_fraction: float, strict: bool, skipped: list
) -> tuple[dict, dict]:
  """(split -> episode iterator, split -> episode count filled in while writing)."""
  if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
    raise UserError("--val_fraction and --test_fraction must be in [0, 1) and sum below 1")
  files = source.files(seed, val_fraction, test_fraction)
  counts = dict.fromkeys(files, 0)
  state = {
    "counts": counts,
    "skipped": skipped,
    "ids": itertools.count(),
    "progress": Progress(sum(map(len, files.values())), unit="files"),
  }
  return {s: _file_episodes(source, p, s, state, strict) for s, p in files.items()}, counts


def _user_error_in(e: BaseException | None) -> UserError | None:
  """A UserError raised inside the writer's generators comes back wrapped; unwrap it."""
  while e is not None and not isinstance(e, UserError):
    e = e.__cause__ or e.__context__
  return e


def _prepare_out(out: str, overwrite: bool) -> str:
  """Checks OUT and returns a fresh temp dir beside it (same filesystem, so rename is atomic); for a bucket URL, a
  local temp dir that is uploaded when complete."""
  if storage.is_remote(out):
    try:
      storage.check_reachable(out)
      if storage.isdir(out) and storage.listdir(out) and not overwrite:
        raise UserError(f"--out={out} is not empty; pass --overwrite to replace it")
    except storage.StorageError as e:
      raise UserError(str(e)) from None
    return tempfile.mkdtemp(prefix="worldmodel-generate-")
  out = os.path.abspath(out)
  if os.path.isfile(out):
    raise UserError(f"--out={out} is a file, not a directory")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise UserError(f"--out={out} is not empty; pass --overwrite to replace it")
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset should not be
  return tmp


def generate(
  source_spec: str,
  out: str,
  episodes: int,
  cfg: Config,
  seed: int,
  val_fraction: float = 0.1,
  test_fraction: float = 0.1,
  overwrite: bool = False,
  skipped: list[str] | None = None,
) -> dict[str, int]:
  """Generates and writes the dataset; returns episodes per split.

  File sources append 'path (reason)' for each skipped file to `skipped`.
  """
  if cfg.labels != "none" and not source_spec.startswith("video:"):
    raise UserError(f"--labels={cfg.labels} applies to video:GLOB sources only, not --source={source_spec!r}")
  source = make_source(source_spec, cfg)
  if source.files is not None:
    splits, counts = _file_splits(
      source, seed, val_fraction, test_fraction, cfg.strict, skipped if skipped is not None else []
    )
  else:
    counts = split_counts(episodes, val_fraction, test_fraction)
    progress = Progress(episodes)
    splits, start = {}, 0
    for name, n in counts.items():
      splits[name] = _episodes(source, seed, range(start, start + n), progress)
      start += n
  tmp = _prepare_out(out, overwrite)
  meta = {"source": source_spec, "frames": cfg.frames, "size": cfg.size, "seed": seed, **source.meta}
  try:
    records.write_dataset(tmp, splits, meta)
    if storage.is_remote(out):
      storage.rmtree(out)
      storage.upload(tmp, out)
      return counts
    out = os.path.abspath(out)
    if os.path.exists(out):
      shutil.rmtree(out)
    os.rename(tmp, out)
  except records.DatasetError as e:
    user_error = _user_error_in(e)
    if user_error is None:
      raise
    raise user_error from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return counts


def _skip_summary(skipped: list[str], show: int = 10) -> str:
  more = f"; ... and {len(skipped) - show} more (warnings above)" if len(skipped) > show else ""
  return f"{len(skipped)} files skipped: " + "; ".join(skipped[:show]) + more


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # TFDS logs temp paths at INFO
  cfg = Config(
    frames=FLAGS.frames,
    size=FLAGS.size,
    num_balls=FLAGS.num_balls,
    camera=FLAGS.camera,
    action_repeat=FLAGS.action_repeat,
    render_target=FLAGS.render_target,
    workers=FLAGS.workers,
    fps=FLAGS.fps,
    max_frames=FLAGS.max_frames,
    strict=FLAGS.strict,
    labels=FLAGS.labels,
  )
  skipped = []
  start = time.time()
  try:
    counts = generate(
      FLAGS.source,
      FLAGS.out,
      FLAGS.episodes,
      cfg,
      FLAGS.seed,
      FLAGS.val_fraction,
      FLAGS.test_fraction,
      FLAGS.overwrite,
      skipped,
    )
  except (UserError, records.DatasetError) as e:
    if e.__cause__ is not None:  # e.g. a bug inside a source: keep its traceback
      traceback.print_exception(e.__cause__)
    if skipped:  # e.g. "no episodes in any split" because every file was skipped
      print(_skip_summary(skipped), file=sys.stderr)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)  # bad input, as every CLI
  per_split = ", ".join(f"{k} {v}" for k, v in counts.items())
  frames = f">= {cfg.frames}" if FLAGS.source.startswith("video:") else f"{cfg.frames}"
  print(
    f"wrote {sum(counts.values())} episodes ({per_split}) x {frames} frames "
    f"of {cfg.size}x{cfg.size} in {time.time() - start:.1f} s -> {storage.absolute(FLAGS.out)}"
  )
  if skipped:
    print(_skip_summary(skipped))


if __name__ == "__main__":
  from worldmodel import config as config_lib

  flags.mark_flag_as_required("out")
  app.run(main, flags_parser=config_lib.flags_parser)
