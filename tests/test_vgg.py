"""VGG (classifiers.vgg): shapes, train / eval behaviour, gradients, options, the adaptive pool, the
weight tables against timm's / torchvision's state dicts, and the timm twin's parameter count.

VGG-19 has 143M parameters, 123M of them in fc6 / fc7: computed tests use ``classifier="avg"``
(20M) at 32 px with parameters filled from numpy (``build``: jax.random compiles once per shape);
the "fc" head is checked abstractly (``nnx.eval_shape``, PyTorch's meta device) here and computed in
``tests/test_pretrained.py`` against PyTorch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import abstract_model as abstract
from conftest import numpy_model as build
from flax import nnx

from classifiers import models, pretrained, vgg
from classifiers.models import count_params
from experiments import torch_reference

AVG = {"classifier": "avg"}
VGG11 = (1, 1, 2, 2, 2)


def images(n: int = 2, size: int = 32, seed: int = 0, channels: int = 3) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal((n, size, size, channels), dtype=np.float32))


@nnx.jit
def eval_features(model, x):
  return model.features(x, train=False)


def meta_reference(library: str, name: str, **kwargs) -> torch.nn.Module:
  """timm's / torchvision's model on PyTorch's meta device: names and shapes, no memory, no init."""
  build_ref = torch_reference.timm_model if library == "timm" else torch_reference.torchvision_model
  with torch.device("meta"):
    return build_ref(name, **kwargs)


# ----------------------------------------------------------------------------- shapes and the registry


@pytest.mark.parametrize("name", ["vgg19", "vgg19_bn"])
@pytest.mark.parametrize("classifier", ["fc", "avg"])
def test_output_shapes_both_heads_both_sizes(name, classifier):
  for num_classes, logits in [(2, 1), (5, 5)]:
    model = abstract(name, num_classes, classifier=classifier)
    assert model.head_kind == ("binary" if num_classes == 2 else "softmax")
    for size in (32, 64):
      x = jax.ShapeDtypeStruct((3, size, size, 3), jnp.float32)
      for train in (False, True) if (num_classes, size) == (2, 32) else (False,):
        out = nnx.eval_shape(lambda m, x: m(x, train=train, rngs=nnx.Rngs(dropout=1)), model, x)
        assert out.shape == (3, logits) and out.dtype == jnp.float32, (size, train)
      feats = nnx.eval_shape(lambda m, x: m.features(x, train=False), model, x)
      assert feats.shape == (3, size // 16, size // 16, 512)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  model = abstract("vgg19_bn", 5, dtype="bfloat16")
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  assert nnx.eval_shape(lambda m, x: m.features(x, train=False), model, x).dtype == jnp.bfloat16
  assert nnx.eval_shape(lambda m, x: m(x, train=False), model, x).dtype == jnp.float32
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model))} == {jnp.dtype(jnp.float32)}


def test_registry_and_batch_norm_variant():
  plain, bn = abstract("vgg19"), abstract("vgg19_bn")
  assert {"vgg19", "vgg19_bn"} <= set(models.MODELS)
  assert len(plain.convs) == len(bn.convs) == 16 and plain.norms is None and len(bn.norms) == 16
  assert all(c.bias is not None for c in bn.convs)  # torchvision keeps the conv bias before BN
  assert count_params(bn) - count_params(plain) == 2 * sum(c.out_features for c in bn.convs)


def test_avg_classifier_drops_the_4096_wide_layers():
  fc, avg = abstract("vgg19"), abstract("vgg19", **AVG)
  fc67 = (512 * 7 * 7 + 1) * 4096 + (4096 + 1) * 4096
  assert count_params(fc) - count_params(avg) == fc67 + (4096 - 512)  # binary head: 4096 -> 512 inputs
  assert avg.fc6 is None and avg.head.in_features == 512
  assert [len(b) for b in avg.block_paths()] == [2, 2, 4, 4, 4]
  assert len(fc.block_paths()) == 7 and fc.block_paths()[-2:] == [[("fc6",)], [("fc7",)]]


