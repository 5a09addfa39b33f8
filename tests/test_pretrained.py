"""Pretrained-weight import (`classifiers.pretrained`): every architecture, built in PyTorch by timm or
torchvision with random weights, saved as safetensors or a torchvision state dict, imported, and
compared logit for logit with PyTorch in eval mode at the checkpoint's size and a small one."""

from __future__ import annotations

import dataclasses
import pickle

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from classifiers import models, pretrained
from experiments import torch_reference

RTOL = 1e-4  # max |JAX - PyTorch| over the largest |logit|


@dataclasses.dataclass(frozen=True)
class Case:
  model: str  # classifiers.models registry name
  library: str  # "timm" | "torchvision"
  name: str  # the library's model name
  sizes: tuple[int, ...]  # input sizes compared
  fmt: str = "safetensors"  # "safetensors" | "pth"
  overrides: tuple = ()  # create_model options
  torch_kwargs: tuple = ()
  source: str = ""  # the naming the loader should match; default: the library's
  small_stem: bool = False  # the PyTorch model with the small-image stem (torch_reference.small_stem)

  @property
  def expected_source(self):
    return self.source or self.library

  def __str__(self):
    return f"{self.model}-{self.library}-{self.name}-{self.fmt}"


CASES = [
  # timm's ResNets use torchvision's names
  Case("resnet18", "timm", "resnet18", (224, 64), source="torchvision"),
  Case("resnet34", "torchvision", "resnet34", (64,), fmt="pth"),
  Case("resnet50", "timm", "resnet50", (224, 64), source="torchvision"),
  Case("mobilenet_v2", "timm", "mobilenetv2_100", (224, 64)),
  Case("mobilenet_v2", "torchvision", "mobilenet_v2", (64,), fmt="pth"),
  Case("mobilenet_v2", "timm", "mobilenetv2_140", (64,), overrides=(("width", 1.4),)),
  Case("mobilenet_v3_small", "timm", "mobilenetv3_small_100", (224, 64)),
  Case("mobilenet_v3_small", "torchvision", "mobilenet_v3_small", (64,), fmt="pth"),
  Case("mobilenet_v3_large", "timm", "mobilenetv3_large_100", (64,)),
  Case("mobilenet_v3_large", "torchvision", "mobilenet_v3_large", (224, 64), fmt="pth"),
  Case("efficientnet_b0", "timm", "efficientnet_b0", (224, 64)),
  Case("efficientnet_b0", "torchvision", "efficientnet_b0", (64,), fmt="pth"),
  Case("vgg19", "torchvision", "vgg19", (224, 32), fmt="pth"),
  Case("vgg19_bn", "timm", "vgg19_bn", (224, 32)),
  # timm's Inception-v3 keeps torchvision's names: "auto" reports torchvision
  Case("inception_v3", "timm", "inception_v3", (299, 96), source="torchvision"),
  Case(
    "inception_v3",
    "torchvision",
    "inception_v3",
    (96,),
    fmt="pth",
    torch_kwargs=(("aux_logits", False), ("init_weights", True)),
  ),
  # The small-image stems (stride 1; Inception without its first max-pool) load the same checkpoints.
  Case("inception_v3_small", "timm", "inception_v3", (32,), source="torchvision", small_stem=True),
  Case(
    "mobilenet_v3_small", "timm", "mobilenetv3_small_100", (32,), overrides=(("small_images", True),), small_stem=True
  ),
]


def _torch_model(case: Case) -> torch.nn.Module:
  torch.manual_seed(0)
  build = torch_reference.timm_model if case.library == "timm" else torch_reference.torchvision_model
  module = build(case.name, **dict(case.torch_kwargs))
  if case.small_stem:
    torch_reference.small_stem(module)
  # Batch norms with non-trivial statistics and affine parameters, so that a swapped mean / var or
  # scale / bias shows in the logits.
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for layer in module.modules():
      if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
        n = layer.num_features
        layer.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
        layer.running_var.copy_(0.5 + torch.rand(n, generator=generator))
        layer.weight.copy_(0.5 + torch.rand(n, generator=generator))
        layer.bias.copy_(0.1 * torch.randn(n, generator=generator))
  return module.eval()


