r"""How close the CPU train steps are to the machine: ``python -m benchmarks.probes.peak_probe``.

Prints the f32 GFLOP/s of a large matmul (``--n`` square, XLA's and, when
installed, torch's: the best dense rate either library reaches on this CPU)
and the model FLOPs per train step (:func:`benchmarks._flops.forward_flops`,
3x the forward for forward + backward, batch 128) of LeNet and ResNet-18, so a
measured step time (``--lenet_ms``, ``--resnet18_ms``) reads as GFLOP/s and
as a fraction of that matmul rate. A train-step speed-up target above what
the matmul rate allows cannot be met by any f32 direct convolution::

  python -m benchmarks.probes.peak_probe --lenet_ms=38.7 --resnet18_ms=1251.5
"""

from __future__ import annotations

import crp_jax  # first, as a user script: its CPU settings  # isort: skip

import statistics
import time
from typing import Callable

import jax
from absl import app, flags

from benchmarks import _env, _flops
from crp_jax.models import get_model

flags.DEFINE_integer("n", 4096, "Matmul size.", lower_bound=64)
flags.DEFINE_float("lenet_ms", 0.0, "A measured LeNet train-step time (ms per step of 128), to express as GFLOP/s.")
flags.DEFINE_float("resnet18_ms", 0.0, "A measured ResNet-18 train-step time (ms per step of 128).")
FLAGS = flags.FLAGS
SHAPES = {"lenet": (28, 28, 1), "resnet18": (32, 32, 3)}


def rate(fn: Callable[[], object], flop: float, repeats: int = 5) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return flop / statistics.median(times) / 1e9


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _env.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  n = FLAGS.n
  a, b = jax.random.normal(jax.random.key(0), (n, n)), jax.random.normal(jax.random.key(1), (n, n))
  matmul = jax.jit(lambda a, b: a @ b)
  best = rate(lambda: matmul(a, b).block_until_ready(), 2 * n**3)
  print(f"f32 matmul {n}x{n}: XLA {best:.0f} GFLOP/s")
  try:
    import torch  # pylint: disable=g-import-not-at-top
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    print(f"f32 matmul {n}x{n}: torch {rate(lambda: ta @ tb, 2 * n**3):.0f} GFLOP/s ({torch.get_num_threads()} threads)")
  except ImportError:
    print("torch not installed")
  for name, ms in (("lenet", FLAGS.lenet_ms), ("resnet18", FLAGS.resnet18_ms)):
    step = 3 * _flops.forward_flops(get_model(name), SHAPES[name]) * 128
    line = f"{name}: {step / 1e9:.1f} GFLOP per train step of 128"
    if ms > 0:
      achieved = step / (ms / 1e3) / 1e9
      line += f"; at {ms} ms: {achieved:.0f} GFLOP/s = {achieved / best:.0%} of XLA's matmul rate"
    line += f"; at XLA's matmul rate: {1e3 * step / (best * 1e9):.1f} ms = {128 * best * 1e9 / step:.0f} img/s"
    print(line)


if __name__ == "__main__":
  app.run(main, flags_parser=_env.parse_flags)
