"""XLA:CPU compile seconds of five small LeNet programs under the test suite's flags and without them.

    python -m benchmarks.probes.compile_flags_probe --repeats=3

Most of the test suite's time is XLA:CPU compiling small programs once each
(an attack, a gradient, a train step), not running them. This probe compiles
five of them (PGD-5, APGD-T, FAB-T, Square, a parameter gradient; LeNet at
batch 16) in a fresh process per setting, the settings interleaved
``--repeats`` times, and prints each setting's median of the summed XLA
backend compile seconds (``jax.monitoring``) and its ratio to the first.
The settings are the suite's: ``JAX_DISABLE_MOST_OPTIMIZATIONS=1``
(``conftest.py``), then that with its ``TEST_XLA_FLAGS``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 3, "Fresh processes per setting, interleaved.")

#: name -> environment added to this process's (XLA_FLAGS replaced).
SETTINGS: dict[str, dict[str, str]] = {
    "optimisation level 0": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "XLA_FLAGS": ""},
    "level 0 + loop emitters, one codegen part": {
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"},
}

_CHILD = r"""
import collections, json, jax, jax.numpy as jnp, optax
from crp_jax import attacks
from crp_jax.models import LeNet
seconds = collections.Counter()
jax.monitoring.register_event_duration_secs_listener(lambda n, s, **k: seconds.__setitem__(n, seconds[n] + s))
model = LeNet()
variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
f = lambda z: model.apply(variables, z, train=False)
loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(
    model.apply({"params": p}, x, train=False), y).mean()
programs = {
    "pgd": lambda x, y, k: attacks.pgd(f, x, y, key=k, eps=0.3, step_size=0.01, num_steps=5),
    "apgd_t": lambda x, y, k: attacks.apgd_targeted(f, x, y, key=k, eps=0.3, num_steps=3, num_targets=2),
    "fab_t": lambda x, y, k: attacks.fab(f, x, y, key=k, eps=0.3, num_steps=3, num_targets=2),
    "square": lambda x, y, k: attacks.square(f, x, y, key=k, eps=0.3, num_queries=10),
    "gradient": lambda x, y, k: jax.grad(loss)(variables["params"], x, y),
}
x, y = jax.random.uniform(jax.random.key(1), (16, 28, 28, 1)), jnp.arange(16) % 10
for fn in programs.values():
  jax.jit(fn).lower(x, y, jax.random.key(2)).compile()
print(json.dumps(seconds["/jax/core/compile/backend_compile_duration"]))
"""


def compile_seconds(extra_env: dict[str, str]) -> float:
  """The summed backend compile seconds of the five programs in a fresh process with ``extra_env``."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS")}
  env.update({k: v for k, v in extra_env.items() if v})
  out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
  return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv) -> None:
  del argv
  times: dict[str, list[float]] = {name: [] for name in SETTINGS}
  for _ in range(_REPEATS.value):
    for name, env in SETTINGS.items():
      times[name].append(compile_seconds(env))
  first = statistics.median(next(iter(times.values())))
  print(f"| setting | compile s, median of {_REPEATS.value} | ratio |\n|---|---:|---:|")
  for name, values in times.items():
    median = statistics.median(values)
    print(f"| {name} | {median:.2f} | {median / first:.2f} |")


if __name__ == "__main__":
  app.run(main)
