"""The CLIs restart under tcmalloc when it is installed (worldmodel/allocator.py), and can be told not to."""

import subprocess
import sys

import pytest
from conftest import REPO, cli_env

from worldmodel import allocator

_PROBE = "from worldmodel import allocator; allocator.use_tcmalloc(); print(allocator.active())"


def _run(env: dict) -> str:
  """The allocator a fresh process ends up on after `use_tcmalloc()` (what every compute CLI calls first)."""
  env = cli_env(env)
  env.pop("LD_PRELOAD", None)
  r = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
  assert r.returncode == 0, r.stderr
  return r.stdout.strip()


def test_turned_off_runs_on_the_system_allocator():
  assert allocator.find_tcmalloc({"WORLDMODEL_TCMALLOC": "0"}) is None
  assert _run({"WORLDMODEL_TCMALLOC": "0"}) == "system"


def test_a_missing_library_path_is_a_clear_error():
  with pytest.raises(FileNotFoundError, match="WORLDMODEL_TCMALLOC=/nonexistent/libtcmalloc.so"):
    allocator.find_tcmalloc({"WORLDMODEL_TCMALLOC": "/nonexistent/libtcmalloc.so"})


def test_restarts_under_tcmalloc_when_installed():
  path = allocator.find_tcmalloc({})
  if path is None:
    pytest.skip("no tcmalloc library on this machine (make install fetches libtcmalloc-minimal4 where apt can)")
  assert _run({"WORLDMODEL_TCMALLOC": path}) == "tcmalloc"
  assert _run({}) == "tcmalloc"  # found on its own in the standard library folders
