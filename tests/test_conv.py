"""The loop-friendly convolution of crp_jax/models/_conv.py: same values and gradients as lax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from crp_jax.models._conv import conv_general_dilated

DN = ("NHWC", "HWIO", "NHWC")


def _grads(conv, x, k, **kw):
  loss = lambda x, k: jnp.sum(jnp.sin(conv(x, k, **kw)))
  return conv(x, k, **kw), *jax.grad(loss, argnums=(0, 1))(x, k)


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 1), (0, 3))])
@pytest.mark.parametrize("kernel", [(5, 5), (3, 2)])
def test_matches_lax_value_and_gradients(padding, kernel):
  x = jax.random.normal(jax.random.key(0), (3, 9, 8, 4))
  k = jax.random.normal(jax.random.key(1), (*kernel, 4, 6))
  kw = dict(window_strides=(1, 1), padding=padding, dimension_numbers=DN)
  ours, theirs = _grads(conv_general_dilated, x, k, **kw), _grads(lax.conv_general_dilated, x, k, **kw)
  for a, b in zip(ours, theirs):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_input_gradient_is_a_forward_convolution():
  # The point of the module: the backward pass holds no convolution with
  # swapped kernel features (XLA:CPU's slow path inside loops).
  x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((5, 5, 3, 4))
  grad = jax.grad(lambda x: jnp.sum(conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN)))
  hlo = jax.jit(grad).lower(x).as_text()
  assert "optimization_barrier" in hlo
  plain = jax.jit(jax.grad(lambda x: jnp.sum(lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=DN)))).lower(x).as_text()
  assert "optimization_barrier" not in plain


@pytest.mark.parametrize("kw", [dict(window_strides=(2, 2)), dict(rhs_dilation=(2, 2)),
                                dict(feature_group_count=2)])
def test_other_convolutions_fall_back_to_lax(kw):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  k = jax.random.normal(jax.random.key(1), (3, 3, 4 // kw.get("feature_group_count", 1), 4))
  full = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DN) | kw
  for a, b in zip(_grads(conv_general_dilated, x, k, **full), _grads(lax.conv_general_dilated, x, k, **full)):
    np.testing.assert_array_equal(a, b)
