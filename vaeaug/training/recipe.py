"""Which config fields change a run's result, and how two configs differ in them.

One rule for the whole project: the sweep's cell hash (`experiments.sweep.config_hash`) and the
workdir check of a training run (`vaeaug.training.run.check_workdir`) both leave out the
`EXECUTION_ONLY` fields. They say how a run executes (progress bars, logging and checkpoint
frequency, figures, where the data is, device count, XLA kernel options, the compilation cache),
not what it computes: a run resumed with other values ends with the same parameters, up to float
rounding for the device count and kernels. The `provenance` key a workdir's config.json records
is never compared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

EXECUTION_ONLY = frozenset(
  {
    "progress",
    "data_dir",
    "figures",
    "gradcam_images",
    "num_devices",
    "distributed",
    "log_every_steps",
    "checkpoint_every_steps",
    "checkpoint_every_epochs",
    "checkpoint_min_seconds",
    "keep_checkpoints",
    "xla_cpu_ynn_fusions",
    "compilation_cache_dir",
  }
)
PROVENANCE_KEY = "provenance"
# Fields added after runs were recorded, at the value that reproduces the earlier behaviour: a
# recorded config without one of them equals a new one holding this value.
NEUTRAL = {
  "compute_dtype": "float32",
  "dataset_version": "1.0.0",
  "data_seed": None,
  "pretrained": None,
  "pretrained_source": "auto",
  "freeze": "none",
  "unfreeze_blocks": 0,
  "backbone_learning_rate_scale": 0.1,
  "mixup_alpha": 0.0,
}
_ABSENT = object()


def plain(value):
  """`value` as config.json holds it (tuples as lists, unknown types as strings)."""
  return json.loads(json.dumps(value, default=str))


def result_fields(config_dict: Mapping) -> dict:
  """`config_dict` (nested dicts too) without its execution-only fields and provenance."""
  return {
    key: result_fields(value) if isinstance(value, Mapping) else value
    for key, value in config_dict.items()
    if key not in EXECUTION_ONLY and key != PROVENANCE_KEY
  }


def changed(recorded: Mapping, new: Mapping, prefix: str = "") -> list[str]:
  """Every field (dotted name) whose value differs, as `field: recorded -> new`; a field missing on
  one side is `(absent)` there, unless the other side holds its neutral value."""
  recorded, new = plain(dict(recorded)), plain(dict(new))
  lines = []
  for key in sorted(set(recorded) | set(new), key=str):
    name = f"{prefix}{key}"
    old, value = recorded.get(key, _ABSENT), new.get(key, _ABSENT)
    if isinstance(old, dict) and isinstance(value, dict):
      lines += changed(old, value, f"{name}.")
    elif old is _ABSENT or value is _ABSENT:
      present = value if old is _ABSENT else old
      if key not in NEUTRAL or present != NEUTRAL[key]:
        lines.append(f"{name}: {_show(old)} -> {_show(value)}")
    elif old != value:
      lines.append(f"{name}: {_show(old)} -> {_show(value)}")
  return lines


def differences(recorded: Mapping, new: Mapping) -> list[str]:
  """The result-changing fields that differ between a recorded config and a new one (see `changed`)."""
  return changed(result_fields(recorded), result_fields(new))


def describe(lines: list[str], limit: int = 5) -> str:
  """`lines` joined for a one-line message: the first `limit`, then "and N more"."""
  shown = "; ".join(lines[:limit])
  return shown + (f"; and {len(lines) - limit} more" if len(lines) > limit else "")


def _show(value) -> str:
  return "(absent)" if value is _ABSENT else json.dumps(value)
