"""One PGD step on LeNet in and out of ``lax.fori_loop`` (the loop slow path of XLA:CPU).

    python -m benchmarks.probes.loop_probe            # the LeNet of crp_jax (forward-conv input gradient)
    python -m benchmarks.probes.loop_probe --plain    # the same LeNet with lax.conv_general_dilated

Prints milliseconds per step (median of 5) for a single jitted step, a host
loop of jitted steps, ``fori_loop`` and a fully unrolled loop, batch 128 on
the CLI's CPU devices, with the CLI's process settings.
"""

from __future__ import annotations

from absl import app, flags

from benchmarks import _env, _timing


def probe(plain: bool) -> None:
  """Prints the four cases; ``plain``: LeNet with the CPU convolution rewrites off (``conv_rewrites=False``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from crp_jax.models import LeNet  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import train, meshes  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  model = LeNet(conv_rewrites=False if plain else None)
  mesh = meshes.make_mesh()
  data, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  v = jax.device_put(model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))), rep)
  x = jax.device_put(jax.random.uniform(jax.random.key(1), (128, 28, 28, 1)), data)
  y = jax.device_put(jnp.arange(128) % 10, data)
  n = 10

  def step(v, x, y):
    ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(model.apply(v, z), y).sum()
    g = jax.grad(ce)(x)
    return jnp.clip(x + 0.01 * jnp.sign(g), 0, 1)

  single = jax.jit(step)

  def host(v, x, y):
    for _ in range(n):
      x = single(v, x, y)
    return x

  loop = lambda unroll: jax.jit(lambda v, x, y: jax.lax.fori_loop(
      0, n, lambda i, z: step(v, z, y), x, unroll=unroll))
  cases = {"single step": (single, 1), "host loop": (host, n), "fori_loop": (loop(1), n),
           "unrolled": (loop(True), n)}
  for name, (fn, steps) in cases.items():
    times = _timing.interleave({name: lambda fn=fn: jax.block_until_ready(fn(v, x, y))}, repeats=5)
    ms = 1e3 * _timing.median(times[name]) / steps
    print(f"{'plain' if plain else 'crp_jax'} LeNet, {name:12s}: {ms:6.1f} ms per step")


def define_flags() -> None:
  """The flags; defined only when run as a script, so tests can import this module."""
  flags.DEFINE_bool("plain", False, "LeNet with lax.conv_general_dilated (the rewrites off).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _env.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  _env.setup_process("benchmarks.probes.loop_probe")
  probe(flags.FLAGS.plain)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_env.parse_flags)
