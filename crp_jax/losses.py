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

import functools
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax import _checks
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
  _check_batch(x, y, clip, example_ids=example_ids, draw_ids=draw_ids)
  delta = make_delta(example_ids, draw_ids, x.shape[1:], key=key, eps=eps, distribution=distribution,
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
    draws_per_chunk: int | None = None,
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
  K + 1), as in the paper's method G. By default all ``K·B`` perturbed inputs
  go through ``loss_fn`` in one call of batch ``(K [+1])·B``: rows
  ``d·B .. (d+1)·B`` hold draw ``d`` (the clean copy first), each a
  :func:`pair_loss` row. The CLI trains with it under
  ``--config.objective=ball_loss``.

  **Chunks.** ``draws_per_chunk=c`` bounds memory: the draws go through
  ``loss_fn`` c at a time (calls of ``c·B`` rows) in a ``lax.scan``, so one
  chunk's inputs and activations exist at once, under ``jax.grad`` too (the
  chunk is rematerialised with ``jax.checkpoint``: the backward pass
  recomputes its forward, one extra forward pass in all). When c does not
  divide ``K [+1]``, the last chunk is filled up with fresh draws ``j = K,
  K+1, …`` of the same law whose losses are dropped. Every row sees the same
  δ as unchunked, so for a ``loss_fn`` whose rows are independent (no
  train-mode BatchNorm) the losses equal the unchunked ones.

  **BatchNorm.** In train mode a BatchNorm inside ``loss_fn`` normalises
  over the rows of one call. Unchunked that is the whole extended batch, the
  clean and perturbed copies together, and ``aux`` is that call's, e.g. the
  running statistics updated once from its batch statistics. Chunked, each
  chunk normalises over its own ``c·B`` rows (fill-up draws included), like
  a smaller batch, so losses differ from the unchunked ones; ``aux`` then
  holds every chunk's aux stacked on a leading axis of length
  ``⌈(K [+1]) / c⌉``, each updated from the same starting statistics.
  ``jax.tree.map(lambda s: s.mean(0), aux)`` gives running averages updated
  with the mean of the chunks' batch statistics.

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
      ``(ball losses, aux)``: the aux of the whole ``(K [+1])·B`` call, or
      with chunks the chunks' auxes stacked on a leading chunk axis.
    draws_per_chunk: ``None`` (one call), or c ≥ 1 draws per call (static);
      a c above ``K [+1]`` makes one chunk.

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
    >>> # Three draws at a time (four calls, the last with two fill-up draws): the same losses.
    >>> chunked = ball_loss(loss_fn, x, y, key=jax.random.key(0), example_ids=ids,
    ...                     num_perturbations=10, eps=0.3, draws_per_chunk=3)
    >>> bool(jnp.allclose(chunked, loss, rtol=1e-6))
    True
    >>> # With ε = 0 every perturbed copy is the clean input: log(3) for uniform logits.
    >>> ball_loss(loss_fn, x, y, key=jax.random.key(0), example_ids=ids,
    ...           num_perturbations=10, eps=0.0).round(4)
    Array([1.0986, 1.0986], dtype=float32)

  References:
    Chernyak, Raj, Hazan, Keshet, *Constant Random Perturbations Provide
    Adversarial Robustness with Minimal Effect on Accuracy*.
  """
  _checks.count(num_perturbations, "num_perturbations")
  _checks.nonnegative(eps)
  _check_batch(x, y, clip, example_ids=example_ids)
  draws = ([CLEAN_DRAW] if include_clean else []) + list(range(num_perturbations))
  rows = functools.partial(_draw_rows, loss_fn, x, y, example_ids, has_aux=has_aux, key=key, eps=eps,
                           distribution=distribution, epoch=epoch, clip=clip)
  if draws_per_chunk is None:
    losses, aux = rows(jnp.asarray(draws, jnp.int32))
  else:
    size = _chunk_size(draws_per_chunk, len(draws))
    losses, aux = _chunked_draw_rows(rows, draws, size, num_perturbations)
  ball = losses.reshape(len(draws), x.shape[0]).mean(axis=0)
  return (ball, aux) if has_aux else ball


def _check_batch(x: Any, y: Any, clip: Clip, **ids: Any) -> None:
  """``x`` floating images inside ``clip``, and ``y`` and each of ``ids`` one entry per example."""
  _checks.images(x, clip)
  batch = x.shape[0]
  if not np.shape(y) or np.shape(y)[0] != batch:
    raise ValueError(f"y: shape {tuple(np.shape(y))}, but x has {batch} examples; give one label per example")
  for name, value in ids.items():
    _checks.ids(value, batch, name)


def _chunk_size(draws_per_chunk: Any, num_draws: int) -> int:
  """``draws_per_chunk`` checked (an int ≥ 1) and capped at the number of draws."""
  if isinstance(draws_per_chunk, bool) or not isinstance(draws_per_chunk, numbers.Integral) or draws_per_chunk < 1:
    raise ValueError(f"draws_per_chunk must be None or an int >= 1, got {draws_per_chunk!r}")
  return min(int(draws_per_chunk), num_draws)


def _draw_rows(loss_fn: LossFn, x: jax.Array, y: jax.Array, example_ids: jax.Array, draws: jax.Array, *,
               has_aux: bool, **perturbation: Any) -> tuple[jax.Array, Any]:
  """One ``loss_fn`` call on every example at each of ``draws``: ``((D·B,) losses, aux or None)``.

  Rows are draw-major: rows ``d·B .. (d+1)·B`` hold ``draws[d]`` of all B examples.
  """
  n, batch = draws.shape[0], x.shape[0]
  ids = jnp.tile(jnp.asarray(example_ids, jnp.int32), n)
  xs = jnp.tile(x, (n,) + (1,) * (x.ndim - 1))
  ys = jnp.tile(y, (n,) + (1,) * (jnp.ndim(y) - 1))
  out = pair_loss(loss_fn, xs, ys, example_ids=ids, draw_ids=jnp.repeat(draws, batch), **perturbation)
  return out if has_aux else (out, None)


def _chunked_draw_rows(rows: Callable[[jax.Array], tuple[jax.Array, Any]], draws: list[int], size: int,
                       num_perturbations: int, remat: bool = True) -> tuple[jax.Array, Any]:
  """``rows`` over ``draws``, ``size`` draws a call, looped with ``lax.scan``.

  The last chunk is filled up with fresh draws ``K, K+1, …`` whose rows are
  dropped. ``remat`` (``jax.checkpoint`` on a chunk) keeps the backward
  pass from storing every chunk's activations; ``False`` only for the
  memory probe (``benchmarks/probes/ball_loss_memory.py``).

  Returns:
    ``(len(draws)·B,)`` draw-major losses, as one call gives them, and the
    chunks' auxes stacked on a leading ``(num_chunks,)`` axis.
  """
  num_chunks = -(-len(draws) // size)
  fill = list(range(num_perturbations, num_perturbations + num_chunks * size - len(draws)))
  chunks = jnp.asarray(draws + fill, jnp.int32).reshape(num_chunks, size)
  body = lambda carry, chunk: (carry, rows(chunk))
  _, (losses, aux) = jax.lax.scan(jax.checkpoint(body) if remat else body, None, chunks)
  return losses.reshape(-1)[:len(draws) * (losses.shape[1] // size)], aux
