"""What every dreamjax command line shares: the `--config` flag (a config file plus `--config.*` overrides, resolved
once), and running a `main` so that a user error ends as one line and a non-zero exit.

  if __name__ == "__main__":
    cli.define_config_flag("configs/dreamfusion.py")
    flags.DEFINE_string(...)
    cli.run(main, "train")          # main(argv) reads cli.resolved_config() and flags.FLAGS
"""

from __future__ import annotations

import pathlib
import re
import sys
from typing import Callable, Sequence

import ml_collections

from dreamjax import distill


_CONFIG_DEFAULT: list = []  # the --config default of this command, once defined


def define_config_flag(default: str = "configs/dreamfusion.py", name: str = "config") -> None:
  """Defines `--config` (an ml_collections config file; any field overridable as `--config.section.field=value`)."""
  from ml_collections import config_flags
  _CONFIG_DEFAULT[:] = [default]
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
  """The value of --config in argv (either `--config=PATH` or `--config PATH`; the last one given, as absl reads
  it), without a `:argument` suffix."""
  found = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      found = arg.split("=", 1)[1].split(":", 1)[0]
    elif arg == f"--{name}" and i + 1 < len(argv):
      found = argv[i + 1].split(":", 1)[0]
  return found


def make_config_package_importable(path: str | None) -> None:
  """Config files import their base as a package (`from configs import dreamfusion`). When the file lies in a package
  folder (one with __init__.py) that is not importable from here (the command runs from another directory), the
  folder above that package is put on sys.path, as `python -m` does for the current directory."""
  if not path:
    return
  folder = pathlib.Path(path).expanduser().resolve().parent
  if (folder / "__init__.py").exists() and str(folder.parent) not in sys.path:
    sys.path.insert(0, str(folder.parent))


def _config_override_flags(argv: Sequence[str], name: str = "config") -> list[str]:
  """The `--config.a.b[=v]` arguments of argv, as 'a.b'."""
  prefix = f"--{name}."
  return [a[len(prefix):].split("=", 1)[0] for a in argv if a.startswith(prefix)]


def flag_error_line(error: BaseException, argv: Sequence[str], name: str = "config") -> str:
  """One line for an error raised while absl / ml_collections parse the command line (an unknown config field, a
  value of the wrong type, a config file that does not load)."""
  from absl import flags
  causes, e = [], error
  while e is not None and len(causes) < 10:
    causes.append(e)
    e = e.__cause__ or e.__context__
  keys = [c for c in causes if isinstance(c, KeyError)]
  if keys:  # ml_collections: a field the config does not have
    missing = str(keys[-1].args[0]) if keys[-1].args else ""
    hint = re.search(r'Did you mean \\?"([^"\\]+)\\?"', " ".join(str(c) for c in causes))
    path = next((p for p in _config_override_flags(argv, name) if p.split(".")[-1] == missing),
                missing)
    line = f"--{name}.{path}: the config has no field {missing!r}"
    return line + (f"; did you mean {hint.group(1)!r}?" if hint else "; see the config file for the fields")
  syntax = next((c for c in causes if isinstance(c, SyntaxError)), None)
  if syntax is not None:
    return f"--{name} {syntax.filename}: line {syntax.lineno}: {syntax.msg}; fix the config file"
  if isinstance(error, flags.Error):
    return " ".join(str(error).split())
  return f"{type(error).__name__}: {' '.join(str(error).split())}"


def check_config_file(argv: Sequence[str], default: str | None) -> str | None:
  """A one-line problem with the --config file (missing, a folder), or None."""
  path = config_file_argument(argv) or default
  if path and not pathlib.Path(path).expanduser().is_file():
    where = "is a folder" if pathlib.Path(path).expanduser().is_dir() else "does not exist"
    return (f"--config {path} {where}; give a config file, e.g. --config configs/dreamfusion.py (paths are relative "
            f"to {pathlib.Path.cwd()})")
  return None


def _flags_parser(prog: str, config_default: str | None):
  """absl's flag parsing, with every error as one line `<prog>: error: ...` and exit status 2."""
  from absl import flags

  def parse(argv):
    problem = check_config_file(argv, config_default) if "config" in flags.FLAGS else None
    if problem:
      _fail(prog, problem)
    try:
      rest = flags.FLAGS(argv)
      if "config" in flags.FLAGS:
        flags.FLAGS["config"].value.keys()  # a config file that failed to load raises here
    except flags.Error as e:
      _fail(prog, flag_error_line(e, argv))
    except Exception as e:  # pylint: disable=broad-except  (config files run arbitrary code)
      _fail(prog, flag_error_line(e, argv))
    return rest
  return parse


def _fail(prog: str, message: str) -> None:
  print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def os_error_line(e: OSError) -> str:
  """One line for a file-system error: the path and what went wrong."""
  where = f"{e.filename}: " if getattr(e, "filename", None) else ""
  return f"{where}{e.strerror or e}"


def run(main: Callable[[list], None], prog: str, errors: tuple = (), interrupted: tuple = (),
        takes_arguments: bool = False) -> None:
  """Runs `main` under absl with absl's logging at WARNING, refusing positional arguments unless
  `takes_arguments`. Flag errors (the --config file checked to exist first), and exceptions of the types in
  `errors` (plus ValueError, OSError and WeightsError) end as one line `<prog>: error: <message>` on stderr and exit
  status 2; Ctrl-C (KeyboardInterrupt, or an exception of the types in `interrupted`, which say what was saved)
  ends with one line and status 130."""
  config_default = _CONFIG_DEFAULT[0] if _CONFIG_DEFAULT else None
  from absl import app
  from dreamjax.priors.weights import WeightsError
  make_config_package_importable(config_file_argument(sys.argv) or config_default or "configs/dreamfusion.py")
  handled = (ValueError, WeightsError) + tuple(errors)
  quiet_known_warnings()

  def wrapped(argv):
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save and restore at INFO
    if len(argv) > 1 and not takes_arguments:
      _fail(prog, f"unexpected arguments {argv[1:]}: every option is a --flag (see --help)")
    try:
      main(argv)
    except interrupted as e:
      print(f"{prog}: {' '.join(str(e).split())}", file=sys.stderr)
      sys.exit(130)
    except handled as e:
      _fail(prog, str(e))
    except OSError as e:
      _fail(prog, os_error_line(e))
    except KeyboardInterrupt:
      print(f"{prog}: interrupted", file=sys.stderr)
      sys.exit(130)
  app.run(wrapped, flags_parser=_flags_parser(prog, config_default))


def quiet_known_warnings() -> None:
  """Warnings that are known to be harmless here are not shown; others at most once per place."""
  import os
  import warnings
  # diffusers 0.39 / transformers 4.57 announce at every Flax model that their Flax classes will be removed; the
  # versions are pinned (requirements.txt), so the notice says nothing a user can act on.
  os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  warnings.filterwarnings("ignore", message=r".*os\.fork\(\) was called.*", category=RuntimeWarning)
  warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"flax(\..*)?")
  warnings.filterwarnings("ignore", category=FutureWarning, module=r"flax(\..*)?")


def parse_shard(text: str) -> tuple[int, int]:
  """'i/n' (0 <= i < n) -> (i, n); ValueError naming --shard otherwise."""
  index, _, count = text.partition("/")
  try:
    index, count = int(index), int(count)
  except ValueError:
    index, count = -1, 0
  if not 0 <= index < count:
    raise ValueError(f"--shard {text!r}: use i/n with 0 <= i < n, e.g. 0/2")
  return index, count
