"""ResNet-18, CIFAR variant, for the paper's SVHN experiments (§4.1)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crp_jax.models.conv import conv_general_dilated

# He-normal over fan-out, the init of torchvision's ResNet (and of the PyTorch
# code the paper's numbers come from); Flax's default LeCun-normal is half the
# variance, which suits ReLU nets less.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel_size: tuple[int, int], dtype: Any, rewrites: bool | None = None,
         **kwargs: Any) -> nn.Conv:
  """A bias-free He-initialised convolution whose gradients take XLA:CPU's fast paths.

  ``rewrites`` is :func:`crp_jax.models.conv.conv_general_dilated`'s switch
  (``None``: on the CPU backend only).
  """
  return nn.Conv(features, kernel_size, use_bias=False, kernel_init=conv_init, dtype=dtype,
                 conv_general_dilated=functools.partial(conv_general_dilated, rewrites=rewrites),
                 **kwargs)


def batch_norm(train: bool, dtype: Any) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)


class BasicBlock(nn.Module):
  """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU.

  The shortcut is a 1x1 conv + BN when the stride or channel count changes,
  the identity otherwise.
  """

  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  conv_rewrites: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv_ = functools.partial(conv, dtype=self.dtype, rewrites=self.conv_rewrites)
    y = conv_(self.features, (3, 3), strides=self.strides, padding=1)(x)
    y = nn.relu(batch_norm(train, self.dtype)(y))
    y = conv_(self.features, (3, 3), padding=1)(y)
    y = batch_norm(train, self.dtype)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv_(self.features, (1, 1), strides=self.strides)(x)
      x = batch_norm(train, self.dtype)(x)
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ResNet-18 for 32x32 inputs (He et al., 2016; the common CIFAR variant).

  3x3 stem conv 64 (stride 1, no initial max-pool) → BN → ReLU → 4 stages of
  2 :class:`BasicBlock` with 64/128/256/512 channels and strides 1/2/2/2 →
  global average pool → dense ``num_classes``. Convolutions have no bias
  (BN follows each one). No input normalisation: ``x`` stays in ``[0, 1]``.

  With 10 classes it has 11,173,962 parameters (11.2M), whatever the input
  size; BatchNorm running statistics (another 9,600 numbers) live in the
  ``"batch_stats"`` collection, not in ``"params"``.

  Input: ``(batch, 32, 32, 3)`` NHWC (any size ≥ 8x8 works). Train mode
  normalises with the batch statistics and updates the running ones::

    variables = model.init(key, jnp.zeros((1, 32, 32, 3)))
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    variables = {**variables, **updates}

  Eval mode uses the running averages and needs no ``mutable``; close over
  the variables to attack the model::

    logits_fn = lambda x: model.apply(variables, x, train=False)

  Attributes:
    num_classes: number of output logits.
    dtype: compute dtype (e.g. ``jnp.bfloat16``). Parameters stay float32
      and the logits are returned in float32.
    stage_sizes: blocks per stage; the default is ResNet-18.
    widths: channels per stage.
    conv_rewrites: the ``rewrites`` switch of every convolution
      (:func:`crp_jax.models.conv.conv_general_dilated`): ``None`` rewrites
      on the CPU backend only, ``True``/``False`` force it.

  >>> import jax, jax.numpy as jnp
  >>> model = ResNet18()
  >>> x = jnp.zeros((2, 32, 32, 3))
  >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only, no compute
  >>> sorted(variables)
  ['batch_stats', 'params']
  >>> jax.eval_shape(model.apply, variables, x).shape
  (2, 10)
  """

  num_classes: int = 10
  dtype: Any = jnp.float32
  stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
  widths: tuple[int, ...] = (64, 128, 256, 512)
  conv_rewrites: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """``(batch, H, W, C)`` pixels in ``[0, 1]`` → ``(batch, num_classes)`` float32 logits."""
    x = x.astype(self.dtype)
    x = conv(self.widths[0], (3, 3), self.dtype, self.conv_rewrites, padding=1)(x)
    x = nn.relu(batch_norm(train, self.dtype)(x))
    for stage, (num_blocks, features) in enumerate(zip(self.stage_sizes, self.widths)):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(features, strides, dtype=self.dtype, conv_rewrites=self.conv_rewrites)(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)
