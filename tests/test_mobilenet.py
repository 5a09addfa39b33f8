"""MobileNetV2 / V3 and EfficientNet-B0 (`classifiers.mobilenet`): shapes, train / eval, gradients,
drop-path, options, parameter counts against timm and torchvision, weight tables. Logit equivalence with
timm / torchvision is in `test_pretrained.py`.

Kept fast like `test_models.py`: abstract models (``nnx.eval_shape``) wherever only shapes, counts or
tables matter, parameters filled from numpy for the one network that computes (real initialisation
compiles jax.random once per kernel shape: ~20 s per network here), "rbg" dropout keys, and two jitted
programs. Real initialisation is exercised by the single-block drop-path test (and by
`test_pretrained.py`, which builds every model).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import abstract_model as abstract
from conftest import numpy_model as build
from flax import nnx

from classifiers import models, pretrained
from classifiers.mobilenet import MODELS, BlockSpec, InvertedResidual

NAMES = sorted(MODELS)


def images(n: int, size: int, seed: int = 0, channels: int = 3) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal((n, size, size, channels), dtype=np.float32))


def drop(seed: int) -> nnx.Rngs:
  return nnx.Rngs(dropout=jax.random.key(seed, impl="rbg"))


def out(model, size: int, *, features: bool = False, train: bool = False, n: int = 2):
  """Abstract logits (or feature map) for an (n, size, size, 3) input, without computing."""
  x = jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32)
  rngs = drop(0) if train else None  # an argument: NNX refuses to advance a stream closed over
  return nnx.eval_shape(lambda m, x, r: (m.features if features else m)(x, train=train, rngs=r), model, x, rngs)


def test_registered_in_models():
  assert set(NAMES) == {"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"}
  assert all(models.MODELS[name] is MODELS[name] for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name):
  binary, softmax = abstract(name), abstract(name, 3)
  for size in (32, 64):
    logits = out(binary, size, train=size == 32)
    assert (logits.shape, logits.dtype) == ((2, 1), jnp.float32)
    assert out(softmax, size).shape == (2, 3)
  assert (binary.head_kind, softmax.head_kind) == ("binary", "softmax")


@pytest.fixture(scope="module")
def v3_small():
  return build("mobilenet_v3_small")


def test_eval_forward_is_features_then_classify(v3_small):
  @nnx.jit
  def forward(m, x):
    features = m.features(x, train=False)
    return features, m.classify(features, train=False), m(x, train=False)

  features, composed, logits = forward(v3_small, images(2, 32))
  assert features.shape == (2, 1, 1, 576) and bool(np.all(np.asarray(features) >= -0.375))  # after hard-swish
  np.testing.assert_allclose(composed, logits, rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(logits)) and abs(float(logits[0, 0] - logits[1, 0])) > 0


def test_train_step_gradient_is_finite(v3_small):
  model = nnx.merge(*nnx.split(v3_small))  # a copy: the step updates the BN statistics
  x, y = images(4, 32, seed=1), jnp.array([0.0, 1.0, 1.0, 0.0])

  def loss_fn(m, rngs):
    logits = m(x, train=True, rngs=rngs)[:, 0]
    return jnp.mean(jnp.logaddexp(0.0, logits) - y * logits), logits

  @nnx.jit
  def step(m, rngs):
    return nnx.value_and_grad(loss_fn, has_aux=True)(m, rngs), m(x, train=False)

  mean_before = np.asarray(model.blocks[4].dw_bn.mean[...])
  ((loss, train_logits), grads), eval_logits = step(model, drop(0))
  assert np.isfinite(float(loss)) and not np.allclose(train_logits, eval_logits[:, 0])
  leaves = jax.tree.leaves(grads)
  assert leaves and all(np.all(np.isfinite(np.asarray(g))) for g in leaves)  # numpy: eager jnp compiles per shape
  for path in (("blocks", 4, "se", "reduce", "kernel"), ("pre_logits", "kernel"), ("stem_conv", "kernel")):
    grad = functools.reduce(lambda node, key: node[key], path, grads)
    assert np.abs(np.asarray(grad[...])).sum() > 0, path
  assert not np.array_equal(np.asarray(model.blocks[4].dw_bn.mean[...]), mean_before)  # running stats moved


@pytest.mark.parametrize("name", NAMES)
def test_train_needs_rngs_only_with_dropout(name):
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  with pytest.raises(ValueError, match="needs rngs"):
    nnx.eval_shape(lambda m, x: m(x, train=True), abstract(name), x)
  if name == "efficientnet_b0":  # dropout and drop-path both off: train mode needs no rngs
    plain = abstract(name, dropout=0.0, drop_path=0.0)
    assert not plain.has_dropout
    assert nnx.eval_shape(lambda m, x: m(x, train=True), plain, x).shape == (2, 1)


def test_drop_path_drops_whole_examples_of_the_residual_branch():
  spec = BlockSpec(cin=8, cout=8, expanded=16, kernel=3, stride=1, act="swish", se=2, drop_path=0.5)
  block = InvertedResidual(
    spec,
    se_act=jax.nn.swish,
    se_gate=jax.nn.sigmoid,
    bn_epsilon=1e-5,
    rngs=nnx.Rngs(jax.random.key(0, impl="rbg")),
  )
  run = nnx.jit(lambda b, x, rngs: b(x, train=True, rngs=rngs))
  x = images(16, 4, channels=8)
  y = np.asarray(run(block, x, drop(1)))
  np.testing.assert_array_equal(y, np.asarray(run(block, x, drop(1))))
  assert not np.array_equal(y, np.asarray(run(block, x, drop(2))))
  dropped = np.all(y == np.asarray(x), axis=(1, 2, 3))
  assert 0 < dropped.sum() < len(dropped)
  block.drop_path.rate = 0.0  # the same branch, always kept
  branch = np.asarray(run(block, x, None)) - np.asarray(x)
  np.testing.assert_allclose(y[~dropped], (np.asarray(x) + branch / 0.5)[~dropped], rtol=1e-5, atol=1e-5)


def test_drop_path_schedule_is_torchvisions():
  model = abstract("efficientnet_b0", drop_path=0.5)
  rates = [block.drop_path.rate for block in model.blocks]
  residual = [block.residual for block in model.blocks]
  # linear in the block index over all 16 blocks; blocks without a shortcut have nothing to drop
  assert rates == [0.5 * i / 16 if residual[i] else 0.0 for i in range(16)]
  assert sum(residual) == 9 and model.has_dropout


def test_width_scales_like_torchvision():
  from experiments import torch_reference

  counts = {}
  for width in (0.5, 1.0, 1.4):
    model = abstract("mobilenet_v2", 3, **({} if width == 1.0 else {"width": width}))  # 1.0: the cached default
    reference = torch_reference.torchvision_model("mobilenet_v2", width_mult=width, num_classes=3)
    counts[width] = models.count_params(model)
    assert counts[width] == torch_reference.count_params(reference), width
    assert model.num_features == reference.last_channel, width
  assert counts[0.5] < counts[1.0] < counts[1.4]
  # the final conv keeps 1280 channels for width < 1 and grows for width > 1
  assert abstract("mobilenet_v2", width=0.5).num_features == 1280 < abstract("mobilenet_v2", width=1.4).num_features


@pytest.mark.parametrize("name", NAMES)
def test_small_images_keeps_more_pixels_and_the_same_weights(name):
  standard, small = abstract(name), abstract(name, small_images=True)
  assert out(standard, 64, features=True).shape == (2, 2, 2, standard.num_features)  # the stem reduces by 32
  assert out(small, 64, features=True).shape == (2, 4, 4, small.num_features)  # by 16
  shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m))  # noqa: E731
  assert shapes(small) == shapes(standard)
  assert small.weight_sources() == standard.weight_sources()
  assert small.torch_twin() == standard.torch_twin()  # torch_reference.small_stem then edits the twin's stem


@pytest.mark.parametrize(
  "name, options",
  [
    ("mobilenet_v2", {"width": 0.35}),
    ("mobilenet_v2", {"width": 1.4}),
    ("mobilenet_v3_small", {"bn_epsilon": 1e-3}),
    ("mobilenet_v3_large", {"num_classes": 3}),
    ("efficientnet_b0", {"num_classes": 3}),
  ],
)
def test_tables_cover_every_variable_once(name, options):
  model = abstract(name, **options)
  flat = dict(nnx.to_flat_state(nnx.state(model)))
  for source in ("timm", "torchvision"):
    table = model.weight_table(source)
    pretrained._check_table(model, table, flat)  # every variable but the head's, each once
    assert len({e.key for e in table}) == len(table)
    assert {e.path for e in table if e.head} == {("head", "kernel"), ("head", "bias")}
  with pytest.raises(ValueError, match="unknown weight source"):
    model.weight_table("keras")


def test_bn_epsilon_reaches_every_batch_norm_and_sources_ask_for_theirs():
  model = abstract("mobilenet_v3_small", bn_epsilon=1e-3)
  epsilons = {m.epsilon for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)}
  assert epsilons == {1e-3}
  sources = model.weight_sources()
  assert sources["torchvision"].overrides == {"bn_epsilon": 1e-3}
  assert sources["timm"].overrides == {"bn_epsilon": 1e-5}
  assert abstract("efficientnet_b0").weight_sources()["torchvision"].overrides == {"bn_epsilon": 1e-5}
  assert abstract("mobilenet_v3_small", in_features=1).weight_sources() == {}  # no checkpoint has that stem


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  model = abstract("mobilenet_v3_small", dtype="bfloat16")
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model))} == {jnp.dtype(jnp.float32)}
  assert out(model, 32, features=True).dtype == jnp.bfloat16
  assert out(model, 32).dtype == jnp.float32


@pytest.mark.parametrize(
  "name, options, message",
  [
    ("mobilenet_v2", {"width": 0}, "width must be"),
    ("mobilenet_v2", {"width": "wide"}, "width must be"),
    ("mobilenet_v3_small", {"size": "medium"}, "unknown MobileNetV3 size"),
    ("efficientnet_b0", {"drop_path": 1.0}, r"drop_path must be in \[0, 1\)"),
    ("mobilenet_v3_large", {"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ("mobilenet_v2", {"bn_epsilon": 0.0}, "bn_epsilon must be a positive number"),
    ("efficientnet_b0", {"in_features": 0}, "in_features must be a positive int"),
    ("mobilenet_v3_small", {"small_images": "yes"}, "small_images must be True or False"),
    ("mobilenet_v3_small", {"width": 2.0}, r"unknown option\(s\) \['width'\]"),
  ],
)
def test_bad_options_raise(name, options, message):
  with pytest.raises(ValueError, match=message):
    abstract(name, **options)


def test_wrong_input_channels_raise():
  model = abstract("mobilenet_v3_small", in_features=1)  # `out` feeds 3-channel images
  with pytest.raises(ValueError, match="takes 1 input channels"):
    out(model, 32)


@pytest.mark.parametrize(
  "name, options",
  [(name, {}) for name in NAMES] + [("mobilenet_v2", {"width": 1.4}), ("mobilenet_v2", {"width": 0.35})],
)
def test_parameters_match_the_timm_twin(name, options):
  from experiments import torch_reference

  model = abstract(name, **options)
  twin = torch_reference.classifier(model)
  assert torch_reference.count_params(twin) == models.count_params(model)
  jax_sizes = sorted(int(math.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert sorted(p.numel() for p in twin.parameters()) == jax_sizes


def test_no_twin_for_unnamed_widths():
  model = abstract("mobilenet_v2", width=1.3)
  with pytest.raises(NotImplementedError, match="no timm twin"):
    model.torch_twin()
  assert model.weight_sources()["timm"].models == ()  # the naming still loads; nothing is published
