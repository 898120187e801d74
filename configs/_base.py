"""Loads a sibling config file by path, so presets work however the config directory is reached."""

import importlib.util
import pathlib


def load(name: str):
  """The module configs/<name>.py."""
  path = pathlib.Path(__file__).with_name(f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"dreamjax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