def _save(module: torch.nn.Module, path, fmt: str) -> None:
  state = {k: v.contiguous() for k, v in module.state_dict().items()}
  if fmt == "safetensors":
    save_file(state, str(path))
  else:
    torch.save(state, path)


def _flax_model(case: Case, path, num_classes=1000, head="softmax", **extra):
  overrides = dict(case.overrides, **extra)
  probe = models.create_model(case.model, num_classes, rngs=nnx.Rngs(0), head=head, **overrides)
  info = pretrained.checkpoint_info(probe, path)
  assert info.source == case.expected_source, f"matched {info.source}, expected {case.expected_source}"
  return models.create_model(case.model, num_classes, rngs=nnx.Rngs(0), head=head, **dict(overrides, **info.overrides))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_imported_logits_match_pytorch(case, tmp_path):
  module = _torch_model(case)
  path = tmp_path / f"{case.name}.{case.fmt}"
  _save(module, path, case.fmt)
  model = _flax_model(case, path)
  report = pretrained.load(model, path, keep_head=True)
  assert report.source == case.expected_source and report.head == "loaded"
  assert report.unexpected == [], report.summary()
  forward = nnx.jit(lambda m, x: m(x, train=False))
  rng = np.random.default_rng(0)
  for size in case.sizes:
    images = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
      expected = module(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(forward(model, jax.numpy.asarray(images)))
    assert got.shape == expected.shape == (2, 1000)
    scale = np.abs(expected).max()
    error = np.abs(got - expected).max()
    assert scale > 0 and error <= RTOL * scale, f"{size} px: max |diff| {error:.3g}, logit scale {scale:.3g}"


# ----------------------------------------------------------------------------- the loader's checks


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
  _save(_torch_model(CASES[0]), path, "safetensors")
  return path


def _parameters(model):
  return {p: np.asarray(v.value) for p, v in nnx.to_flat_state(nnx.state(model))}


def test_backbone_loaded_and_new_head_kept(resnet18_file):
  model = models.create_model("resnet18", 2, rngs=nnx.Rngs(0))
  before = _parameters(model)
  report = pretrained.load(model, resnet18_file)
  after = _parameters(model)
  tensors = pretrained.read_tensors(resnet18_file)
  assert report.head == "new (1000 ImageNet classes dropped)" and report.unexpected == []
  assert report.ignored and all(k.endswith("num_batches_tracked") for k in report.ignored)
  np.testing.assert_array_equal(after[("head", "kernel")], before[("head", "kernel")])
  np.testing.assert_array_equal(after[("stem_conv", "kernel")], tensors["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(after[("blocks", 7, "bn2", "var")], tensors["layer4.1.bn2.running_var"])
  assert not np.array_equal(after[("blocks", 7, "bn2", "var")], before[("blocks", 7, "bn2", "var")])


def test_unexpected_tensors_reported(resnet18_file, tmp_path):
  tensors = {k: torch.from_numpy(v) for k, v in pretrained.read_tensors(resnet18_file).items()}
  tensors["extra.weight"] = torch.zeros(3)
  path = tmp_path / "extra.safetensors"
  save_file(tensors, str(path))
  report = pretrained.load(models.create_model("resnet18", 2, rngs=nnx.Rngs(0)), path)
  assert report.unexpected == ["extra.weight"]
  assert "1 unexpected tensors not used: extra.weight" in report.summary()


@pytest.mark.parametrize(
  "model_name, overrides, message",
  [
    ("resnet34", {}, "not a ResNet checkpoint in any known naming"),
    ("resnet18", {"num_filters": 32}, "tensors do not fit the model"),
    ("resnet18_small", {}, "has no pretrained weight tables"),
  ],
)
def test_wrong_architecture_refused_and_model_unchanged(resnet18_file, model_name, overrides, message):
  model = models.create_model(model_name, 2, rngs=nnx.Rngs(0), **overrides)
  before = _parameters(model)
  with pytest.raises(pretrained.PretrainedError, match=message):
    pretrained.load(model, resnet18_file)
  after = _parameters(model)
  assert all(np.array_equal(before[p], after[p]) for p in before)


def test_shape_mismatch_names_the_tensor(resnet18_file):
  model = models.create_model("resnet18", 2, rngs=nnx.Rngs(0), num_filters=32)
  with pytest.raises(pretrained.PretrainedError, match=r"conv1\.weight \(64, 3, 7, 7\)"):
    pretrained.load(model, resnet18_file)


def test_source_asked_for_must_exist(resnet18_file):
  model = models.create_model("resnet18", 2, rngs=nnx.Rngs(0))
  with pytest.raises(pretrained.PretrainedError, match="pretrained_source 'keras'"):
    pretrained.load(model, resnet18_file, source="keras")
  assert pretrained.load(model, resnet18_file, source="torchvision").source == "torchvision"
  assert pretrained.load(model, resnet18_file, source="auto").source == "torchvision"


@pytest.mark.parametrize(
  "name, content, message",
  [
    ("weights.h5", b"\x89HDF", "unknown format '.h5'"),
    ("broken.safetensors", b"not a safetensors header", "not a readable safetensors file"),
    ("broken.pth", b"garbage", "not a loadable PyTorch state dict"),
  ],
)
def test_unreadable_files_refused(tmp_path, name, content, message):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(pretrained.PretrainedError, match=message):
    pretrained.read_tensors(path)
  with pytest.raises(pretrained.PretrainedError, match="no such file"):
    pretrained.read_tensors(tmp_path / "missing.safetensors")


class _Payload:
  def __reduce__(self):
    return (print, ("code ran",))


def test_pickled_code_is_refused(tmp_path):
  """A .pth whose pickle would run code is refused by the restricted loader, not executed."""
  path = tmp_path / "evil.pth"
  path.write_bytes(pickle.dumps({"conv1.weight": _Payload()}))
  with pytest.raises(pretrained.PretrainedError, match="not a loadable PyTorch state dict"):
    pretrained.read_tensors(path)


def test_nested_and_ddp_state_dicts(resnet18_file, tmp_path):
  tensors = {f"module.{k}": torch.from_numpy(v) for k, v in pretrained.read_tensors(resnet18_file).items()}
  path = tmp_path / "checkpoint.pth"
  torch.save({"epoch": 3, "state_dict": tensors}, path)
  read = pretrained.read_tensors(path)
  assert set(read) == {k[len("module.") :] for k in tensors}
  loaded = pretrained.load(models.create_model("resnet18", 2, rngs=nnx.Rngs(0)), resnet18_file).loaded
  assert pretrained.load(models.create_model("resnet18", 2, rngs=nnx.Rngs(0)), path).loaded == loaded > 0


def test_input_size_and_normalization_from_hugging_face_config(resnet18_file, tmp_path):
  path = tmp_path / "model.safetensors"
  path.write_bytes(resnet18_file.read_bytes())
  model = models.create_model("resnet18", 2, rngs=nnx.Rngs(0))
  info = pretrained.checkpoint_info(model, path)
  assert (info.source, info.input_size, info.normalization) == ("torchvision", 224, "imagenet")
  (tmp_path / "config.json").write_text(
    '{"pretrained_cfg": {"input_size": [3, 288, 288], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}'
  )
  info = pretrained.checkpoint_info(model, path)
  assert (info.input_size, info.normalization) == (288, "symmetric")
  (tmp_path / "config.json").write_text('{"pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}}')
  with pytest.raises(pretrained.PretrainedError, match="config.json: mean"):
    pretrained.checkpoint_info(model, path)


@pytest.mark.parametrize("name", sorted(set(c.model for c in CASES)))
def test_blocks_cover_the_backbone(name):
  """Every variable outside the head is in exactly one of the blocks fine-tuning unfreezes."""
  model = models.create_model(name, 2, rngs=nnx.Rngs(0))
  blocks = model.block_paths()
  owners = {}
  for path, _ in nnx.to_flat_state(nnx.state(model)):
    if path[0] == "head":
      continue
    hits = [i for i, block in enumerate(blocks) for prefix in block if path[: len(prefix)] == prefix]
    owners[path] = hits
  assert all(len(h) == 1 for h in owners.values()), [p for p, h in owners.items() if len(h) != 1][:4]
  assert all(any(owners[p] == [i] for p in owners) for i in range(len(blocks))), "a block without variables"
