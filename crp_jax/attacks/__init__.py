"""Compiled adversarial attacks: FGSM, PGD, APGD-CE/DLR, APGD-T, FAB/FAB-T, Square, noise, and AutoAttack.

Each attack is also data: an :class:`AttackSpec` (kind and settings) that
:func:`run_attack` runs; :func:`strong_attacks` is the table of APGD-CE,
APGD-T and Square, and :func:`strong_eval` runs it on every example in one
jittable call. :func:`autoattack` is AutoAttack (``standard``: APGD-CE,
APGD-T, FAB-T, Square, each on the examples still robust), with its checks
and a RobustBench-shaped entry: the number to report.

Convention. An attack takes ``logits_fn(x) -> (B, C)``, any pure function of
the inputs (NHWC or any other shape, pixels in ``[0, 1]``), the inputs ``x``
``(B, *shape)`` and integer labels ``y`` ``(B,)``, and returns adversarial
inputs of ``x``'s shape inside the ε ball of the given norm and inside
``clip`` (default ``(0, 1)``). The number of classes ``C`` is read from the
logits. Every attack checks its arguments before tracing (one
``ValueError``/``TypeError`` naming the argument): shapes, dtypes, counts,
ε and the norm (``"linf"``/``"l2"``/``"l1"``, or AutoAttack's ``"Linf"``/``"L2"``/``"L1"``)
always; the values of ``x`` (inside ``clip``) and ``y`` (in ``[0, C)``)
where they are concrete. Inside your ``jax.jit`` they are tracers, so call
:func:`check_data` once on the data before the loop. With a Flax model,
close over the variables::

    logits_fn = lambda x: model.apply(variables, x, train=False)

``train=False`` matters: BatchNorm then uses its running averages, so each
example's logits depend on that example only. The attacks rely on this
per-example independence (they differentiate the summed loss and never
reduce across the batch), which is also what lets them shard over a data
mesh unchanged.

Every attack is pure and jittable end to end: close over ``logits_fn`` and
the integer options (they are static), pass the random ``key`` explicitly::

    attack = jax.jit(lambda x, y, key: pgd(logits_fn, x, y, key=key, eps=0.3,
                                           step_size=0.01, num_steps=40))

Randomness is per example. Row ``b`` of a batch draws its random starts,
restarts and Square's proposals from its own key, ``fold_in(key, b)`` when
``key`` is one key; pass ``example_keys(key, ids)`` (one key per example,
from each example's id) and an example draws the same bits at any batch
size, chunking, order, device count or host count. AutoAttack and the CLI's
evaluation key examples by their index in the data, so their draws do not
depend on ``batch_size``. The model's own arithmetic may still differ in the
last bits with the batch size (XLA picks kernels per shape), so a verdict
on an example at the edge can still flip: the draws are invariant, the
logits are as invariant as the model is.

Steps run in ``lax.while_loop``, so the compile time does not grow with the
number of steps. A loop stops as soon as every row has found a misclassified
point, which changes nothing in the result (each row keeps its first such
point) and saves most of the work on a non-robust model; ``early_stop=False``
runs every step (fixed work, for timing), as does PGD with
``last_iterate=True`` (the paper's variant, which returns the last iterate
whether or not an earlier one was misclassified). Restarts (and APGD-T's target
classes) run as one batch of ``runs·B`` rows, example-major, so memory grows
with them.

LeNet's convolutions have an input gradient written as a forward
convolution (``crp_jax/models/conv.py``): XLA:CPU otherwise runs it on a
slow generic path inside loops, 2.9x slower per step.
"""

from crp_jax._checks import check_data
from crp_jax.attacks._apgd import apgd, apgd_targeted
from crp_jax.attacks._autoattack import AutoAttackResult, Check, Cost, autoattack, cost, robustbench_entry
from crp_jax.attacks._fab import FabResult, fab, fab_with_info
from crp_jax.attacks._indicators import (Indicator, attack_failure, incomplete_optimisation, silent_success,
                                         unstable_predictions)
from crp_jax.attacks._core import Eot, LogitsFn, accuracy, correct, eot, example_keys, get_loss
from crp_jax.attacks._noise import random_noise
from crp_jax.attacks._pgd import fgsm, pgd, projected_ascent
from crp_jax.attacks._spec import AttackSpec, autoattack_attacks, run_attack, strong_attacks
from crp_jax.attacks._square import square, square_with_info
from crp_jax.attacks._strong import strong_eval

# What a user calls. The plumbing of the CLI's evaluation (AutoAttack's loop
# ``_autoattack.run_in_order`` and its ``Chain``, ``_core.steps_until_done``,
# the registries ``_spec.KINDS``, ``_core.LOSSES``) stays in the private modules.
__all__ = [
    "AttackSpec",
    "AutoAttackResult",
    "Check",
    "Cost",
    "Eot",
    "FabResult",
    "Indicator",
    "LogitsFn",
    "accuracy",
    "apgd",
    "apgd_targeted",
    "attack_failure",
    "autoattack",
    "autoattack_attacks",
    "check_data",
    "correct",
    "eot",
    "cost",
    "example_keys",
    "fab",
    "fab_with_info",
    "fgsm",
    "get_loss",
    "incomplete_optimisation",
    "pgd",
    "projected_ascent",
    "random_noise",
    "robustbench_entry",
    "run_attack",
    "silent_success",
    "square",
    "square_with_info",
    "strong_attacks",
    "strong_eval",
    "unstable_predictions",
]
