"""Where randomized smoothing's count loop spends its time: ``python -m benchmarks.probes.certify_probe``.

Times, on JAX's default device(s) of a plain process, the whole
:func:`crp_jax.certify.sample_counts` (1 row × 10,000 samples, 1,000 per
forward, LeNet, σ = 0.25) against its parts: the forwards alone (the same
loop on a deterministic input) and the noise alone (per-sample keys as
``sample_counts`` draws them, and one key per step for comparison).
Interleaved, 5 repeats after a warm-up, medians.
"""
import time, jax, jax.numpy as jnp, numpy as np
import crp_jax  # noqa: F401  (its CPU settings, as a user gets them)
from crp_jax import certify, get_model
model = get_model("lenet")
v = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
x = jax.random.uniform(jax.random.key(1), (1, 28, 28, 1))
num, batch, sigma = 10000, 1000, 0.25
f = lambda z: model.apply(v, z, train=False)
full = jax.jit(lambda x, k: certify.sample_counts(f, x, key=k, sigma=sigma, num=num, batch_size=batch))
def fwd_only(x, k):
  def step(i, c):
    noisy = jnp.broadcast_to(x, (batch, 28, 28, 1)) + 0.001 * i
    return c + jnp.argmax(f(noisy), -1).sum()
  return jax.lax.fori_loop(0, num // batch, step, 0)
fwd = jax.jit(fwd_only)
def noise_only(x, k):
  row = jax.random.fold_in(k, 0)
  def step(i, c):
    ids = i * batch + jnp.arange(batch)
    keys = jax.vmap(lambda s: jax.random.fold_in(row, s))(ids)
    n = jax.vmap(lambda kk: jax.random.normal(kk, (28, 28, 1)))(keys)
    return c + n.sum()
  return jax.lax.fori_loop(0, num // batch, step, 0.0)
noise = jax.jit(noise_only)
def noise_one_key(x, k):
  row = jax.random.fold_in(k, 0)
  def step(i, c):
    n = jax.random.normal(jax.random.fold_in(row, i), (batch, 28, 28, 1))
    return c + n.sum()
  return jax.lax.fori_loop(0, num // batch, step, 0.0)
noise1 = jax.jit(noise_one_key)
k = jax.random.key(2)
fns = dict(full=full, fwd=fwd, noise=noise, noise_one_key=noise1)
for n, fn in fns.items(): jax.block_until_ready(fn(x, k))
res = {n: [] for n in fns}
for r in range(5):
  for n, fn in fns.items():
    t = time.perf_counter(); jax.block_until_ready(fn(x, k)); res[n].append(time.perf_counter() - t)
for n, ts in res.items(): print(f"{n:14s} median {np.median(ts)*1e3:8.1f} ms  -> {num/np.median(ts):8.0f} /s")
