"""LeNet for MNIST (§4.1 of the paper)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crp_jax.models.conv import conv_general_dilated


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 on an NHWC batch, as reshape + max.

  Numerically identical to ``nn.max_pool(x, (2, 2), strides=(2, 2))`` for
  even ``H`` and ``W``. The gradient is the one ``jnp.max`` has (a tie in a
  window splits it evenly), written out as a custom VJP: XLA's CPU backend
  lowers ``reduce_window`` and the generic gradient of ``max`` (a 6-D
  ``reduce_sum``) poorly, and this LeNet trains about 1.2x faster for it.
  Being a custom VJP, it supports reverse mode only (``jax.grad``, not
  ``jax.jvp``).

  Args:
    x: ``(batch, H, W, C)`` with even ``H`` and ``W``.

  Returns:
    ``(batch, H // 2, W // 2, C)``.
  """
  _, h, w, _ = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"max_pool_2x2 needs even height and width, got {x.shape}")
  return _max_pool_2x2(x)


def _windows(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c)


def _window_sum(a: jax.Array) -> jax.Array:
  """Sum over the 2x2 window axes of ``_windows`` output, as three adds."""
  return a[:, :, 0, :, 0] + a[:, :, 0, :, 1] + a[:, :, 1, :, 0] + a[:, :, 1, :, 1]


@jax.custom_vjp
def _max_pool_2x2(x: jax.Array) -> jax.Array:
  return _windows(x).max(axis=(2, 4))


def _max_pool_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  y = _max_pool_2x2(x)
  return y, (x, y)


def _max_pool_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
  # The gradient of jnp.max: mask of the window's maxima / their count.
  x, y = res
  mask = (_windows(x) == y[:, :, None, :, None, :]).astype(g.dtype)
  share = g / _window_sum(mask)
  return ((mask * share[:, :, None, :, None, :]).reshape(x.shape),)


_max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class LeNet(nn.Module):
  """LeNet of the paper's MNIST experiments (§4.1).

  conv 32@5x5 'SAME' → ReLU → maxpool 2x2 → conv 64@5x5 'SAME' → ReLU →
  maxpool 2x2 → dense 1024 → ReLU → dense ``num_classes``. No BatchNorm, no
  dropout, no input normalisation: ``x`` stays in pixel space ``[0, 1]`` so
  attacks and perturbations are measured there.

  On ``(batch, 28, 28, 1)`` inputs with 10 classes it has 3,274,634
  parameters (3.27M), 98% of them in the first dense layer (3136 → 1024).

  ``train`` is accepted for a uniform signature across models and has no
  effect. Train and eval alike::

    variables = model.init(key, jnp.zeros((1, 28, 28, 1)))
    logits = model.apply(variables, x, train=True)
    logits_fn = lambda x: model.apply(variables, x, train=False)  # for attacks

  Attributes:
    num_classes: number of output logits.
    dtype: compute dtype (e.g. ``jnp.bfloat16``). Parameters stay float32
      and the logits are returned in float32.
    conv_rewrites: the ``rewrites`` switch of every convolution
      (:func:`crp_jax.models.conv.conv_general_dilated`): ``None`` rewrites
      on the CPU backend only, ``True``/``False`` force it. Same values and
      parameters either way; only the speed differs.

  >>> import jax, jax.numpy as jnp
  >>> model = LeNet()
  >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  >>> model.apply(variables, jnp.ones((2, 28, 28, 1))).shape
  (2, 10)
  """

  num_classes: int = 10
  dtype: Any = jnp.float32
  conv_rewrites: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """``(batch, H, W, C)`` pixels in ``[0, 1]`` → ``(batch, num_classes)`` float32 logits."""
    del train  # No BatchNorm or dropout: train and eval are the same function.
    x = x.astype(self.dtype)
    # The loop-friendly input gradient: attacks differentiate in x inside lax loops.
    conv = functools.partial(nn.Conv, padding="SAME", dtype=self.dtype,
                             conv_general_dilated=functools.partial(conv_general_dilated,
                                                                    rewrites=self.conv_rewrites))
    x = max_pool_2x2(nn.relu(conv(32, (5, 5))(x)))
    x = max_pool_2x2(nn.relu(conv(64, (5, 5))(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(1024, dtype=self.dtype)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)
