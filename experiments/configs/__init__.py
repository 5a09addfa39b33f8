"""The packaged configs, found by name from any folder, and the default output folder.

`--config` of every experiments entry point takes a config name (`compare`, `compare:full`,
`classifier`, `generator`, `default`: the modules here, `NAME:ARG` passes ARG to `get_config`) or,
as `ml_collections.config_flags` always did, a config file path (`experiments/configs/compare.py:full`,
`~/my_config.py`). A path that exists wins over a name.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_lib  # the parser class

from vaeaug import cli

# The config flag belongs to the entry point that calls `define_config_flag` (its --help lists it).
flags.disclaim_key_flags()

CONFIG_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
  """The packaged config names."""
  return sorted(path.stem for path in CONFIG_DIR.glob("*.py") if not path.stem.startswith("_"))


def _usage() -> str:
  return f"a config name ({', '.join(names())}; NAME:ARG passes ARG, e.g. compare:full) or a config file path[:ARG]"


def resolve(text: str) -> str:
  """`text` with a config name before the first ':' replaced by the packaged file's absolute path;
  an existing file is kept (user home expanded). ValueError (one line) for anything else."""
  path, colon, arg = text.partition(":")
  if Path(path).expanduser().is_file():
    return str(Path(path).expanduser()) + colon + arg
  if path in names():
    return str(CONFIG_DIR / f"{path}.py") + colon + arg
  raise ValueError(f"{path!r} is neither a config file (from {Path.cwd()}) nor a config name; give {_usage()}")


class ConfigNameOrFileParser(config_flags_lib.ConfigFileFlagParser):
  """`ConfigFileFlagParser` that also takes a packaged config name (see `resolve`)."""

  def parse(self, path):
    resolved = resolve(path)
    try:
      return super().parse(resolved)
    except (TypeError, ValueError) as error:
      if Path(resolved.partition(":")[0]).resolve().parent != CONFIG_DIR:
        raise  # a user's config: keep ml_collections' message with its traceback
      # A packaged config rejects its argument (e.g. an unknown preset): its own message is enough.
      cause = error.__context__ or error
      raise ValueError(str(cause)) from None


def define_config_flag(name: str = "config", default: str = "compare", help_string: str = "Configuration", **kwargs):
  """`config_flags.DEFINE_config_file` whose value may also be a config name; `default` is a name
  (or NAME:ARG) of a packaged config, so the default does not depend on the working directory."""
  default_name, colon, arg = default.partition(":")
  if default_name not in names():
    raise ValueError(f"default {default!r} of --{name} is not a packaged config; give {_usage()}")
  # Without --config on the command line, the default is parsed (with its --config.x overrides) right
  # here, at import: an override of a missing field ends the command in one line then too.
  with cli.config_override_errors():
    holder = config_flags.DEFINE_config_file(
      name, str(CONFIG_DIR / f"{default_name}.py") + colon + arg, f"{help_string.rstrip('.')}: {_usage()}.", **kwargs
    )
  # DEFINE_config_file takes no parser: swap it before any command line is parsed (the default,
  # an absolute path, needs no name resolution).
  flag_values = kwargs.get("flag_values", flags.FLAGS)
  flag_values[name].parser = ConfigNameOrFileParser(name=name, lock_config=kwargs.get("lock_config", True))
  return holder


def checkout_root() -> Path | None:
  """The git checkout holding the `experiments` package (an editable install), else None."""
  root = CONFIG_DIR.parents[1]
  return root if (root / ".git").exists() else None


def results_dir(*parts: str) -> Path:
  """`experiments/results/<parts>` of the checkout (see `checkout_root`), whatever the working
  directory; FileNotFoundError (one line) when the package is not installed from a checkout."""
  root = checkout_root()
  if root is None:
    raise FileNotFoundError(
      f"no default output folder: the experiments package ({CONFIG_DIR.parent}) is not in a git checkout"
    )
  return root.joinpath("experiments", "results", *parts)
