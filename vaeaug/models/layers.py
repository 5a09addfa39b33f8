"""Fast-path layer ops shared by the classifiers and the autoencoders.

Pooling
-------
XLA's ``reduce_window`` max-pool (what ``flax.linen.max_pool`` / ``nnx.max_pool`` lower to) has a
slow backward pass on CPU (``select_and_scatter_add``: ~3-7x slower than the ops here, measured on
the 2-core dev box). The pools below are written with reshapes / strided slices and elementwise
``jnp.maximum`` / means instead, which XLA fuses well in both directions.

* ``max_pool_2x2`` / ``avg_pool_2x2``: window 2, stride 2, ``VALID``. An odd height or width is
  handled like ``VALID`` pooling: the last row / column is cropped (dropped), so an input of
  ``(..., H, W, C)`` gives ``(..., H // 2, W // 2, C)``. The forward pass equals
  ``nnx.max_pool(x, (2, 2), (2, 2))`` / ``nnx.avg_pool(...)`` exactly.
* ``max_pool_3x3_s2``: window 3, stride 2, padding 1 on every side (the ResNet ImageNet stem,
  PyTorch convention; padded cells never win), output ``ceil(H / 2)``. Equals
  ``nnx.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))``.

Gradients at ties (max pools). Without ties the gradient equals ``nnx.max_pool``'s: each window
sends the whole upstream gradient to its maximum. When several entries of a window share the
maximum, ``reduce_window`` sends all of it to one of them, whereas here each pairwise
``jnp.maximum`` splits its incoming gradient equally between equal operands (JAX's rule for
``lax.max``): a fully tied 2x2 window gives 1/4 to every entry, two tied entries get 1/2 each.
In every case the gradient summed over a window is the same as ``nnx.max_pool``'s, so this only
matters for exactly equal activations (e.g. a ReLU output of several zeros, where the upstream of
a zero max is usually itself shared); it is a valid subgradient either way.

Activations
-----------
``activation(name)`` maps a name ("relu", "tanh", "leaky_relu", "swish", ...) to a function;
``ACTIVATIONS`` lists them. Unknown names raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "ACTIVATIONS",
    "activation",
    "avg_pool_2x2",
    "global_avg_pool",
    "max_pool_2x2",
    "max_pool_3x3_s2",
    "pool_2x2",
]

# ----------------------------------------------------------------------------- activations


def _identity(x: jax.Array) -> jax.Array:
    return x


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "leaky_relu": jax.nn.leaky_relu,  # negative slope 0.01 (PyTorch default)
    "swish": jax.nn.swish,  # = silu: x * sigmoid(x)
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
    "identity": _identity,
    "linear": _identity,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called ``name`` (case-insensitive); ValueError if unknown."""
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name.lower()]


# ----------------------------------------------------------------------------- pooling


def _check_spatial(x: jax.Array, name: str, min_size: int) -> tuple[int, int]:
    if x.ndim < 3:
        raise ValueError(f"{name} expects (..., H, W, C) inputs, got shape {x.shape}")
    h, w = x.shape[-3], x.shape[-2]
    if h < min_size or w < min_size:
        raise ValueError(f"{name} needs H, W >= {min_size}, got shape {x.shape}")
    return h, w


def _windows_2x2(x: jax.Array, name: str) -> tuple[jax.Array, ...]:
    """The four entries of every 2x2 window, each (..., H//2, W//2, C); odd H/W cropped."""
    h, w = _check_spatial(x, name, 2)
    h2, w2 = h // 2, w // 2
    lead, c = x.shape[:-3], x.shape[-1]
    if h != 2 * h2 or w != 2 * w2:
        x = x[..., : 2 * h2, : 2 * w2, :]
    y = x.reshape(*lead, h2, 2, w2, 2, c)
    return y[..., 0, :, 0, :], y[..., 0, :, 1, :], y[..., 1, :, 0, :], y[..., 1, :, 1, :]


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, VALID (odd H/W: last row/column dropped). x: (..., H, W, C)."""
    a, b, c, d = _windows_2x2(x, "max_pool_2x2")
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average-pool, stride 2, VALID (odd H/W: last row/column dropped). x: (..., H, W, C)."""
    a, b, c, d = _windows_2x2(x, "avg_pool_2x2")
    return ((a + b) + (c + d)) * 0.25


def pool_2x2(kind: str | None) -> Callable[[jax.Array], jax.Array] | None:
    """The 2x2 pool called ``kind`` ("max", "avg"), or None for ``None`` / "none"."""
    if kind is None or kind == "none":
        return None
    if kind == "max":
        return max_pool_2x2
    if kind == "avg":
        return avg_pool_2x2
    raise ValueError(f"unknown pool {kind!r}; choose 'max', 'avg' or None")


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """3x3 max-pool, stride 2, padding 1 each side (ResNet stem). (..., H, W, C) ->
    (..., ceil(H/2), ceil(W/2), C). Padding is -inf, so padded cells never win."""
    h, w = _check_spatial(x, "max_pool_3x3_s2", 1)
    ho, wo = (h + 1) // 2, (w + 1) // 2
    pad = [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    xp = jnp.pad(x, pad, constant_values=-jnp.inf)
    out = None
    for di in range(3):
        for dj in range(3):
            s = xp[..., di : di + 2 * ho - 1 : 2, dj : dj + 2 * wo - 1 : 2, :]
            out = s if out is None else jnp.maximum(out, s)
    return out


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes: (..., H, W, C) -> (..., C)."""
    _check_spatial(x, "global_avg_pool", 1)
    return jnp.mean(x, axis=(-3, -2))