@pytest.mark.parametrize("overrides", [{}, {"batch_norm": True}, AVG | {"batch_norm": True}, {"depths": VGG11}])
def test_blocks_cover_every_variable_once(overrides):
  model = abstract("vgg19", **overrides)
  blocks = model.block_paths()
  for path, _ in nnx.to_flat_state(nnx.state(model)):
    hits = [i for i, block in enumerate(blocks) for prefix in block if path[: len(prefix)] == prefix]
    assert len(hits) == (0 if path[0] == "head" else 1), path


# ----------------------------------------------------------------------------- computed (avg head, 32 px)


def test_train_eval_features_classify_and_gradient():
  """One compile for eval (whole model and features -> classify) and one for a train step; VGG-11's
  depths, the same layers as VGG-19's in half the compile time (VGG-19 runs in test_pretrained)."""
  model = build("vgg19_bn", 2, **AVG, depths=VGG11, dropout=0.5)
  x = images(2)

  @nnx.jit
  def evaluate(m, x):
    return m(x, train=False), m.classify(m.features(x, train=False), train=False)

  logits, composed = evaluate(model, x)
  assert logits.shape == (2, 1) and np.all(np.isfinite(logits)) and np.std(np.asarray(logits)) > 0
  np.testing.assert_allclose(composed, logits, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="needs rngs"):
    model(x, train=True)

  def loss_fn(m, rngs):
    out = m(x, train=True, rngs=rngs)
    return jnp.mean(jax.nn.softplus(-out[:, 0])), out

  step = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))
  (loss, a), grads = step(model, nnx.Rngs(dropout=1))
  assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["convs"][0]["kernel"][...]).sum()) > 0  # reaches the first conv
  assert not np.allclose(np.asarray(model.norms[0].mean), 0)  # train mode updated the running mean
  (_, b), _ = step(model, nnx.Rngs(dropout=2))
  assert not np.allclose(a, b)  # other dropout masks (and batch statistics, not running ones)
  np.testing.assert_allclose(evaluate(model, x)[0], evaluate(model, x)[0])  # eval is deterministic


def test_inputs_below_32_px_refused():
  model = abstract("vgg19", **AVG)
  with pytest.raises(ValueError, match="at least 32x32"):
    nnx.eval_shape(lambda m, x: m(x, train=False), model, jax.ShapeDtypeStruct((1, 31, 31, 3), jnp.float32))


# ----------------------------------------------------------------------------- adaptive pool


