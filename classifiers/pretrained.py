"""ImageNet weights into the Flax classifiers: timm / Hugging Face safetensors and torchvision state dicts.

    model = models.create_model("mobilenet_v2", 2, rngs=nnx.Rngs(0))
    report = pretrained.load(model, "mobilenetv2_100.safetensors")   # backbone loaded, head kept new
    print(report.summary())

Every architecture that can take pretrained weights names, per checkpoint naming ("source"), each
of its variables and the checkpoint tensor it comes from (`Classifier.weight_table(source)`): an
explicit table built from the architecture's own layer list, never a match on similar-looking
names. The loader

* reads the file without pickle: `.safetensors` with the safetensors library; `.pth` / `.pt` /
  `.bin` (torchvision's downloads, timm's training checkpoints) only with PyTorch's restricted
  ``torch.load(weights_only=True)``, and only when PyTorch is installed;
* picks the source whose table the file matches (or the one asked for) and says so;
* converts layouts (PyTorch OIHW conv kernels to HWIO, ``(out, in)`` matrices to ``(in, out)``);
* refuses, before changing the model, missing tensors and shape mismatches, naming each;
* reports tensors it did not use (known extras such as `num_batches_tracked` and Inception's
  auxiliary classifier are listed apart);
* drops the ImageNet classifier and keeps the model's newly initialised head (``keep_head=True``
  loads it when the shapes agree: how the tests compare logits with PyTorch).

Some checkpoint families need model options (torchvision's MobileNetV3 was trained with batch-norm
epsilon 1e-3, timm's with 1e-5) and a given input size and normalisation: `checkpoint_info` reads
them from the architecture's source description and, when present, the `config.json` that Hugging
Face puts beside the weights, so a training config can build the model to match before loading.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

log = logging.getLogger(__name__)

__all__ = [
  "CheckpointInfo",
  "Entry",
  "PretrainedError",
  "Report",
  "Source",
  "bn",
  "checkpoint_info",
  "conv",
  "linear",
  "load",
  "read_tensors",
]

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Keys that PyTorch state dicts carry and no Flax variable needs, whatever the architecture.
ALWAYS_IGNORED = (r"(^|\.)num_batches_tracked$",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedError(ValueError):
  """A checkpoint that cannot be loaded into the model (a user mistake: one clear message)."""


# ----------------------------------------------------------------------------- tables


@dataclasses.dataclass(frozen=True)
class Entry:
  """One Flax variable and the checkpoint tensor it is read from.

  ``path``: the variable's nnx path (attribute names and list indices), e.g.
  ``("blocks", 0, "conv1", "kernel")``. ``key``: the tensor's name in the checkpoint.
  ``layout``: how to turn the PyTorch tensor into the Flax array: "copy", "conv" (OIHW -> HWIO; also
  depthwise kernels, (C, 1, kh, kw) -> (kh, kw, 1, C)), "linear" ((out, in) -> (in, out)) or
  "conv_as_linear" (a conv whose kernel covers its whole input map, e.g. timm VGG's 7x7 `fc1`:
  (out, C, kh, kw) -> (C * kh * kw, out), the order of an NCHW flatten).
  ``head``: part of the ImageNet classifier (dropped unless ``keep_head``).
  """

  path: tuple
  key: str
  layout: str = "copy"
  head: bool = False


LAYOUTS = {
  "copy": lambda t: t,
  "conv": lambda t: t.transpose(2, 3, 1, 0),
  "linear": lambda t: t.T,
  "conv_as_linear": lambda t: t.reshape(t.shape[0], -1).T,
}


def conv(path: tuple, key: str, *, bias: bool = False) -> list[Entry]:
  """A conv layer (`nnx.Conv` at ``path``, `torch.nn.Conv2d` at ``key``)."""
  entries = [Entry((*path, "kernel"), f"{key}.weight", "conv")]
  return entries + [Entry((*path, "bias"), f"{key}.bias")] if bias else entries


def bn(path: tuple, key: str) -> list[Entry]:
  """A batch norm (`nnx.BatchNorm` scale / bias / mean / var from weight / bias / running stats)."""
  return [
    Entry((*path, "scale"), f"{key}.weight"),
    Entry((*path, "bias"), f"{key}.bias"),
    Entry((*path, "mean"), f"{key}.running_mean"),
    Entry((*path, "var"), f"{key}.running_var"),
  ]


def linear(path: tuple, key: str, *, head: bool = False, bias: bool = True, layout: str = "linear") -> list[Entry]:
  """A dense layer (`nnx.Linear` at ``path``, `torch.nn.Linear` at ``key``)."""
  entries = [Entry((*path, "kernel"), f"{key}.weight", layout, head)]
  return entries + [Entry((*path, "bias"), f"{key}.bias", "copy", head)] if bias else entries


@dataclasses.dataclass(frozen=True)
class Source:
  """A naming of an architecture's checkpoints (timm's, torchvision's) and what its weights expect.

  ``overrides``: model options the checkpoints were trained with (e.g. ``{"bn_epsilon": 1e-3}``).
  ``input_size`` / ``normalization`` (a `pipeline.normalize_unit` name): the defaults of the
  published weights. ``ignore``: regexes of checkpoint keys that the model does not use on purpose
  (an auxiliary classifier), reported apart from unexpected tensors. ``models``: timm / torchvision
  model names of this architecture, for the README and the tests.
  """

  name: str
  input_size: int = 224
  normalization: str = "imagenet"
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  ignore: tuple[str, ...] = ()
  models: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- reading


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
  """Name -> float32 numpy array of every tensor in a checkpoint file (no pickle)."""
  path = Path(path)
  if not path.is_file():
    raise PretrainedError(f"pretrained checkpoint {path}: no such file")
  suffix = path.suffix.lower()
  if suffix in SAFETENSORS_SUFFIXES:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
      tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
      raise PretrainedError(f"pretrained checkpoint {path}: not a readable safetensors file ({error})") from None
  elif suffix in TORCH_SUFFIXES:
    tensors = _read_torch(path)
  else:
    raise PretrainedError(
      f"pretrained checkpoint {path}: unknown format {suffix!r}; use .safetensors or a PyTorch state dict "
      f"({', '.join(TORCH_SUFFIXES)})"
    )
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def _read_torch(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise PretrainedError(
      f"pretrained checkpoint {path}: reading a PyTorch state dict needs PyTorch (pip install torch); "
      "or convert it to .safetensors"
    ) from None
  try:
    # weights_only: PyTorch's restricted unpickler (tensors and plain containers only, no code)
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise PretrainedError(f"pretrained checkpoint {path}: not a loadable PyTorch state dict ({first})") from None
  # Training checkpoints nest the weights (timm: "state_dict" / "state_dict_ema"; others: "model").
  for nest in ("state_dict", "model", "state_dict_ema"):
    if isinstance(obj, Mapping) and isinstance(obj.get(nest), Mapping):
      obj = obj[nest]
      break
  if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
    raise PretrainedError(f"pretrained checkpoint {path}: expected a state dict of tensors")
  tensors = {str(k): v.detach().float().numpy() for k, v in obj.items()}
  # DistributedDataParallel saves every name under "module."
  if tensors and all(k.startswith("module.") for k in tensors):
    tensors = {k[len("module.") :]: v for k, v in tensors.items()}
  return tensors


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass
class CheckpointInfo:
  """What a checkpoint file is for a model: its source and what its weights expect."""

  path: str
  source: str
  input_size: int
  normalization: str
  overrides: dict


@dataclasses.dataclass
class Report:
  """What `load` did: the source it matched, counts, and every tensor it did not use."""

  path: str
  source: str
  loaded: int
  head: str  # "loaded" | "new (N ImageNet classes dropped)" | "new"
  unexpected: list[str]
  ignored: list[str]

  def summary(self) -> str:
    text = f"{self.path}: {self.loaded} tensors loaded as {self.source} weights; head {self.head}"
    if self.ignored:
      text += f"; {len(self.ignored)} known extras ignored"
    if self.unexpected:
      shown = ", ".join(self.unexpected[:5]) + (" ..." if len(self.unexpected) > 5 else "")
      text += f"; {len(self.unexpected)} unexpected tensors not used: {shown}"
    return text

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _sources(model) -> dict[str, Source]:
  sources = model.weight_sources() if hasattr(model, "weight_sources") else {}
  if not sources:
    raise PretrainedError(
      f"{type(model).__name__} with these options has no pretrained weight tables (an ImageNet checkpoint has "
      "nothing to load into it; the small-image stems and the configurable CNN are trained from scratch)"
    )
  return sources


def _match(model, tensors: Mapping[str, np.ndarray], source: str, path) -> tuple[Source, list[Entry]]:
  """The source (asked for, or the one whose table the file matches) and its table."""
  sources = _sources(model)
  if source != "auto":
    if source not in sources:
      raise PretrainedError(f"pretrained_source {source!r}: choose 'auto' or one of {sorted(sources)}")
    return sources[source], model.weight_table(source)
  best = None
  for name in sources:
    table = model.weight_table(name)
    missing = [e.key for e in table if not e.head and e.key not in tensors]
    if not missing:
      return sources[name], table
    if best is None or len(missing) < len(best[1]):
      best = (name, missing)
  name, missing = best
  shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
  raise PretrainedError(
    f"pretrained checkpoint {path}: not a {type(model).__name__} checkpoint in any known naming "
    f"({', '.join(sources)}); closest is {name}, which lacks {len(missing)} tensors: {shown}"
  )


def checkpoint_info(model, path: str | Path, source: str = "auto", tensors=None) -> CheckpointInfo:
  """Which source the file at ``path`` is, and the input size, normalisation and model options its
  weights expect (from Hugging Face's `config.json` beside it when present, else the source's)."""
  tensors = read_tensors(path) if tensors is None else tensors
  spec, _ = _match(model, tensors, source, path)
  input_size, normalization = spec.input_size, spec.normalization
  hf_config = Path(path).with_name("config.json")
  if hf_config.is_file():
    try:
      cfg = json.loads(hf_config.read_text())
      pretrained_cfg = cfg.get("pretrained_cfg", cfg)
      if "input_size" in pretrained_cfg:
        input_size = int(pretrained_cfg["input_size"][-1])
      if "mean" in pretrained_cfg:
        normalization = _normalization_name(pretrained_cfg["mean"], pretrained_cfg.get("std"), hf_config)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
      raise PretrainedError(f"{hf_config}: not a readable timm config ({error})") from None
  return CheckpointInfo(str(path), spec.name, input_size, normalization, dict(spec.overrides))


def _normalization_name(mean, std, where) -> str:
  if np.allclose(mean, IMAGENET_MEAN, atol=1e-3) and np.allclose(std, IMAGENET_STD, atol=1e-3):
    return "imagenet"
  if np.allclose(mean, 0.5, atol=1e-3) and np.allclose(std, 0.5, atol=1e-3):
    return "symmetric"
  raise PretrainedError(f"{where}: mean {mean} / std {std} is neither ImageNet's nor 0.5 (no matching normalization)")


def _ignored(key: str, patterns: Iterable[str]) -> bool:
  return any(re.search(p, key) for p in (*ALWAYS_IGNORED, *patterns))


def load(model: nnx.Module, path: str | Path, *, source: str = "auto", keep_head: bool = False, tensors=None) -> Report:
  """Load the checkpoint at ``path`` into ``model`` in place; see the module docstring.

  Raises `PretrainedError` (and leaves the model unchanged) for an unreadable file, a file that is
  not this architecture in any known naming, missing tensors or shape mismatches.
  """
  tensors = read_tensors(path) if tensors is None else tensors
  spec, table = _match(model, tensors, source, path)
  state = nnx.state(model)
  flat = dict(nnx.to_flat_state(state))
  _check_table(model, table, flat)
  model_overrides = getattr(model, "weight_overrides", lambda: {})()
  for option, value in spec.overrides.items():
    if option in model_overrides and model_overrides[option] != value:
      raise PretrainedError(
        f"pretrained checkpoint {path}: {spec.name} weights need model option {option}={value!r}, the model has "
        f"{model_overrides[option]!r} (set --config.model_overrides.{option}={value})"
      )

  head_entries = [e for e in table if e.head]
  head_fits = all(
    e.key in tensors and LAYOUTS[e.layout](tensors[e.key]).shape == flat[e.path].shape for e in head_entries
  )
  use_head = keep_head and head_fits
  if keep_head and not head_fits:
    raise PretrainedError(f"pretrained checkpoint {path}: keep_head, but its classifier does not fit the model's head")
  missing, mismatched, updates = [], [], {}
  for entry in table:
    if entry.head and not use_head:
      continue
    if entry.key not in tensors:
      missing.append(entry.key)
      continue
    value = LAYOUTS[entry.layout](tensors[entry.key])
    want = flat[entry.path].shape
    if value.shape != tuple(want):
      mismatched.append(f"{entry.key} {tensors[entry.key].shape} -> {value.shape}, model {tuple(want)}")
      continue
    updates[entry.path] = value
  if missing:
    shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
    raise PretrainedError(f"pretrained checkpoint {path}: {len(missing)} tensors missing: {shown}")
  if mismatched:
    shown = "; ".join(mismatched[:3]) + (" ..." if len(mismatched) > 3 else "")
    raise PretrainedError(
      f"pretrained checkpoint {path}: {len(mismatched)} tensors do not fit the model ({shown}); is it the same "
      "architecture and width?"
    )
  for entry_path, value in updates.items():
    variable = flat[entry_path]
    variable.set_value(np.asarray(value, dtype=variable.get_value().dtype))
  nnx.update(model, nnx.from_flat_state(flat))

  used = {e.key for e in table if e.path in updates}
  head_keys = {e.key for e in head_entries}
  rest = [k for k in tensors if k not in used and k not in head_keys]
  ignored = sorted(k for k in rest if _ignored(k, spec.ignore))
  unexpected = sorted(k for k in rest if not _ignored(k, spec.ignore))
  if use_head:
    head = "loaded"
  elif head_entries and all(e.key in tensors for e in head_entries):
    classes = tensors[head_entries[0].key].shape[0]
    head = f"new ({classes} ImageNet classes dropped)"
  else:
    head = "new"
  report = Report(str(path), spec.name, len(updates), head, unexpected, ignored)
  log.info("%s", report.summary())
  return report


def _check_table(model, table: list[Entry], flat: Mapping[tuple, Any]) -> None:
  """A table must name each variable once and every variable but the head's: a programming error
  in an architecture's table, not a user mistake, so AssertionError."""
  paths = [e.path for e in table]
  unknown = [p for p in paths if p not in flat]
  assert not unknown, f"{type(model).__name__} weight table names variables the model lacks: {unknown[:4]}"
  assert len(set(paths)) == len(paths), f"{type(model).__name__} weight table names a variable twice"
  head_paths = {e.path for e in table if e.head}
  uncovered = [p for p in flat if p not in set(paths) and p[0] != "head" and p not in head_paths]
  assert not uncovered, f"{type(model).__name__} weight table misses variables: {uncovered[:4]}"
