"""One path layer for local folders and object storage (gs://, and s3:// where s3fs is installed).

Every path a run reads or writes (datasets, workdirs, init sources, encoder exports) goes through here, so a `gs://`
URL is never mistaken for a relative local folder. Local paths keep plain `os` semantics; URLs go through fsspec
(gcsfs for gs://). Orbax writes checkpoints to gs:// itself (TensorStore), so checkpoints only need `absolute()`.

Files a library can only write locally (TensorBoard events, profiler traces, media, plots) go to a `Mirror`: a local
temporary folder uploaded to the remote folder on `sync()`. ArrayRecord can only read local files, so remote
datasets are copied once into a local cache (`local_copy`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
import threading
from typing import IO, Any, Callable

EXTRA = {"gs": "gcs", "s3": "s3"}  # scheme -> pyproject extra that installs its fsspec backend
BACKEND = {"gs": "gcsfs", "s3": "s3fs"}
TIMEOUT_S = float(os.environ.get("WORLDMODEL_STORAGE_TIMEOUT_S", "60"))

logging.getLogger("gcsfs").setLevel(logging.ERROR)  # without ADC it warns on every bucket ("bucket type")
# Orbax and JAX's compilation cache reach buckets through etils.epath, which prefers TensorFlow's gfile when TF is
# installed (it ignores STORAGE_EMULATOR_HOST and is a second stack to configure): one layer, fsspec, for everything.
os.environ.setdefault("EPATH_USE_TF", "false")


class StorageError(ValueError):
  """A path that cannot be used: unknown scheme, missing backend, missing or unreachable bucket."""


def is_remote(path: str) -> bool:
  return "://" in str(path) and not str(path).startswith("file://")


def scheme(path: str) -> str:
  return str(path).split("://", 1)[0] if is_remote(path) else ""


def absolute(path: str) -> str:
  """os.path.abspath for local paths; URLs unchanged (abspath would turn gs://b into ./gs:/b)."""
  path = str(path)
  if path.startswith("file://"):
    path = path[len("file://") :]
  return path.rstrip("/") if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
  return posixpath.join(str(path), *parts) if is_remote(path) else os.path.join(path, *parts)


def basename(path: str) -> str:
  return posixpath.basename(str(path).rstrip("/"))


def filesystem(path: str):
  """The fsspec filesystem for a URL; the error names the extra to install when its backend is missing."""
  s = scheme(path)
  if s not in BACKEND:
    raise StorageError(f"{path}: unsupported URL scheme {s!r}; use a local path, gs:// or s3://")
  try:
    __import__(BACKEND[s])
  except ImportError:
    raise StorageError(
      f"{path}: {s}:// paths need the '{EXTRA[s]}' extra ({BACKEND[s]}): pip install 'worldmodel[{EXTRA[s]}]'"
    ) from None
  import fsspec

  return fsspec.filesystem(s, use_listings_cache=False)  # other processes write the same bucket: list afresh


def exists(path: str) -> bool:
  return filesystem(path).exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return filesystem(path).isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return filesystem(path).isfile(path) if is_remote(path) else os.path.isfile(path)


def makedirs(path: str) -> None:
  if not is_remote(path):  # object stores have no folders: writing a file creates its prefix
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  if not is_remote(path):
    return os.listdir(path)
  return sorted({basename(p) for p in filesystem(path).ls(path, detail=False)} - {""})


def open(path: str, mode: str = "r") -> IO[Any]:  # noqa: A001 - the module's open, like os.open
  if not is_remote(path):
    import builtins

    return builtins.open(path, mode)
  return filesystem(path).open(path, mode)


def read_text(path: str) -> str:
  with open(path) as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  """Atomic for local files (write + rename); a remote object appears whole when its upload finishes."""
  if is_remote(path):
    with open(path, "w") as f:
      f.write(text)
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def rmtree(path: str) -> None:
  if is_remote(path):
    if exists(path):
      filesystem(path).rm(path, recursive=True)
  else:
    shutil.rmtree(path, ignore_errors=True)


def upload(local_dir: str, remote_dir: str) -> None:
  """Copy a local folder's files under remote_dir (same relative names)."""
  fs = filesystem(remote_dir)
  for root, _, files in os.walk(local_dir):
    for name in files:
      src = os.path.join(root, name)
      rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
      fs.put_file(src, join(remote_dir, rel))


def download(remote_dir: str, local_dir: str) -> None:
  fs = filesystem(remote_dir)
  prefix = remote_dir.split("://", 1)[1].rstrip("/") + "/"
  for obj in fs.find(remote_dir):
    rel = obj[len(prefix) :] if obj.startswith(prefix) else basename(obj)
    dst = os.path.join(local_dir, *rel.split("/"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fs.get_file(obj, dst)


def _with_timeout(fn: Callable[[], Any], what: str, timeout_s: float) -> Any:
  """fsspec clients retry an unreachable endpoint for minutes: give up after timeout_s with one clear error."""
  box: dict = {}

  def run():
    try:
      box["value"] = fn()
    except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
      box["error"] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise StorageError(f"{what}: no answer within {timeout_s:.0f} s (network, credentials or endpoint?)")
  if "error" in box:
    raise StorageError(f"{what}: {type(box['error']).__name__}: {str(box['error'])[:300]}") from box["error"]
  return box.get("value")


def check_reachable(path: str, timeout_s: float | None = None) -> None:
  """For a URL: its backend is installed and its bucket exists and answers; local paths pass. Call before compiling."""
  if not is_remote(path):
    return
  fs = filesystem(path)
  bucket = path.split("://", 1)[1].split("/", 1)[0]
  url = f"{scheme(path)}://{bucket}"
  found = _with_timeout(
    lambda: fs.exists(bucket), f"bucket {url} (for {path}) cannot be reached", timeout_s or TIMEOUT_S
  )
  if not found:
    raise StorageError(f"bucket {url} (for {path}) does not exist or is not visible with these credentials")


def cache_root() -> str:
  return os.environ.get("WORLDMODEL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "worldmodel"))


@functools.lru_cache(maxsize=None)
def local_copy(path: str) -> str:
  """A local folder holding `path`'s files: the path itself when local, else a cached download.

  The cache key hashes the URL and the remote listing (names and sizes), so a dataset rewritten in the bucket is
  downloaded again. A download lands in a temporary folder renamed into place: processes sharing a host never see
  half a copy. The folder name is a hash, never a local folder named like the URL."""
  if not is_remote(path):
    return path
  check_reachable(path)
  fs = filesystem(path)
  listing = sorted((k, int(v.get("size") or 0)) for k, v in fs.find(path, detail=True).items())
  key = hashlib.sha256(repr((path.rstrip("/"), listing)).encode()).hexdigest()[:16]
  target = os.path.join(cache_root(), "datasets", f"{basename(path)}-{key}")
  if os.path.isdir(target):
    return target
  os.makedirs(os.path.dirname(target), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(target))
  try:
    download(path, tmp)
    try:
      os.rename(tmp, target)
    except OSError:  # another process on this host finished first
      pass
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


class Mirror:
  """A local folder for writers that only write local files; `sync()` uploads it to `remote`.

  For a local `path` the folder is `path` itself and sync does nothing. `pull` names files to download first (e.g. a
  metrics.jsonl a resumed run appends to)."""

  def __init__(self, path: str, pull: tuple[str, ...] = ()):
    self.remote = path if is_remote(path) else None
    if self.remote is None:
      os.makedirs(path, exist_ok=True)
      self.local = path
      return
    self.local = tempfile.mkdtemp(prefix="worldmodel-mirror-")
    fs = filesystem(path)
    for name in pull:
      if fs.exists(join(path, name)):
        fs.get_file(join(path, name), os.path.join(self.local, name))

  def sync(self) -> None:
    if self.remote is not None:
      upload(self.local, self.remote)

  def close(self) -> None:
    if self.remote is not None:
      self.sync()
      shutil.rmtree(self.local, ignore_errors=True)
