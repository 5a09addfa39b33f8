"""Classifier models (classifiers.models): shapes, parameter counts, train/eval behaviour,
determinism, features/classify composition, gradients, options and errors.

Kept fast: tiny inputs (16-32 px), tiny widths (ResNets with num_filters=4), numpy inputs,
abstract evaluation (nnx.eval_shape) wherever only shapes or counts matter, jitted forward passes
(one compile per model instead of one per eager op), and models whose parameters are filled from
numpy (``build``): real initialisation compiles jax.random once per parameter *shape*, which with
the default threefry (``jax_threefry_partitionable=True``) costs ~1-3 s per shape on this CPU.
Real initialisation is exercised by the tests that say so.
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

from classifiers import models
from classifiers.models import count_params, create_model

PRESETS = [
  "cnn96",
  "cnn_bn3",
  "cnn_lenet4",
  "resnet18",
  "resnet34",
  "resnet50",
  "resnet18_small",
  "resnet34_small",
  "resnet50_small",
]
TINY = {"num_filters": 4}  # ResNet width for tests
SHORT_RESNET = {"stage_sizes": (1, 1), "num_filters": 4, "small_images": True}  # for "resnet"


def tiny_overrides(name: str, image_size: int = 16) -> dict:
  return dict(TINY) if name.startswith("resnet") else {"image_size": image_size}


def images(n: int = 2, size: int = 16, seed: int = 0, channels: int = 3) -> jax.Array:
  """Random NHWC float32 images (numpy RNG: eager jax.random compiles per shape)."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal((n, size, size, channels), dtype=np.float32))


@functools.partial(nnx.jit, static_argnames="train")
def run(model, x, *, train, rngs=None):
  """model(x) under nnx.jit: one compile per model instead of one per eager op (ResNets)."""
  return model(x, train=train, rngs=rngs)


@functools.partial(nnx.jit, static_argnames="train")
def run_features(model, x, *, train, rngs=None):
  return model.features(x, train=train, rngs=rngs)


def drop(seed: int) -> nnx.Rngs:
  """Dropout rngs with an "rbg" key: in-graph threefry random bits (the default impl, with
  jax_threefry_partitionable=True) cost ~1-3 s of XLA compile per mask shape on this CPU; rbg
  ~0.2 s. The models do not care which key implementation they are given."""
  return nnx.Rngs(dropout=jax.random.key(seed, impl="rbg"))


def params_of(model) -> list[np.ndarray]:
  return [np.asarray(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param))]


