"""PyTorch twins of the project's models and train steps, for `experiments/benchmark.py` only.

Each twin is built from a JAX model (reading its attributes), so both have the same layers, the
same shapes and the same number of trainable parameters (`benchmark.py` and
`tests/test_benchmark.py` assert the counts); the train steps do the same work as the JAX ones
(uint8 -> float, forward, loss, backward, Adam). Initialisation is PyTorch's: throughput does not
depend on it. Layout differences that do not change the computation (NCHW flatten order, SAME
stride-2 padding (0, 1) in XLA vs PyTorch's symmetric 1) are PyTorch's natural choices.

Importing this module needs torch (the `bench` extra).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
  "relu": nn.ReLU,
  "tanh": nn.Tanh,
  "leaky_relu": lambda: nn.LeakyReLU(0.01),
  "swish": nn.SiLU,
  "silu": nn.SiLU,
  "gelu": nn.GELU,
  "elu": nn.ELU,
  "sigmoid": nn.Sigmoid,
  "identity": nn.Identity,
  "linear": nn.Identity,
}
BN_MOMENTUM = 0.1  # = the JAX models' 0.9
BN_EPSILON = 1e-5


def count_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _same_pad(k: int) -> int:
  if k % 2 == 0:
    raise NotImplementedError("even kernels: XLA's SAME pads asymmetrically")
  return k // 2


# ----------------------------------------------------------------------------- classifiers


class CNN(nn.Module):
  """`classifiers.models.CNN`: conv -> [BN] -> act -> [2x2 pool] -> [dropout], flatten / average,
  dropout, dense layers, head."""

  def __init__(self, jax_model):
    super().__init__()
    m = jax_model
    act = _ACTIVATIONS[m.activation_name.lower()]
    blocks, cin = [], m.in_features
    for i, (features, k, pool) in enumerate(zip(m.conv_features, m.kernel_sizes, m.pools)):
      padding = 0 if m.convs[i].padding == "VALID" else _same_pad(k)
      block = [nn.Conv2d(cin, features, k, padding=padding, bias=not m.batch_norm)]
      if m.batch_norm:
        block.append(nn.BatchNorm2d(features, eps=BN_EPSILON, momentum=BN_MOMENTUM))
      block.append(act())
      if pool == "max":
        block.append(nn.MaxPool2d(2))
      elif pool == "avg":
        block.append(nn.AvgPool2d(2))
      if m.conv_dropout.rate > 0:
        block.append(nn.Dropout(m.conv_dropout.rate))
      blocks.append(nn.Sequential(*block))
      cin = features
    self.features = nn.Sequential(*blocks)
    self.global_pool = m.global_pool
    head = [nn.Dropout(m.dropout.rate)] if m.dropout.rate > 0 else []
    width = math.prod(m.flat_shape) if m.global_pool == "flatten" else cin
    for dense in m.dense:
      head += [nn.Linear(width, dense.out_features), act()]
      if m.dense_dropout.rate > 0:
        head.append(nn.Dropout(m.dense_dropout.rate))
      width = dense.out_features
    head.append(nn.Linear(width, m.num_logits))
    self.classifier = nn.Sequential(*head)

  def forward(self, x):
    x = self.features(x)
    x = torch.flatten(x, 1) if self.global_pool == "flatten" else x.mean((2, 3))
    return self.classifier(x)


def _conv_bn(cin, cout, k, stride):
  return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout, BN_EPSILON, BN_MOMENTUM)]


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, features, stride, act):
    super().__init__()
    out = features * self.expansion
    self.branch = nn.Sequential(*_conv_bn(cin, features, 3, stride), act(), *_conv_bn(features, out, 3, 1))
    self.shortcut = nn.Sequential(*_conv_bn(cin, out, 1, stride)) if stride != 1 or cin != out else nn.Identity()
    self.act = act()

  def forward(self, x):
    return self.act(self.shortcut(x) + self.branch(x))


class BottleneckBlock(BasicBlock):
  """v1.5: the stride sits on the 3x3 conv."""

  expansion = 4

  def __init__(self, cin, features, stride, act):
    nn.Module.__init__(self)
    out = features * self.expansion
    self.branch = nn.Sequential(
      *_conv_bn(cin, features, 1, 1),
      act(),
      *_conv_bn(features, features, 3, stride),
      act(),
      *_conv_bn(features, out, 1, 1),
    )
    self.shortcut = nn.Sequential(*_conv_bn(cin, out, 1, stride)) if stride != 1 or cin != out else nn.Identity()
    self.act = act()


class ResNet(nn.Module):
  """`classifiers.models.ResNet` (torchvision's layout: v1.5, ImageNet or small-image stem)."""

  def __init__(self, jax_model):
    super().__init__()
    m = jax_model
    act = _ACTIVATIONS[m.activation_name.lower()]
    width = m.stem_conv.out_features
    k = m.stem_conv.kernel_size[0]
    stem = [*_conv_bn(m.in_features, width, k, m.stem_conv.strides[0]), act()]
    if not m.small_images:
      stem.append(nn.MaxPool2d(3, 2, 1))
    block_cls = BottleneckBlock if m.block_kind == "bottleneck" else BasicBlock
    blocks, cin = [], width
    for i, n in enumerate(m.stage_sizes):
      for j in range(n):
        blocks.append(block_cls(cin, width * 2**i, 2 if i > 0 and j == 0 else 1, act))
        cin = width * 2**i * block_cls.expansion
    self.body = nn.Sequential(*stem, *blocks)
    self.dropout = nn.Dropout(m.dropout.rate) if m.dropout.rate > 0 else nn.Identity()
    self.head = nn.Linear(cin, m.num_logits)

  def forward(self, x):
    return self.head(self.dropout(self.body(x).mean((2, 3))))


def classifier(jax_model) -> nn.Module:
  """The PyTorch twin of a `classifiers.models` model: built here for the CNN and the ResNets,
  timm's model of the same architecture (`jax_model.torch_twin()`) for the others."""
  kind = type(jax_model).__name__
  if kind == "CNN":
    return CNN(jax_model)
  if kind == "ResNet":
    return ResNet(jax_model)
  if hasattr(jax_model, "torch_twin"):
    name, kwargs = jax_model.torch_twin()
    module = timm_model(name, num_classes=jax_model.num_logits, **kwargs)
    return small_stem(module) if getattr(jax_model, "small_images", False) else module
  raise NotImplementedError(f"no PyTorch twin for {kind}")


def small_stem(module: nn.Module) -> nn.Module:
  """A timm MobileNet / EfficientNet / Inception-v3 with the projects' small-image stem (`small_images=True`):
  the first conv at stride 1 and, for Inception, no first max-pool. The parameters are unchanged."""
  if hasattr(module, "conv_stem"):  # MobileNetV2 / V3, EfficientNet
    module.conv_stem.stride = (1, 1)
  elif hasattr(module, "Conv2d_1a_3x3") and hasattr(module, "Pool1"):  # Inception-v3
    module.Conv2d_1a_3x3.conv.stride = (1, 1)
    module.Pool1 = nn.Identity()
  else:
    raise NotImplementedError(f"no small-image stem for {type(module).__name__}")
  return module


def _import_torchvision():
  """Import torchvision when its compiled operators cannot load.

  PyPI's torchvision wheels link against the CUDA build of libtorch; beside the CPU build of torch
  their operator library fails to load, and torchvision 0.28 then stops at import, registering
  shapes for two detection operators (nms, qnms) that were never defined. Defining those two
  schemas lets the pure-Python models import; no torchvision operator is used by them."""
  try:
    import torchvision  # noqa: F401
  except RuntimeError as error:
    if "torchvision::" not in str(error):
      raise
    import sys

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    library = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
      if not torch._C._dispatch_has_kernel(f"torchvision::{op}"):
        try:
          library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
          pass  # defined by an earlier attempt
    _import_torchvision.library = library  # keep the definitions alive
    import torchvision  # noqa: F401, F811


def timm_model(name: str, **kwargs) -> nn.Module:
  """timm's `name`, randomly initialised (`pretrained=False`: nothing is downloaded)."""
  _import_torchvision()
  import timm

  return timm.create_model(name, pretrained=False, **kwargs)


def torchvision_model(name: str, **kwargs) -> nn.Module:
  """torchvision's `name`, randomly initialised (`weights=None`: nothing is downloaded)."""
  _import_torchvision()
  import torchvision.models

  return getattr(torchvision.models, name)(weights=None, **kwargs)


def classifier_step(model, optimizer, images, labels):
  """One Adam step of a classifier: uint8 images (N, C, H, W) in any memory format, int labels."""
  x = images.float().div_(255.0)
  logits = model(x)
  if logits.shape[1] == 1:
    loss = F.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
  else:
    loss = F.cross_entropy(logits, labels)
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  optimizer.step()
  return loss.detach()


# ----------------------------------------------------------------------------- autoencoders


def _leaky(x):
  return F.leaky_relu(x, 0.2)


class UpBlock(nn.Module):
  def __init__(self, cin, cout, mode, resize_method):
    super().__init__()
    self.mode, self.resize_method = mode, resize_method
    if mode == "subpixel":
      self.conv = nn.Conv2d(cin, 4 * cout, 3, padding=1, bias=False)
    elif mode == "resize":
      self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    else:
      self.conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False)
    self.norm = nn.BatchNorm2d(cout, BN_EPSILON, BN_MOMENTUM)

  def forward(self, x):
    if self.mode == "subpixel":
      x = F.pixel_shuffle(self.conv(x), 2)
    elif self.mode == "resize":
      x = self.conv(F.interpolate(x, scale_factor=2, mode=self.resize_method))
    else:
      x = self.conv(x)
    return _leaky(self.norm(x))


