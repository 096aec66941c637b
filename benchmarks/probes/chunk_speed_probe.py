"""The time cost of ``ball_loss(draws_per_chunk=...)`` on XLA:CPU: ``python -m benchmarks.probes.chunk_speed_probe``.

Times ``jit(grad(sum of ball_loss))`` with respect to LeNet's parameters,
unchunked and with ``draws_per_chunk`` 1 and 4, at K = 8 and batch 32 (small
on purpose: chunked, a convolution's kernel gradient inside ``lax.scan``
takes XLA:CPU's slow generic path). Interleaved, 3 repeats after a warm-up,
medians; compile time apart.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import crp_jax  # noqa: F401  (its CPU settings, as a user gets them)
from crp_jax import ball_loss, get_model

K, BATCH = 8, 32


def grad_fn(model, chunk):
  def loss(params, x, y, ids):
    fn = lambda xb, yb: optax.softmax_cross_entropy_with_integer_labels(model.apply(params, xb, train=False), yb)
    return ball_loss(fn, x, y, key=jax.random.key(0), example_ids=ids, num_perturbations=K, eps=0.3,
                     draws_per_chunk=chunk).sum()
  return jax.jit(jax.grad(loss))


def main() -> None:
  model = get_model("lenet")
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
  x, y = jax.random.uniform(jax.random.key(1), (BATCH, 28, 28, 1)), jnp.arange(BATCH) % 10
  args = (params, x, y, jnp.arange(BATCH))
  fns = {f"draws_per_chunk={c}": grad_fn(model, c) for c in (None, 4, 1)}
  for name, fn in fns.items():
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    print(f"{name:20s} compile + first call {time.perf_counter() - start:7.2f} s", flush=True)
  times = {n: [] for n in fns}
  for _ in range(3):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  for name, ts in times.items():
    print(f"{name:20s} median {np.median(ts):7.3f} s per gradient (K={K}, batch {BATCH}, LeNet)")


if __name__ == "__main__":
  main()
