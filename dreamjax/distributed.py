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
