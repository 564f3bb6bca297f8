"""Run the compute CLIs under tcmalloc: on CPU hosts XLA's step buffers otherwise page-fault in again every step.

XLA:CPU allocates a step's large temporaries (attention logits, activations) with malloc and frees them after the
step. glibc serves blocks that large with mmap and hands them back to the OS on free, so the next step touches fresh
pages and pays a page fault per 4 KiB; tcmalloc keeps freed memory for reuse (measurements: BUILD_NOTES.md, "The
allocator: page faults were the missing second").
TPU VM images preload tcmalloc for the same reason.

`use_tcmalloc()` is the first thing `train`, `evaluate`, `plan` and `bench` do when run as programs: if a tcmalloc
library is installed (`make install` fetches libtcmalloc-minimal4 from apt where it can) and not yet loaded, the
process re-executes itself with it in LD_PRELOAD (same PID, same arguments). WORLDMODEL_TCMALLOC=0 turns this off;
WORLDMODEL_TCMALLOC=/path/to/libtcmalloc.so picks the library.
"""

from __future__ import annotations

import os
import sys

ENV = "WORLDMODEL_TCMALLOC"
_REEXECED = "_WORLDMODEL_TCMALLOC_REEXEC"  # set across the exec: never loop, even if the preload was refused
LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def find_tcmalloc(env: dict | None = None) -> str | None:
  """Path of the tcmalloc library to preload, or None (not installed, or turned off with WORLDMODEL_TCMALLOC=0)."""
  choice = (os.environ if env is None else env).get(ENV, "")
  if choice in ("0", "false", "off"):
    return None
  if choice and choice not in ("1", "true", "on"):
    if not os.path.isfile(choice):
      raise FileNotFoundError(f"{ENV}={choice}: no such file (unset it, or set it to 0 to run without tcmalloc)")
    return choice
  for d in SEARCH_DIRS:
    for name in LIBRARIES:
      path = os.path.join(d, name)
      if os.path.isfile(path):
        return path
  return None


def active() -> str:
  """'tcmalloc' when this process has a tcmalloc library mapped, else 'system' (glibc malloc)."""
  try:
    with open("/proc/self/maps") as f:
      return "tcmalloc" if "tcmalloc" in f.read() else "system"
  except OSError:  # not Linux
    return "system"


def use_tcmalloc() -> None:
  """Re-execute this program with tcmalloc preloaded, unless it is loaded already, absent, or turned off."""
  if os.environ.get(_REEXECED) or active() == "tcmalloc" or not sys.platform.startswith("linux"):
    return
  path = find_tcmalloc()
  if path is None:
    return
  env = dict(os.environ)
  env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
  env[_REEXECED] = "1"
  # tcmalloc reports every allocation over 1 GiB on stderr; big batches make those routine, not news.
  env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
