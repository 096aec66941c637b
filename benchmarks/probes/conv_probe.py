r"""Convolution weight gradients on the CPU: XLA's convolution vs patches × matmul vs shifted dots vs torch.

The evidence behind two choices in :mod:`crp_jax.runner.process` and the models:
XLA's YNNPACK convolution is slow at weight gradients of 3x3 kernels over
large maps, Eigen's (``-individual_convolution``) is not, and building the
patches explicitly and multiplying (im2col) never beats Eigen here, because
writing the patches costs more memory traffic than the GEMM saves. Run it
under each setting and compare the columns of one process only::

  python -m benchmarks.probes.conv_probe
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution python -m benchmarks.probes.conv_probe

The ``fwd`` column is the forward convolution, for scale; ``shifted`` sums
k·k dots of shifted input windows. Shapes are per device at a global batch of 128 on 2 devices (64 each): the
two LeNet convolutions (5x5) and one 3x3 convolution of each ResNet-18 stage.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from jax import lax

from benchmarks import _env

DN = ("NHWC", "HWIO", "NHWC")
SHAPES = ((28, 1, 32, 5), (14, 32, 64, 5), (32, 64, 64, 3), (16, 128, 128, 3), (8, 256, 256, 3), (4, 512, 512, 3))


def conv(x: jax.Array, w: jax.Array) -> jax.Array:
  p = w.shape[0] // 2
  return lax.conv_general_dilated(x, w, (1, 1), [(p, p), (p, p)], dimension_numbers=DN)


def patches(x: jax.Array, k: int) -> jax.Array:
  """``(B, H, W, k·k·C)`` patches of a 'SAME' k x k convolution, (i, j, c) order."""
  _, h, w, _ = x.shape
  p = k // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  return jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k)], axis=-1)


def weight_grad_xla(x: jax.Array, w: jax.Array, g: jax.Array) -> jax.Array:
  return jax.vjp(lambda w: conv(x, w), w)[1](g)[0]


def weight_grad_patches(x: jax.Array, w: jax.Array, g: jax.Array) -> jax.Array:
  k = w.shape[0]
  return jnp.einsum("bhwk,bhwd->kd", patches(x, k), g).reshape(w.shape)


def weight_grad_shifted(x: jax.Array, w: jax.Array, g: jax.Array) -> jax.Array:
  k = w.shape[0]
  _, h, wd, _ = x.shape
  p = k // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  return jnp.stack([jnp.einsum("bhwc,bhwd->cd", xp[:, i:i + h, j:j + wd, :], g)
                    for i in range(k) for j in range(k)]).reshape(w.shape)


def _time(fn, n: int = 2) -> float:
  start = time.perf_counter()
  for _ in range(n):
    out = fn()
  if hasattr(out, "block_until_ready"):
    out.block_until_ready()
  return (time.perf_counter() - start) / n


def probe(batch: int = 64, repeats: int = 3) -> None:
  """Prints one line per shape: milliseconds of each weight-gradient form, in this process's XLA_FLAGS."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count() or 1)
  except ImportError:
    torch = None
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; weight-gradient ms, batch {batch}, "
        f"median of {repeats}, interleaved")
  for h, ci, co, k in SHAPES:
    x = jax.random.normal(jax.random.key(0), (batch, h, h, ci))
    w = jax.random.normal(jax.random.key(1), (k, k, ci, co))
    g = jax.random.normal(jax.random.key(2), (batch, h, h, co))
    xla, im2col, shifted = jax.jit(weight_grad_xla), jax.jit(weight_grad_patches), jax.jit(weight_grad_shifted)
    fwd = jax.jit(conv)
    ref = xla(x, w, g)
    np.testing.assert_allclose(im2col(x, w, g), ref, rtol=1e-3, atol=1e-4 * float(jnp.abs(ref).max()))
    np.testing.assert_allclose(shifted(x, w, g), ref, rtol=1e-3, atol=1e-4 * float(jnp.abs(ref).max()))
    work = {"fwd": lambda: fwd(x, w), "xla conv": lambda: xla(x, w, g), "patches x matmul": lambda: im2col(x, w, g),
            "shifted": lambda: shifted(x, w, g)}
    if torch is not None:
      tx, tw = torch.randn(batch, ci, h, h), torch.randn(co, ci, k, k)
      tg = torch.randn(batch, co, h, h)
      work["torch"] = lambda: torch.ops.aten.convolution_backward(
          tg, tx, tw, None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], 1, [False, False, True])[2]
    for fn in work.values():
      fn()
    times = {name: [] for name in work}
    for _ in range(repeats):
      for name, fn in work.items():
        times[name].append(_time(fn))
    cols = "  ".join(f"{name} {1e3 * statistics.median(t):7.1f}" for name, t in times.items())
    print(f"{h:2d}x{h:<2d} {ci:3d}->{co:3d} {k}x{k}: {cols}", flush=True)


def main(argv: list[str]) -> None:
  # No process tuning: the XLA flags under test are the ones the command line gives.
  if len(argv) > 1:
    _env.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  probe()


if __name__ == "__main__":
  app.run(main, flags_parser=_env.parse_flags)
