"""Stateless constant random perturbations (§3, Eq. 8–9 of the paper).

The paper extends the training set once with K perturbed copies
``x_i + δ_ij`` of every example and keeps them fixed for the whole run.
Storing ``K·M`` images is wasteful, so here δ_ij is a *pure function* of a
PRNG key and the pair ``(i, j)``::

    δ_ij = sample(fold_in(fold_in(key, i), j))

The set is therefore identical for any batch size, batch order, device
count or host count, and nothing is stored. Variable perturbations (the
baselines B–E of Table 7) fold the epoch in first, so they change every
epoch while the constant ones never do.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax import _checks

Distribution = Literal["uniform", "gaussian"]
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "gaussian")
#: Draw id that marks the clean example (δ = 0) in the extended set.
CLEAN_DRAW: int = -1


def _pair_key(key: jax.Array, example_id: jax.Array, draw_id: jax.Array) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(key, example_id), draw_id)


def make_delta(
    example_ids: jax.Array,
    draw_ids: jax.Array,
    shape: tuple[int, ...],
    *,
    key: jax.Array,
    eps: float | jax.Array,
    distribution: Distribution = "uniform",
    epoch: int | jax.Array | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
  """One perturbation δ per ``(example_id, draw_id)`` pair.

  ``δ ~ U(−ε, ε)^d`` for ``"uniform"`` and ``δ ~ N(0, ε² I)`` for
  ``"gaussian"`` (the paper's ``N(0, 0.3²)`` is ``eps=0.3``). A pair whose
  draw id is :data:`CLEAN_DRAW` (−1) gets ``δ = 0``.

  Args:
    example_ids: ``(batch,)`` integer ids of the examples (index in the split).
    draw_ids: ``(batch,)`` integer draw ids ``j`` in ``[0, K)``, or −1 for clean.
    shape: shape of one example, e.g. ``(28, 28, 1)``.
    key: a PRNG key (typed ``jax.random.key`` or raw ``PRNGKey``).
    eps: the bound ε of the uniform law, or the std σ of the Gaussian.
    distribution: ``"uniform"`` or ``"gaussian"``.
    epoch: ``None`` for constant perturbations (the paper's method); an
      integer for variable perturbations, drawn anew each epoch.
    dtype: floating dtype of the result.

  Returns:
    ``(batch, *shape)`` array. Row ``b`` depends only on ``(key, epoch,
    example_ids[b], draw_ids[b])``.

  >>> import jax, jax.numpy as jnp
  >>> d = make_delta(jnp.array([3, 3]), jnp.array([0, -1]), (2,), key=jax.random.key(0), eps=0.3)
  >>> d.shape, bool(jnp.all(d[1] == 0)), bool(jnp.all(jnp.abs(d) <= 0.3))
  ((2, 2), True, True)
  """
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"distribution={distribution!r}: must be one of {DISTRIBUTIONS}")
  _checks.nonnegative(eps)
  for name, ids in (("example_ids", example_ids), ("draw_ids", draw_ids)):
    if not jnp.issubdtype(getattr(ids, "dtype", jnp.asarray(ids).dtype), jnp.integer):
      raise TypeError(f"{name}: {jnp.asarray(ids).dtype} ids; give integers")
  example_ids = jnp.asarray(example_ids, jnp.int32)
  draw_ids = jnp.asarray(draw_ids, jnp.int32)
  if example_ids.shape != draw_ids.shape or example_ids.ndim != 1:
    raise ValueError(
        f"example_ids and draw_ids must be 1-D of one length, got {example_ids.shape} and {draw_ids.shape}")
  base = key if epoch is None else jax.random.fold_in(key, epoch)
  keys = jax.vmap(_pair_key, in_axes=(None, 0, 0))(base, example_ids, jnp.maximum(draw_ids, 0))
  if distribution == "uniform":
    sample = lambda k: jax.random.uniform(k, shape, dtype, minval=-1.0, maxval=1.0)
  else:
    sample = lambda k: jax.random.normal(k, shape, dtype)
  unit = jax.vmap(sample)(keys)
  keep = (draw_ids >= 0).reshape((-1,) + (1,) * len(shape))
  return jnp.where(keep, unit * jnp.asarray(eps, dtype), jnp.zeros((), dtype))


def perturb(
    x: jax.Array, delta: jax.Array, *, clip: tuple[float, float] | None = (0.0, 1.0)
) -> jax.Array:
  """``x + δ``, clipped to the valid pixel range.

  The paper is silent on clipping: its Eq. 8 adds δ to x and says nothing
  about inputs leaving ``[0, 1]``. We clip by default because a real image
  cannot leave that range and attacks are evaluated inside it; pass
  ``clip=None`` to train on the unclipped ``x + δ``.

  Args:
    x: ``(batch, *shape)`` images.
    delta: perturbations broadcastable to ``x``.
    clip: ``(low, high)`` bounds, or ``None`` for no clipping.

  Returns:
    array of ``x``'s shape and dtype.
  """
  _checks.images(x, clip)
  try:
    fits = np.broadcast_shapes(np.shape(delta), np.shape(x)) == np.shape(x)
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(f"delta: shape {np.shape(delta)} does not broadcast to x's {np.shape(x)}")
  out = x + delta.astype(x.dtype)
  return out if clip is None else jnp.clip(out, clip[0], clip[1])