class Autoencoder(nn.Module):
  """`vaeaug.models.autoencoders` DAE / VAE / CVAE: stride-2 conv encoder, dense latent head(s),
  dense -> sub-pixel (or resize / transpose) decoder, final 3x3 conv."""

  def __init__(self, jax_model):
    super().__init__()
    m = jax_model
    self.kind, self.likelihood, self.num_classes = m.kind, m.likelihood, m.num_classes
    self.bottleneck_shape = m.bottleneck_shape
    extra = m.num_classes if m.conditional else 0
    encoder, cin = [], 3 + extra
    for c in m.channels:
      encoder += [nn.Conv2d(cin, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c, BN_EPSILON, BN_MOMENTUM), nn.LeakyReLU(0.2)]
      cin = c
    self.encoder = nn.Sequential(*encoder)
    flat = math.prod(m.bottleneck_shape)
    heads = 1 if m.kind == "dae" else 2
    self.latent_heads = nn.ModuleList([nn.Linear(flat, m.latent_dim) for _ in range(heads)])
    self.dec_dense = nn.Linear(m.latent_dim + extra, flat)
    self.dec_norm = nn.BatchNorm2d(m.channels[-1], BN_EPSILON, BN_MOMENTUM)
    outs = tuple(reversed(m.channels[:-1])) + (m.channels[0],)
    blocks, cin = [], m.channels[-1]
    for c in outs:
      blocks.append(UpBlock(cin, c, m.upsample, m.resize_method))
      cin = c
    self.dec_blocks = nn.Sequential(*blocks)
    self.dec_out = nn.Conv2d(cin, 3, 3, padding=1)
    self.log_scale = nn.Parameter(torch.tensor(math.log(m.fixed_scale))) if m.log_scale is not None else None
    self.fixed_log_scale = math.log(m.fixed_scale)

  def encode(self, x, y=None):
    if y is not None:  # the one-hot label as constant extra channels
      fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
      x = torch.cat([x, y[:, :, None, None].expand(-1, -1, *x.shape[2:])], 1).contiguous(memory_format=fmt)
    h = torch.flatten(self.encoder(x), 1)
    return [head(h) for head in self.latent_heads]

  def decode(self, z, y=None):
    if y is not None:
      z = torch.cat([z, y], 1)
    s, _, c = self.bottleneck_shape
    h = self.dec_dense(z).view(z.shape[0], c, s, s)
    h = _leaky(self.dec_norm(h))
    out = self.dec_out(self.dec_blocks(h))
    return torch.sigmoid(out) if self.likelihood == "gaussian" else out

  def nll(self, out, x):
    if self.likelihood == "bernoulli":
      return F.binary_cross_entropy_with_logits(out, x, reduction="none").sum((1, 2, 3))
    log_scale = self.log_scale if self.log_scale is not None else torch.tensor(self.fixed_log_scale)
    z = (x - out) * torch.exp(-log_scale)
    return (0.5 * z.square() + log_scale + 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))


