"""Inception-v3 (classifiers.inception): pools, input sizes, heads, train/eval, gradients, options,
parameter count against timm, and the weight table. Logit equivalence with timm / torchvision is in
test_pretrained.py.

Kept fast like test_models.py: parameters filled from numpy (real initialisation compiles
jax.random once per kernel shape: ~50 shapes here, 20-40 s), abstract models (nnx.eval_shape)
where only shapes or counts matter, "rbg" dropout keys, and few jitted programs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

# classifiers.models first (it imports and registers classifiers.inception at its end)
from conftest import abstract_model as abstract
from conftest import numpy_model as build
from flax import nnx

from classifiers import pretrained
from classifiers.inception import avg_pool_3x3_s1, max_pool_3x3_s2_valid
from experiments import torch_reference


def images(n: int, size: int, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal((n, size, size, 3), dtype=np.float32))


def drop(seed: int) -> nnx.Rngs:
  return nnx.Rngs(dropout=jax.random.key(seed, impl="rbg"))


def out_shape(model, size: int, features: bool = False) -> tuple:
  """Shape of the logits (or the feature map) for a (2, size, size, 3) input, without computing."""
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  return nnx.eval_shape(lambda m, x: (m.features if features else m)(x, train=False), model, x).shape


@pytest.fixture(scope="module")
def small():
  return build("inception_v3_small")


# ----------------------------------------------------------------------------- pools


@pytest.mark.parametrize("size", [7, 8])
def test_valid_max_pool_matches_reduce_window_with_ties(size):
  rng = np.random.default_rng(size)
  # rounded values and ReLU zeros: many ties, where the gradient must go to the first maximum
  x = jnp.asarray(np.maximum(np.round(rng.standard_normal((2, size, size + 1, 3)) * 2), 0), jnp.float32)
  g = jnp.asarray(rng.standard_normal((2, (size - 3) // 2 + 1, (size - 2) // 2 + 1, 3)), jnp.float32)

  def reference(x):
    return nnx.max_pool(x, (3, 3), (2, 2), padding="VALID")

  got, vjp = jax.vjp(max_pool_3x3_s2_valid, x)
  want, vjp_ref = jax.vjp(reference, x)
  np.testing.assert_array_equal(got, want)
  # same cells, summed over overlapping windows in another order
  np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-6, atol=1e-6)
  assert np.array_equal(vjp(g)[0] != 0, vjp_ref(g)[0] != 0)


def test_branch_avg_pool_counts_padding_like_pytorch():
  x = np.random.default_rng(0).standard_normal((2, 5, 6, 3)).astype(np.float32)
  want = torch.nn.functional.avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), 3, 1, 1, count_include_pad=True)
  got = avg_pool_3x3_s1(jnp.asarray(x))
  np.testing.assert_allclose(got, want.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- sizes and heads


def test_input_sizes_and_stems():
  standard, small_abstract = abstract("inception_v3"), abstract("inception_v3_small")
  assert out_shape(standard, 299, features=True) == (2, 8, 8, 2048)
  assert out_shape(standard, 75, features=True) == (2, 1, 1, 2048)
  assert out_shape(standard, 75) == (2, 1)
  with pytest.raises(ValueError, match=r"at least 75x75 px, got 74x74.*inception_v3_small"):
    out_shape(standard, 74)
  with pytest.raises(ValueError, match="at least 75x75 px, got 64x64"):
    out_shape(standard, 64)
  # the small-image stem keeps 4x the pixels: 96 px gives 10x10 instead of 1x1 at the last block
  assert out_shape(small_abstract, 96, features=True) == (2, 10, 10, 2048)
  assert out_shape(small_abstract, 32, features=True) == (2, 2, 2, 2048)
  assert out_shape(small_abstract, 21, features=True) == (2, 1, 1, 2048)
  with pytest.raises(ValueError, match="at least 21x21 px, got 20x20") as error:
    out_shape(small_abstract, 20)
  assert "inception_v3_small" not in str(error.value)


@pytest.mark.parametrize("num_classes, head, logits", [(2, "auto", 1), (2, "softmax", 2), (5, "auto", 5)])
def test_head_shapes(num_classes, head, logits):
  model = abstract("inception_v3_small", num_classes, head=head)
  assert out_shape(model, 32) == out_shape(model, 64) == (2, logits)
  assert model.head_kind == ("binary" if logits == 1 else "softmax")


def test_eval_forward_and_composition(small):
  """A real eval forward pass through the small-image stem at 32 px equals classify(features(x));
  train mode (dropout) refuses to run without rngs."""
  x = images(2, 32)

  @nnx.jit
  def evaluate(model, x):
    return model(x, train=False), model.classify(model.features(x, train=False), train=False)

  logits, composed = evaluate(small, x)
  assert logits.shape == (2, 1) and logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  np.testing.assert_allclose(composed, logits, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="train=True needs rngs"):
    small(x, train=True)


def test_fine_tuning_step_gradient(small):
  """One train step of the last block and the head (what fine-tuning unfreezes): finite, non-zero
  gradients; dropout masks follow the rngs; BatchNorm running statistics move."""
  model = nnx.clone(small)
  x = images(4, 32, seed=1)
  last = model.block_paths()[-1][0][0]
  wrt = nnx.DiffState(0, nnx.All(nnx.Param, nnx.Any(nnx.PathContains(last), nnx.PathContains("head"))))

  @nnx.jit
  def step(model, rngs):
    def loss(model, rngs):
      logits = model(x, train=True, rngs=rngs)
      return jnp.mean(jax.nn.softplus(-logits)), logits

    return nnx.value_and_grad(loss, argnums=wrt, has_aux=True)(model, rngs)

  mean_before = np.asarray(model.Mixed_7c.branch_pool.bn.mean[...])
  (value, logits), grads = step(model, drop(0))
  (_, logits_again), _ = step(model, drop(0))
  (_, logits_other), _ = step(model, drop(1))
  flat = nnx.to_flat_state(grads)
  assert np.isfinite(float(value)) and len(flat) == 2 + 9 * 3  # head + 9 BasicConv2d (kernel, scale, bias)
  assert all(p[0] in (last, "head") for p, _ in flat)
  assert all(np.all(np.isfinite(g[...])) and np.any(g[...] != 0) for _, g in flat)
  np.testing.assert_allclose(logits_again, logits, rtol=1e-6, atol=1e-6)  # same mask
  assert not np.allclose(logits_other, logits)  # another mask
  assert not np.array_equal(np.asarray(model.Mixed_7c.branch_pool.bn.mean[...]), mean_before)


@pytest.mark.slow
def test_full_train_step_gradient_reaches_every_parameter():
  model = build("inception_v3_small")
  x = images(2, 32, seed=2)

  @nnx.jit
  def grad(model, rngs):
    return nnx.grad(lambda m, r: jnp.mean(m(x, train=True, rngs=r) ** 2))(model, rngs)

  flat = nnx.to_flat_state(grad(model, drop(0)))
  assert len(flat) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert all(np.all(np.isfinite(g[...])) and np.any(g[...] != 0) for _, g in flat)


# ----------------------------------------------------------------------------- options


def test_dtype_bfloat16_keeps_float32_parameters_and_logits():
  model = abstract("inception_v3_small", dtype="bfloat16")
  assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model))} == {jnp.dtype(jnp.float32)}
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  assert nnx.eval_shape(lambda m, x: m(x, train=False), model, x).dtype == jnp.float32
  assert nnx.eval_shape(lambda m, x: m.features(x, train=False), model, x).dtype == jnp.bfloat16


GRAY = {"in_features": 1, "dropout": 0.0}  # one-channel inputs, no dropout


def test_no_dropout_needs_no_rngs_and_in_features():
  model = abstract("inception_v3", **GRAY)
  assert not model.has_dropout and abstract("inception_v3").has_dropout
  x = jax.ShapeDtypeStruct((2, 75, 75, 1), jnp.float32)
  assert nnx.eval_shape(lambda m, x: m(x, train=True), model, x).shape == (2, 1)
  with pytest.raises(ValueError, match="takes 1 input channels"):
    out_shape(model, 75)


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"dropout": 1.0}, "dropout must be in"),
    ({"bn_epsilon": 0.0}, "bn_epsilon must be a positive number"),
    ({"in_features": 0}, "in_features must be a positive int"),
    ({"width": 2.0}, "unknown option"),
    ({"head": "binary", "num_classes": 3}, "needs num_classes == 2"),
  ],
)
def test_bad_options_raise_value_error(overrides, match):
  num_classes = overrides.pop("num_classes", 2)
  with pytest.raises(ValueError, match=match):
    abstract("inception_v3", num_classes, **overrides)


@pytest.mark.parametrize("overrides", [{}, GRAY], ids=["rgb", "gray"])
def test_parameter_count_matches_timm_twin(overrides):
  standard = abstract("inception_v3", **overrides)
  name, kwargs = standard.torch_twin()
  with torch.device("meta"):  # shapes only, no initialisation
    twin = torch_reference.timm_model(name, num_classes=standard.num_logits, **kwargs)
  expected = sorted(p.numel() for p in twin.parameters() if p.requires_grad)
  got = sorted(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(standard, nnx.Param)))
  assert got == expected


def test_small_stem_has_the_same_parameters_and_twin():
  standard, small_abstract = abstract("inception_v3"), abstract("inception_v3_small")
  shapes = lambda m: [(p, v.shape) for p, v in nnx.to_flat_state(nnx.state(m))]  # noqa: E731
  assert shapes(small_abstract) == shapes(standard)
  assert small_abstract.torch_twin() == standard.torch_twin()  # torch_reference.small_stem edits the stem


# ----------------------------------------------------------------------------- weights


def _checkpoint_for(model) -> dict[str, np.ndarray]:
  """A torchvision-style state dict (random values, PyTorch layouts) for the model's table, with
  the auxiliary classifier and num_batches_tracked that torchvision's downloads carry."""
  rng = np.random.default_rng(0)
  flat = dict(nnx.to_flat_state(nnx.state(model)))
  inverse = {"conv": lambda s: (s[3], s[2], s[0], s[1]), "linear": lambda s: s[::-1], "copy": lambda s: s}
  tensors = {
    e.key: rng.standard_normal(inverse[e.layout](flat[e.path].shape)).astype(np.float32)
    for e in model.weight_table("torchvision")
  }
  tensors["fc.weight"], tensors["fc.bias"] = rng.standard_normal((1000, 2048)), rng.standard_normal(1000)
  tensors["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.zeros((), np.float32)
  tensors["AuxLogits.conv0.conv.weight"] = np.zeros((128, 768, 1, 1), np.float32)
  tensors["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  tensors["AuxLogits.fc.bias"] = np.zeros((1000,), np.float32)
  return tensors


def test_checkpoint_loads_into_both_stems_with_aux_logits_as_known_extras(small, tmp_path):
  standard = abstract("inception_v3")
  assert standard.weight_table("timm") == small.weight_table("torchvision") == small.weight_table("timm")
  tensors = _checkpoint_for(small)
  model = nnx.clone(small)
  report = pretrained.load(model, tmp_path / "inception_v3.pth", tensors=tensors)
  assert report.source == "torchvision" and report.unexpected == []
  assert report.head == "new (1000 ImageNet classes dropped)"
  assert sorted(k for k in report.ignored if k.startswith("AuxLogits.")) == [
    "AuxLogits.conv0.conv.weight",
    "AuxLogits.fc.bias",
    "AuxLogits.fc.weight",
  ]
  np.testing.assert_array_equal(
    model.Mixed_6b.branch7x7_2.conv.kernel[...], tensors["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0)
  )
  assert model.Mixed_6b.branch7x7_2.conv.kernel.shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(model.Conv2d_4a_3x3.bn.var[...], tensors["Conv2d_4a_3x3.bn.running_var"])
  assert pretrained.load(model, tmp_path / "x.safetensors", source="timm", tensors=tensors).source == "timm"
  info = pretrained.checkpoint_info(model, tmp_path / "x.safetensors", tensors=tensors)
  assert (info.input_size, info.normalization, info.overrides) == (299, "symmetric", {"bn_epsilon": 1e-3})
  with pytest.raises(pretrained.PretrainedError, match="bn_epsilon=0.001"):
    pretrained.load(abstract("inception_v3_small", bn_epsilon=1e-5), tmp_path / "x.pth", tensors=tensors)


def test_blocks_are_stem_convs_then_mixed_blocks():
  model = abstract("inception_v3")
  blocks = model.block_paths()
  names = [block[0][0] for block in blocks]
  assert all(len(block) == 1 for block in blocks) and len(set(names)) == len(names) == 5 + 11
  assert all(hasattr(model, n) for n in names)
  # the table walks the same layers in the same order: block i's tensors precede block i+1's
  order = [names.index(e.path[0]) for e in model.weight_table("torchvision") if not e.head]
  assert order == sorted(order)
