r"""Certified L2 robustness by randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

A base classifier ``f`` (any ``logits_fn``, ``f(x) = argmax logits_fn(x)``)
defines the smoothed classifier

.. math:: g(x) = \arg\max_c \; P_{\varepsilon \sim N(0, \sigma^2 I)}\big(f(x + \varepsilon) = c\big).

If the top class ``c_A`` has probability at least ``p_A > 1/2``, then ``g``
is constant (equal to ``c_A``) on the L2 ball of radius
``R = σ · Φ⁻¹(p_A)`` around ``x`` (Cohen et al., Theorem 1, with the runner-up
bounded by ``1 − p_A``). :func:`certify` estimates a lower bound ``p̲_A`` by
Monte Carlo, so the guarantee holds **with probability at least 1 − α
over the noise**: if ``certify`` returns class ``ĉ`` and radius ``R``, then
with probability ≥ 1 − α, ``g(x + δ) = ĉ`` for every ``‖δ‖₂ < R``.

* :func:`predict` (the paper's PREDICT): the top two counts ``n_A, n_B`` of
  ``n`` noisy samples; abstain unless the two-sided binomial test of
  ``n_A`` out of ``n_A + n_B`` at 1/2 rejects at level α. With probability
  ≥ 1 − α it does not return a class other than ``g(x)``.
* :func:`certify` (the paper's CERTIFY): ``ĉ`` from ``n0`` samples; ``p̲_A``
  the one-sided Clopper–Pearson lower bound at level 1 − α of
  ``P(f(x + ε) = ĉ)`` from ``n`` fresh samples; abstain if ``p̲_A < 1/2``,
  else ``R = σ · Φ⁻¹(p̲_A)``.

Clipping: ``f`` sees ``x + ε`` as it is. A ``logits_fn`` that clips its
input to [0, 1] first is just another base classifier, and the guarantee
is about that classifier, on all of R^d; nothing in the certificate
depends on images staying in [0, 1].

Noise: sample ``s`` of row ``b`` is ``σ · N(0, I)`` drawn from
``fold_in(fold_in(key, b), s)``, inside a ``lax`` loop of ``batch_size``
samples per row, so the ``n`` samples never exist at once, the counts do
not depend on ``batch_size`` or on how rows are sharded, and the same key
gives the same counts. Counts are integers, accumulated on device; the
statistics (scipy's beta, binomial and normal laws) run on the host.
"""

from __future__ import annotations

import functools
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from scipy import stats

from crp_jax import _checks

LogitsFn = Callable[[jax.Array], jax.Array]
#: The class returned where the smoothed classifier abstains.
ABSTAIN = -1
#: CERTIFY's defaults, as in Cohen et al.'s experiments: n0 selection samples, n estimation samples,
#: failure probability α, and noisy samples per example per step.
DEFAULT_N0, DEFAULT_N, DEFAULT_ALPHA, DEFAULT_BATCH_SIZE = 100, 100_000, 0.001, 1000
#: The L2 radii at which certified accuracy is reported by default.
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


class Certificate(NamedTuple):
  """What :func:`certify` returns for a batch of ``B`` rows (numpy arrays).

  Attributes:
    prediction: ``(B,)`` int, the certified class ``ĉ``, or :data:`ABSTAIN`.
    radius: ``(B,)`` float, ``σ · Φ⁻¹(p̲_A)`` where certified, 0 where abstaining.
    p_lower: ``(B,)`` float, the Clopper–Pearson lower bound ``p̲_A``.
    counts: ``(B, classes)`` int, the ``n`` certification samples per class.
  """
  prediction: np.ndarray
  radius: np.ndarray
  p_lower: np.ndarray
  counts: np.ndarray


def check_arguments(*, sigma: float, alpha: float, batch_size: int, **sizes: int) -> None:
  """Raises ``ValueError`` (one line) unless σ > 0, 0 < α < 1, and every size is ≥ 1."""
  for name, value in (("sigma", sigma), ("alpha", alpha)):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise TypeError(f"{name}={value!r}: must be a number")
  if not sigma > 0:
    raise ValueError(f"sigma={sigma}: must be > 0")
  if not 0 < alpha < 1:
    raise ValueError(f"alpha={alpha}: must be in (0, 1)")
  for name, value in {**sizes, "batch_size": batch_size}.items():
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise TypeError(f"{name}={value!r}: must be an integer >= 1")
    if int(value) != value or value < 1:
      raise ValueError(f"{name}={value}: must be an integer >= 1")


