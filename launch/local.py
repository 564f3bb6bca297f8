"""Run a real multi-process JAX job on this machine: N processes × M fake CPU devices, talking over localhost.

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \
      .venv/bin/python -m worldmodel.train --config=experiments/tokenizer.py:tiny --workdir=runs/mp --config.data.dir=DATA

Each process gets `--coordinator_address=localhost:PORT --num_processes=N --process_id=I --cpu_devices=M` appended
(a fresh free port per launch). Output lines are prefixed with the process index. If any process fails, the others
are stopped and the launcher exits with that process's code; if all succeed it exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _pump(proc: subprocess.Popen, index: int) -> None:
  for line in proc.stdout:
    sys.stdout.write(f"[p{index}] {line}")
    sys.stdout.flush()


def launch(command: list[str], num_processes: int, devices_per_process: int, grace_s: float = 10.0) -> int:
  port = free_port()
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # a device count inherited from the parent would override --cpu_devices
  procs = []
  for i in range(num_processes):
    args = command + [
      f"--coordinator_address=localhost:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={i}",
      f"--cpu_devices={devices_per_process}",
    ]
    procs.append(
      subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
      )
    )
  pumps = [threading.Thread(target=_pump, args=(p, i), daemon=True) for i, p in enumerate(procs)]
  for t in pumps:
    t.start()

  def forward(signum, frame):  # SIGTERM / Ctrl-C to the launcher reaches every process (preemption path)
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)

  code = 0
  while any(p.poll() is None for p in procs):
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
    if failed:
      i, code = failed[0]
      print(f"[launch] process {i} exited with {code}; stopping the others", flush=True)
      _stop(procs, grace_s)
      break
    time.sleep(0.2)
  for t in pumps:
    t.join(timeout=5)
  codes = [p.wait() for p in procs]
  return code or next((c for c in codes if c), 0)


def _stop(procs, grace_s: float) -> None:
  for p in procs:
    if p.poll() is None:
      p.terminate()
  deadline = time.time() + grace_s
  for p in procs:
    try:
      p.wait(timeout=max(0.1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      os.killpg(p.pid, signal.SIGKILL)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2, help="processes to start (one 'host' each)")
  parser.add_argument("--devices_per_process", type=int, default=4, help="fake CPU devices per process")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command every process runs")
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --")
  sys.exit(launch(command, args.num_processes, args.devices_per_process))


if __name__ == "__main__":
  main()
