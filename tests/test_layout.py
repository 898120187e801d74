"""The layout rules the project keeps: every Python line fits 120 characters, every command-line entry point parses
its flags with absl (one CLI library), and no module puts a directory on sys.path to import configs."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("dreamjax", "configs", "tests") for p in (ROOT / d).rglob("*.py"))
LIMIT = 120


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_lines_fit_the_limit(path):
  long = [i + 1 for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()) if len(line) > LIMIT]
  assert not long, f"{path.relative_to(ROOT)}: lines {long} are longer than {LIMIT} characters"


def test_one_cli_library_and_no_path_hacks():
  """No module of the package or the configs imports argparse, and none inserts into sys.path (dreamjax/cli.py, which
  makes a config package importable for commands run from another directory, is the one exception)."""
  for path in SOURCES:
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "tests":
      continue
    text = path.read_text(encoding="utf-8")
    assert "import argparse" not in text, f"{rel} uses argparse; dreamjax's CLIs use absl flags"
    if str(rel) != "dreamjax/cli.py":
      assert "sys.path.insert" not in text, f"{rel} edits sys.path"
