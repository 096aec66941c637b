r"""Throughput of the compiled attacks on the paper's LeNet (random weights).

Jit-compiles one attack on a batch of ``--batch`` random 28x28x1 inputs, then
times ``--repeats`` runs (``block_until_ready`` after each) and prints the
compile time, the per-run times and the median images per second::

    python -m benchmarks.attack_throughput --attack=pgd --steps=40 --batch=256 --repeats=5
    python -m benchmarks.attack_throughput --attack=apgd-ce --steps=100

``--steps`` is the number of gradient steps of pgd/apgd-ce/apgd-t (per
target for apgd-t); ``--queries`` is Square's query budget. Every step runs
(``early_stop=False``, fixed work, as torchattacks does) unless
``--early-stop`` lets the attacks stop once every example is fooled.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

from crp_jax import attacks
from crp_jax.models import get_model, init_variables

Attack = Callable[..., jax.Array]


def make_attack(args: argparse.Namespace) -> Attack:
  """``attack(logits_fn, x, y, key) -> x_adv`` for ``args.attack``."""
  eps, steps, stop = args.eps, args.steps, args.early_stop
  registry: dict[str, Attack] = {
      "fgsm": lambda f, x, y, k: attacks.fgsm(f, x, y, eps=eps),
      "pgd": lambda f, x, y, k: attacks.pgd(f, x, y, key=k, eps=eps, step_size=args.step_size,
                                            num_steps=steps, restarts=args.restarts, early_stop=stop),
      "apgd-ce": lambda f, x, y, k: attacks.apgd(f, x, y, key=k, eps=eps, num_steps=steps,
                                                 restarts=args.restarts, early_stop=stop),
      "apgd-t": lambda f, x, y, k: attacks.apgd_targeted(f, x, y, key=k, eps=eps, num_steps=steps,
                                                         num_targets=args.targets, early_stop=stop),
      "square": lambda f, x, y, k: attacks.square(f, x, y, key=k, eps=eps,
                                                  num_queries=args.queries, early_stop=stop),
  }
  return registry[args.attack]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--attack", default="pgd", choices=["fgsm", "pgd", "apgd-ce", "apgd-t", "square"])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--eps", type=float, default=0.3)
  parser.add_argument("--step-size", type=float, default=0.01)
  parser.add_argument("--restarts", type=int, default=1)
  parser.add_argument("--targets", type=int, default=9)
  parser.add_argument("--queries", type=int, default=5000)
  parser.add_argument("--early-stop", action="store_true",
                      help="let the attacks stop once every example is fooled (same result, "
                           "less work); by default every step runs")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  model = get_model("lenet")
  data_key, label_key, init_key, attack_key = jax.random.split(jax.random.key(0), 4)
  variables = init_variables(model, init_key, (28, 28, 1))
  x = jax.random.uniform(data_key, (args.batch, 28, 28, 1))
  y = jax.random.randint(label_key, (args.batch,), 0, 10)
  logits_fn = lambda x: model.apply(variables, x, train=False)
  attack = make_attack(args)
  run = jax.jit(lambda x, y, key: attack(logits_fn, x, y, key))

  start = time.perf_counter()
  compiled = run.lower(x, y, attack_key).compile()
  compile_s = time.perf_counter() - start
  times = []
  for i in range(args.repeats):
    start = time.perf_counter()
    compiled(x, y, jax.random.fold_in(attack_key, i)).block_until_ready()
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  print(f"attack={args.attack} steps={args.steps} batch={args.batch} early_stop={args.early_stop} "
        f"device={jax.devices()[0]}")
  print(f"compile: {compile_s:.2f} s")
  print("runs: " + ", ".join(f"{t:.3f}" for t in times) + " s")
  print(f"median: {median:.3f} s = {args.batch / median:.1f} images/s")


if __name__ == "__main__":
  main()
