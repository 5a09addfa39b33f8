"""Fast-path layer ops of vaeaug.models.layers against flax's reduce_window pools."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vaeaug.models import layers

SHAPES = [(2, 8, 8, 3), (2, 7, 9, 4), (3, 2, 3, 2), (1, 16, 15, 6)]


def flax_max_2x2(x):
  return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def flax_avg_2x2(x):
  return nnx.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def flax_max_3x3_s2(x):
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


@functools.partial(jax.jit, static_argnums=0)
def grad_of(pool, x, w):
  """Gradient of sum(pool(x) * w): a random upstream gradient w. (Jitted: one compile instead
  of one per eager op.)"""
  return jax.grad(lambda x: jnp.sum(pool(x) * w))(x)


@functools.partial(jax.jit, static_argnums=(0, 1))
def forward_and_grads(ours, reference, x, w):
  return ours(x), reference(x), grad_of(ours, x, w), grad_of(reference, x, w)


def normal(seed, shape):
  """Test inputs from numpy (eager jax.random compiles per shape: slow in tests)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def random_case(shape, seed, pool):
  x = normal(seed, shape)  # continuous: no ties (almost surely)
  w = normal(seed + 1, jax.eval_shape(pool, x).shape)
  return x, w


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
  "ours, reference",
  [
    (layers.max_pool_2x2, flax_max_2x2),
    (layers.avg_pool_2x2, flax_avg_2x2),
    (layers.max_pool_3x3_s2, flax_max_3x3_s2),
  ],
  ids=["max2x2", "avg2x2", "max3x3s2"],
)
def test_pool_forward_and_gradient_match_flax(shape, ours, reference):
  x, w = random_case(shape, sum(shape), reference)
  assert len(np.unique(np.asarray(x))) == x.size  # no ties
  out, ref, g_ours, g_ref = forward_and_grads(ours, reference, x, w)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(g_ours, g_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
  "shape, expected",
  [
    ((2, 7, 9, 4), (2, 3, 4, 4)),
    ((1, 2, 2, 1), (1, 1, 1, 1)),
    ((1, 3, 3, 1), (1, 1, 1, 1)),
  ],
)
def test_2x2_pools_crop_odd_sizes_like_valid(shape, expected):
  x = normal(0, shape)
  assert layers.max_pool_2x2(x).shape == expected
  assert layers.avg_pool_2x2(x).shape == expected
  # The cropped last row / column receives no gradient.
  g = grad_of(layers.max_pool_2x2, x, jnp.ones(expected))
  if shape[1] % 2:
    assert np.all(np.asarray(g)[:, -1] == 0)
  if shape[2] % 2:
    assert np.all(np.asarray(g)[:, :, -1] == 0)


@pytest.mark.parametrize("size, out", [(16, 8), (15, 8), (7, 4), (2, 1), (1, 1)])
def test_max_pool_3x3_s2_output_is_ceil_half(size, out):
  x = normal(size, (1, size, size, 2))
  assert layers.max_pool_3x3_s2(x).shape == (1, out, out, 2)
  np.testing.assert_array_equal(layers.max_pool_3x3_s2(x), flax_max_3x3_s2(x))


def test_max_pool_2x2_gradient_at_ties_matches_flax():
  """The custom backward sends each window's gradient to its first maximum in row-major order
  (reduce_window's and PyTorch's choice): equal to flax's gradient with ties, odd sizes and
  extra leading dims."""
  rng = np.random.default_rng(0)
  for shape in [(2, 8, 8, 3), (1, 7, 9, 2), (2, 3, 4, 6, 1)]:
    x = jnp.asarray(np.maximum(rng.integers(-2, 3, shape), 0).astype(np.float32))  # many ties
    w = normal(1, jax.eval_shape(layers.max_pool_2x2, x).shape)
    flat = lambda a: a.reshape(-1, *a.shape[-3:])  # noqa: E731 (flax pools take one batch axis)
    out, ref, g_ours, g_ref = forward_and_grads(layers.max_pool_2x2, flax_max_2x2, flat(x), flat(w))
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(g_ours, g_ref)
    np.testing.assert_array_equal(flat(grad_of(layers.max_pool_2x2, x, w)), g_ours)
  window_values = [
    [[3.0, 3.0], [3.0, 3.0]],
    [[1.0, 5.0], [5.0, 0.0]],
    [[2.0, 0.0], [2.0, 1.0]],
    [[0.0, 0.0], [0.0, 7.0]],
  ]
  x = jnp.asarray(np.concatenate(window_values, axis=1)[None, :, :, None].astype(np.float32))
  g = np.asarray(grad_of(layers.max_pool_2x2, x, jnp.array([1.0, 2.0, -3.0, 4.0]).reshape(1, 1, 4, 1)))
  np.testing.assert_array_equal(g[0, :, :, 0], [[1, 0, 0, 2, -3, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 4]])