class ResidualBlock(nn.Module):
  """`vaeaug.models.residual.ResidualBlock`: act(x + BN(conv(act(BN(conv(x))))))."""

  def __init__(self, c, act):
    super().__init__()
    self.branch = nn.Sequential(*_conv_bn(c, c, 3, 1), act(), *_conv_bn(c, c, 3, 1))
    self.act = act()

  def forward(self, x):
    return self.act(x + self.branch(x))


class ResidualVAE(Autoencoder):
  """`vaeaug.models.residual.ResidualVAE` (rvae / rcvae): stem, per stage residual blocks + a stride-2
  conv, dense heads; dense -> per stage x2 sub-pixel (or nearest resize) conv + residual blocks, final
  3x3 conv; gaussian std bounded as in the JAX model."""

  def __init__(self, jax_model):
    nn.Module.__init__(self)
    m = jax_model
    act = nn.SiLU if m.activation == "silu" else (lambda: nn.LeakyReLU(0.2))
    self.act = act()
    self.kind, self.likelihood, self.num_classes = m.kind, m.likelihood, m.num_classes
    self.bottleneck_shape = m.bottleneck_shape
    extra = m.num_classes if m.conditional else 0
    counts = m.blocks_per_stage
    counts = tuple(counts) if isinstance(counts, (list, tuple)) else (counts,) * len(m.channels)
    widths = (*m.channels[1:], m.channels[-1])
    encoder = [*_conv_bn(3 + extra, m.channels[0], 3, 1), act()]
    for c, cout, n in zip(m.channels, widths, counts):
      encoder += [ResidualBlock(c, act) for _ in range(n)] + [*_conv_bn(c, cout, 3, 2), act()]
    self.encoder = nn.Sequential(*encoder)
    flat = math.prod(m.bottleneck_shape)
    self.latent_heads = nn.ModuleList([nn.Linear(flat, m.latent_dim) for _ in range(2)])
    self.dec_dense = nn.Linear(m.latent_dim + extra, flat)
    self.dec_norm = nn.BatchNorm2d(m.channels[-1], BN_EPSILON, BN_MOMENTUM)
    decoder, cin = [], m.channels[-1]
    for c, n in zip((*reversed(m.channels[:-1]), m.channels[0]), reversed(counts)):
      if m.upsample == "subpixel":
        decoder += [nn.Conv2d(cin, 4 * c, 3, padding=1, bias=False), nn.PixelShuffle(2)]
      else:
        decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, c, 3, padding=1, bias=False)]
      decoder += [nn.BatchNorm2d(c, BN_EPSILON, BN_MOMENTUM), act()] + [ResidualBlock(c, act) for _ in range(n)]
      cin = c
    self.dec_blocks = nn.Sequential(*decoder)
    self.dec_out = nn.Conv2d(cin, 3, 3, padding=1)
    self.scale_logit = nn.Parameter(torch.tensor(0.0)) if m.scale_logit is not None else None
    self.scale_bounds = tuple(math.log(b) for b in m.scale_bounds)
    self.fixed_log_scale = math.log(m.fixed_scale)

  def decode(self, z, y=None):
    if y is not None:
      z = torch.cat([z, y], 1)
    s, _, c = self.bottleneck_shape
    h = self.act(self.dec_norm(self.dec_dense(z).view(z.shape[0], c, s, s)))
    out = self.dec_out(self.dec_blocks(h))
    return torch.sigmoid(out) if self.likelihood == "gaussian" else out

  def nll(self, out, x):
    if self.likelihood == "bernoulli":
      return F.binary_cross_entropy_with_logits(out, x, reduction="none").sum((1, 2, 3))
    if self.scale_logit is not None:
      lo, hi = self.scale_bounds
      log_scale = lo + (hi - lo) * torch.sigmoid(self.scale_logit)
    else:
      log_scale = torch.tensor(self.fixed_log_scale)
    z = (x - out) * torch.exp(-log_scale)
    return (0.5 * z.square() + log_scale + 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))


