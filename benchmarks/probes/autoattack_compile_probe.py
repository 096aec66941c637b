r"""AutoAttack in an "evaluate every epoch" loop: compiles per call, and whether old parameters stay alive.

  python -m benchmarks.probes.autoattack_compile_probe            # LeNet, 3 parameter sets
  python -m benchmarks.probes.autoattack_compile_probe --calls=5 --eps=0

Each call gets a new parameter set and a new ``logits_fn`` closing over it,
as a user's loop writes it, and the labels it predicts (so every example
is attacked). Per call it prints the XLA backend compiles
(``jax.monitoring``), the seconds, whether every earlier parameter set was
garbage collected after ``del`` and ``gc.collect()`` (a ``weakref`` to one
of its arrays), and the bytes of live JAX arrays.
"""

from __future__ import annotations

import gc
import sys
import time
import weakref

import jax
import jax.numpy as jnp
from absl import app, flags

from crp_jax import attacks
from crp_jax.models import LeNet, init_variables

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
FLAGS = flags.FLAGS
flags.DEFINE_integer("calls", 3, "autoattack calls, each with new parameters.")
flags.DEFINE_integer("examples", 16, "Examples attacked per call.")
flags.DEFINE_float("eps", 0.3, "ε. At 0 every example stays robust, so every attack runs on all of them in "
                   "chunks of one size; else the chunks follow what each model leaves (sizes a new model may "
                   "compile once).")


def live_bytes() -> int:
  return sum(a.nbytes for a in jax.live_arrays())


def main(argv: list[str]) -> None:
  del argv
  compiles: list[str] = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: compiles.append(name) if name == BACKEND_COMPILE else None)
  model = LeNet()
  x = jax.random.uniform(jax.random.key(1), (FLAGS.examples, 28, 28, 1))
  alive: list[weakref.ref] = []
  for call in range(FLAGS.calls):
    variables = init_variables(model, jax.random.key(10 + call), (28, 28, 1))
    alive.append(weakref.ref(jax.tree.leaves(variables)[0]))
    logits_fn = lambda z, v=variables: model.apply(v, z, train=False)
    y = jnp.argmax(logits_fn(x), axis=1).astype(jnp.int32)   # every example starts correct
    before, start = len(compiles), time.perf_counter()
    attacks.autoattack(logits_fn, x, y, key=jax.random.key(2), eps=FLAGS.eps, log=None, apgd_steps=5,
                       fab_steps=5, num_targets=3, square_queries=20)
    seconds = time.perf_counter() - start
    del variables, logits_fn
    gc.collect()
    kept = sum(r() is not None for r in alive[:-1])
    print(f"call {call + 1}: {len(compiles) - before} backend compiles, {seconds:.1f} s; earlier parameter sets "
          f"still alive: {kept} of {call}; live JAX arrays {live_bytes() / 2**20:.2f} MiB", flush=True)
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
