"""Compile and run time of every attack of a saved model's evaluation, one batch each.

    python -m experiments.run --workdir=/tmp/run           # a trained default run
    python -m benchmarks.probes.eval_profile /tmp/run/crp   # then time its evaluation's attacks

For each attack of the model's evaluation plan (:func:`crp_jax.runner.evaluators.build_plan`:
the paper's and the strong protocol, with the masking sweeps; specs with
equal settings once, as the evaluation runs them) it compiles the
per-example correctness function on the first ``eval.batch_size`` attacked
test digits and runs it twice; prints seconds.
"""

from __future__ import annotations

import time
from typing import Any

from absl import app

from benchmarks import _env


def profile(workdir: str) -> None:
  """Prints compile and run seconds of each attack of the saved model in ``workdir``."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from crp_jax import data  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import evaluators, pipeline, train, meshes, seeds
  from crp_jax.runner.evaluators import batches  # pylint: disable=g-import-not-at-top
  trained = pipeline.load_trained(workdir)
  cfg = trained.config.eval
  test = data.load_split(trained.config.dataset, "test")
  subset = batches.take(test, batches.subset_indices(test.num_examples, cfg.attack_subset))
  specs: dict[tuple, Any] = {}
  for spec in (s for e in evaluators.build_plan(cfg) for s in e.specs):
    specs.setdefault(spec.settings(), spec)   # the first name of each attack the evaluation runs once
  mesh = meshes.make_mesh()
  shard, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  variables = jax.device_put(trained.variables, rep)
  x, y = subset.images[:cfg.batch_size], subset.labels[:cfg.batch_size]
  root = seeds.run_keys(trained.config.seed)["eval"]
  totals = [0.0, 0.0]
  for spec in specs.values():
    fn = jax.jit(batches.correct_under(trained.model, spec), in_shardings=(rep, shard, shard, rep),
                 out_shardings=shard)
    args = (variables, x, y, spec.key(root))
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    t1 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    t2 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    t3 = time.perf_counter()
    print(f"{spec.name:14s} compile {t1 - t0:6.2f} s  run {t2 - t1:6.2f} s  run again {t3 - t2:6.2f} s")
    totals[0] += t1 - t0
    totals[1] += t3 - t2
  print(f"total: compile {totals[0]:.1f} s, run {totals[1]:.1f} s")


def main(argv: list[str]) -> None:
  """``argv``: the program name and the workdir of one trained model."""
  if len(argv) != 2:
    _env.usage_error("usage: python -m benchmarks.probes.eval_profile WORKDIR_OF_ONE_MODEL")
  _env.setup_process("benchmarks.probes.eval_profile")
  profile(argv[1])


if __name__ == "__main__":
  app.run(main, flags_parser=_env.parse_flags)
