"""Compile and run time of every attack of a saved model's evaluation, one batch each.

    python -m experiments.run --workdir=/tmp/run           # a trained default run
    python -m benchmarks.eval_profile /tmp/run/crp          # then time its evaluation's attacks

For each attack of the paper's and the strong protocol (and the masking
sweeps) it compiles the per-example correctness function on the first
``eval.batch_size`` attacked test digits and runs it twice; prints seconds.
"""

from __future__ import annotations

import sys
import time


def main(workdir: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from crp_jax import data  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import diagnostics, evaluate, pipeline, train  # pylint: disable=g-import-not-at-top
  trained = pipeline.load_trained(workdir)
  cfg = trained.config.eval
  test = data.load_split(trained.config.dataset, "test")
  subset = evaluate.take(test, evaluate.subset_indices(test.num_examples, cfg.attack_subset))
  mesh = train.make_mesh()
  named = {**{k: v for k, v in evaluate.paper_attacks(cfg).items() if v is not None},
           **diagnostics.strong_attacks(cfg), **diagnostics.sweep_attacks(cfg)}
  shard, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  variables = jax.device_put(trained.variables, rep)
  x, y, key = subset.images[:cfg.batch_size], subset.labels[:cfg.batch_size], jax.random.key(0)
  totals = [0.0, 0.0]
  for name, attack in named.items():
    fn = jax.jit(evaluate.make_correct_fn(trained.model, attack), in_shardings=(rep, shard, shard, rep),
                 out_shardings=shard)
    t0 = time.perf_counter()
    compiled = fn.lower(variables, x, y, key).compile()
    t1 = time.perf_counter()
    jax.block_until_ready(compiled(variables, x, y, key))
    t2 = time.perf_counter()
    jax.block_until_ready(compiled(variables, x, y, key))
    t3 = time.perf_counter()
    print(f"{name:14s} compile {t1 - t0:6.2f} s  run {t2 - t1:6.2f} s  run again {t3 - t2:6.2f} s")
    totals[0] += t1 - t0
    totals[1] += t3 - t2
  print(f"total: compile {totals[0]:.1f} s, run {totals[1]:.1f} s")


if __name__ == "__main__":
  from experiments import cli  # pylint: disable=g-import-not-at-top
  if len(sys.argv) != 2:
    cli.fail("usage: python -m benchmarks.eval_profile WORKDIR_OF_ONE_MODEL")
  cli.setup_process("benchmarks.eval_profile")
  main(sys.argv[1])