def test_pools_accept_unbatched_and_extra_leading_dims():
  x = normal(1, (2, 3, 6, 6, 4))
  out = layers.max_pool_2x2(x)
  assert out.shape == (2, 3, 3, 3, 4)
  np.testing.assert_array_equal(out[1], flax_max_2x2(x[1]))
  np.testing.assert_array_equal(layers.max_pool_2x2(x[0, 0]), flax_max_2x2(x[0, :1])[0])
  np.testing.assert_allclose(layers.avg_pool_2x2(x[0, 0]), flax_avg_2x2(x[0, :1])[0], rtol=1e-6, atol=1e-6)


def test_pools_under_jit():
  x = normal(2, (2, 9, 9, 3))
  np.testing.assert_array_equal(jax.jit(layers.max_pool_2x2)(x), flax_max_2x2(x))
  np.testing.assert_array_equal(jax.jit(layers.max_pool_3x3_s2)(x), flax_max_3x3_s2(x))


def test_pool_errors():
  with pytest.raises(ValueError, match="H, W >= 2"):
    layers.max_pool_2x2(jnp.zeros((1, 1, 4, 3)))
  with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
    layers.avg_pool_2x2(jnp.zeros((4, 4)))
  with pytest.raises(ValueError, match="unknown pool"):
    layers.pool_2x2("median")
  assert layers.pool_2x2("max") is layers.max_pool_2x2
  assert layers.pool_2x2("avg") is layers.avg_pool_2x2
  assert layers.pool_2x2(None) is None and layers.pool_2x2("none") is None


def test_global_avg_pool():
  x = normal(3, (2, 5, 7, 4))
  np.testing.assert_allclose(layers.global_avg_pool(x), np.asarray(x).mean(axis=(1, 2)), rtol=1e-6)
  assert layers.global_avg_pool(x).shape == (2, 4)


def test_activations():
  x = jnp.array([-2.0, -0.5, 0.0, 1.5])
  np.testing.assert_allclose(layers.activation("relu")(x), [0, 0, 0, 1.5])
  np.testing.assert_allclose(layers.activation("tanh")(x), np.tanh(x), rtol=1e-6)
  np.testing.assert_allclose(layers.activation("leaky_relu")(x), [-0.02, -0.005, 0, 1.5], rtol=1e-6)
  np.testing.assert_allclose(layers.activation("swish")(x), x / (1 + np.exp(-x)), rtol=1e-6)
  np.testing.assert_allclose(layers.activation("SiLU")(x), layers.activation("swish")(x))
  np.testing.assert_allclose(layers.activation("identity")(x), x)
  for name in layers.ACTIVATIONS:
    assert layers.activation(name)(x).shape == x.shape
  with pytest.raises(ValueError, match="unknown activation 'mish'"):
    layers.activation("mish")
  with pytest.raises(ValueError, match="unknown activation"):
    layers.activation(None)


# ----------------------------------------------------------------------------- tiny-map convolution

CONV_CASES = [  # (H, W, kernel, stride, padding)
  (2, 2, 3, 1, ((1, 1), (1, 1))),  # ResNet 3x3 on a 2x2 map
  (1, 1, 3, 1, "SAME"),
  (3, 3, 3, 2, "SAME"),  # asymmetric SAME padding (0, 1)
  (3, 3, 3, 1, "VALID"),
  (2, 2, 1, 1, "VALID"),  # 1x1 conv (bottleneck)
  (3, 3, 1, 2, ((0, 0), (0, 0))),  # strided 1x1 projection
  (2, 2, 7, 2, ((3, 3), (3, 3))),
  (3, 2, 3, 2, ((1, 1), (1, 1))),  # non-square
  (3, 3, 2, 1, "SAME"),  # even kernel
  (8, 8, 3, 1, "SAME"),  # large map: XLA's own conv
]


def lax_conv(x, k, stride, padding):
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
  return jax.lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=dn)


def our_conv(x, k, stride, padding):
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
  return layers.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=dn)


