"""Multi-process start-up: jax.distributed.initialize from flags, environment, or nothing (single process).

Explicit: --coordinator_address=HOST:PORT --num_processes=N --process_id=I (what launch/local.py passes).
Automatic: on TPU VMs, SLURM and GKE jax detects the cluster itself (--distributed=auto).
Fake CPU devices per process: --cpu_devices=K (or WM_CPU_DEVICES) before the backend starts.
"""

from __future__ import annotations

import os
import sys
import threading

import jax
from absl import flags, logging

_COORD = flags.DEFINE_string("coordinator_address", os.environ.get("WM_COORDINATOR"), "host:port of process 0.")
_NUM = flags.DEFINE_integer("num_processes", int(os.environ.get("WM_NUM_PROCESSES", "1")), "Total processes.")
_PID = flags.DEFINE_integer("process_id", int(os.environ.get("WM_PROCESS_ID", "0")), "This process's index.")
_AUTO = flags.DEFINE_bool("distributed_auto", False, "Let jax detect the cluster (TPU VM, SLURM, GKE).")
_CPU = flags.DEFINE_integer(
  "cpu_devices",
  int(os.environ.get("WM_CPU_DEVICES", "0")),
  "Number of fake CPU devices in this process (0: platform default).",
)
_TIMEOUT = flags.DEFINE_integer(
  "init_timeout_s",
  int(os.environ.get("WM_INIT_TIMEOUT", "120")),
  "Seconds to wait for all processes to arrive before failing.",
)
_HEARTBEAT = flags.DEFINE_integer(
  "heartbeat_timeout_s",
  int(os.environ.get("WM_HEARTBEAT_TIMEOUT", "100")),
  "A process silent for this long is declared dead and the others stop (non-zero).",
)


def _watchdog(seconds: int, message: str) -> threading.Event:
  """Exit with code 3 and `message` unless the returned event is set within `seconds`."""
  done = threading.Event()

  def watch():
    if not done.wait(seconds):
      print(f"error: {message}", file=sys.stderr, flush=True)
      os._exit(3)

  threading.Thread(target=watch, daemon=True).start()
  return done


def start(argv) -> None:
  """Common prologue of every entry point: no stray arguments, quiet library logs, multi-process start-up."""
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr, flush=True)
    sys.exit(2)  # bad input: exit 2, as every CLI
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax / TFDS log every file they touch at INFO
  initialize()


def initialize() -> None:
  if _CPU.value:
    jax.config.update("jax_num_cpu_devices", _CPU.value)
  timeouts = dict(initialization_timeout=_TIMEOUT.value, heartbeat_timeout_seconds=_HEARTBEAT.value)
  if _AUTO.value:
    jax.distributed.initialize(**timeouts)
  elif _NUM.value > 1:
    if not _COORD.value:
      raise SystemExit("error: --num_processes > 1 needs --coordinator_address=HOST:PORT")
    # Said up front: if a peer never arrives, jax aborts the process from C++ (not catchable) after the timeout.
    print(
      f"process {_PID.value}/{_NUM.value}: joining {_COORD.value} (waits up to {_TIMEOUT.value}s for all "
      f"processes; a peer silent for {_HEARTBEAT.value}s stops the job)",
      flush=True,
    )
    # jax's own timeout aborts from C++ with a stack dump; ours fires first and says what happened.
    joined = _watchdog(
      _TIMEOUT.value,
      f"not all {_NUM.value} processes joined {_COORD.value} within "
      f"{_TIMEOUT.value}s (--init_timeout_s): a process did not start, crashed before joining, or "
      "cannot reach the coordinator",
    )
    jax.distributed.initialize(
      coordinator_address=_COORD.value,
      num_processes=_NUM.value,
      process_id=_PID.value,
      **{**timeouts, "initialization_timeout": _TIMEOUT.value + 30},
    )
    joined.set()
