"""Device prefetch: the next batches' host → device copies run in a thread while the current step computes.

`to_device(host_batches, mesh, depth)` yields global jax.Arrays in the same order as the host iterator (the data
order stays a pure function of (seed, step)); `depth` batches are in flight (0: copy synchronously, no thread).
An exception in the reader (e.g. a corrupt record) is raised from `next()` in the training thread, chain intact.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

from worldmodel.data import pipeline

_END = object()


def to_device(host_batches: Iterator[dict], mesh, depth: int = 2) -> Iterator[dict]:
  if depth <= 0:
    return (pipeline.to_global(b, mesh) for b in host_batches)
  return _Prefetcher(host_batches, mesh, depth)


class _Prefetcher:
  def __init__(self, host_batches: Iterator[dict], mesh, depth: int):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, args=(host_batches, mesh), daemon=True, name="device-prefetch")
    self._thread.start()

  def _fill(self, host_batches, mesh):
    try:
      for batch in host_batches:
        item = pipeline.to_global(batch, mesh)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._queue.put(_END)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
      self._queue.put(e)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    item = self._queue.get()
    if item is _END:
      self._queue.put(_END)  # later calls stop too
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