@pytest.mark.parametrize("h, w, k, stride, padding", CONV_CASES)
def test_conv_fast_path_matches_lax(h, w, k, stride, padding):
  x, kernel = normal(h * w + k, (2, h, w, 5)), normal(stride + k, (k, k, 5, 4))
  pad = padding if isinstance(padding, str) else tuple(padding)

  @jax.jit
  def both(x, kernel):
    ref, ours = lax_conv(x, kernel, stride, pad), our_conv(x, kernel, stride, pad)
    w = jnp.arange(ref.size, dtype=jnp.float32).reshape(ref.shape) / ref.size - 0.5
    g_ref = jax.grad(lambda a, b: jnp.sum(lax_conv(a, b, stride, pad) * w), argnums=(0, 1))(x, kernel)
    g_ours = jax.grad(lambda a, b: jnp.sum(our_conv(a, b, stride, pad) * w), argnums=(0, 1))(x, kernel)
    return ref, ours, g_ref, g_ours

  ref, ours, g_ref, g_ours = both(x, kernel)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_fast_path_is_used_only_for_tiny_maps():
  k = jnp.zeros((3, 3, 4, 16))  # too many multiply-adds for the shifted-sum path

  def primitives(size):
    jaxpr = jax.make_jaxpr(lambda x: our_conv(x, k, 1, "SAME"))(jnp.zeros((1, size, size, 4)))
    return {str(e.primitive) for e in jaxpr.jaxpr.eqns}

  # im2col when the input has <= 9 pixels or the output <= 16 (a 4x4 SAME conv); XLA beyond.
  assert "conv_general_dilated" not in primitives(3) and "dot_general" in primitives(3)
  assert "conv_general_dilated" not in primitives(4)
  assert "conv_general_dilated" in primitives(5)
  # dilated / grouped convs always go to XLA
  jaxpr = jax.make_jaxpr(
    lambda x: layers.conv_general_dilated(
      x,
      jnp.zeros((3, 3, 2, 4)),
      (1, 1),
      "SAME",
      rhs_dilation=(1, 1),
      feature_group_count=2,
      dimension_numbers=jax.lax.conv_dimension_numbers((1, 2, 2, 4), (3, 3, 2, 4), ("NHWC", "HWIO", "NHWC")),
    )
  )(jnp.zeros((1, 2, 2, 4)))
  assert "conv_general_dilated" in {str(e.primitive) for e in jaxpr.jaxpr.eqns}


def test_conv_module_equals_nnx_conv():
  # numpy kernel init: jax.random init compiles for seconds per shape on this CPU
  init = lambda key, shape, dtype: normal(7, shape)  # noqa: E731
  kw = dict(strides=(2, 2), padding="SAME", kernel_init=init, bias_init=init, rngs=nnx.Rngs(0))
  ours, ref = layers.Conv(3, 5, (3, 3), **kw), nnx.Conv(3, 5, (3, 3), **kw)
  np.testing.assert_array_equal(ours.kernel[...], ref.kernel[...])
  call = nnx.jit(lambda m, x: m(x))
  for size in (2, 6):
    x = normal(size, (2, size, size, 3))
    np.testing.assert_allclose(call(ours, x), call(ref, x), rtol=1e-5, atol=1e-5)


