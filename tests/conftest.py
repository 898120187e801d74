"""Test-wide setup: four fake CPU devices (so the data-parallel step is exercised). The repository root is on the
path (pyproject's pytest `pythonpath`), so tests import configs as `from configs import tiny`."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import pytest  # noqa: E402  (after the XLA flag, which must be set before JAX is imported)


@pytest.fixture(scope="session")
def toy_red_cube(tmp_path_factory):
  """One toy-world run of "a red cube" with configs/toy.py as the README runs it (about 4 minutes on 2 cores), shared
  by the end-to-end test of training and the editing test that starts from it. Returns (workdir, scene params).

  Under pytest-xdist every worker has its own session, so the run lives in the folder the workers share and a file
  lock lets the first worker train it while the others wait and then read it (the pattern pytest-xdist documents)."""
  import fcntl
  import shutil
  import jax
  from configs import toy
  from dreamjax import checkpoint as ckpt_lib
  from dreamjax import train
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  workdir = root / "toy_red_cube"
  with open(root / "toy_red_cube.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / "export" / "complete.json").exists():
      shutil.rmtree(workdir, ignore_errors=True)  # a worker that failed half-way leaves a partial run
      config = toy.get_config()
      config.prompt = "a red cube"
      state = train.train_and_evaluate(config, workdir, num_devices=1, progress=False)
      return workdir, jax.device_get(state.params)
  run = ckpt_lib.restore_params_read_only(workdir, ckpt_lib.load_config(workdir))
  return workdir, jax.device_get(run.params)
