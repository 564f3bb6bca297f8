"""Input-pipeline measurements for `bench --input_only`: clips/s of the loader and read amplification.

Read amplification = what the reader pulled from storage / what the clips use: frames decoded per frame used, and
stored bytes read per uint8 byte of the clips' video. Whole-episode records decode every frame of the episode;
chunked ones (data/chunks.py) only the chunks a window covers.
"""

from __future__ import annotations

import numpy as np

from worldmodel.data import chunks, pipeline


def read_amplification(config, clips: int = 64) -> dict:
  """Draw `clips` training clips in this process (the pipeline's own sampler) and count what was read."""
  sources = pipeline.open_sources(config.data, config.data.train_split)
  sampler = pipeline.ClipSampler(
    sources, config.seed, config.data.num_frames, config.data.frame_stride, size=pipeline.frame_size(config.data)
  )
  frames_read = bytes_read = frames_used = bytes_used = 0
  for g in range(clips):
    d, episode = sampler.locate(g)
    src = sources[d]
    if not isinstance(src, chunks.ChunkedSource):
      video = src[episode]["video"]  # what the whole-episode reader decodes for one clip
      frames_read, bytes_read = frames_read + len(video), bytes_read + video.nbytes
    clip = sampler(g)["video"]
    frames_used, bytes_used = frames_used + len(clip), bytes_used + clip.nbytes
  for src in sources:
    if isinstance(src, chunks.ChunkedSource):
      frames_read, bytes_read = frames_read + src.frames_decoded, bytes_read + src.bytes_read
  return {
    "frames_read_per_used": frames_read / frames_used,
    "bytes_read_per_used": bytes_read / bytes_used,
    "chunked": [isinstance(s, chunks.ChunkedSource) for s in sources],
    "clip_bytes": int(np.prod(clip.shape)),
  }