def test_max_pool_3x3_s2_gradient_at_ties_matches_flax():
  """The custom backward sends each window's gradient to its first maximum in row-major
  order - the entry reduce_window's select_and_scatter picks - so even with ties (ReLU zeros,
  repeated values) the gradient equals flax's exactly, and odd sizes / padding are handled."""
  rng = np.random.default_rng(0)
  for shape in [(2, 8, 8, 3), (1, 7, 9, 2), (1, 4, 4, 1)]:
    x = jnp.asarray(np.maximum(rng.integers(-2, 3, shape), 0).astype(np.float32))  # many ties
    w = normal(1, jax.eval_shape(flax_max_3x3_s2, x).shape)
    out, ref, g_ours, g_ref = forward_and_grads(layers.max_pool_3x3_s2, flax_max_3x3_s2, x, w)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-6, atol=1e-6)
  x = jnp.zeros((1, 4, 4, 1))  # all tied: the top-left entry of each window wins
  g = np.asarray(grad_of(layers.max_pool_3x3_s2, x, jnp.ones((1, 2, 2, 1))))[0, :, :, 0]
  np.testing.assert_array_equal(g, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


# (H, W, C_in, C_out, kernel, stride, padding): maps of >= KERNEL_GRAD_MIN_PIXELS pixels with
# >= KERNEL_GRAD_MIN_FEATURES output channels, and 1x1 convs, take the matmul kernel gradient.
KERNEL_GRAD_CASES = [
  (32, 32, 3, 96, 3, 1, "SAME"),  # few input channels: one matmul per kernel row
  (32, 32, 8, 96, 3, 1, "SAME"),  # one matmul per kernel tap
  (33, 32, 8, 100, 3, 2, "SAME"),  # stride 2, asymmetric SAME padding
  (32, 34, 4, 96, 5, 1, ((2, 1), (0, 3))),  # explicit uneven padding, 5x5
  (32, 32, 8, 96, 1, 1, "VALID"),  # 1x1
  (8, 8, 16, 24, 1, 1, "VALID"),  # 1x1 convs of any size and width (bottlenecks)
  (12, 10, 16, 32, 1, 2, "VALID"),  # strided 1x1 projection
]


@pytest.mark.parametrize("h, w, cin, cout, k, stride, padding", KERNEL_GRAD_CASES)
def test_conv_matmul_kernel_grad_matches_lax(h, w, cin, cout, k, stride, padding):
  x, kernel = normal(h + cin, (2, h, w, cin)), normal(cout + k, (k, k, cin, cout)) / np.sqrt(k * k * cin)
  pad = padding if isinstance(padding, str) else tuple(padding)
  assert (h * w >= layers.KERNEL_GRAD_MIN_PIXELS and cout >= layers.KERNEL_GRAD_MIN_FEATURES) or k == 1
  jaxpr = jax.make_jaxpr(lambda a, b: our_conv(a, b, stride, pad))(x, kernel)
  assert "custom_vjp_call" in {str(e.primitive) for e in jaxpr.jaxpr.eqns}

  @jax.jit
  def both(x, kernel):
    ref, ours = lax_conv(x, kernel, stride, pad), our_conv(x, kernel, stride, pad)
    wt = normal(3, ref.shape)
    g_ref = jax.grad(lambda a, b: jnp.sum(lax_conv(a, b, stride, pad) * wt), argnums=(0, 1))(x, kernel)
    g_ours = jax.grad(lambda a, b: jnp.sum(our_conv(a, b, stride, pad) * wt), argnums=(0, 1))(x, kernel)
    return ref, ours, g_ref, g_ours

  ref, ours, g_ref, g_ours = both(x, kernel)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_ours[0], g_ref[0], rtol=1e-4, atol=1e-4)  # input gradient
  np.testing.assert_allclose(g_ours[1], g_ref[1], rtol=1e-4, atol=2e-3)  # kernel gradient (sums 2*h*w terms)


def test_conv_matmul_kernel_grad_only_for_large_maps_with_many_outputs_and_1x1():
  def primitives(size, cout, k=3):
    kernel = jnp.zeros((k, k, 8, cout))
    jaxpr = jax.make_jaxpr(lambda x: our_conv(x, kernel, 1, "SAME"))(jnp.zeros((1, size, size, 8)))
    return {str(e.primitive) for e in jaxpr.jaxpr.eqns}

  assert "custom_vjp_call" in primitives(32, 96)
  assert "custom_vjp_call" not in primitives(31, 96) and "conv_general_dilated" in primitives(31, 96)
  assert "custom_vjp_call" not in primitives(32, 95)
  assert "custom_vjp_call" in primitives(5, 48, k=1)
  assert "custom_vjp_call" not in primitives(4, 48, k=1)  # 16 output pixels: im2col


# (N, H, W, C_in, C_out, kernel, padding): stride-1 convs with at most SHIFT_CONV_MAX_MACS
# multiply-adds per output pixel take the shifted-sum forward and the chunked XLA backward.
SHIFT_CASES = [
  (5, 16, 16, 3, 4, 3, "SAME"),  # cnn_bn3's first conv; 5 images in 4 uneven backward chunks
  (4, 9, 7, 4, 8, 3, "VALID"),  # its second, non-square, no padding
  (3, 10, 12, 2, 3, 5, ((2, 1), (0, 3))),  # 5x5, uneven explicit padding
  (2, 8, 8, 3, 6, 1, "VALID"),  # 1x1
  (1, 6, 6, 1, 1, 3, "SAME"),  # one image: one chunk
]


