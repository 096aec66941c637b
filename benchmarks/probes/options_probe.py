r"""The CLI's train step under per-executable XLA options: ``python -m benchmarks.probes.options_probe``.

JAX compiles one executable with its own XLA options
(``.lower(...).compile(compiler_options=...)``), so an option can be tried
on the train step alone. This compiles the CLI's ``crp`` step
(:class:`benchmarks.run.JaxTrainer`'s step) once per variant, prints each
one's temporaries, checks whether 2 steps give bit-identical parameters
(against the first variant) and times ``--steps`` steps per repeat,
variants interleaved, the median of all repeats but the first. The variant
``library`` is what :func:`crp_jax.cpu.compile_for_cpu` (``train.fit``'s
compile) picks. ``--minimal`` adds a minimal Flax + ``optax.adam`` LeNet step
on float images (no δ, metrics or finiteness check), for scale::

  python -m benchmarks.probes.options_probe --model=lenet --steps=10           # the heap cap
  python -m benchmarks.probes.options_probe --model=lenet --batch=512 --steps=4
  python -m benchmarks.probes.options_probe --model=resnet18 --steps=1 --repeats=4 \
      --variants='{"onednn": {"xla_cpu_use_onednn": true}}'
  python -m benchmarks.probes.options_probe --model=lenet --minimal --variants='{}'

It runs in the process it is started in (no re-execution): start it with
the settings to compare (a plain process, or the CLI's ``LD_PRELOAD`` and
``GLIBC_TUNABLES``). A variant XLA rejects prints its error and is skipped.
"""

from __future__ import annotations

import crp_jax  # first, as a user script: its CPU settings  # isort: skip

import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import _env, _timing, run as bench
from crp_jax import cpu
from crp_jax.models import LeNet, get_model
from crp_jax.runner import train, meshes

HEAP = {"heap16": {cpu.HEAP_OPTION: 16 * 2**20}, "heap30": {cpu.HEAP_OPTION: 30 * 2**20}}
flags.DEFINE_enum("model", "lenet", ["lenet", "resnet18"], "The model of the CLI's crp step.")
flags.DEFINE_integer("batch", 128, "Train batch.", lower_bound=1)
flags.DEFINE_integer("steps", 10, "Steps per timed repeat.", lower_bound=1)
flags.DEFINE_integer("repeats", 6, "Timed repeats per variant; the first is dropped.", lower_bound=2)
flags.DEFINE_string("variants", json.dumps(HEAP), "JSON: name -> compiler_options, besides `none` and `library`.")
flags.DEFINE_bool("minimal", False, "Also time a minimal Flax + optax.adam LeNet step.")
FLAGS = flags.FLAGS


def compile_variants(step, state, batch, variants: dict[str, Any]) -> dict[str, Any]:
  lowered = step.lower(state, batch)
  out = {"none": lowered.compile(), "library": cpu.compile_for_cpu(step, state, batch)}
  for name, options in variants.items():
    try:
      out[name] = lowered.compile(compiler_options=options)
    except Exception as e:  # pylint: disable=broad-except  (XLA's INVALID_ARGUMENT for an unknown option)
      print(f"{name}: rejected: {str(e).splitlines()[0][:200]}")
  for name, compiled in out.items():
    print(f"{name:10s} temporaries {compiled.memory_analysis().temp_size_in_bytes / 2**20:8.1f} MiB")
  return out


def runner(compiled, state0, batches, put: Callable) -> Callable[[int], Any]:
  box = [put(state0)]

  def run(n: int) -> Any:
    for i in range(n):
      box[0], _ = compiled(box[0], batches[i % len(batches)])
    return jax.block_until_ready(box[0])

  return run


def minimal_step(batch: int) -> Callable[[int], Any]:
  model, tx = LeNet(), optax.adam(1e-3)
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  x, y = jax.random.uniform(jax.random.key(1), (batch, 28, 28, 1)), jnp.arange(batch) % 10

  def step(state, _):
    params, opt_state = state
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  return runner(jax.jit(step, donate_argnums=0), (params, tx.init(params)), [None], lambda s: s)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _env.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    variants = json.loads(FLAGS.variants)
  except json.JSONDecodeError as e:
    _env.usage_error(f"--variants is not JSON: {e}")
  shape = (28, 28, 1) if FLAGS.model == "lenet" else (32, 32, 3)
  mesh = meshes.make_train_mesh()
  trainer = bench.JaxTrainer(get_model(FLAGS.model), shape, bench.make_data(shape, FLAGS.batch), mesh,
                             method="crp", eps=0.3)
  state0 = jax.device_get(trainer.state)
  put = lambda s: jax.device_put(s, NamedSharding(mesh, P()))
  compiled = compile_variants(trainer.step, put(state0), trainer.batches[0], variants)
  ends = {n: jax.tree.leaves(jax.device_get(runner(c, state0, trainer.batches, put)(2))) for n, c in compiled.items()}
  first = next(iter(ends.values()))
  for name, leaves in ends.items():
    same = all(np.array_equal(a, b) for a, b in zip(first, leaves))
    print(f"{name:10s} 2 steps bit-identical to `none`: {same}")
  work = {n: runner(c, state0, trainer.batches, put) for n, c in compiled.items()}
  if FLAGS.minimal:
    work["minimal flax+adam"] = minimal_step(FLAGS.batch)
  times = _timing.interleave({n: (lambda r=r: r(FLAGS.steps)) for n, r in work.items()},
                             repeats=FLAGS.repeats, warmup=0)
  for name, ts in times.items():
    t = _timing.median(ts[1:]) / FLAGS.steps
    print(f"{name:18s} {1e3 * t:8.1f} ms per step {FLAGS.batch / t:9.1f} img/s   repeats {[round(x, 3) for x in ts]}")


if __name__ == "__main__":
  app.run(main, flags_parser=_env.parse_flags)
