"""The paper's models (§4.1) and a small registry.

=============  ===========  ==============  ===========
name           dataset      input           parameters
=============  ===========  ==============  ===========
``lenet``      MNIST        28x28x1         3,274,634
``resnet18``   SVHN         32x32x3         11,173,962
``wrn28_10``   CIFAR-10     32x32x3         36,479,194
=============  ===========  ==============  ===========

Every model maps NHWC pixels in ``[0, 1]`` to float32 logits with
``model.apply(variables, x, train=...)``; none normalises its input, so
attacks and perturbations act in pixel space. For an attack, close over the
variables in eval mode: ``logits_fn = lambda x: model.apply(variables, x, train=False)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from crp_jax.models.lenet import LeNet, max_pool_2x2
from crp_jax.models.resnet import ResNet18
from crp_jax.models.wide_resnet import WideResNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
    "resnet18": ResNet18,
    "wrn28_10": lambda **kw: WideResNet(depth=28, width=10, **kw),
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_model(name: str, num_classes: int = 10, *, dtype: Any = jnp.float32) -> nn.Module:
  """The model called ``name``, one of :data:`MODEL_NAMES`.

  Args:
    name: ``"lenet"``, ``"resnet18"`` or ``"wrn28_10"``.
    num_classes: number of output logits.
    dtype: compute dtype, e.g. ``jnp.bfloat16``. Parameters stay float32 and
      logits are float32 whatever the compute dtype.

  Returns:
    An unbound Flax module; see :func:`init_variables`.

  >>> get_model("lenet").num_classes
  10
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid names are {MODEL_NAMES}")
  return _REGISTRY[name](num_classes=num_classes, dtype=dtype)


def init_variables(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> dict[str, Any]:
  """Initial variables (``params`` and, if any, ``batch_stats``) of ``model``.

  Args:
    model: an unbound module, e.g. from :func:`get_model`.
    key: PRNG key of the parameter initialisation.
    input_shape: shape of one example, without the batch axis, e.g. ``(28, 28, 1)``.

  Returns:
    The variables dict for ``model.apply``.

  >>> variables = init_variables(get_model("lenet"), jax.random.key(0), (28, 28, 1))
  >>> count_params(variables["params"])
  3274634
  """
  # Eval mode: no dropout key needed, and the running statistics start at
  # their defaults (mean 0, var 1) rather than the zeros batch's.
  return model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)


def count_params(params: Any) -> int:
  """Total number of scalars in a pytree of arrays (or of ``jax.ShapeDtypeStruct``)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


__all__ = [
    "MODEL_NAMES",
    "LeNet",
    "ResNet18",
    "WideResNet",
    "count_params",
    "get_model",
    "init_variables",
    "max_pool_2x2",
]
