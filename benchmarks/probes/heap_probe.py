"""Per-executable XLA heap limits for the CLI's train step: ``python -m benchmarks.probes.heap_probe MODEL STEPS``.

In a plain process (glibc malloc, no huge pages) XLA:CPU allocates each
execution's temporaries as one block; above glibc's largest mmap threshold
(32 MiB) that block is a fresh ``mmap`` every step, and every page faults
(``fault_probe.py``). ``xla_multiheap_size_constraint_per_heap`` splits the
temporaries into heaps below a size; set as a *global* XLA flag it slowed
other executables (2026-12-01 notes in ``benchmarks/results.md``), but JAX
also takes it per executable (``.lower(...).compile(compiler_options=...)``).

This compiles the CLI's ``crp`` step (``benchmarks.run.JaxTrainer``, batch
128) without the option and with 16 MiB and 30 MiB heaps, prints each
temporary size, checks that 3 steps give bit-identical parameters, and
times ``STEPS`` steps per repeat, interleaved, 6 repeats, median of the
last 5. ``MODEL`` is ``lenet`` (28x28x1) or ``resnet18`` (32x32x3).
"""
import crp_jax  # noqa: F401  (first, as a user script: its CPU settings)
import time, sys, numpy as np, jax
from jax.sharding import NamedSharding, PartitionSpec as P
from benchmarks import run as bench
from crp_jax.runner import train
from crp_jax.models import get_model
SHAPE = (28, 28, 1) if sys.argv[1] == "lenet" else (32, 32, 3)
STEPS = int(sys.argv[2])
mesh = train.make_train_mesh()
data = bench.make_data(SHAPE, 128)
tr = bench.JaxTrainer(get_model(sys.argv[1]), SHAPE, data, mesh, method="crp", eps=0.3)
print("temp MiB", tr.compiled.memory_analysis().temp_size_in_bytes / 2**20)
spec = train.TrainSpec(method="crp", perturbation_eps=0.3)
tx = train.make_optimizer(spec, 1000); keys = train.run_keys(0)
objective = train.make_objective(spec, keys["perturbations"], 100, keys["adversary"])
step = train.jit_train_step(train.make_train_step(get_model(sys.argv[1]), tx, objective, keys["dropout"]), mesh)
variants = {}
for name, opts in (("plain", None), ("heap16", {"xla_multiheap_size_constraint_per_heap": 16 * 2**20}),
                   ("heap30", {"xla_multiheap_size_constraint_per_heap": 30 * 2**20})):
  c = step.lower(tr.state, tr.batches[0]).compile(compiler_options=opts) if opts else step.lower(tr.state, tr.batches[0]).compile()
  variants[name] = c
  print(name, "temp MiB", c.memory_analysis().temp_size_in_bytes / 2**20)
state0 = jax.device_get(tr.state)
outs = {}
for name, c in variants.items():
  s = jax.device_put(state0, NamedSharding(mesh, P()))
  for i in range(3):
    s, m = c(s, tr.batches[i])
  outs[name] = jax.device_get(s.params if hasattr(s, "params") else s)
ref = jax.tree.leaves(outs["plain"])
for name in outs:
  same = all(np.array_equal(a, b) for a, b in zip(ref, jax.tree.leaves(outs[name])))
  print(name, "bit-identical to plain after 3 steps:", same)
times = {n: [] for n in variants}
states = {n: jax.device_put(state0, NamedSharding(mesh, P())) for n in variants}
for r in range(6):
  for n, c in variants.items():
    t = time.perf_counter()
    s = states[n]
    for i in range(STEPS):
      s, m = c(s, tr.batches[i % len(tr.batches)])
    jax.block_until_ready(s); states[n] = s
    times[n].append(time.perf_counter() - t)
for n, ts in times.items():
  print(n, f"median {np.median(ts[1:]):.3f} s per STEPS steps -> {128 * STEPS / np.median(ts[1:]):.0f} img/s")
