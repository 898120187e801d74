"""Several processes as one run (`python -m dreamjax.train --multihost`): JAX's distributed runtime joins them, each
process drives its local devices, and the step's mesh spans every device of every process.

  initialize(coordinator_address, num_processes, process_id)   # before anything touches a device
  check_same_config(config)                                     # every process, before anything is written

What is left unset is read from the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (a plain
launch), else JAX's cluster detection (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes jobs). On CPUs the collectives
run over gloo (JAX's default since 0.5), which is how two processes on one machine are tested.

A process that dies (kill -9, a lost host) is noticed by the others within `heartbeat_timeout_seconds` through the
coordination service, which ends them (the run stops; its last checkpoint is kept and `--resume` continues from it).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np

from dreamjax.config_check import ConfigError

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_seconds: int = 100,
               initialization_timeout: int = 300) -> None:
  """`jax.distributed.initialize` with the arguments given, else those of the environment (ENV), else JAX's
  cluster auto-detection. Raises ValueError (one line) for a malformed value."""
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  kwargs = {}
  for name, value in given.items():
    if value is None and os.environ.get(ENV[name]):
      value = os.environ[ENV[name]]
      if name != "coordinator_address":
        try:
          value = int(value)
        except ValueError:
          raise ValueError(f"{ENV[name]}={value!r} is not an integer") from None
    if value is not None:
      kwargs[name] = value
  if "num_processes" in kwargs and kwargs["num_processes"] < 1:
    raise ValueError(f"--num_processes must be >= 1 (got {kwargs['num_processes']})")
  if "process_id" in kwargs and "num_processes" in kwargs and not 0 <= kwargs["process_id"] < kwargs["num_processes"]:
    raise ValueError(f"--process_id must be in [0, {kwargs['num_processes'] - 1}] (got {kwargs['process_id']})")
  jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                             initialization_timeout=initialization_timeout)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (a collective: every process must call it at the same point).
  In a single-process run, `flag`."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag))))))


def config_digest(config) -> str:
  """A hash of the resolved config (its sorted JSON form)."""
  text = config.to_json_best_effort(sort_keys=True) if hasattr(config, "to_json_best_effort") else repr(config)
  return hashlib.sha256(text.encode()).hexdigest()


def check_same_config(config) -> None:
  """Every process must run the same config (the step is one program over all of them). Gathers each process's
  config hash; ConfigError (one line, on every process) names the processes whose config differs from process 0's.
  Does nothing in a single-process run."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  words = np.frombuffer(bytes.fromhex(config_digest(config))[:16], np.uint32).astype(np.int32)
  every = np.asarray(multihost_utils.process_allgather(words))  # [processes, 4]
  differ = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
  if differ:
    raise ConfigError(f"the processes do not run the same config: process(es) {', '.join(map(str, differ))} differ "
                      f"from process 0; launch every process with the same --config and --config.* flags")


# ------------------------------------------------------------------------------------------ a lost peer, in one line
# When a process of the run dies (kill -9, a lost host), JAX's coordination client in every other process aborts it
# from a C++ thread (`LOG(FATAL)`, a stack trace and Python's fault dump); a collective waiting on the dead peer can
# also fail first, with a gloo error. Neither can be caught in Python, so `--multihost` runs the training in a child
# process and this parent turns such an end into one line and exit status PEER_LOST_EXIT.

SUPERVISED_ENV = "DREAMJAX_SUPERVISED"  # set in the child; its presence means "train here, do not supervise"
PEER_LOST_EXIT = 3
_PEER_LOST_MARKS = ("JAX distributed service detected fatal errors", "The tasks have crashed", "Gloo",
                    "gloo::", "Connection closed by peer", "CoordinationService", "heartbeat")
_FAULT_START = re.compile(r"^([EF]\d{4} |Traceback |Fatal Python error|\*\*\* |terminate called)")


def supervised() -> bool:
  """True in the child that trains (or when supervision is off)."""
  return bool(os.environ.get(SUPERVISED_ENV))


def _die_with_parent() -> None:
  """(In the child, before exec.) On Linux the child is killed when the supervising parent dies, so `kill -9` of
  the process a launcher started ends the training too."""
  try:
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def run_supervised(prog: str, argv: list[str]) -> int:
  """Runs `python -m dreamjax.<prog> argv` as a child (stdout shared; stderr passed through line by line until a
  fault begins, then held back) and returns the exit status to end with. The child has its own session, so a
  terminal's Ctrl-C reaches it once, forwarded from here (SIGINT and SIGTERM are: the child saves, then stops; a
  launcher that signals every process of the job reaches it twice, which stops it at once without that save). If
  the child ends abnormally and what it printed shows a lost peer, one line replaces the held-back fault report;
  any other fault report is printed unchanged."""
  env = dict(os.environ, **{SUPERVISED_ENV: "1"})
  child = subprocess.Popen([sys.executable, "-m", f"dreamjax.{prog}", *argv], env=env, stderr=subprocess.PIPE,
                           text=True, errors="replace", bufsize=1, preexec_fn=_die_with_parent,
                           start_new_session=True)
  forward = lambda signum, frame: child.send_signal(signum)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  held: list[str] = []
  try:
    for line in child.stderr:
      if held or _FAULT_START.match(line):
        held.append(line)
      else:
        sys.stderr.write(line)
        sys.stderr.flush()
    rc = child.wait()
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  text = "".join(held)
  if rc not in (0, 2, 130) and any(mark in text for mark in _PEER_LOST_MARKS):
    print(f"{prog}: error: another process of this --multihost run stopped or became unreachable; this one stops "
          f"too (its last checkpoint is kept): relaunch every process with --resume", file=sys.stderr, flush=True)
    return PEER_LOST_EXIT
  sys.stderr.write(text)
  sys.stderr.flush()
  return rc if rc >= 0 else 128 - rc
