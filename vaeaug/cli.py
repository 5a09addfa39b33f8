"""Starting the project's commands the same way from a console script (`vaeaug-compare`), a
`scripts/*.py` wrapper or `python -m`.

absl's `--help` shows the docstring and the flags of the `__main__` module only (found by
`sys.argv[0]`). A console script's `__main__` is pip's generated wrapper, without either, so `run`
lends it the flags (and, when it has none, the docstring) of the module that defines the command.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path

# OSErrors that are the machine's state, not a bug: one line, not a traceback (and a rerun continues).
_ENVIRONMENT_ERRORS = {
  errno.ENOSPC: "no space left on device",
  errno.EDQUOT: "disk quota exceeded",
  errno.EACCES: "permission denied",
  errno.EPERM: "operation not permitted",
  errno.EROFS: "read-only file system",
}
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)

_HELP_FLAGS = {
  f"{dashes}{name}" for dashes in ("-", "--") for name in ("help", "helpshort", "helpfull", "helpxml", "?")
}


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad command line is one line on stderr (no traceback), exit 2 (a usage
  error), and `--help` exits 0 (absl exits 1 after printing the help that was asked for)."""
  from absl import flags

  try:
    with config_override_errors():
      return flags.FLAGS(argv)
  except flags.Error as error:
    print(f"error: {error} (--help for the flags)", file=sys.stderr)
    sys.exit(2)
  except SystemExit as done:
    if done.code == 1 and asked_for_help(argv):
      sys.exit(0)
    raise


@contextlib.contextmanager
def config_override_errors():
  """An override of a field the config lacks (`--config.epochs=1` on a sweep config): ml_collections
  raises a KeyError / AttributeError with a traceback while it applies the override; this ends the
  command with `error: --config.epochs: no such field in this config (did you mean ...?)`, exit 2.
  The config flag parses its default as it is defined (at import) and a given --config in
  `parse_flags`, so both wrap it. Other errors pass through."""
  try:
    yield
  except (KeyError, AttributeError) as error:
    found = _failed_override(error)
    if found is None:
      raise
    print(f"error: {describe_missing_field(*found)}", file=sys.stderr)
    sys.exit(2)


def _failed_override(error: BaseException) -> tuple[str, str, object] | None:
  """(flag name, override path, config) of the ml_collections config flag whose override raised
  `error`, from the frame applying it (`_ConfigFlag._parse`); None if it is not such an error."""
  tb = error.__traceback__
  while tb is not None:
    frame = tb.tb_frame
    owner = frame.f_locals.get("self")
    if (
      frame.f_code.co_name == "_parse"
      and type(owner).__name__ == "_ConfigFlag"
      and isinstance(frame.f_locals.get("field_path"), str)
    ):
      return owner.name, frame.f_locals["field_path"], frame.f_locals.get("config")
    tb = tb.tb_next
  return None


def describe_missing_field(flag_name: str, field_path: str, config) -> str:
  """`--config.a.b: no such field in this config (did you mean c?)`, naming the first missing part of
  `field_path` and the close names at its level of `config`."""
  parts, holder = field_path.split("."), config
  for i, part in enumerate(parts):
    keys = list(holder.keys()) if hasattr(holder, "keys") else []
    if part not in keys:
      close = difflib.get_close_matches(part, [str(k) for k in keys], n=3)
      where = ".".join(parts[: i + 1])
      options = [f"--{flag_name}." + ".".join([*parts[:i], name]) for name in close]
      hint = f" (did you mean {' or '.join(options)}?)" if close else ""
      return f"--{flag_name}.{where}: no such field in this config{hint}"
    holder = holder[part]
  return f"--{flag_name}.{field_path}: no such field in this config"


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
  app.run(one_line_environment_errors(main), flags_parser=flags_parser)


def one_line_environment_errors(main: Callable) -> Callable:
  """`main`, but an out-of-space or permission OSError (found anywhere in the chain of causes, since
  orbax wraps them) ends the command with one `error:` line on stderr and exit status 1."""

  @functools.wraps(main)
  def wrapped(argv):
    make_record = logging.getLogRecordFactory()
    logging.setLogRecordFactory(functools.partial(_without_environment_tracebacks, make_record))
    try:
      return main(argv)
    except Exception as error:
      cause = environment_error(error)
      if cause is None:
        raise
      sys.exit(describe_environment_error(cause))
    finally:
      logging.setLogRecordFactory(make_record)

  return wrapped


def _without_environment_tracebacks(make_record: Callable, *args, **kwargs) -> logging.LogRecord:
  # Libraries (orbax's background save threads) log the error with its traceback before it reaches
  # `main`; it ends in the one `error:` line, so their records keep one line each.
  record = make_record(*args, **kwargs)
  cause = environment_error(record.exc_info[1]) if record.exc_info else None
  if cause is not None:
    record.msg, record.args = f"{record.getMessage()} ({cause.strerror})", ()
    record.exc_info, record.exc_text = None, None
  return record


def environment_error(error: BaseException | None) -> OSError | None:
  """The OSError with an errno of `_ENVIRONMENT_ERRORS` in `error`'s chain (`__cause__`, then
  `__context__`), preferring one that names its file; None if there is none."""
  found, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRORS:
      found.append(error)
    error = error.__cause__ or error.__context__
  return next((e for e in found if e.filename is not None), found[0] if found else None)


def describe_environment_error(error: OSError) -> str:
  """`error: <path>: no space left on device (needed about N MB)` and the like."""
  where = f"{error.filename}: " if error.filename is not None else ""
  line = f"error: {where}{_ENVIRONMENT_ERRORS[error.errno]}"
  if error.errno in _OUT_OF_SPACE:
    needed = getattr(error, "needed_bytes", None)
    if needed is not None:
      line += f" (needed about {max(1, round(needed / 2**20))} MB)"
    line += "; free some and rerun the same command to continue"
  return line


def require_training_workdir(flag_name: str) -> None:
  """Validates flag `flag_name` (unset is fine) as a finished-or-running training workdir, so a
  typo is a one-line flag error before any work, not a traceback from the restore."""
  from absl import flags

  flags.register_validator(
    flag_name,
    lambda path: path is None or (Path(path).expanduser() / "config.json").is_file(),
    "not a training workdir (no config.json there)",
  )