def batch_stats_of(model) -> list[np.ndarray]:
  return [np.asarray(p) for p in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


# ----------------------------------------------------------------------------- registry & shapes


def test_registry_has_the_presets():
  assert set(PRESETS) <= set(models.MODELS)
  assert {"cnn", "resnet"} <= set(models.MODELS)


@pytest.mark.parametrize("name", PRESETS)
def test_output_shapes_and_heads(name):
  """Every preset, binary and softmax heads, eval and train mode (shapes only: abstract eval)."""
  x = images(3, 16)
  for num_classes, head, kind, logits in [(2, "auto", "binary", 1), (3, "auto", "softmax", 3)]:
    model = nnx.eval_shape(lambda: create_model(name, num_classes, head=head, rngs=nnx.Rngs(0), **tiny_overrides(name)))
    assert model.head_kind == kind and model.num_classes == num_classes
    # train mode once per preset; skipped for the deep ResNets, whose blocks are resnet18's and
    # whose train-mode trace is slow (nnx.BatchNorm's running-stat update probes
    # tracer.sharding, which builds an O(jaxpr) error message each time).
    deep = name.startswith(("resnet34", "resnet50"))
    for train in (False, True) if num_classes == 2 and not deep else (False,):
      out = nnx.eval_shape(lambda m, x: m(x, train=train, rngs=drop(1)), model, x)
      assert out.shape == (3, logits) and out.dtype == jnp.float32, (name, head, train)


@pytest.mark.parametrize("name, overrides", [("cnn_bn3", {"image_size": 16}), ("resnet18_small", TINY)])
def test_explicit_heads(name, overrides):
  for num_classes, head, kind, logits in [
    (2, "binary", "binary", 1),
    (2, "softmax", "softmax", 2),
    (5, "softmax", "softmax", 5),
    (5, "auto", "softmax", 5),
  ]:
    model = abstract(name, num_classes, head=head, **overrides)
    assert (model.head_kind, model.num_logits) == (kind, logits)
    out = nnx.eval_shape(lambda m, x: m(x, train=False), model, images(3, 16))
    assert out.shape == (3, logits)


@pytest.mark.parametrize(
  "name, size, expected",
  [
    ("cnn96", 16, (16, 16, 96)),  # last conv output, before its pool
    ("cnn_bn3", 16, (4, 4, 16)),  # 16 -> 8 -> 4, third conv
    ("cnn_lenet4", 32, (4, 4, 64)),  # 32 -> 16 -> 8 -> 4, fourth conv
    ("resnet18_small", 16, (2, 2, 32)),  # stride 1 stem, stages /1 /2 /4 /8; width 4 * 8
    ("resnet18", 32, (1, 1, 32)),  # /4 stem, then /8
    ("resnet50_small", 16, (2, 2, 128)),  # bottleneck: 4 * 8 * 4
  ],
)
def test_feature_map_shapes(name, size, expected):
  model = nnx.eval_shape(lambda: create_model(name, 2, rngs=nnx.Rngs(0), **tiny_overrides(name, size)))
  out = nnx.eval_shape(lambda m, x: m.features(x, train=False), model, images(2, size))
  assert out.shape == (2, *expected)


def test_resnet_runs_at_several_sizes():
  model = build("resnet18_small", 3, **TINY)
  for size in (16, 24):
    assert run(model, images(2, size), train=False).shape == (2, 3)


def test_resnet50_default_width_builds_at_32px():
  """Default width (64) ResNet-50, abstractly: builds and gives (N, 1) logits at 32 px."""
  model = nnx.eval_shape(lambda: create_model("resnet50", 2, rngs=nnx.Rngs(0)))
  assert model.num_features == 2048
  out = nnx.eval_shape(lambda m, x: m(x, train=True), model, images(2, 32))
  assert out.shape == (2, 1)
  feats = nnx.eval_shape(lambda m, x: m.features(x, train=False), model, images(2, 32))
  assert feats.shape == (2, 1, 1, 2048)


# ----------------------------------------------------------------------------- parameter counts


def test_param_count_cnn96():
  # At 64 px (SAME conv, 2x2 max-pool -> 32 x 32 x 96 = 98,304 flattened):
  #   conv  3*3*3*96 + 96          =      2,688
  #   dense 98,304*128 + 128        = 12,583,040
  #   head  128*1 + 1 (binary)      =        129
  #                                   12,585,857
  assert count_params(abstract("cnn96")) == 2_688 + 12_583_040 + 129 == 12_585_857
  # 3 classes (softmax): head 128*3 + 3 = 387.
  assert count_params(abstract("cnn96", 3)) == 2_688 + 12_583_040 + 387
  # 32 px: 16*16*96 = 24,576 flattened -> dense 24,576*128 + 128 = 3,145,856.
  assert count_params(abstract("cnn96", image_size=32)) == 2_688 + 3_145_856 + 129


def test_param_count_cnn_bn3():
  # At 64 px; convs have no bias (BN follows), BN has scale + bias (running stats not counted):
  #   conv1 3*3*3*4 = 108,   bn1 2*4  = 8
  #   conv2 3*3*4*8 = 288,   bn2 2*8  = 16
  #   conv3 3*3*8*16 = 1,152, bn3 2*16 = 32
  #   3 max-pools: 64 -> 8; flatten 8*8*16 = 1,024; head 1,024*1 + 1 = 1,025
  assert count_params(abstract("cnn_bn3")) == 108 + 8 + 288 + 16 + 1_152 + 32 + 1_025 == 2_629
  assert count_params(abstract("cnn_bn3", 3)) == 1_604 + 1_024 * 3 + 3  # 4,679
  model = abstract("cnn_bn3")
  stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  assert sum(math.prod(s.shape) for s in stats) == 2 * (4 + 8 + 16)


def test_param_count_cnn_lenet4():
  # 5x5 convs: 456 + 2,416 + 12,832 + 51,264 = 66,968; dense 512/256/128 and binary head:
  # at 64 px flatten 4*4*64 = 1,024: 1,024*512+512 = 524,800; 131,328; 32,896; 129.
  convs, tail = 66_968, 131_328 + 32_896 + 129
  assert count_params(abstract("cnn_lenet4")) == convs + 524_800 + tail == 756_121
  # at 32 px flatten 2*2*64 = 256: 256*512 + 512 = 131,584.
  assert count_params(abstract("cnn_lenet4", image_size=32)) == convs + 131_584 + tail


@pytest.mark.parametrize(
  "name, expected",
  [
    # torchvision's counts minus its 1000-way fc (512*1000+1000 / 2048*1000+1000), plus a binary
    # head (512+1 / 2048+1): resnet18 11,689,512; resnet34 21,797,672; resnet50 25,557,032.
    ("resnet18", 11_689_512 - 513_000 + 513),
    ("resnet34", 21_797_672 - 513_000 + 513),
    ("resnet50", 25_557_032 - 2_049_000 + 2_049),
    # small stem: 3x3x3x64 conv instead of 7x7x3x64 (-7,680 parameters).
    ("resnet18_small", 11_689_512 - 513_000 + 513 - 7_680),
    ("resnet50_small", 25_557_032 - 2_049_000 + 2_049 - 7_680),
  ],
)
def test_param_count_resnets_match_torchvision(name, expected):
  assert count_params(abstract(name)) == expected


def test_resnet_structure():
  small = abstract("resnet18_small", num_filters=4)
  assert small.stem_conv.kernel.shape == (3, 3, 3, 4) and small.stem_conv.strides == (1, 1)
  big = abstract("resnet18", num_filters=4)
  assert big.stem_conv.kernel.shape == (7, 7, 3, 4) and big.stem_conv.strides == (2, 2)
  # projection shortcuts exactly where the shape changes
  assert [b.proj_conv is not None for b in big.blocks] == [False, False, True, False, True, False, True, False]
  r50 = abstract("resnet50", num_filters=4)
  assert [b.proj_conv is not None for b in r50.blocks][:4] == [True, False, False, True]
  # v1.5: the stride sits on the 3x3 conv of the bottleneck
  b = r50.blocks[3]
  assert b.conv1.strides == (1, 1) and b.conv2.strides == (2, 2) and b.conv2.kernel.shape[:2] == (3, 3)
  assert b.proj_conv.strides == (2, 2)
  assert len(abstract("resnet34", num_filters=4).blocks) == 16


# ----------------------------------------------------------------------------- train / eval modes


def test_dropout_only_in_train_mode_and_deterministic_given_rngs():
  model = build("cnn96", image_size=16)
  x = images(4, 16)
  ev1, ev2 = run(model, x, train=False), run(model, x, train=False)
  np.testing.assert_array_equal(ev1, ev2)
  tr_a = run(model, x, train=True, rngs=drop(1))
  tr_a2 = run(model, x, train=True, rngs=drop(1))
  tr_b = run(model, x, train=True, rngs=drop(2))
  np.testing.assert_array_equal(tr_a, tr_a2)
  assert not np.allclose(tr_a, tr_b)
  assert not np.allclose(tr_a, ev1)
  # a raw key works too; one Rngs object advances between calls
  np.testing.assert_array_equal(
    run(model, x, train=True, rngs=jax.random.key(3, impl="rbg")),
    run(model, x, train=True, rngs=jax.random.key(3, impl="rbg")),
  )
  rngs = drop(1)
  assert not np.allclose(run(model, x, train=True, rngs=rngs), run(model, x, train=True, rngs=rngs))
  # eager (un-jitted) calls agree with the jitted ones
  np.testing.assert_allclose(model(x, train=True, rngs=drop(1)), tr_a, rtol=1e-5, atol=1e-6)
  # dropout 0 -> train output equals eval output (cnn96 has no BatchNorm)
  plain = build("cnn96", image_size=16, dropout=0.0)
  np.testing.assert_allclose(run(plain, x, train=True), run(plain, x, train=False), rtol=1e-5, atol=1e-6)


def test_train_without_rngs_raises_only_when_there_is_dropout():
  x = images(2, 16)
  with pytest.raises(ValueError, match="needs rngs"):
    build("cnn96", image_size=16)(x, train=True)
  with pytest.raises(ValueError, match="needs rngs"):
    build("resnet18_small", dropout=0.5, **TINY).classify(jnp.ones((2, 2, 2, 32)), train=True)
  # no dropout (or eval mode): no rngs needed; cnn96's dropout sits after its (only) conv, so
  # features() needs none either
  assert run(build("cnn_bn3", image_size=16), x, train=True).shape == (2, 1)
  assert run_features(build("cnn96", image_size=16), x, train=True).shape == (2, 16, 16, 96)


def test_batchnorm_running_stats_update_only_in_train():
  model = build("cnn_bn3", image_size=16)
  x = images(8, 16) * 3.0 + 1.0
  before, params_before = batch_stats_of(model), params_of(model)
  out_eval = run(model, x, train=False)
  for a, b in zip(before, batch_stats_of(model)):
    np.testing.assert_array_equal(a, b)
  out_train = run(model, x, train=True)
  after = batch_stats_of(model)
  assert all(not np.allclose(a, b) for a, b in zip(before, after))
  for a, b in zip(params_before, params_of(model)):  # forward passes never touch params
    np.testing.assert_array_equal(a, b)
  # first BN: running mean = 0.9 * 0 + 0.1 * batch mean of conv1's output (momentum 0.9)
  conv_out = model.convs[0](x)
  np.testing.assert_allclose(model.norms[0].mean[...], 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  # train mode normalises with batch statistics: differs from eval with fresh running stats
  assert not np.allclose(out_train, out_eval)
  # eval mode uses the (updated) running averages, deterministically
  out_eval2 = run(model, x, train=False)
  assert not np.allclose(out_eval2, out_eval)
  np.testing.assert_array_equal(run(model, x, train=False), out_eval2)


def test_resnet_batchnorm_train_vs_eval():
  model = build("resnet", **SHORT_RESNET)
  x = images(4, 16)
  before = batch_stats_of(model)
  run(model, x, train=False)
  assert all(np.array_equal(a, b) for a, b in zip(before, batch_stats_of(model)))
  run(model, x, train=True)
  assert all(not np.allclose(a, b) for a, b in zip(before, batch_stats_of(model)))


def test_real_init_is_deterministic_given_rngs():
  """Real (jax.random) initialisation: same seed, same parameters; ResNet kernels He-normal."""
  kw = dict(conv_features=(4,), global_pool="avg")
  a = params_of(create_model("cnn", 2, rngs=nnx.Rngs(7), **kw))
  b = params_of(create_model("cnn", 2, rngs=nnx.Rngs(7), **kw))
  c = params_of(create_model("cnn", 2, rngs=nnx.Rngs(8), **kw))
  assert all(np.array_equal(u, v) for u, v in zip(a, b))
  assert not all(np.array_equal(u, v) for u, v in zip(a, c))
  # (an rbg key: cheaper to compile; the init distribution does not depend on the key impl)
  res = create_model(
    "resnet", 2, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")), stage_sizes=(1,), num_filters=4, small_images=True
  )
  # ResNet convs: kaiming normal, fan-out: std sqrt(2 / (3 * 3 * 4)) = 0.236 (36 fan-out per kernel)
  kernels = np.concatenate([np.ravel(res.blocks[0].conv1.kernel[...]), np.ravel(res.blocks[0].conv2.kernel[...])])
  assert 0.18 < kernels.std() < 0.29


# ----------------------------------------------------------------------------- composition & grads

COMPOSITION_CASES = {
  "cnn96": ("cnn96", {"image_size": 16}),
  "cnn_bn3": ("cnn_bn3", {"image_size": 16, "conv_dropout": 0.2}),
  "cnn_lenet4": ("cnn_lenet4", {"image_size": 16, "dense_dropout": 0.5}),
  "cnn_avg": (
    "cnn",
    {
      "conv_features": (4, 6),
      "kernel_sizes": (3, 5),
      "pool": ("avg", None),
      "global_pool": "avg",
      "dense_features": (8,),
      "dropout": 0.2,
      "batch_norm": True,
    },
  ),
  # Short ResNets (XLA compiles a tiny ResNet-18's gradient in ~5 s here, a ResNet-50's in ~20 s;
  # their blocks repeat these): basic blocks + small stem + head dropout (identity and projection
  # shortcuts), and bottleneck blocks + ImageNet stem.
  "resnet_basic_small": (
    "resnet",
    {"stage_sizes": (2, 1), "block": "basic", "num_filters": 4, "small_images": True, "dropout": 0.2},
  ),
  "resnet_bottleneck": ("resnet", {"stage_sizes": (1, 1), "block": "bottleneck", "num_filters": 4}),
}


@functools.cache
def case_results(case: str):
  """For a case: eval/train logits directly and via classify(features(x)), and the parameter
  gradients of a BCE loss on the binary head - all from one jitted function (one compile)."""
  name, overrides = COMPOSITION_CASES[case]
  model = build(name, 2, **overrides)
  x, y = images(8, 16, seed=1), jnp.array([0, 1] * 4, jnp.float32)

  @nnx.jit
  def compute(model, x, y):
    ev = model(x, train=False)
    ev_composed = model.classify(model.features(x, train=False), train=False)
    if model.has_dropout:
      # train mode: the same Rngs stream for both halves reproduces __call__'s masks (without
      # dropout the train path is the eval path with batch statistics: not re-checked, to
      # save compile time)
      tr = model(x, train=True, rngs=drop(4))
      rngs = drop(4)
      tr_composed = model.classify(model.features(x, train=True, rngs=rngs), train=True, rngs=rngs)
    else:
      tr = tr_composed = None

    def loss_fn(model, rngs):
      logits = model(x, train=True, rngs=rngs)[:, 0]
      return jnp.mean(jnp.logaddexp(0.0, logits) - y * logits)  # sigmoid BCE

    grads = nnx.grad(loss_fn)(model, drop(5))
    return ev, ev_composed, tr, tr_composed, grads

  return model, compute(model, x, y)


@pytest.mark.parametrize("case", list(COMPOSITION_CASES))
def test_features_then_classify_equals_call(case):
  _, (ev, ev_composed, tr, tr_composed, _) = case_results(case)
  assert ev.shape == (8, 1)
  np.testing.assert_allclose(ev_composed, ev, rtol=1e-5, atol=1e-6)
  if tr is not None:
    np.testing.assert_allclose(tr_composed, tr, rtol=1e-5, atol=1e-6)
  assert (tr is not None) == (case != "resnet_bottleneck")


@pytest.mark.parametrize("case", list(COMPOSITION_CASES))
def test_gradient_reaches_every_parameter(case):
  model, (*_, grads) = case_results(case)
  flat = nnx.to_flat_state(grads)
  assert len(flat) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
  zero = [path for path, g in flat if not np.any(np.asarray(g[...]))]
  assert not zero, f"zero gradient for {zero}"
  assert all(np.all(np.isfinite(np.asarray(g[...]))) for _, g in flat)


def test_jitted_train_step_updates_params_and_batch_stats():
  import optax

  model = build("cnn_bn3", image_size=16, dropout=0.1)
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  x, y = images(8, 16, seed=2), jnp.array([0, 1] * 4, jnp.float32)

  @nnx.jit
  def step(model, opt, rngs):
    def loss_fn(model, rngs):  # rngs passed through (not closed over) for nnx.grad
      logits = model(x, train=True, rngs=rngs)[:, 0]
      return optax.sigmoid_binary_cross_entropy(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model, rngs)
    opt.update(model, grads)
    return loss

  p0, s0 = params_of(model), batch_stats_of(model)
  rngs = drop(0)
  losses = [float(step(model, opt, rngs)) for _ in range(3)]
  assert all(np.isfinite(losses))
  assert all(not np.array_equal(a, b) for a, b in zip(p0, params_of(model)))
  assert all(not np.array_equal(a, b) for a, b in zip(s0, batch_stats_of(model)))


def test_bfloat16_compute_train_step_keeps_float32_params():
  """dtype="bfloat16": convs and matmuls run in bf16, while parameters, BatchNorm statistics,
  gradients, the optimizer update and the logits stay float32 (checkpoints are unchanged)."""
  import optax

  f32 = build("resnet", **SHORT_RESNET)
  model = build("resnet", **SHORT_RESNET, dtype="bfloat16")
  assert jax.tree.map(lambda a: (a.shape, a.dtype), nnx.state(model)) == jax.tree.map(
    lambda a: (a.shape, a.dtype), nnx.state(f32)
  )
  x, y = images(8, 16, seed=4), jnp.array([0, 1] * 4, jnp.float32)
  jaxpr = jax.make_jaxpr(lambda x: model(x, train=False))(x)
  convs = [e for e in jaxpr.jaxpr.eqns if str(e.primitive) == "conv_general_dilated"]
  assert convs and all(e.invars[0].aval.dtype == jnp.bfloat16 for e in convs)
  logits, ref = run(model, x, train=False), run(f32, x, train=False)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, ref, rtol=0.1, atol=0.1 * float(jnp.abs(ref).max()))

  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt):
    def loss_fn(model):
      return optax.sigmoid_binary_cross_entropy(model(x, train=True)[:, 0], y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss, grads

  p0 = params_of(model)
  for _ in range(3):
    loss, grads = step(model, opt)
    assert np.isfinite(float(loss))
  assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  assert {p.dtype for p in params_of(model) + batch_stats_of(model)} == {np.dtype(np.float32)}
  assert all(not np.array_equal(a, b) for a, b in zip(p0, params_of(model)))


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu", "swish"])
def test_activations_selectable(act):
  x = images(2, 16)
  cnn = build("cnn_bn3", image_size=16, activation=act)
  # ResNet: one non-default activation is enough (the same lookup; relu runs everywhere else)
  res = [build("resnet", activation=act, **SHORT_RESNET)] if act == "swish" else []
  for model in [cnn, *res]:
    assert model.activation_name == act
    f = np.asarray(run_features(model, x, train=True))
    if act == "relu":
      assert f.min() >= 0
    elif act == "tanh":
      assert -1 <= f.min() < 0 and f.max() <= 1
    elif act == "leaky_relu":
      assert f.min() < 0
    else:  # swish >= -0.2785
      assert -0.28 < f.min() < 0
  if act != "relu":
    relu = build("cnn_bn3", image_size=16, activation="relu")
    assert not np.allclose(run(cnn, x, train=False), run(relu, x, train=False))


def test_image_size_option():
  m32 = build("cnn96", image_size=32)
  assert run(m32, images(1, 32), train=False).shape == (1, 1)
  with pytest.raises(ValueError, match="image_size=32"):
    m32(images(1, 16), train=False)
  # accepted (and unused) by size-agnostic models
  res = abstract("resnet18_small", num_filters=4, image_size=123)
  assert nnx.eval_shape(lambda m, x: m(x, train=False), res, images(1, 16)).shape == (1, 1)
  avg = abstract("cnn", conv_features=(4,), global_pool="avg")
  for size in (16, 24):
    assert nnx.eval_shape(lambda m, x: m(x, train=False), avg, images(1, size)).shape == (1, 1)
  # small_images override on the ImageNet-stem names
  assert abstract("resnet18", num_filters=4, small_images=True).small_images


def test_name_lookup_is_forgiving_and_classes_are_usable_directly():
  assert isinstance(abstract("ResNet18-Small", num_filters=4), models.ResNet)
  model = nnx.eval_shape(lambda: models.ResNet18(num_filters=4, small_images=True, num_classes=3, rngs=nnx.Rngs(0)))
  assert nnx.eval_shape(lambda m, x: m(x, train=False), model, images(1, 16)).shape == (1, 3)
  cnn = nnx.eval_shape(
    lambda: models.CNN(
      (4,),
      3,
      batch_norm=True,
      pool="max",
      dense_features=(),
      dropout=0.0,
      activation="relu",
      num_classes=2,
      head="auto",
      rngs=nnx.Rngs(0),
      global_pool="avg",
    )
  )
  assert nnx.eval_shape(lambda m, x: m(x, train=False), cnn, images(1, 16)).shape == (1, 1)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(name="vgg16"), "unknown model 'vgg16'"),
    (dict(name="cnn96", head="sigmoid"), "unknown head"),
    (dict(name="cnn96", num_classes=3, head="binary"), "needs num_classes == 2"),
    (dict(name="cnn96", num_classes=1), "num_classes must be an int >= 2"),
    (dict(name="cnn96", activation="mish"), "unknown activation"),
    (dict(name="cnn96", pool="median"), "unknown pool"),
    (dict(name="cnn96", dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(name="cnn96", global_pool="max"), "unknown global_pool"),
    (dict(name="cnn96", padding="FULL"), "padding"),
    (dict(name="cnn96", bogus=1), r"unknown option\(s\) \['bogus'\]"),
    (dict(name="cnn96", num_filters=8), r"unknown option\(s\) \['num_filters'\]"),
    (dict(name="cnn_bn3", kernel_sizes=(3, 3)), "kernel_sizes has 2 entries"),
    (dict(name="cnn_lenet4", image_size=8), "too small"),
    (dict(name="cnn", dense_features=(8,)), r"needs option\(s\) \['conv_features'\]"),
    (dict(name="cnn", conv_features=()), "conv_features must be a non-empty"),
    (dict(name="resnet18", block="wide"), "unknown block"),
    (dict(name="resnet", num_filters=4), r"needs option\(s\) \['stage_sizes'\]"),
    (dict(name="resnet18", num_filters=0), "num_filters"),
    (dict(name="resnet18", small_image=True), "unknown option"),
  ],
)
def test_bad_names_and_config_raise_value_error(kwargs, match):
  kwargs = dict(kwargs)
  name, num_classes = kwargs.pop("name"), kwargs.pop("num_classes", 2)
  with pytest.raises(ValueError, match=match):
    nnx.eval_shape(lambda: create_model(name, num_classes, rngs=nnx.Rngs(0), **kwargs))


def test_bad_inputs_raise_value_error():
  model = abstract("cnn_bn3", image_size=16)
  for bad, match in [(images(1, 16, channels=1), "input channels"), (jnp.zeros((16, 16, 3)), "NHWC")]:
    with pytest.raises(ValueError, match=match):
      nnx.eval_shape(lambda m, x: m(x, train=False), model, bad)
  gray = abstract("cnn_bn3", image_size=16, in_features=1)
  assert nnx.eval_shape(lambda m, x: m(x, train=False), gray, images(1, 16, channels=1)).shape == (1, 1)
