"""Look at a dataset before training on it: episodes, shapes, fps, action / state / reward statistics, a GIF.

  python -m worldmodel.data.inspect DIR                       # a worldmodel dataset or any TFDS / RLDS directory
  python -m worldmodel.data.inspect DIR --split=val --episodes=8 --gif=episodes.gif
  python -m worldmodel.data.inspect DIR --video=steps/observation/wrist_image   # pick another camera

DIR: a dataset directory (ArrayRecord or TFRecord shards, with dataset_info.json). For a foreign layout (RLDS:
steps/observation/image, steps/action, ...) the video / action / state / reward features are guessed unless given;
the command prints the --config.data.features.* flags that train on what it found.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

from worldmodel import config as config_lib

NAMES = ("video", "action", "state", "reward")

if __name__ == "__main__":
  _SPLIT = flags.DEFINE_string("split", "train", "Split to summarise and draw episodes from.")
  _EPISODES = flags.DEFINE_integer("episodes", 4, "Episodes in the GIF (side by side).")
  _MAX = flags.DEFINE_integer("max_episodes", 50, "Episodes read for the statistics (0: all).")
  _GIF = flags.DEFINE_string("gif", None, "GIF path; default: ./inspect_<dataset name>.gif ('' : no GIF).")
  _FEATURES = {
    n: flags.DEFINE_string(n, "", f"Feature path of '{n}' in a foreign layout (default: guessed).") for n in NAMES
  }


def guess_features(flat: dict) -> dict:
  """Our names → flattened feature paths of a foreign episode (RLDS conventions first, then by shape)."""
  found = {}
  videos = [k for k, v in flat.items() if v.dtype == np.uint8 and v.ndim == 4 and v.shape[-1] == 3]
  preferred = [k for k in videos if k.endswith("observation/image")]
  if preferred or videos:
    found["video"] = (preferred or sorted(videos))[0]
  for name, suffixes in (
    ("action", ("steps/action", "action")),
    ("state", ("steps/observation/state", "observation/state", "state", "steps/observation/proprio")),
    ("reward", ("steps/reward", "reward")),
  ):
    hit = next((k for s in suffixes for k in flat if k == s and np.issubdtype(flat[k].dtype, np.floating)), None)
    if hit:
      found[name] = hit
  return found


def _stats(name: str, arrays: list[np.ndarray]) -> str:
  x = np.concatenate([a.reshape(len(a), -1) for a in arrays]).astype(np.float64)
  rows = [f"  {name}: dim {x.shape[1]}  (per dim: mean / std / min / max)"]
  for d in range(min(x.shape[1], 12)):
    col = x[:, d]
    rows.append(f"    [{d}] {col.mean():9.4g} {col.std():9.4g} {col.min():9.4g} {col.max():9.4g}")
  if x.shape[1] > 12:
    rows.append(f"    ... {x.shape[1] - 12} more")
  return "\n".join(rows)


def inspect(data_dir: str, split: str, mapping: dict, max_episodes: int, num_gif: int, gif: str | None) -> dict:
  from worldmodel.data import records

  raw = records.open_split(data_dir, split)
  if not any(mapping.values()) and "video" not in raw[0]:
    mapping = guess_features(raw[0])
    if "video" not in mapping:
      raise records.DatasetError(f"{data_dir}: no uint8 [T,H,W,3] video feature found; name it with --video=PATH")
  mapping = {k: v for k, v in mapping.items() if v}
  meta = records.read_meta(data_dir, mapping or None)
  source = records.open_split(data_dir, split, mapping or None)
  n = len(source) if not max_episodes else min(len(source), max_episodes)
  episodes = [source[i] for i in range(n)]
  lengths = [len(e["video"]) for e in episodes]
  splits = meta.get("splits", {})
  print(f"dataset {data_dir} ({meta.get('source', '?')})")
  print("  episodes per split: " + ", ".join(f"{k} {v}" for k, v in splits.items()))
  shape = episodes[0]["video"].shape[1:]
  print(
    f"  {split}: read {n} episodes; frames per episode min {min(lengths)} / mean {np.mean(lengths):.1f} / max {max(lengths)}"
  )
  print(f"  video: {shape[0]}x{shape[1]}x{shape[2]} uint8; fps: {meta.get('fps') or 'not recorded'}")
  for name in ("action", "state", "reward"):
    if name in episodes[0]:
      print(_stats(name, [e[name] for e in episodes]))
    else:
      print(f"  {name}: none")
  if any(mapping.values()):
    flags_line = " ".join(f"--config.data.features.{k}={v}" for k, v in mapping.items() if v)
    print(f"  train on it with: --config.data.dir={data_dir} {flags_line}")
  out = {"splits": splits, "episodes_read": n, "frame_shape": list(shape), "lengths": lengths, "features": mapping}
  if gif:
    out["gif"] = _write_gif(gif, [e["video"] for e in episodes[:num_gif]])
    print(f"wrote {out['gif']} ({min(num_gif, n)} episodes side by side)")
  return out


def _write_gif(path: str, videos: list[np.ndarray]) -> str:
  from worldmodel import media

  t = min(len(v) for v in videos)
  video = media.side_by_side([v[:t] for v in videos])
  return media.write_gif(path, video, fps=8, scale=2, captions=[f"episode {i}" for i in range(len(videos))])


def main(argv):
  if len(argv) != 2:
    config_lib.die("usage: python -m worldmodel.data.inspect DIR [--split=train] [--episodes=4] [--gif=PATH]")
  from worldmodel.data.records import DatasetError

  data_dir = argv[1].rstrip("/")
  gif = _GIF.value if _GIF.value is not None else f"inspect_{os.path.basename(data_dir)}.gif"
  try:
    inspect(data_dir, _SPLIT.value, {k: f.value for k, f in _FEATURES.items()}, _MAX.value, _EPISODES.value, gif)
  except (DatasetError, ValueError, OSError) as e:
    config_lib.die(str(e))
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.flags_parser)