def autoencoder(jax_model) -> nn.Module:
  """The PyTorch twin of a `vaeaug.models.autoencoders` DAE / VAE / CVAE or a
  `vaeaug.models.residual` residual VAE / CVAE."""
  if jax_model.kind in ("rvae", "rcvae"):
    return ResidualVAE(jax_model)
  return Autoencoder(jax_model)


def autoencoder_step(model, optimizer, images, labels, *, beta=1.0, sigma=0.1):
  """One Adam step of `vaeaug.generators.train_step` (DAE: Gaussian-noise denoising; VAE / CVAE:
  one-sample negative ELBO with KL weight `beta`)."""
  x = images.float().div_(255.0)
  if model.kind == "dae":
    noisy = (x + sigma * torch.randn_like(x)).clamp_(0.0, 1.0)
    (code,) = model.encode(noisy)
    loss = model.nll(model.decode(code), x).mean()
  else:
    y = F.one_hot(labels, model.num_classes).float() if model.num_classes > 0 else None  # cvae, rcvae
    mean, logvar = model.encode(x, y)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    kl = 0.5 * (logvar.exp() + mean.square() - 1.0 - logvar).sum(1)
    loss = (model.nll(model.decode(z, y), x) + beta * kl).mean()
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  optimizer.step()
  return loss.detach()