@pytest.mark.parametrize("h, w", [(1, 1), (2, 2), (3, 5), (6, 6), (7, 7), (8, 8), (9, 13), (14, 14)])
def test_adaptive_avg_pool_is_pytorchs(h, w):
  x = np.random.default_rng(h * 31 + w).standard_normal((2, h, w, 3), dtype=np.float32)
  expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), 7)
  got = np.asarray(vgg.adaptive_avg_pool(jnp.asarray(x)))
  np.testing.assert_allclose(got, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- weight tables, twins


@pytest.mark.parametrize(
  "library, name, overrides",
  [
    ("torchvision", "vgg19", {}),
    ("timm", "vgg19_bn", {"batch_norm": True}),
    ("timm", "vgg11", {"depths": VGG11}),
    ("torchvision", "vgg11_bn", {"depths": VGG11, "batch_norm": True, "classifier": "avg"}),
    ("timm", "vgg19", AVG),
  ],
)
def test_weight_table_names_every_reference_tensor(library, name, overrides):
  """Each table entry is a tensor of the reference whose converted shape is the variable's; every
  other tensor is a known extra (fc6 / fc7 for "avg", num_batches_tracked)."""
  model = abstract("vgg19", 1000, head="softmax", **overrides)
  reference = meta_reference(library, name)
  shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
  flat = dict(nnx.to_flat_state(nnx.state(model)))
  table = model.weight_table(library)
  source = model.weight_sources()[library]
  assert source.models == (name,)
  for entry in table:
    if entry.head and model.classifier == "avg":
      continue  # the ImageNet head sits on fc7's 4096 features, not on the pooled 512
    converted = pretrained.LAYOUTS[entry.layout](np.empty(shapes[entry.key], np.float32)).shape
    assert converted == tuple(flat[entry.path].shape), entry
  extras = set(shapes) - {e.key for e in table}
  assert all(pretrained._ignored(k, source.ignore) for k in extras), sorted(extras)
  assert any("classifier.0" in k or "pre_logits" in k for k in extras) == (model.classifier == "avg")


def test_avg_model_loads_a_torchvision_backbone_and_matches_its_features():
  torch_reference._import_torchvision()
  from torchvision.models.vgg import cfgs, make_layers

  torch.manual_seed(0)
  features = make_layers(cfgs["A"], batch_norm=True).eval()
  with torch.no_grad():
    for layer in features:
      if isinstance(layer, torch.nn.BatchNorm2d):
        layer.running_mean.normal_(0, 0.1)
        layer.running_var.uniform_(0.5, 1.5)
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_(0, 0.1)
  tensors = {f"features.{k}": v.numpy() for k, v in features.state_dict().items()}
  # fc6 / fc7 / the ImageNet head: extras of an "avg" model (never shape-checked, so tiny stand-ins)
  tensors |= {f"classifier.{i}.{p}": np.zeros(3, np.float32) for i in (0, 3, 6) for p in ("weight", "bias")}
  model = build("vgg19", 2, depths=VGG11, batch_norm=True, **AVG)
  report = pretrained.load(model, "vgg11_bn.pth", tensors=tensors)
  assert report.source == "torchvision" and report.unexpected == [], report.summary()
  assert {"classifier.0.weight", "classifier.3.bias"} <= set(report.ignored)
  x = images(2, 32, seed=5)
  with torch.no_grad():
    expected = features[:-1](torch.from_numpy(np.array(x).transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  got = np.asarray(eval_features(model, x))
  assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize(
  "name, overrides, twin",
  [("vgg19", {}, "vgg19"), ("vgg19_bn", {"in_features": 1}, "vgg19_bn"), ("vgg19", {"depths": VGG11}, "vgg11")],
)
def test_torch_twin_has_the_same_parameters(name, overrides, twin):
  model = abstract(name, 2, **overrides)
  twin_name, kwargs = model.torch_twin()
  assert twin_name == twin
  reference = meta_reference("timm", twin_name, num_classes=model.num_logits, **kwargs)
  assert torch_reference.count_params(reference) == count_params(model)
  jax_sizes = sorted(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert sorted(p.numel() for p in reference.parameters()) == jax_sizes


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"classifier": "flatten"}, "unknown classifier 'flatten'"),
    ({"depths": (2, 2, 4)}, "depths must be 5 positive ints"),
    ({"depths": (2, 2, 0, 4, 4)}, "depths must be 5 positive ints"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"bn_epsilon": 0.0}, "bn_epsilon must be > 0"),
    ({"in_features": 0}, "in_features must be a positive int"),
    ({"width": 2}, r"unknown option\(s\) \['width'\]"),
  ],
)
def test_bad_options_refused(overrides, message):
  with pytest.raises(ValueError, match=message):
    abstract("vgg19", **overrides)


def test_configurations_without_a_checkpoint_or_twin():
  assert abstract("vgg19", in_features=1).weight_sources() == {}
  assert abstract("vgg19", depths=(1, 1, 1, 1, 1)).weight_sources() == {}
  with pytest.raises(pretrained.PretrainedError, match="no pretrained weight tables"):
    pretrained.load(abstract("vgg19", in_features=1), "vgg19.pth", tensors={})
  with pytest.raises(NotImplementedError, match="no timm twin"):
    abstract("vgg19", **AVG).torch_twin()
  assert abstract("vgg19_bn", dropout=0.0).has_dropout is False


def test_bn_epsilon_must_match_the_checkpoints():
  model = abstract("vgg19_bn", bn_epsilon=1e-3, **AVG)
  assert model.weight_sources()["timm"].overrides == {"bn_epsilon": 1e-5}
  assert abstract("vgg19", **AVG).weight_sources()["timm"].overrides == {}
