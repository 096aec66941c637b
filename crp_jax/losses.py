"""The ball loss (§3, Eq. 5–8 of the paper)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from crp_jax.perturbations import CLEAN_DRAW, Distribution, make_delta, perturb

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def ball_loss(
    loss_fn: LossFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    example_ids: jax.Array,
    num_perturbations: int,
    eps: float | jax.Array,
    distribution: Distribution = "uniform",
    include_clean: bool = False,
    epoch: int | jax.Array | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> jax.Array:
  r"""Per-example ball loss: the mean point loss over K constant perturbations.

  The paper defines the loss of an example as its expectation over a ball
  (Eq. 5–6),

  .. math::
    \bar\ell(x, y) = \mathbb{E}_{\delta \sim q_\epsilon}[\ell(x + \delta, y)],

  and approximates it with K draws that stay fixed for the whole run (Eq. 8),

  .. math::
    \bar\ell(x_i, y_i) \approx \frac{1}{K} \sum_{j=1}^{K} \ell(x_i + \delta_{ij}, y_i),
    \qquad \delta_{ij} = \mathrm{make\_delta}(key, i, j).

  With ``include_clean=True`` the clean loss joins the average (divided by
  K + 1), as in the paper's method G. All ``K·B`` perturbed inputs go through
  ``loss_fn`` in one call of batch ``(K [+1])·B``.

  Args:
    loss_fn: ``loss_fn(x, y) -> (batch,)`` per-example point loss, e.g. a
      model's cross-entropy.
    x: ``(batch, *shape)`` inputs in ``[0, 1]``.
    y: ``(batch, ...)`` labels, passed to ``loss_fn`` unchanged.
    key: PRNG key of the perturbation set.
    example_ids: ``(batch,)`` ids of the examples, so δ does not depend on
      the batch.
    num_perturbations: K ≥ 1 (static).
    eps: bound ε of the uniform law, or σ of the Gaussian.
    distribution: ``"uniform"`` or ``"gaussian"``.
    include_clean: average the clean loss in as well.
    epoch: ``None`` for constant perturbations, an epoch for variable ones.
    clip: pixel range for :func:`~crp_jax.perturbations.perturb`, or ``None``.

  Returns:
    ``(batch,)`` per-example ball losses.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from crp_jax import ball_loss
    >>> w = jnp.ones((4, 3)) / 4
    >>> def loss_fn(x, y):
    ...   return optax.softmax_cross_entropy_with_integer_labels(x @ w, y)
    >>> x, y = jnp.full((2, 4), 0.5), jnp.array([0, 2])
    >>> ids = jnp.array([0, 1])
    >>> loss = ball_loss(loss_fn, x, y, key=jax.random.key(0), example_ids=ids,
    ...                  num_perturbations=10, eps=0.3)
    >>> loss.shape
    (2,)
    >>> # With ε = 0 every perturbed copy is the clean input: log(3) for uniform logits.
    >>> ball_loss(loss_fn, x, y, key=jax.random.key(0), example_ids=ids,
    ...           num_perturbations=10, eps=0.0).round(4)
    Array([1.0986, 1.0986], dtype=float32)

  References:
    Chernyak, Raj, Hazan, Keshet, *Constant Random Perturbations Provide
    Adversarial Robustness with Minimal Effect on Accuracy*.
  """
  if num_perturbations < 1:
    raise ValueError(f"num_perturbations must be >= 1, got {num_perturbations}")
  batch = x.shape[0]
  draws = jnp.arange(num_perturbations, dtype=jnp.int32)
  if include_clean:
    draws = jnp.concatenate([jnp.array([CLEAN_DRAW], jnp.int32), draws])
  n = draws.shape[0]
  ids = jnp.tile(jnp.asarray(example_ids, jnp.int32), n)
  draw_ids = jnp.repeat(draws, batch)
  delta = make_delta(key, ids, draw_ids, x.shape[1:], eps=eps,
                     distribution=distribution, epoch=epoch, dtype=x.dtype)
  xs = perturb(jnp.tile(x, (n,) + (1,) * (x.ndim - 1)), delta, clip=clip)
  ys = jnp.tile(y, (n,) + (1,) * (jnp.ndim(y) - 1))
  return loss_fn(xs, ys).reshape(n, batch).mean(axis=0)