@pytest.mark.parametrize("n, h, w, cin, cout, k, padding", SHIFT_CASES)
def test_shift_conv_matches_lax(n, h, w, cin, cout, k, padding):
  x, kernel = normal(h + cin, (n, h, w, cin)), normal(cout + k, (k, k, cin, cout)) / np.sqrt(k * k * cin)
  pad = padding if isinstance(padding, str) else tuple(padding)
  assert k * k * cin * cout <= layers.SHIFT_CONV_MAX_MACS
  jaxpr = jax.make_jaxpr(lambda a, b: our_conv(a, b, 1, pad))(x, kernel)
  assert {str(e.primitive) for e in jaxpr.jaxpr.eqns} == {"custom_vjp_call"}

  @jax.jit
  def both(x, kernel):
    ref, ours = lax_conv(x, kernel, 1, pad), our_conv(x, kernel, 1, pad)
    wt = normal(3, ref.shape)
    g_ref = jax.grad(lambda a, b: jnp.sum(lax_conv(a, b, 1, pad) * wt), argnums=(0, 1))(x, kernel)
    g_ours = jax.grad(lambda a, b: jnp.sum(our_conv(a, b, 1, pad) * wt), argnums=(0, 1))(x, kernel)
    return ref, ours, g_ref, g_ours

  ref, ours, g_ref, g_ours = both(x, kernel)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_ours[0], g_ref[0], rtol=1e-5, atol=1e-5)  # input gradient
  np.testing.assert_allclose(g_ours[1], g_ref[1], rtol=1e-4, atol=1e-4)  # kernel gradient, chunk sums


def test_shift_conv_only_for_few_multiply_adds_at_stride_1_in_float32():
  def path(kernel_shape, stride=1, dtype=jnp.float32):
    x = jnp.zeros((2, 16, 16, kernel_shape[2]), dtype)
    jaxpr = jax.make_jaxpr(lambda x: our_conv(x, jnp.zeros(kernel_shape, dtype), stride, "SAME"))(x)
    return {str(e.primitive) for e in jaxpr.jaxpr.eqns}

  shifted = path((3, 3, 4, 8))  # 288 multiply-adds per pixel
  assert "custom_vjp_call" in shifted and "conv_general_dilated" not in shifted
  assert "conv_general_dilated" in path((3, 3, 4, 9))
  assert "conv_general_dilated" in path((3, 3, 3, 4), stride=2)
  assert "conv_general_dilated" in path((3, 3, 3, 4), dtype=jnp.bfloat16)


DEPTHWISE_CASES = [
  # n, h, w, channels, k, stride, padding
  (8, 9, 7, 6, 3, 1, "SAME"),  # 8 images: the kernel gradient is summed over 2 chunks
  (8, 10, 10, 5, 3, 2, ((1, 1), (1, 1))),  # MobileNet's stride-2 3x3, PyTorch padding
  (6, 11, 11, 4, 5, 2, "SAME"),  # EfficientNet's 5x5 at stride 2; 6 images: no chunks
  (4, 8, 8, 3, 3, 1, "VALID"),
  (3, 7, 6, 2, 3, 2, ((1, 1), (0, 2))),  # uneven padding, odd sizes
]


def depthwise(conv, x, kernel, stride, padding):
  dn = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
  return conv(x, kernel, (stride, stride), padding, dimension_numbers=dn, feature_group_count=x.shape[-1])


@pytest.mark.parametrize("n, h, w, c, k, stride, padding", DEPTHWISE_CASES)
def test_depthwise_conv_matches_lax(n, h, w, c, k, stride, padding):
  x, kernel = normal(h + c, (n, h, w, c)), normal(k + stride, (k, k, 1, c))
  pad = padding if isinstance(padding, str) else tuple(padding)
  ours = functools.partial(depthwise, layers.conv_general_dilated)
  ref = functools.partial(depthwise, jax.lax.conv_general_dilated)
  jaxpr = jax.make_jaxpr(lambda a, b: ours(a, b, stride, pad))(x, kernel)
  assert {str(e.primitive) for e in jaxpr.jaxpr.eqns} == {"custom_vjp_call"}
  wt = normal(3, ref(x, kernel, stride, pad).shape)
  g_ref = jax.grad(lambda a, b: jnp.sum(ref(a, b, stride, pad) * wt), argnums=(0, 1))(x, kernel)
  g_ours = jax.grad(lambda a, b: jnp.sum(ours(a, b, stride, pad) * wt), argnums=(0, 1))(x, kernel)
  np.testing.assert_allclose(ours(x, kernel, stride, pad), ref(x, kernel, stride, pad), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_ours[0], g_ref[0], rtol=1e-5, atol=1e-5)  # input gradient
  np.testing.assert_allclose(g_ours[1], g_ref[1], rtol=1e-4, atol=1e-4)  # kernel gradient, chunk sums


