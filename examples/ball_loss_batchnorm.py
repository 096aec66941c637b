"""``crp_jax.ball_loss`` in your own Flax Linen + optax training step, with BatchNorm and a hinge loss.

    python -m examples.ball_loss_batchnorm                       # 40 steps on mnist5k (offline)
    python -m examples.ball_loss_batchnorm --draws_per_chunk=3   # the K + 1 = 9 draws three at a time

What to copy from it:

* ``has_aux=True``: the point loss returns the model's updated ``batch_stats``
  and ``ball_loss`` hands them back beside the losses.
* BatchNorm runs in train mode over the whole call: the clean and the K
  perturbed copies of the batch together, ``(K + 1)·B`` rows. With
  ``draws_per_chunk`` each chunk of draws is normalised on its own and
  ``ball_loss`` returns one set of running statistics per chunk, which the
  step averages.
* Any per-example loss works; here the multi-class hinge loss.
* The perturbation key stays fixed for the whole run (constant perturbations,
  Eq. 8) and the example ids are the rows' indices in the training split, so
  an example sees the same K perturbations every time it comes up.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from crp_jax import ball_loss, data

NUM_PERTURBATIONS = 8   # K draws of U(-EPS, EPS) per example, plus the clean copy
EPS = 0.3


class MLP(nn.Module):
  """Dense → BatchNorm → ReLU → Dense, on flattened 28x28 images."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Dense(128)(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(10)(nn.relu(x))


class TrainState(train_state.TrainState):
  batch_stats: Any


def create_state(*, key: jax.Array, learning_rate: float = 1e-3) -> TrainState:
  variables = MLP().init(key, jnp.zeros((1, 28, 28, 1)), train=False)
  return TrainState.create(apply_fn=MLP().apply, params=variables["params"],
                           batch_stats=variables["batch_stats"], tx=optax.adam(learning_rate))


@functools.partial(jax.jit, static_argnames="draws_per_chunk")
def train_step(state: TrainState, x: jax.Array, y: jax.Array, ids: jax.Array, *, key: jax.Array,
               draws_per_chunk: int | None = None) -> tuple[TrainState, jax.Array]:
  """One Adam step on the mean ball loss of the batch (``key``: the perturbation set's); the new state and the loss."""

  def objective(params):
    def point_loss(xb, yb):
      logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, xb,
                                       train=True, mutable=["batch_stats"])
      return optax.losses.multiclass_hinge_loss(logits, yb), updates["batch_stats"]

    losses, batch_stats = ball_loss(point_loss, x, y, key=key, example_ids=ids,
                                    num_perturbations=NUM_PERTURBATIONS, eps=EPS, include_clean=True,
                                    has_aux=True, draws_per_chunk=draws_per_chunk)
    if draws_per_chunk is not None:
      # One set of running statistics per chunk, each updated from the same start: average them.
      batch_stats = jax.tree.map(lambda s: s.mean(axis=0), batch_stats)
    return losses.mean(), batch_stats

  (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), loss


def train(steps: int, *, draws_per_chunk: int | None = None, batch_size: int = 64, seed: int = 0,
          log_every: int = 0) -> tuple[TrainState, list[float]]:
  """``steps`` steps on mnist5k's training split; returns the final state and every step's loss."""
  split = data.load_split("mnist5k", "train")
  init_key, perturbation_key = jax.random.split(jax.random.key(seed))
  state, rng, losses = create_state(key=init_key), np.random.default_rng(seed), []
  for step in range(steps):
    rows = rng.choice(len(split.ids), batch_size, replace=False)
    x = data.to_float(jnp.asarray(split.images[rows]))
    state, loss = train_step(state, x, jnp.asarray(split.labels[rows]), jnp.asarray(split.ids[rows]),
                             key=perturbation_key, draws_per_chunk=draws_per_chunk)
    losses.append(loss)
    if log_every and (step % log_every == 0 or step == steps - 1):
      print(f"step {step:3d}  ball hinge loss {float(loss):.4f}")
  return state, [float(v) for v in losses]


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
  parser = _Parser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--draws_per_chunk", type=int, default=None)
  args = parser.parse_args(argv)
  if args.steps < 1 or (args.draws_per_chunk is not None and args.draws_per_chunk < 1):
    parser.error("--steps and --draws_per_chunk must be >= 1")
  train(args.steps, draws_per_chunk=args.draws_per_chunk, log_every=10)


if __name__ == "__main__":
  main()
