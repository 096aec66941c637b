"""Adversarial training, the baselines the paper compares with: PGD-AT (Madry et al. 2018) and TRADES (Zhang et al. 2019).

Both minimise a loss at points found by an inner maximisation inside the
L∞ ball of radius ε around each training example:

* **PGD-AT**: :math:`\\min_\\theta \\mathbb{E}\\,\\ell_{CE}(f_\\theta(x'), y)` with
  ``x'`` the last iterate of PGD-k from a uniform random start
  (:func:`pgd_at_inputs`, the library's own :func:`~crp_jax.attacks.pgd`).
* **TRADES**: :math:`\\min_\\theta \\mathbb{E}\\,\\ell_{CE}(f_\\theta(x), y) + \\beta\\,
  \\mathrm{KL}(f_\\theta(x)\\,\\|\\,f_\\theta(x'))` with ``x'`` maximising the KL term
  by PGD from ``x + 0.001·N(0, I)`` (:func:`trades_inputs`, their Algorithm 1).

The inner attack and the model's mode. Madry et al.'s reference code
attacks the network in training mode (BatchNorm on the batch's statistics);
TRADES' reference code switches the network to eval mode for the attack
(running averages, no dropout) and back to training mode for the loss.
crp_jax follows TRADES for both methods: the attack's ``logits_fn`` is the
model in eval mode with the step's parameters. Three reasons: the attacks
assume each example's logits depend on that example alone (they
differentiate the summed loss; in training mode BatchNorm couples the rows
of a batch); the points are then found against the function that is later
evaluated and attacked; and the inner loop updates no BatchNorm statistic.
The loss itself is taken in training mode, like every other method's. For
LeNet, which has neither BatchNorm nor dropout, the two modes are the same
function. Early in training the running averages lag the batch statistics,
so on BatchNorm models the first steps' points are weaker than Madry's.

The found points carry no gradient to the parameters (``stop_gradient``):
the outer step differentiates the loss at ``x'``, as Danskin's theorem
prescribes for the min-max objective.

References:
  Madry, Makelov, Schmidt, Tsipras, Vladu, *Towards Deep Learning Models
  Resistant to Adversarial Attacks*, ICLR 2018.
  Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, *Theoretically Principled
  Trade-off between Robustness and Accuracy*, ICML 2019.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from crp_jax.attacks import LogitsFn, pgd, projected_ascent

#: TRADES' start: ``x + TRADES_START_STD · N(0, I)`` (their code's 0.001).
TRADES_START_STD: float = 0.001


def pgd_at_inputs(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: float | jax.Array,
                  step_size: float | jax.Array, num_steps: int) -> jax.Array:
  r"""Madry et al.'s training points: PGD-k on the cross-entropy, random start, last iterate.

  .. math::
    x' = x^{(k)}, \quad x^{(0)} \sim U(B_\epsilon(x)) \cap [0, 1]^d, \quad
    x^{(t+1)} = \Pi_{B_\epsilon(x) \cap [0, 1]^d}\big(x^{(t)} + \alpha\,\mathrm{sign}\,
    \nabla \ell_{CE}(f(x^{(t)}), y)\big).

  Args:
    logits_fn: ``(B, *shape) -> (B, C)``, per-example independent (eval mode).
    x: ``(B, *shape)`` clean inputs in ``[0, 1]``.
    y: ``(B,)`` integer labels.
    key: PRNG key of the random start.
    eps: radius ε of the L∞ ball (``0`` returns ``x`` exactly).
    step_size: step α.
    num_steps: k (static).

  Returns:
    ``(B, *shape)`` points with ``‖x' − x‖∞ ≤ ε``, in ``[0, 1]``, without gradient.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.array([[1., -1.], [-1., 1.]])
    >>> x, y = jnp.array([[0.6, 0.4]]), jnp.array([0])
    >>> x_adv = pgd_at_inputs(lambda x: x @ w, x, y, key=jax.random.key(0), eps=0.1,
    ...                       step_size=0.05, num_steps=4)
    >>> x_adv
    Array([[0.5, 0.5]], dtype=float32)
  """
  x_adv = pgd(logits_fn, x, y, key=key, eps=eps, step_size=step_size, num_steps=num_steps,
              random_start=True, last_iterate=True)
  return jax.lax.stop_gradient(x_adv)


def kl_divergence(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  r"""Per-example :math:`\mathrm{KL}(\mathrm{softmax}\,z_p \,\|\, \mathrm{softmax}\,z_q)`, ``(B, C), (B, C) -> (B,)``.

  >>> import jax.numpy as jnp
  >>> z = jnp.array([[1., 2., 3.]])
  >>> kl_divergence(z, z)
  Array([0.], dtype=float32)
  """
  return optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(logits_q, axis=-1),
                                                      jax.nn.log_softmax(logits_p, axis=-1))


def trades_inputs(logits_fn: LogitsFn, x: jax.Array, *, key: jax.Array, eps: float | jax.Array,
                  step_size: float | jax.Array, num_steps: int) -> jax.Array:
  r"""TRADES' training points: PGD-k on :math:`\mathrm{KL}(f(x) \| f(x'))` from a small Gaussian start.

  .. math::
    x^{(0)} = \Pi(x + 0.001\,\xi),\ \xi \sim N(0, I), \quad
    x^{(t+1)} = \Pi_{B_\epsilon(x) \cap [0, 1]^d}\big(x^{(t)} + \alpha\,\mathrm{sign}\,
    \nabla_{x^{(t)}} \mathrm{KL}(f(x) \,\|\, f(x^{(t)}))\big),

  with ``f(x)`` held fixed (Zhang et al. 2019, Algorithm 1). The label is
  not used: the attack pushes the prediction away from the clean one.

  Args:
    logits_fn: ``(B, *shape) -> (B, C)``, per-example independent (eval mode).
    x: ``(B, *shape)`` clean inputs in ``[0, 1]``.
    key: PRNG key of the start.
    eps, step_size, num_steps: ε, α and k (static).

  Returns:
    ``(B, *shape)`` points with ``‖x' − x‖∞ ≤ ε``, in ``[0, 1]``, without gradient.
  """
  clean = jax.lax.stop_gradient(logits_fn(x))
  eps = jnp.asarray(eps, x.dtype)
  start = jnp.clip(x + jnp.clip(TRADES_START_STD * jax.random.normal(key, x.shape, x.dtype), -eps, eps), 0.0, 1.0)
  x_adv = projected_ascent(logits_fn, lambda logits, p: kl_divergence(p, logits), x, clean, start,
                           eps=eps, step_size=step_size, num_steps=num_steps)
  return jax.lax.stop_gradient(x_adv)


def trades_loss(logits_clean: jax.Array, logits_adv: jax.Array, y: jax.Array, *,
                beta: float | jax.Array) -> jax.Array:
  r"""TRADES' per-example objective :math:`\ell_{CE}(z, y) + \beta\,\mathrm{KL}(\mathrm{softmax}\,z \,\|\, \mathrm{softmax}\,z')`.

  The gradient flows through both the clean logits ``z`` and the
  adversarial ones ``z'``, as in the reference code. ``(B, C), (B, C), (B,) -> (B,)``.

  >>> import jax.numpy as jnp
  >>> z = jnp.array([[2., 0.]])
  >>> bool(trades_loss(z, z, jnp.array([0]), beta=6.0) == trades_loss(z, z, jnp.array([0]), beta=0.0))
  True
  """
  ce = optax.softmax_cross_entropy_with_integer_labels(logits_clean, y)
  return ce + beta * kl_divergence(logits_clean, logits_adv)