def _num_classes(logits_fn: LogitsFn, x: jax.Array) -> int:
  return int(jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)).shape[-1])


def sample_counts(logits_fn: LogitsFn, x: jax.Array, *, key: jax.Array, sigma: float, num: int,
                  batch_size: int, num_classes: int | None = None, ids: jax.Array | None = None) -> jax.Array:
  """``counts[b, c] = #{s < num : argmax logits_fn(x_b + ε_bs) = c}``, ``ε_bs ~ N(0, σ² I)``.

  Args:
    logits_fn: ``(rows, *shape) -> (rows, classes)``.
    x: ``(B, *shape)`` inputs.
    key: noise key; sample ``s`` of row ``b`` uses ``fold_in(fold_in(key, ids[b]), s)``.
    sigma: noise std σ.
    num: samples per row.
    batch_size: samples per row per loop step (``B · batch_size`` rows per forward pass).
    num_classes: default: read from ``logits_fn``'s output shape.
    ids: ``(B,)`` integer id of each row (default ``0..B-1``): the example
      ids of a test split make each example's noise independent of how the
      split is cut into calls.

  Returns:
    ``(B, classes)`` int32 counts; jit-compatible (``num`` and ``batch_size`` static).
  """
  classes = num_classes or _num_classes(logits_fn, x)
  ids = jnp.arange(x.shape[0]) if ids is None else jnp.asarray(ids)
  rows = jax.vmap(lambda b: jax.random.fold_in(key, b))(ids)

  def step(i, counts):
    ids = i * batch_size + jnp.arange(batch_size)
    keys = jax.vmap(lambda k: jax.vmap(lambda s: jax.random.fold_in(k, s))(ids))(rows)   # (B, m)
    noise = jax.vmap(jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype)))(keys)
    noisy = (x[:, None] + sigma * noise).reshape(-1, *x.shape[1:])
    top = jnp.argmax(logits_fn(noisy), axis=-1).reshape(x.shape[0], batch_size)
    hits = jax.nn.one_hot(top, classes, dtype=jnp.int32) * (ids < num)[None, :, None].astype(jnp.int32)
    return counts + hits.sum(axis=1)

  steps = -(-num // batch_size)
  return jax.lax.fori_loop(0, steps, step, jnp.zeros((x.shape[0], classes), jnp.int32))


def lower_confidence_bound(successes: np.ndarray, trials: int | np.ndarray, alpha: float) -> np.ndarray:
  """One-sided Clopper–Pearson lower bound at level 1 − α: the α-quantile of Beta(k, n − k + 1); 0 at k = 0."""
  k = np.asarray(successes, np.float64)
  with np.errstate(invalid="ignore"):
    bound = stats.beta.ppf(alpha, k, trials - k + 1)
  return np.where(k > 0, bound, 0.0)


@functools.lru_cache(maxsize=32)
def _counts_fn(logits_fn: LogitsFn, *, sigma: float, num: int, batch_size: int, num_classes: int,
               mesh: Mesh | None) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
  """``(x, key, ids) ->`` :func:`sample_counts` jitted, rows sharded along the mesh's ``data`` axis if given."""
  fn = lambda x, key, ids: sample_counts(logits_fn, x, key=key, sigma=sigma, num=num, batch_size=batch_size,
                                         num_classes=num_classes, ids=ids)
  if mesh is None:
    return jax.jit(fn)
  data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  return jax.jit(fn, in_shardings=(data, replicated, data), out_shardings=replicated)


def counts_of(logits_fn: LogitsFn, x: jax.Array, *, key: jax.Array, sigma: float, num: int, batch_size: int,
              mesh: Mesh | None = None, ids: jax.Array | None = None) -> np.ndarray:
  """``(B, classes)`` :func:`sample_counts` on the host, rows sharded over ``mesh`` (``B`` must divide by it)."""
  fn = _counts_fn(logits_fn, sigma=sigma, num=num, batch_size=batch_size,
                  num_classes=_num_classes(logits_fn, x), mesh=mesh)
  ids = np.arange(x.shape[0]) if ids is None else np.asarray(ids)
  return np.asarray(jax.device_get(fn(x, key, ids.astype(np.int32))))


def predict(logits_fn: LogitsFn, x: jax.Array, *, key: jax.Array, sigma: float, n: int, alpha: float,
            batch_size: int, mesh: Mesh | None = None, ids: jax.Array | None = None) -> np.ndarray:
  """The smoothed class of each row, or :data:`ABSTAIN` (the paper's PREDICT).

  ``(B, *shape) -> (B,)`` int. Abstains unless the two-sided binomial
  test of ``n_A`` successes in ``n_A + n_B`` trials at p = 1/2 has p-value
  ≤ α (``n_A ≥ n_B`` the top two counts; ties abstain).
  """
  check_arguments(sigma=sigma, alpha=alpha, batch_size=batch_size, n=n)
  _checks.images(x, clip=None)
  return prediction_from_counts(counts_of(logits_fn, x, key=key, sigma=sigma, num=n, batch_size=batch_size,
                                          mesh=mesh, ids=ids), alpha)


def prediction_from_counts(counts: np.ndarray, alpha: float) -> np.ndarray:
  """PREDICT's decision from ``(B, classes)`` counts: the top class, or :data:`ABSTAIN`."""
  top2 = np.sort(counts, axis=1)[:, ::-1][:, :2]
  p = np.array([stats.binomtest(int(a), int(a + b), 0.5).pvalue if a + b else 1.0 for a, b in top2])
  return np.where(p <= alpha, np.argmax(counts, axis=1), ABSTAIN)


def certify(logits_fn: LogitsFn, x: jax.Array, *, key: jax.Array, sigma: float, n0: int = DEFAULT_N0,
            n: int = DEFAULT_N, alpha: float = DEFAULT_ALPHA, batch_size: int = DEFAULT_BATCH_SIZE,
            mesh: Mesh | None = None, ids: jax.Array | None = None) -> Certificate:
  """The certified class and L2 radius of each row (the paper's CERTIFY; defaults as in the paper).

  ``ĉ = argmax`` of the counts of ``n0`` samples (key ``fold_in(key, 0)``);
  ``p̲_A`` = :func:`lower_confidence_bound` of ``ĉ``'s count among ``n``
  fresh samples (key ``fold_in(key, 1)``); abstain if ``p̲_A < 1/2``, else
  ``R = σ · Φ⁻¹(p̲_A)``. With probability ≥ 1 − α, ``g`` is constant
  (= ``ĉ``) on the open L2 ball of radius ``R``.

  Args:
    logits_fn: the base classifier, ``(rows, *shape) -> (rows, classes)``.
    x: ``(B, *shape)``.
    key: the noise key.
    sigma, n0, n, alpha, batch_size: σ, selection and estimation samples,
      the level α, and samples per row per loop step.
    mesh: shard the rows along its ``data`` axis.
    ids: ``(B,)`` row ids keying the noise (:func:`sample_counts`).

  Returns:
    a :class:`Certificate` of ``(B,)`` arrays.
  """
  check_arguments(sigma=sigma, alpha=alpha, batch_size=batch_size, n0=n0, n=n)
  _checks.images(x, clip=None)
  if ids is not None:
    _checks.ids(ids, x.shape[0], "ids")
  k0, k1 = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  common = dict(sigma=sigma, mesh=mesh, ids=ids)
  counts0 = counts_of(logits_fn, x, key=k0, num=n0, batch_size=min(batch_size, n0), **common)
  counts = counts_of(logits_fn, x, key=k1, num=n, batch_size=batch_size, **common)
  return certificate_from_counts(counts0, counts, sigma=sigma, alpha=alpha)


def certificate_from_counts(counts0: np.ndarray, counts: np.ndarray, *, sigma: float, alpha: float) -> Certificate:
  """CERTIFY's decision from the selection counts ``counts0`` and the estimation counts ``counts`` (``(B, classes)``)."""
  guess = np.argmax(counts0, axis=1)
  p_lower = lower_confidence_bound(counts[np.arange(len(guess)), guess], counts.sum(axis=1), alpha)
  certified = p_lower >= 0.5
  radius = np.where(certified, sigma * stats.norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
  return Certificate(np.where(certified, guess, ABSTAIN), radius, p_lower, counts)


def max_radius(sigma: float, n: int, alpha: float) -> float:
  """The largest radius ``n`` samples can certify: all ``n`` hits give ``p̲ = α^{1/n}``, so ``σ · Φ⁻¹(α^{1/n})``."""
  return float(sigma * stats.norm.ppf(alpha ** (1.0 / n)))


def certified_accuracy(cert: Certificate, labels: np.ndarray, radii: tuple[float, ...]) -> list[float]:
  """The fraction of rows certified correct at radius ≥ r, for each ``r`` (Cohen et al., Fig./Table 1)."""
  ok = np.asarray(cert.prediction) == np.asarray(labels)
  return [float(np.mean(ok & (cert.radius >= r))) for r in radii]
