"""Peak memory of ``ball_loss``'s gradient with and without ``draws_per_chunk`` (results/ball_loss_memory.md).

    python -m benchmarks.probes.ball_loss_memory                  # LeNet, K = 100, batch 128
    python -m benchmarks.probes.ball_loss_memory --grad_batch=4   # a smaller gradient check

The memory is XLA's buffer plan for ``jit(value_and_grad(sum of ball
losses))`` w.r.t. LeNet's parameters (``compile().memory_analysis()``):
deterministic, so a busy machine does not change it. ``remat=False`` is the
chunked loop without ``jax.checkpoint`` on a chunk, for comparison.

The equality check runs the programs: the ball losses at the full size, and
value and gradients at ``--grad_batch`` examples (XLA:CPU runs a
convolution's kernel gradient inside a loop on a slow generic path, so the
chunked gradient at batch 128 takes minutes there).
"""

from __future__ import annotations

import functools
from typing import Any
from unittest import mock

from absl import app, flags

from benchmarks import _env

K, BATCH, CHUNKS = 100, 128, (1, 10, 25, 30)


def objective(chunk: int | None, x: Any, y: Any, params: Any) -> Any:
  """The sum over the batch of LeNet's ball cross-entropy, K = 100 draws of U(−0.3, 0.3)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from crp_jax import ball_loss, get_model  # pylint: disable=g-import-not-at-top
  model = get_model("lenet")
  loss_fn = lambda xb, yb: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": params}, xb, train=False), yb)
  return ball_loss(loss_fn, x, y, key=jax.random.key(42), example_ids=jnp.arange(x.shape[0]), num_perturbations=K,
                   eps=0.3, draws_per_chunk=chunk)


def memory_row(chunk: int | None, remat: bool, x: Any, y: Any, params: Any) -> str:
  """One table row: XLA's temp, argument and output bytes of the compiled value_and_grad, in MiB."""
  import jax  # pylint: disable=g-import-not-at-top
  from crp_jax import losses  # pylint: disable=g-import-not-at-top
  # The loop without jax.checkpoint is not an option of ball_loss; patched in for this row only.
  no_remat = functools.partial(losses._chunked_draw_rows, remat=False)  # pylint: disable=protected-access
  with mock.patch.object(losses, "_chunked_draw_rows", no_remat) if not remat else mock.MagicMock():
    f = jax.value_and_grad(lambda p: objective(chunk, x, y, p).sum())
    m = jax.jit(f).lower(params).compile().memory_analysis()
  mib = [v / 2**20 for v in (m.temp_size_in_bytes, m.argument_size_in_bytes, m.output_size_in_bytes)]
  return f"| {chunk} | {'yes' if chunk and remat else 'no'} | {mib[0]:,.1f} | {mib[1]:.1f} | {mib[2]:.1f} | {sum(mib):,.1f} |"


def equality(x: Any, y: Any, params: Any, grad_batch: int) -> None:
  """Max |chunked − unchunked| of the ball losses (batch 128) and of loss and gradients (``grad_batch``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  losses = lambda c: jax.jit(functools.partial(objective, c, x, y))(params)
  grads = lambda c: jax.jit(jax.value_and_grad(lambda p: objective(c, x[:grad_batch], y[:grad_batch], p).sum()))(params)
  whole, (whole_value, whole_grad) = losses(None), grads(None)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(whole_grad))
  print(f"\nunchunked: mean ball loss {float(whole.mean()):.6f} (batch {BATCH}); largest |gradient| {scale:.4g} "
        f"(batch {grad_batch})\n")
  print(f"| draws_per_chunk | max abs diff of the {BATCH} ball losses | bit-identical | "
        f"abs diff of the loss sum (batch {grad_batch}) | max abs diff of the gradients |")
  print("|---|---|---|---|---|")
  for c in CHUNKS:
    chunked, (value, grad) = losses(c), grads(c)
    dg = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(whole_grad)))
    print(f"| {c} | {float(jnp.abs(chunked - whole).max()):.3g} | {bool(jnp.all(chunked == whole))} | "
          f"{abs(float(value - whole_value)):.3g} | {dg:.3g} |", flush=True)


def probe(grad_batch: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from crp_jax import get_model  # pylint: disable=g-import-not-at-top
  params = get_model("lenet").init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)["params"]
  x = jax.random.uniform(jax.random.key(1), (BATCH, 28, 28, 1))
  y = jnp.arange(BATCH) % 10
  print(f"LeNet, K = {K}, batch {BATCH}, jit(value_and_grad(ball_loss(...).sum())) w.r.t. params, "
        f"{jax.devices()[0].platform}\n")
  print("| draws_per_chunk | remat | temp MiB | arguments MiB | outputs MiB | total MiB |")
  print("|---|---|---|---|---|---|")
  for chunk, remat in [(None, False)] + [(c, True) for c in CHUNKS] + [(c, False) for c in CHUNKS]:
    print(memory_row(chunk, remat, x, y, params), flush=True)
  equality(x, y, params, grad_batch)


def define_flags() -> None:
  """The flags; defined only when run as a script, so tests can import this module."""
  flags.DEFINE_integer("grad_batch", 8, "Examples in the gradient equality check.", lower_bound=1, upper_bound=BATCH)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _env.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  _env.setup_process("benchmarks.probes.ball_loss_memory")
  probe(flags.FLAGS.grad_batch)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_env.parse_flags)
