"""A convolution whose gradients take XLA:CPU's fast paths.

Attacks differentiate the model with respect to its *input* inside
``lax.fori_loop``/``scan``. There, XLA:CPU (jaxlib 0.10) lowers the
autodiff transpose of a convolution (the kernel reversed and used with
swapped feature dimensions, ``dim_labels=b01f_01oi->b01f``) to a generic
loop instead of its Eigen/YNNPACK kernels; outside a loop it copies the
kernel first and takes the fast path. On LeNet a PGD step ran 2.9x slower
inside a loop than outside (220 vs 76 ms at batch 128 on 2 CPU devices).

:func:`conv_general_dilated` is a drop-in for ``lax.conv_general_dilated``
(pass it to ``nn.Conv(conv_general_dilated=...)``). For a stride-1,
undilated, ungrouped convolution its VJP computes

.. math::
  \\partial x = \\mathrm{conv}\\big(g,\\ \\mathrm{swap_{io}}(\\mathrm{flip_{hw}}(k))\\big)

with padding ``(k - 1 - lo, k - 1 - hi)``: the same sum as the autodiff
transpose, as an ordinary forward convolution on a materialised kernel,
which every backend runs on its fast path. The kernel gradient is left to
autodiff, on inputs XLA may not re-fuse (:func:`_opaque`): otherwise XLA
fuses BatchNorm/ReLU/residual adds into the kernel gradient's layout
transposes and recomputes them in a cache-hostile order. In a ResNet-18
train step on one CPU device those transposes took 0.95 of 5.06 s per step
before, 0.26 of 3.97 s after, strided convolutions below included
(``CRP_CPU_DEVICES=1 python -m benchmarks.probes.train_probe trace --model=resnet18``).

A one-channel input (LeNet's first layer on MNIST) gets its input gradient
as a matmul and shifted adds instead (:func:`_single_channel_input_grad`):
as a convolution it has one output channel, a shape both of XLA:CPU's
convolution libraries run slowly (FGSM on LeNet at batch 256: 210 → 191 ms
under a bare ``jax.jit``, 257 → 222 ms with :func:`crp_jax.cpu.compiler_options`).

A strided convolution (ResNet downsampling) is written as a sum of
stride-1 convolutions over the input's polyphase components
(:func:`_strided`): its autodiff input gradient would be an input-dilated
convolution, which XLA:CPU runs as a generic loop (0.30 s of that step).
Dilated or grouped convolutions, negative padding and other layouts fall
back to ``lax.conv_general_dilated`` unchanged, and so does everything when
the default backend is not the CPU (:func:`rewrites_enabled`): cuDNN and
the TPU compiler have fast backward kernels of their own, and the rewrites
would cost them (the zero-trip loop of :func:`_opaque` is a device-to-host
sync on a GPU; one strided convolution becomes several).

The choice is explicit when wanted: ``rewrites=True``/``False`` forces the
rewrites on or off (``None``, the default, is the automatic choice above),
and the models pass their ``conv_rewrites`` attribute through, so a probe
can compare both on one backend without patching this module
(``python -m benchmarks.probes.train_probe rewrites``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax


_DN = ("NHWC", "HWIO", "NHWC")


def _is_nhwc_hwio(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> bool:
  if lhs.ndim != 4 or dimension_numbers is None:
    return False
  # Flax passes ``lax.ConvDimensionNumbers``; others pass strings.
  want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN)
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == want


def _is_fast_case(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                  feature_group_count, batch_group_count, preferred_element_type) -> bool:
  ones = lambda v: v is None or all(int(s) == 1 for s in v)
  positive = window_strides is None or all(int(s) >= 1 for s in window_strides)
  return (positive and ones(lhs_dilation) and ones(rhs_dilation)
          and feature_group_count == 1 and batch_group_count == 1
          and preferred_element_type is None and _is_nhwc_hwio(lhs, rhs, dimension_numbers))


def rewrites_enabled(rewrites: bool | None = None) -> bool:
  """Whether :func:`conv_general_dilated` rewrites convolutions: ``rewrites``, or if ``None`` on the CPU only.

  The automatic choice is read at trace time, from the default backend,
  which is where ``jax.jit`` compiles unless told otherwise.
  """
  if rewrites is not None:
    return bool(rewrites)
  return jax.default_backend() == "cpu"


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    rewrites: bool | None = None,
) -> jax.Array:
  """``lax.conv_general_dilated`` with gradients on XLA:CPU's fast paths (see the module doc).

  Shapes in the fast case: ``lhs`` is ``(B, H, W, C_in)``, ``rhs`` is
  ``(kh, kw, C_in, C_out)``; the result is ``(B, H', W', C_out)``.
  ``rewrites`` forces the rewrites on or off; ``None`` turns them on when
  the default backend is the CPU (:func:`rewrites_enabled`).
  """
  if rewrites_enabled(rewrites) and _is_fast_case(lhs, rhs, window_strides, lhs_dilation, rhs_dilation,
                                          dimension_numbers, feature_group_count, batch_group_count,
                                          preferred_element_type):
    strides = (1, 1) if window_strides is None else tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if strides == (1, 1):
      return _conv_stride1(lhs, rhs, pads, precision)
    if all(lo >= 0 and hi >= 0 for lo, hi in pads):
      return _strided(lhs, rhs, strides, pads, precision)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)


def _strided(x: jax.Array, k: jax.Array, strides: tuple[int, int], pads, precision) -> jax.Array:
  r"""A strided convolution as a sum of stride-1 convolutions over its polyphase components.

  With stride :math:`s`, padded input :math:`\bar x` and kernel taps
  :math:`a = s m + p` (:math:`0 \le p < s`),

  .. math::
    y_i = \sum_a \bar x_{s i + a} k_a = \sum_p \sum_m X^{(p)}_{i + m} K^{(p)}_m,
    \quad X^{(p)}_j = \bar x_{s j + p},\ K^{(p)}_m = k_{s m + p},

  per spatial axis: every term is a stride-1 'valid' convolution, whose
  gradients take :func:`_conv_stride1`'s fast paths, where the strided convolution's
  input gradient is an input-dilated convolution that XLA:CPU runs as a
  generic loop. The same multiply-adds, in a different summation order.
  """
  (sh, sw), (kh, kw) = strides, k.shape[:2]
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  out_h, out_w = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  y = None
  for p in range(min(sh, kh)):
    for q in range(min(sw, kw)):
      kpq = k[p::sh, q::sw]
      xpq = xp[:, p::sh, q::sw][:, :out_h + kpq.shape[0] - 1, :out_w + kpq.shape[1] - 1]
      term = _conv_stride1(xpq, kpq, ((0, 0), (0, 0)), precision)
      y = term if y is None else y + term
  return y


def _plain(x: jax.Array, k: jax.Array, pads, precision) -> jax.Array:
  return lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=_DN, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_stride1(x: jax.Array, k: jax.Array, pads, precision) -> jax.Array:
  return _plain(x, k, pads, precision)


def _conv_stride1_fwd(x, k, pads, precision):
  return _plain(x, k, pads, precision), (x, k)


def _conv_stride1_bwd(pads, precision, res, g):
  x, k = res
  kh, kw = k.shape[:2]
  if k.shape[2] == 1 and all(lo >= 0 and hi >= 0 for lo, hi in pads):
    dx = _single_channel_input_grad(g, k, pads, x.shape, precision)
  else:
    # A materialised (flipped, in/out-swapped) kernel: the barrier keeps XLA
    # from folding the transpose back into the convolution's dim_labels.
    k_t = lax.optimization_barrier(jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2))
    pads_t = ((kh - 1 - pads[0][0], kh - 1 - pads[0][1]), (kw - 1 - pads[1][0], kw - 1 - pads[1][1]))
    dx = _plain(g, k_t, pads_t, precision)
  # XLA transposes x and g into (C, H, W, B) layouts for the kernel gradient;
  # left alone, it fuses x's producers (BatchNorm, ReLU, residual adds) into
  # those transposes and recomputes them in a cache-hostile order.
  x, g = _opaque(x, g)
  _, k_vjp = jax.vjp(lambda k: _plain(x, k, pads, precision), k)
  return dx, k_vjp(g)[0]


_conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd)


def _single_channel_input_grad(g: jax.Array, k: jax.Array, pads, x_shape, precision) -> jax.Array:
  r"""The input gradient of a stride-1 convolution of a one-channel input, as a matmul and shifted adds.

  With taps :math:`(a, c)`, padded input :math:`\bar x` and output gradient :math:`g`,

  .. math::
    \partial \bar x_{p, q} = \sum_{a, c} z_{p - a,\, q - c,\, (a, c)}, \qquad
    z_{i, j, (a, c)} = \sum_o g_{i, j, o}\, k_{a, c, 0, o},

  then cropped to the unpadded input: one ``(B·H·W, C_out) @ (C_out, kh·kw)``
  matmul and ``kh·kw`` shifted adds, which XLA fuses into one loop. As a
  convolution (:func:`_conv_stride1_bwd`'s other branch) this is a
  convolution with one output channel, which both of XLA:CPU's libraries
  run far below their speed: LeNet's first layer on MNIST, the last
  input-gradient step of every attack, took 44 ms with YNNPACK and 71 ms
  with Eigen at batch 256, this form 15-19 ms with either. The same sum
  in another order: the values agree to float rounding.
  """
  (kh, kw), (lo_h, hi_h), (lo_w, hi_w) = k.shape[:2], pads[0], pads[1]
  _, h, w, _ = x_shape
  out_h, out_w = g.shape[1], g.shape[2]
  taps = k[:, :, 0, :].reshape(kh * kw, k.shape[-1])
  z = jnp.einsum("bhwo,to->bhwt", g, taps, precision=precision)
  dxp = None
  for a in range(kh):
    for c in range(kw):
      term = jnp.pad(z[..., a * kw + c], ((0, 0), (a, kh - 1 - a), (c, kw - 1 - c)))
      dxp = term if dxp is None else dxp + term
  # dxp covers the padded input, (B, h + lo_h + hi_h, w + lo_w + hi_w); the padding gets no gradient.
  assert dxp.shape[1:] == (out_h + kh - 1, out_w + kw - 1) == (h + lo_h + hi_h, w + lo_w + hi_w)
  return dxp[:, lo_h:lo_h + h, lo_w:lo_w + w, None].astype(g.dtype)


def _opaque(*xs: jax.Array) -> tuple[jax.Array, ...]:
  """The identity, in a form XLA cannot fuse through: a while loop that runs zero times.

  ``lax.optimization_barrier`` does not do this on XLA:CPU (its
  ``cse_barrier_expander`` removes barriers before fusion). The trip count
  is read from the data and the body is not the identity in form, so XLA
  can neither drop the loop nor forward its operands; if the first element
  is NaN the body runs once and still returns its inputs. Unused results
  (e.g. an attack's input-only gradient) are dead code and vanish.
  """
  n = jnp.isnan(xs[0].ravel()[0]).astype(jnp.int32)

  def body(c):
    i, vs = c
    return i + 1, tuple(jnp.where(i < 0, v + 1, v) for v in vs)

  return lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), xs))[1]
