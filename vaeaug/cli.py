"""Starting the project's commands the same way from a console script (`vaeaug-compare`), a
`scripts/*.py` wrapper or `python -m`.

absl's `--help` shows the docstring and the flags of the `__main__` module only (found by
`sys.argv[0]`). A console script's `__main__` is pip's generated wrapper, without either, so `run`
lends it the flags (and, when it has none, the docstring) of the module that defines the command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

_HELP_FLAGS = {
  f"{dashes}{name}" for dashes in ("-", "--") for name in ("help", "helpshort", "helpfull", "helpxml", "?")
}


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad command line is one line on stderr (no traceback), exit 1, and
  `--help` exits 0 (absl exits 1 after printing the help that was asked for)."""
  from absl import flags

  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.exit(f"error: {error} (--help for the flags)")
  except SystemExit as done:
    if done.code == 1 and asked_for_help(argv):
      sys.exit(0)
    raise


def asked_for_help(argv: list[str]) -> bool:
  """Whether the command line has a help flag (absl's --help, --helpshort, --helpfull, --helpxml, -?)."""
  options = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
  return bool(_HELP_FLAGS.intersection(options))


def run(main: Callable, module_name: str, *, flags_parser: Callable = parse_flags) -> None:
  """`absl.app.run(main)` for the command defined in the module `module_name` (its `__name__`)."""
  from absl import app, flags

  main_module = sys.modules["__main__"]
  module = sys.modules[module_name]
  if main_module is not module:
    if not main_module.__doc__:
      main_module.__doc__ = module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, flags_parser=flags_parser)


def require_training_workdir(flag_name: str) -> None:
  """Validates flag `flag_name` (unset is fine) as a finished-or-running training workdir, so a
  typo is a one-line flag error before any work, not a traceback from the restore."""
  from absl import flags

  flags.register_validator(
    flag_name,
    lambda path: path is None or (Path(path).expanduser() / "config.json").is_file(),
    "not a training workdir (no config.json there)",
  )
