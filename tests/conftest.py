"""Test-wide setup: four fake CPU devices (so the data-parallel step is exercised). The repository root is on the
path (pyproject's pytest `pythonpath`), so tests import configs as `from configs import tiny`."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import pytest  # noqa: E402  (after the XLA flag, which must be set before JAX is imported)


@pytest.fixture(scope="session")
def toy_red_cube(tmp_path_factory):
  """One toy-world run of "a red cube" with configs/toy.py as the README runs it (about 4 minutes on 2 cores), shared
  by the end-to-end test of training and the editing test that starts from it. Returns (workdir, final state)."""
  import jax
  from configs import toy
  from dreamjax import train
  config = toy.get_config()
  config.prompt = "a red cube"
  workdir = tmp_path_factory.mktemp("toy_red_cube")
  state = train.train_and_evaluate(config, workdir, num_devices=1, progress=False)
  return workdir, jax.device_get(state)
