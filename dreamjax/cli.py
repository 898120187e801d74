"""What every dreamjax command line shares: the `--config` flag (a config file plus `--config.*` overrides, resolved
once), and running a `main` so that a user error ends as one line and a non-zero exit.

  if __name__ == "__main__":
    cli.define_config_flag("configs/dreamfusion.py")
    flags.DEFINE_string(...)
    cli.run(main, "train")          # main(argv) reads cli.resolved_config() and flags.FLAGS
"""

from __future__ import annotations

import pathlib
import sys
from typing import Callable, Sequence

import ml_collections

from dreamjax import distill


def define_config_flag(default: str = "configs/dreamfusion.py", name: str = "config") -> None:
  """Defines `--config` (an ml_collections config file; any field overridable as `--config.section.field=value`)."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(name, default, "Config file; any field can be overridden, e.g. "
                                  "--config.prompt=\"...\" --config.train.num_steps=5000.")


def resolve_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Applies the rule of config sections that belong to a name: `--config.distill.name=X` brings rule X's own
  settings (`distill.default_distill_config(X)`: its guidance scale, CFG form, t range, ...), then the command line's
  other `--config.distill.*` overrides. `overrides` is the flat {'section.field': value} of the command line."""
  if "distill.name" in overrides:
    section = distill.default_distill_config(overrides["distill.name"])
    for key, value in overrides.items():
      if key.startswith("distill.") and key != "distill.name":
        section[key[len("distill."):]] = value
    config.distill = section
  return config


def resolved_config(name: str = "config") -> ml_collections.ConfigDict:
  """The parsed `--config` with its overrides resolved (`resolve_overrides`)."""
  from absl import flags
  from ml_collections import config_flags
  flag = flags.FLAGS[name]
  return resolve_overrides(flag.value, config_flags.get_override_values(flag))


def config_file_argument(argv: Sequence[str], name: str = "config") -> str | None:
  """The value of --config in argv (either `--config=PATH` or `--config PATH`), without a `:argument` suffix."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1].split(":", 1)[0]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return None


def make_config_package_importable(path: str | None) -> None:
  """Config files import their base as a package (`from configs import dreamfusion`). When the file lies in a package
  folder (one with __init__.py) that is not importable from here (the command runs from another directory), the
  folder above that package is put on sys.path, as `python -m` does for the current directory."""
  if not path:
    return
  folder = pathlib.Path(path).expanduser().resolve().parent
  if (folder / "__init__.py").exists() and str(folder.parent) not in sys.path:
    sys.path.insert(0, str(folder.parent))


def run(main: Callable[[list], None], prog: str, errors: tuple = ()) -> None:
  """Runs `main` under absl. Exceptions of the types in `errors` (plus ValueError) end as one line
  `<prog>: error: <message>` on stderr and exit status 2; Ctrl-C ends with status 130."""
  from absl import app
  from dreamjax.priors.weights import WeightsError
  make_config_package_importable(config_file_argument(sys.argv) or "configs/dreamfusion.py")
  handled = (ValueError, WeightsError) + tuple(errors)

  def wrapped(argv):
    try:
      main(argv)
    except handled as e:
      print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      print(f"{prog}: interrupted", file=sys.stderr)
      sys.exit(130)
  app.run(wrapped)
