r"""The CRP objective: the per-pair loss of the extended set (Eq. 9) and the ball loss (Eq. 5–8).

Both are built on one function, :func:`pair_loss`: the point loss of
``x_i + δ_ij`` for a row's pair ``(i, j)``, with δ from
:func:`~crp_jax.perturbations.make_delta`. The extended set of Eq. 9 is
the ``M·K`` (``M·(K+1)`` with the clean copies) pairs, and its training
loss is the mean of :func:`pair_loss` over them; :func:`ball_loss` is the
mean of :func:`pair_loss` over the K draws of one example (Eq. 8). So for
fixed parameters

.. math::
  \frac{1}{M (K + c)} \sum_{i, j} \mathrm{pair\_loss}(i, j)
  = \frac{1}{M} \sum_i \mathrm{ball\_loss}(x_i, y_i),

the full-epoch mean of the trainer's per-pair loss equals the mean ball
loss over the split (``tests/test_losses.py`` checks both this and that the
two see the same δ for the same ``(key, i, j)``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from crp_jax.perturbations import CLEAN_DRAW, Distribution, make_delta, perturb

#: ``loss_fn(x, y) -> (batch,)`` point losses (with ``has_aux``: ``((batch,), aux)``).
LossFn = Callable[[jax.Array, jax.Array], Any]
Clip = tuple[float, float] | None


def pair_loss(
    loss_fn: LossFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    example_ids: jax.Array,
    draw_ids: jax.Array,
    eps: float | jax.Array,
    distribution: Distribution = "uniform",
    epoch: int | jax.Array | None = None,
    clip: Clip = (0.0, 1.0),
) -> Any:
  r"""The point loss of each row's pair of the extended set: :math:`\ell(x_i + \delta_{ij}, y_i)`.

  Row ``b`` holds example ``example_ids[b]`` and its draw ``draw_ids[b]``
  (−1: the clean example, δ = 0), as the trainer samples them from the
  shuffled extended set of Eq. 9. All rows go through ``loss_fn`` in one call.

  Args:
    loss_fn: ``loss_fn(x, y) -> (batch,)`` per-example point loss.
    x: ``(batch, *shape)`` inputs in ``[0, 1]``.
    y: ``(batch, ...)`` labels, passed to ``loss_fn`` unchanged.
    key: PRNG key of the perturbation set.
    example_ids: ``(batch,)`` ids ``i`` of the examples.
    draw_ids: ``(batch,)`` draw ids ``j`` in ``[0, K)``, or −1 for clean.
    eps: bound ε of the uniform law, or σ of the Gaussian.
    distribution: ``"uniform"`` or ``"gaussian"``.
    epoch: ``None`` for constant perturbations, an epoch for variable ones.
    clip: pixel range for :func:`~crp_jax.perturbations.perturb`, or ``None``.

  Returns:
    what ``loss_fn`` returns on the perturbed rows: ``(batch,)`` losses, or
    ``(losses, aux)`` for a ``loss_fn`` with auxiliary outputs.
  """
  delta = make_delta(key, example_ids, draw_ids, x.shape[1:], eps=eps, distribution=distribution,
                     epoch=epoch, dtype=x.dtype)
  return loss_fn(perturb(x, delta, clip=clip), y)


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
    clip: Clip = (0.0, 1.0),
    has_aux: bool = False,
) -> Any:
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
  ``loss_fn`` in one call of batch ``(K [+1])·B``: rows ``d·B .. (d+1)·B``
  hold draw ``d`` (the clean copy first), each a :func:`pair_loss` row. The
  CLI trains with it under ``--config.objective=ball_loss``.

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
    has_aux: ``loss_fn`` returns ``(losses, aux)``; then this returns
      ``(ball losses, aux)``, ``aux`` of the whole ``(K [+1])·B`` call.

  Returns:
    ``(batch,)`` per-example ball losses (and ``aux`` with ``has_aux``).

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
  xs = jnp.tile(x, (n,) + (1,) * (x.ndim - 1))
  ys = jnp.tile(y, (n,) + (1,) * (jnp.ndim(y) - 1))
  out = pair_loss(loss_fn, xs, ys, key=key, example_ids=ids, draw_ids=jnp.repeat(draws, batch), eps=eps,
                  distribution=distribution, epoch=epoch, clip=clip)
  losses, aux = out if has_aux else (out, None)
  ball = losses.reshape(n, batch).mean(axis=0)
  return (ball, aux) if has_aux else ball
