"""The loop-friendly convolution of crp_jax/models/conv.py: same values and gradients as lax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from crp_jax.models import LeNet, ResNet18
from crp_jax.models.conv import _opaque, conv_general_dilated

DN = ("NHWC", "HWIO", "NHWC")


def _grads(conv, x, k, **kw):
  loss = lambda x, k: jnp.sum(jnp.sin(conv(x, k, **kw)))
  return conv(x, k, **kw), *jax.grad(loss, argnums=(0, 1))(x, k)


def _assert_matches_lax(x, k, **kw):
  ours, theirs = _grads(conv_general_dilated, x, k, **kw), _grads(lax.conv_general_dilated, x, k, **kw)
  for a, b in zip(ours, theirs):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 1), (0, 3))])
@pytest.mark.parametrize("kernel", [(5, 5), (3, 2)])
@pytest.mark.parametrize("channels", [4, 1])   # one input channel: the gradient's matmul-and-shifts path
def test_matches_lax_value_and_gradients(padding, kernel, channels):
  x = jax.random.normal(jax.random.key(0), (3, 9, 8, channels))
  k = jax.random.normal(jax.random.key(1), (*kernel, channels, 6))
  _assert_matches_lax(x, k, window_strides=(1, 1), padding=padding, dimension_numbers=DN)
  if channels > 1:
    return
  jitted = jax.jit(lambda x, k: _grads(conv_general_dilated, x, k, window_strides=(1, 1), padding=padding,
                                       dimension_numbers=DN))
  for a, b in zip(jitted(x, k), _grads(lax.conv_general_dilated, x, k, window_strides=(1, 1), padding=padding,
                                       dimension_numbers=DN)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_one_channel_input_gradient_is_no_convolution():
  # A convolution with one output channel is slow in both of XLA:CPU's libraries: a matmul and shifted adds.
  x, k = jnp.ones((2, 8, 8, 1)), jnp.ones((5, 5, 1, 4))
  grad = jax.grad(lambda x: jnp.sum(conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN)))
  hlo = jax.jit(grad).lower(x).compile().as_text()
  assert " convolution(" in jax.jit(lambda x: conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=DN)).lower(x).compile().as_text()
  assert " convolution(" not in hlo


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


@pytest.mark.parametrize("strides,kernel,padding,size", [
    ((2, 2), (3, 3), ((1, 1), (1, 1)), 8),   # ResNet downsampling
    ((2, 2), (1, 1), "VALID", 8),             # its 1x1 shortcut
    ((2, 2), (3, 3), "SAME", 9),              # odd size: uneven 'SAME' pads
    ((3, 2), (5, 4), ((2, 0), (1, 3)), 11),   # more phases than one axis has taps
])
def test_strided_matches_lax_value_and_gradients(strides, kernel, padding, size):
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 4))
  k = jax.random.normal(jax.random.key(1), (*kernel, 4, 5))
  _assert_matches_lax(x, k, window_strides=strides, padding=padding, dimension_numbers=DN)


def test_strided_backward_has_no_input_dilated_convolution():
  # XLA:CPU runs an input-dilated (lhs_dilate) convolution as a generic loop.
  x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  hlo = lambda conv: jax.jit(jax.grad(lambda x, k: jnp.sum(conv(
      x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)), argnums=(0, 1))).lower(x, k).compile().as_text()
  assert "lhs_dilate" in hlo(lax.conv_general_dilated)
  assert "lhs_dilate" not in hlo(conv_general_dilated)


@pytest.mark.parametrize("first", [1.5, jnp.nan])
def test_opaque_is_the_identity(first):
  # The first element sets the trip count: 0, or 1 when it is NaN.
  x = jnp.arange(6.0).reshape(2, 3).at[0, 0].set(first)
  y = jnp.ones((4,), jnp.int32)
  ox, oy = jax.jit(_opaque)(x, y)
  np.testing.assert_array_equal(ox, x)
  np.testing.assert_array_equal(oy, y)


def test_kernel_gradient_inputs_are_opaque_and_input_gradients_skip_them():
  x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  loss = lambda x, k: jnp.sum(jnp.maximum(conv_general_dilated(2 * x, k, (1, 1), "SAME", dimension_numbers=DN), 0))
  compiled = lambda argnums: jax.jit(jax.grad(loss, argnums)).lower(x, k).compile().as_text()
  assert " while(" in compiled(1)       # training: the kernel gradient reads materialised inputs
  assert " while(" not in compiled(0)   # attacks: dead code, no cost


@pytest.mark.parametrize("kw", [dict(rhs_dilation=(2, 2)), dict(feature_group_count=2),
                                dict(window_strides=(2, 2), padding=((-1, 2), (1, 1)))])
def test_other_convolutions_fall_back_to_lax(kw):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  k = jax.random.normal(jax.random.key(1), (3, 3, 4 // kw.get("feature_group_count", 1), 4))
  full = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DN) | kw
  for a, b in zip(_grads(conv_general_dilated, x, k, **full), _grads(lax.conv_general_dilated, x, k, **full)):
    np.testing.assert_array_equal(a, b)


def test_other_backends_get_plain_lax(monkeypatch):
  # On a GPU/TPU default backend nothing is rewritten: cuDNN's own backward
  # kernels, no polyphase split, no zero-trip loop (a host sync on a GPU).
  from crp_jax.models import conv as conv_module  # pylint: disable=g-import-not-at-top
  x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  text = lambda conv: jax.jit(jax.grad(lambda x, k: jnp.sum(conv(
      x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)), argnums=(0, 1))).lower(x, k).as_text()
  assert text(conv_general_dilated) != text(lax.conv_general_dilated)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert not conv_module.rewrites_enabled()
  assert text(conv_general_dilated) == text(lax.conv_general_dilated)


def _grad_text(conv) -> str:
  x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  return jax.jit(jax.grad(lambda x, k: jnp.sum(conv(
      x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)), argnums=(0, 1))).lower(x, k).as_text()


def test_the_switch_forces_the_rewrites_either_way(monkeypatch):
  # rewrites=False is plain lax on the CPU; rewrites=True rewrites on any default backend.
  plain = _grad_text(lax.conv_general_dilated)
  assert _grad_text(lambda *a, **kw: conv_general_dilated(*a, rewrites=False, **kw)) == plain
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert _grad_text(lambda *a, **kw: conv_general_dilated(*a, rewrites=True, **kw)) != plain


@pytest.mark.parametrize("model,shape", [(LeNet, (28, 28, 1)), (lambda **kw: ResNet18(widths=(4, 8, 8, 8), **kw),
                                                                (16, 16, 3))])
def test_models_compute_the_same_with_the_rewrites_on_or_off(model, shape):
  # The switch changes how the convolutions are computed, not the parameters or (to rounding) the logits.
  x = jax.random.uniform(jax.random.key(1), (2, *shape))
  variables = model().init(jax.random.key(0), x)
  for on in (True, False):
    other = model(conv_rewrites=on)
    assert jax.tree.structure(other.init(jax.random.key(0), x)) == jax.tree.structure(variables)
    np.testing.assert_allclose(other.apply(variables, x), model().apply(variables, x), rtol=1e-5, atol=1e-5)
