"""Wide-ResNet 28-10 for the paper's CIFAR-10 experiments (§4.1)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crp_jax.models.resnet import batch_norm, conv


class WideBasicBlock(nn.Module):
  """Pre-activation wide block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, + shortcut.

  Dropout sits right before the second conv, where the authors' code puts it.
  When the stride or width changes, the shortcut is a 1x1 conv of the
  pre-activated input ``relu(bn(x))``, as in the authors' code; otherwise it is
  the identity on ``x``.
  """

  features: int
  strides: int = 1
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32
  conv_rewrites: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv_ = functools.partial(conv, dtype=self.dtype, rewrites=self.conv_rewrites)
    pre = nn.relu(batch_norm(train, self.dtype)(x))
    y = conv_(self.features, (3, 3), strides=self.strides, padding=1)(pre)
    y = nn.relu(batch_norm(train, self.dtype)(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = conv_(self.features, (3, 3), padding=1)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv_(self.features, (1, 1), strides=self.strides)(pre)
    return x + y


class WideResNet(nn.Module):
  """Wide-ResNet depth-width (Zagoruyko & Komodakis, 2016); default WRN-28-10.

  3x3 stem conv 16 → 3 groups of ``(depth - 4) / 6`` pre-activation
  :class:`WideBasicBlock` with widths ``16·width`` (160/320/640 for WRN-28-10)
  and strides 1/2/2 → BN → ReLU → global average pool → dense
  ``num_classes``. Convolutions have no bias. Dropout (rate
  ``dropout_rate``, 0.1 in the paper) is drawn from the ``"dropout"`` RNG in
  train mode only. No input normalisation: ``x`` stays in ``[0, 1]``.

  WRN-28-10 with 10 classes has 36,479,194 parameters (36.5M); BatchNorm
  running statistics live in the ``"batch_stats"`` collection.

  Input: ``(batch, 32, 32, 3)`` NHWC. Train mode needs a dropout key and
  updates the running statistics::

    variables = model.init(key, jnp.zeros((1, 32, 32, 3)))
    logits, updates = model.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key})
    variables = {**variables, **updates}

  Eval mode is deterministic (running averages, no dropout) and needs no
  ``mutable`` nor ``rngs``; close over the variables to attack the model::

    logits_fn = lambda x: model.apply(variables, x, train=False)

  Attributes:
    num_classes: number of output logits.
    dtype: compute dtype (e.g. ``jnp.bfloat16``). Parameters stay float32
      and the logits are returned in float32.
    depth: total depth, ``6n + 4``.
    width: widening factor k.
    dropout_rate: dropout probability inside each block.
    conv_rewrites: the ``rewrites`` switch of every convolution
      (:func:`crp_jax.models.conv.conv_general_dilated`): ``None`` rewrites
      on the CPU backend only, ``True``/``False`` force it.

  >>> import jax, jax.numpy as jnp
  >>> model = WideResNet()
  >>> x = jnp.zeros((2, 32, 32, 3))
  >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only, no compute
  >>> jax.eval_shape(model.apply, variables, x).shape
  (2, 10)
  """

  num_classes: int = 10
  dtype: Any = jnp.float32
  depth: int = 28
  width: int = 10
  dropout_rate: float = 0.1
  conv_rewrites: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """``(batch, H, W, C)`` pixels in ``[0, 1]`` → ``(batch, num_classes)`` float32 logits."""
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n + 4, got {self.depth}")
    blocks_per_group = (self.depth - 4) // 6
    x = x.astype(self.dtype)
    x = conv(16, (3, 3), self.dtype, self.conv_rewrites, padding=1)(x)
    for group, strides in enumerate((1, 2, 2)):
      for block in range(blocks_per_group):
        x = WideBasicBlock(
            16 * self.width * 2**group, strides if block == 0 else 1, self.dropout_rate, dtype=self.dtype,
            conv_rewrites=self.conv_rewrites,
        )(x, train=train)
    x = nn.relu(batch_norm(train, self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)
