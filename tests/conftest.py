"""Test-wide setup: four fake CPU devices (so the data-parallel step is exercised). The repository root is on the
path (pyproject's pytest `pythonpath`), so tests import configs as `from configs import tiny`."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