def test_depthwise_path_only_for_one_filter_per_channel_in_float32():
  def primitives(kernel_shape, groups, dtype=jnp.float32):
    x = jnp.zeros((2, 8, 8, 4), dtype)
    dn = ("NHWC", "HWIO", "NHWC")
    fn = lambda x: layers.conv_general_dilated(  # noqa: E731
      x, jnp.zeros(kernel_shape, dtype), (1, 1), "SAME", dimension_numbers=dn, feature_group_count=groups
    )
    return {str(e.primitive) for e in jax.make_jaxpr(fn)(x).jaxpr.eqns}

  assert "custom_vjp_call" in primitives((3, 3, 1, 4), 4) and "conv_general_dilated" not in primitives((3, 3, 1, 4), 4)
  assert "conv_general_dilated" in primitives((3, 3, 1, 8), 4)  # channel multiplier 2
  assert "conv_general_dilated" in primitives((3, 3, 2, 4), 2)  # grouped, not depthwise
  assert "conv_general_dilated" in primitives((3, 3, 1, 4), 4, jnp.bfloat16)


@pytest.mark.parametrize("shape", [(4, 5, 7, 3), (2, 8, 8, 4), (3, 4, 4, 24), (6, 5), (2, 3, 3, 3, 2)])
def test_batch_norm_matches_nnx(shape):
  """layers.BatchNorm (folded statistics) against nnx.BatchNorm: outputs, gradients of input,
  scale and bias, and the running statistics, in training and then in inference mode."""
  features = shape[-1]
  ours, ref = (
    layers.BatchNorm(features, momentum=0.9, rngs=nnx.Rngs(0)),
    nnx.BatchNorm(features, momentum=0.9, rngs=nnx.Rngs(0)),
  )
  for bn in (ours, ref):
    bn.scale[...] = normal(1, (features,))
    bn.bias[...] = normal(2, (features,))
  x = normal(sum(shape), shape) * 3.0 + 1.5
  w = normal(5, shape)

  @nnx.jit
  def train(bn, x):
    def loss(bn, x):
      return jnp.sum(bn(x, use_running_average=False) * w)

    return nnx.grad(loss, argnums=(0, 1))(bn, x), bn(x, use_running_average=False)

  (g_ours, gx_ours), y_ours = train(ours, x)
  (g_ref, gx_ref), y_ref = train(ref, x)
  np.testing.assert_allclose(y_ours, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gx_ours, gx_ref, rtol=1e-4, atol=1e-4)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(getattr(g_ours, name)[...], getattr(g_ref, name)[...], rtol=1e-4, atol=1e-4)
  for name in ("mean", "var"):
    assert not np.allclose(getattr(ref, name)[...], 0.0 if name == "mean" else 1.0)  # updated
    np.testing.assert_allclose(getattr(ours, name)[...], getattr(ref, name)[...], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours(x, use_running_average=True), ref(x, use_running_average=True), rtol=1e-5, atol=1e-5)


def test_batch_norm_falls_back_to_nnx_outside_the_fast_path():
  x = normal(0, (2, 3, 4, 4))
  for kwargs in ({"use_fast_variance": False}, {"axis": 1}, {"dtype": jnp.bfloat16}):
    features = x.shape[kwargs.get("axis", -1)]
    ours, ref = (
      layers.BatchNorm(features, rngs=nnx.Rngs(0), **kwargs),
      nnx.BatchNorm(features, rngs=nnx.Rngs(0), **kwargs),
    )
    np.testing.assert_array_equal(ours(x, use_running_average=False), ref(x, use_running_average=False))
  with pytest.raises(ValueError, match="use_running_average"):
    layers.BatchNorm(4, use_running_average=None, rngs=nnx.Rngs(0))(x)


def test_compute_dtype():
  assert layers.compute_dtype(None) == jnp.float32
  assert layers.compute_dtype("bfloat16") == jnp.bfloat16
  assert layers.compute_dtype(jnp.float16) == jnp.float16
  for bad in ("float64", "int8", "bf16", 3):
    with pytest.raises(ValueError, match="compute dtype"):
      layers.compute_dtype(bad)
