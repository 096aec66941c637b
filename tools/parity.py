r"""Parity of crp_jax's attacks with torchattacks on the same LeNet (issue 4).

Trains a standard LeNet on the offline ``mnist5k`` train split with the
library's trainer (:func:`crp_jax.runner.train.fit`: Adam 1e-3, batch 128,
deterministic), copies its weights into the torch LeNet of
:mod:`reference.torch_models` and checks that both compute the same logits,
then attacks the first ``--examples`` test digits at the same L∞ radius with

* ours: the library's strong table (:func:`~crp_jax.attacks.strong_attacks`:
  APGD-CE, APGD-T, Square), each run by :func:`~crp_jax.attacks.run_attack`,
  and their per-example worst case; on batch ``i`` this is exactly what
  :func:`~crp_jax.attacks.strong_eval` computes with key ``fold_in(key, i)``
  (``tests/test_parity.py`` checks it);
* theirs: ``torchattacks.APGD`` (CE), ``APGDT``, ``Square`` at the same
  budgets and their worst case, and ``AutoAttack(version="standard",
  norm="Linf")``: as shipped at the default budgets, else its four attacks
  (APGD-CE, APGD-T, FAB-T, Square) at the given budget.

It prints robust accuracy (%, correct clean and after the attack) and wall
time of each, and PASS when the Flax and torch logits agree and our worst
case is at most ``--tolerance`` points above (a) AutoAttack's and (b) the
worst case of torchattacks' own APGD-CE, APGD-T and Square at the same
budgets (like for like: the same three attacks, other random draws).
Exit status 1 on FAIL::

    python -m tools.parity --examples=1000 --eps=0.3
    python -m tools.parity --workdir=runs/mnist5k-pgd_at-vs-standard-vs-crp-seed0-control/pgd_at \
        --examples=500 --eps=0.1 --num_targets=3 --square_queries=1000   # the robust control
    python -m tools.parity --examples=200 --eps=0.1 --apgd_steps=20 --num_targets=3 \
        --square_queries=300 --batch_size=200   # what tests/test_parity.py runs

Budgets: torchattacks' ``AutoAttack(version="standard")`` builds APGD-CE,
APGD-T and FAB-T with torchattacks' default of 10 steps (the original
AutoAttack uses 100) and Square with 5000 queries, so at the default
budgets it is weaker than our 100-step APGDs; (b) is the like-for-like
bound. torchattacks attacks only the examples not yet fooled (AutoAttack
across attacks, APGD-T across targets, Square across queries); ours run
every attack on every example (static shapes), so our Square costs
``queries × examples`` forward passes however early the examples fall and
our side dominates the run time. Needs the ``.[bench]`` extra (torch,
torchattacks); nothing here patches them.

Expected difference: torchattacks' Square (AutoAttack's batched code) draws
one window and sign per iteration for the whole batch, never places the
window on the last row or column, and spends a query on a proposal that
changes nothing (likely on one-channel MNIST once squares are small); ours
follows the original Square Attack and flips such a proposal, so at small
query budgets ours tends to be a few points stronger.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple, NoReturn

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from crp_jax import attacks, data
from crp_jax.attacks import _autoattack, _spec
from crp_jax.models import LeNet
from crp_jax.runner import config as config_lib, train, meshes

Variables = dict[str, Any]
LogitsFn = Callable[[jax.Array], jax.Array]
# (logits_fn, x, y, key) -> x_adv
OurAttack = Callable[[LogitsFn, jax.Array, jax.Array, jax.Array], jax.Array]
LOGIT_TOLERANCE = 1e-3  # max |flax − torch| logit difference accepted
_ROUNDING = 1e-9  # so that exactly `tolerance` above passes despite float rounding


class Budget(NamedTuple):
  """Attack budgets, the same on both sides (defaults: AutoAttack's paper budgets)."""

  apgd_steps: int = 100
  num_targets: int = 9
  square_queries: int = 5000


class Outcome(NamedTuple):
  """One attack's result: ``(N,)`` bool robust per example and seconds spent.

  ``compile_s`` is the jit compile time (0 for torch), not included in ``seconds``.
  """

  correct: np.ndarray
  seconds: float
  compile_s: float = 0.0


class Report(NamedTuple):
  """What a parity run measured; robust accuracies in ``[0, 1]``, ``tolerance`` in the same units.

  ``ours`` and ``theirs`` map ``"apgd-ce"``, ``"apgd-t"``, ``"square"`` to
  outcomes on the same examples; ``clean`` is ``(N,)`` bool.
  """

  clean_test_accuracy: float
  logit_max_abs_diff: float
  clean: np.ndarray
  ours: dict[str, Outcome]
  theirs: dict[str, Outcome]
  autoattack: Outcome
  tolerance: float

  @property
  def ours_worst(self) -> float:
    """Robust accuracy under our worst case (what :func:`~crp_jax.attacks.strong_eval` reports)."""
    return float(worst_case(self.ours, self.clean).mean())

  @property
  def theirs_worst(self) -> float:
    """Robust accuracy under the worst case of torchattacks' same three attacks at the same budgets."""
    return float(worst_case(self.theirs, self.clean).mean())

  @property
  def autoattack_accuracy(self) -> float:
    """Robust accuracy under torchattacks' AutoAttack."""
    return float((self.autoattack.correct & self.clean).mean())

  @property
  def passed(self) -> bool:
    """Logits agree and our worst case is within ``tolerance`` of AutoAttack's and of (b), or below."""
    return (self.logit_max_abs_diff <= LOGIT_TOLERANCE
            and self.ours_worst <= self.autoattack_accuracy + self.tolerance + _ROUNDING
            and self.ours_worst <= self.theirs_worst + self.tolerance + _ROUNDING)


# ----------------------------------------------------------------------------- model


def train_config(num_steps: int, num_examples: int, *, batch_size: int, learning_rate: float,
                 seed: int) -> ml_collections.ConfigDict:
  """The run config of a standard LeNet on ``mnist5k`` that lasts at least ``num_steps`` steps.

  ``epochs`` is rounded up so that :func:`train_lenet` can stop at exactly
  ``num_steps``; one metrics fetch and one checkpoint, at the end.
  """
  c = config_lib.base_config()
  c.dataset, c.model, c.method, c.compare_with = "mnist5k", "lenet", "standard", ""
  c.batch_size, c.learning_rate, c.seed = batch_size, learning_rate, seed
  spe, _ = train.num_train_steps(train.TrainSpec.from_config(c), num_examples)
  c.epochs = max(1, math.ceil(num_steps / max(spe, 1)))
  c.log_every_steps = c.checkpoint_every_steps = num_steps
  return c


def train_lenet(num_steps: int, *, batch_size: int = 128, learning_rate: float = 1e-3,
                seed: int = 0) -> Variables:
  """A standard (unperturbed) LeNet trained on ``mnist5k`` train by the library's trainer.

  :func:`crp_jax.runner.train.fit` on the train mesh, in a temporary workdir,
  stopped at ``num_steps``: the same Adam, batch order and init as
  ``python -m experiments.run --config.method=standard`` would use, so the
  network under attack is one the library itself trains.
  """
  split = data.load_split("mnist5k", "train")
  config = train_config(num_steps, split.num_examples, batch_size=batch_size,
                        learning_rate=learning_rate, seed=seed)
  with tempfile.TemporaryDirectory(prefix="parity-") as workdir:
    state = train.fit(config, workdir, LeNet(), split, meshes.make_train_mesh(), progress=False,
                      stop_at=num_steps)
  return state.variables()


def attack_examples(num_examples: int) -> tuple[jax.Array, jax.Array]:
  """The first ``num_examples`` ``mnist5k`` test digits, ``(N, 28, 28, 1)`` in ``[0, 1]``, and labels."""
  split = data.load_split("mnist5k", "test")
  if not 0 < num_examples <= split.num_examples:
    raise ValueError(f"examples must be in [1, {split.num_examples}], got {num_examples}")
  return (data.to_float(jnp.asarray(split.images[:num_examples])),
          jnp.asarray(split.labels[:num_examples]))


def logits_fn_of(variables: Variables) -> LogitsFn:
  """``x -> logits`` of the Flax LeNet, for the attacks."""
  return lambda x: LeNet().apply(variables, x, train=False)


# ----------------------------------------------------------------------------- ours


def our_attacks(eps: float, budget: Budget) -> dict[str, OurAttack]:
  """The library's strong table at ``budget``, by spec name (``apgd-ce``, ``apgd-t``, ``square``).

  Each attack runs as :func:`~crp_jax.attacks.strong_eval` runs it: with the
  spec's own key ``spec.key(k)`` (``fold_in(k, a)`` for attack ``a``), so the
  two cannot drift apart.
  """
  table = attacks.strong_attacks(eps=eps, apgd_steps=budget.apgd_steps,
                                 num_targets=budget.num_targets,
                                 square_queries=budget.square_queries)
  return {spec.name: functools.partial(_run_spec, spec) for spec in table}


def _run_spec(spec: attacks.AttackSpec, f: LogitsFn, x: jax.Array, y: jax.Array,
              k: jax.Array) -> jax.Array:
  return attacks.run_attack(spec, f, x, y, key=spec.key(k))


def _chunks(n: int, batch_size: int) -> list[slice]:
  return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def run_ours(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, attack: OurAttack, *, key: jax.Array,
             batch_size: int) -> Outcome:
  """One attack of ours over ``x`` in batches; batch ``i`` uses ``fold_in(key, i)``.

  Each batch shape is compiled (timed apart) before it runs.
  """
  fn = jax.jit(lambda x, y, k: attacks.correct(logits_fn, attack(logits_fn, x, y, k), y))
  compiled, compile_s, seconds, correct = {}, 0.0, 0.0, []
  for i, s in enumerate(_chunks(x.shape[0], batch_size)):
    args = (x[s], y[s], jax.random.fold_in(key, i))
    if x[s].shape not in compiled:
      start = time.perf_counter()
      compiled[x[s].shape] = fn.lower(*args).compile()
      compile_s += time.perf_counter() - start
    start = time.perf_counter()
    correct.append(np.asarray(jax.block_until_ready(compiled[x[s].shape](*args))))
    seconds += time.perf_counter() - start
  return Outcome(np.concatenate(correct), seconds, compile_s)


def worst_case(outcomes: dict[str, Outcome], clean: np.ndarray) -> np.ndarray:
  """``(N,)`` bool, robust to every attack and correct clean."""
  return np.logical_and.reduce([clean] + [o.correct for o in outcomes.values()])


# ----------------------------------------------------------------------------- theirs


def their_attacks(net: Any, eps: float, budget: Budget, seed: int) -> dict[str, Any]:
  """torchattacks' APGD-CE, APGD-T and Square at ``budget``."""
  import torchattacks  # pylint: disable=g-import-not-at-top
  return {
      "apgd-ce": torchattacks.APGD(net, norm="Linf", eps=eps, steps=budget.apgd_steps,
                                   n_restarts=1, loss="ce", seed=seed),
      # APGDT attacks n_classes − 1 targets, the top other classes; n_classes is used for nothing else.
      "apgd-t": torchattacks.APGDT(net, norm="Linf", eps=eps, steps=budget.apgd_steps,
                                   n_restarts=1, n_classes=budget.num_targets + 1, seed=seed),
      "square": torchattacks.Square(net, norm="Linf", eps=eps, n_queries=budget.square_queries,
                                    n_restarts=1, seed=seed),
  }


def their_autoattack(net: Any, eps: float, budget: Budget, seed: int) -> tuple[str, Any]:
  """``(label, attack)``: ``AutoAttack(version="standard")`` as shipped at the default budgets.

  At any other budget, its four attacks (APGD-CE, APGD-T, FAB-T, Square, run
  on the examples still standing, as AutoAttack does) at that budget, FAB-T
  with ``apgd_steps`` steps and ``num_targets`` targets.
  """
  import torchattacks  # pylint: disable=g-import-not-at-top
  if budget == Budget():
    return ("AutoAttack standard", torchattacks.AutoAttack(
        net, norm="Linf", eps=eps, version="standard", n_classes=10, seed=seed))
  common = dict(norm="Linf", eps=eps, seed=seed, n_restarts=1)
  n_classes = budget.num_targets + 1  # the number of targets, as in their_attacks
  return ("AutoAttack standard at this budget", torchattacks.MultiAttack([
      torchattacks.APGD(net, steps=budget.apgd_steps, loss="ce", **common),
      torchattacks.APGDT(net, steps=budget.apgd_steps, n_classes=n_classes, **common),
      torchattacks.FAB(net, steps=budget.apgd_steps, multi_targeted=True, n_classes=n_classes,
                       **common),
      torchattacks.Square(net, n_queries=budget.square_queries, **common),
  ]))


def run_theirs(net: Any, x: Any, y: Any, attack: Any, *, batch_size: int) -> Outcome:
  """One torchattacks attack over NCHW ``x`` in batches; robust = ``net(x_adv)`` predicts ``y``."""
  import torch  # pylint: disable=g-import-not-at-top
  start, correct = time.perf_counter(), []
  for s in _chunks(x.shape[0], batch_size):
    x_adv = attack(x[s], y[s])
    with torch.no_grad():
      correct.append((net(x_adv).argmax(1) == y[s]).numpy())
  return Outcome(np.concatenate(correct), time.perf_counter() - start)


def torch_setup(variables: Variables, x: jax.Array, y: jax.Array, seed: int) -> tuple[Any, Any, Any]:
  """The torch LeNet holding ``variables`` (eval mode), and ``x`` (NCHW), ``y`` as tensors.

  Also uses every core and seeds torch's global RNG (torchattacks draws from it).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from reference import torch_models  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(seed)
  net = torch_models.lenet_from_flax(variables).eval()
  return net, torch_models.to_nchw(x), torch.from_numpy(np.asarray(y, np.int64))


def logit_gap(logits_fn: LogitsFn, net: Any, x: jax.Array, x_torch: Any) -> float:
  """Max absolute difference between the Flax and torch logits on ``x``."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    theirs = net(x_torch).numpy()
  return float(np.max(np.abs(np.asarray(logits_fn(x)) - theirs)))


# ----------------------------------------------------------------------------- run


def saved_lenet(workdir: str) -> Variables:
  """The eval-mode variables of a LeNet trained on ``mnist5k`` by ``python -m experiments.run``.

  ``workdir`` is a model folder (``runs/<run>/pgd_at``, say); the robust
  control of ``--preset=control`` is the model this is for.
  """
  from crp_jax.runner import pipeline  # pylint: disable=g-import-not-at-top
  trained = pipeline.load_trained(workdir)
  if trained.config.model != "lenet" or trained.config.dataset != "mnist5k":
    raise ValueError(f"{workdir} holds a {trained.config.model} on {trained.config.dataset}; "
                     "parity needs a LeNet trained on mnist5k")
  return trained.variables


def run_parity(*, examples: int, eps: float, train_steps: int, budget: Budget = Budget(),
               batch_size: int = 250, seed: int = 0, tolerance: float = 0.01, workdir: str = "",
               log: Callable[[str], None] = print) -> tuple[Report, str]:
  """Trains (or loads ``workdir``'s model), checks the logits, runs both sides' attacks;
  the report and AutoAttack's label."""
  if not 0 < examples <= 1000:
    raise ValueError(f"examples must be in [1, 1000] (the mnist5k test split), got {examples}")
  start = time.perf_counter()
  variables = saved_lenet(workdir) if workdir else train_lenet(train_steps, seed=seed)
  logits_fn = logits_fn_of(variables)
  x_all, y_all = attack_examples(1000)
  clean_acc = float(attacks.accuracy(logits_fn, x_all, y_all))
  log((f"loaded {workdir}" if workdir else f"trained {train_steps} steps") +
      f" in {time.perf_counter() - start:.0f} s; clean test accuracy {100 * clean_acc:.1f}% on 1000 "
      "mnist5k test digits")
  x, y = x_all[:examples], y_all[:examples]
  net, x_torch, y_torch = torch_setup(variables, x, y, seed)
  gap = logit_gap(logits_fn, net, x, x_torch)
  log(f"flax vs torch logits: max |diff| = {gap:.2e} (tolerance {LOGIT_TOLERANCE:.0e})")
  clean = np.asarray(attacks.correct(logits_fn, x, y))

  def done(side: str, name: str, o: Outcome) -> Outcome:
    o = o._replace(correct=o.correct & clean)  # robust: correct clean and after the attack
    log(f"  {side} {name}: {100 * o.correct.mean():.1f}% in {o.seconds:.0f} s"
        + (f" (+{o.compile_s:.0f} s compile)" if o.compile_s else ""))
    return o

  ours = {name: done("crp_jax", name, run_ours(logits_fn, x, y, attack, key=jax.random.key(seed),
                                                batch_size=batch_size))
          for name, attack in our_attacks(eps, budget).items()}
  theirs = {name: done("torchattacks", name, run_theirs(net, x_torch, y_torch, attack,
                                                        batch_size=batch_size))
            for name, attack in their_attacks(net, eps, budget, seed).items()}
  label, attack = their_autoattack(net, eps, budget, seed)
  auto = done("torchattacks", label, run_theirs(net, x_torch, y_torch, attack, batch_size=batch_size))
  return Report(clean_acc, gap, clean, ours, theirs, auto, tolerance), label


# ----------------------------------------------------------------------------- AutoAttack (issue 15)


class AutoAttackReport(NamedTuple):
  """Parity of ``attacks.autoattack(version="standard")`` with torchattacks' four attacks chained the same way.

  ``ours`` is our :class:`~crp_jax.attacks.AutoAttackResult`; ``theirs`` is
  torchattacks' APGD-CE, APGD-T, FAB-T and Square run by the same
  `crp_jax.attacks._autoattack.run_in_order` (each on the examples still robust).
  ``fab_alone`` is ``(ours, theirs)`` FAB-T on the first examples alone, or ``None``.
  """

  clean_test_accuracy: float
  logit_max_abs_diff: float
  ours: attacks.AutoAttackResult
  theirs: _autoattack.Chain
  fab_alone: tuple[Outcome, Outcome] | None
  tolerance: float
  reference: str = "torchattacks"

  @property
  def theirs_final(self) -> float:
    return float(self.theirs.robust_after[self.ours.attacks[-1].name].mean())

  @property
  def passed(self) -> bool:
    """Logits agree and our final robust accuracy is at most ``tolerance`` above theirs."""
    return (self.logit_max_abs_diff <= LOGIT_TOLERANCE
            and self.ours.robust_accuracy <= self.theirs_final + self.tolerance + _ROUNDING)


def their_standard(net: Any, eps: float, budget: Budget, seed: int) -> dict[str, Any]:
  """torchattacks' APGD-CE, APGD-T, FAB-T and Square at ``budget`` (AutoAttack's are 100, 9, 100, 5000)."""
  from reference import torch_models  # pylint: disable=g-import-not-at-top
  return torch_models.autoattack_standard(net, eps=eps, steps=budget.apgd_steps, num_targets=budget.num_targets,
                                          queries=budget.square_queries, seed=seed)


def their_pyautoattack(net: Any, eps: float, norm: str, budget: Budget, seed: int) -> dict[str, Any]:
  """fra31/auto-attack's own APGD-CE, APGD-T, FAB-T and Square (PyPI ``pyautoattack``) at ``budget``.

  Each is called as ``run_standard_evaluation`` calls it (loss, targeting and
  restarts set before ``perturb``), so chaining them with
  :func:`~crp_jax.attacks._autoattack.run_in_order` is AutoAttack standard.
  """
  from pyautoattack import AutoAttack  # pylint: disable=g-import-not-at-top
  aa = AutoAttack(net, eps=eps, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm], version="standard", seed=seed)
  aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = budget.apgd_steps
  aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = budget.num_targets
  if norm == "l1":   # its L1 version: APGD-T has at most 5 targets (and APGD-CE 5 restarts, set by the version)
    aa.apgd_targeted.n_target_classes = min(budget.num_targets, _spec.L1_TARGETS)
    # Its L1 radius schedule splits n_iter_orig, fixed when the attack was built, not n_iter.
    aa.apgd.n_iter_orig = aa.apgd_targeted.n_iter_orig = budget.apgd_steps
  aa.square.n_queries = budget.square_queries

  def apgd_ce(x, y):
    aa.apgd.loss, aa.apgd.seed = "ce", seed
    return aa.apgd.perturb(x, y)

  def apgd_t(x, y):
    aa.apgd_targeted.seed = seed
    return aa.apgd_targeted.perturb(x, y)

  def fab_t(x, y):
    aa.fab.targeted, aa.fab.n_restarts, aa.fab.seed = True, 1, seed
    return aa.fab.perturb(x, y)

  def square(x, y):
    aa.square.seed = seed
    return aa.square.perturb(x, y)

  return {"apgd-ce": apgd_ce, "apgd-t": apgd_t, "fab-t": fab_t, "square": square}


def _their_runner(net: Any, x: Any, y: Any, their: dict[str, Any], batch_size: int) -> _autoattack.RunFn:
  """A :data:`~crp_jax.attacks._autoattack.RunFn` of torchattacks' attacks on the examples asked for."""
  def run(spec: attacks.AttackSpec, idx: np.ndarray) -> tuple[np.ndarray, None]:
    o = run_theirs(net, x[idx], y[idx], their[spec.name], batch_size=batch_size)
    return o.correct, None
  return run


def run_autoattack_parity(*, examples: int, eps: float, train_steps: int, budget: Budget = Budget(),
                          batch_size: int = 500, seed: int = 0, tolerance: float = 0.005,
                          workdir: str = "", fab_alone_examples: int = 0, reference: str = "torchattacks",
                          norm: str = "linf", log: Callable[[str], None] = print) -> AutoAttackReport:
  """Our ``autoattack(version="standard")`` and the reference's four attacks (torchattacks', or
  ``pyautoattack``: AutoAttack's own code), chained alike, on the same digits, in ``norm``."""
  variables = saved_lenet(workdir) if workdir else train_lenet(train_steps, seed=seed)
  logits_fn = logits_fn_of(variables)
  x_all, y_all = attack_examples(1000)
  clean_acc = float(attacks.accuracy(logits_fn, x_all, y_all))
  x, y = x_all[:examples], y_all[:examples]
  net, x_torch, y_torch = torch_setup(variables, x, y, seed)
  gap = logit_gap(logits_fn, net, x, x_torch)
  log(f"clean test accuracy {100 * clean_acc:.1f}% on 1000 digits; flax vs torch logits max |diff| {gap:.2e}")
  budgets = dict(apgd_steps=budget.apgd_steps, fab_steps=budget.apgd_steps, num_targets=budget.num_targets,
                 square_queries=budget.square_queries)
  ours = attacks.autoattack(logits_fn, x, y, key=jax.random.key(seed), eps=eps, version="standard", norm=norm,
                            batch_size=batch_size, log=lambda m: log(f"crp_jax {m.strip()}"), **budgets)
  specs = ours.attacks
  if reference == "pyautoattack":
    their = their_pyautoattack(net, eps, norm, budget, seed)
  elif norm == "linf":
    their = their_standard(net, eps, budget, seed)
  else:
    raise ValueError("norm: the torchattacks reference is L-inf only here; use --reference=pyautoattack")
  log(f"{reference}, the same four in the same order:")
  theirs = _autoattack.run_in_order(specs, ours.clean, _their_runner(net, x_torch, y_torch, their, batch_size),
                                lambda m: log(f"{reference} {m.strip()}"))
  fab_alone = None
  if fab_alone_examples:
    n = fab_alone_examples
    fab_spec = next(s for s in specs if s.name == "fab-t")
    ours_fab = run_ours(logits_fn, x[:n], y[:n], functools.partial(_run_spec, fab_spec),
                        key=jax.random.key(seed), batch_size=batch_size)
    theirs_fab = run_theirs(net, x_torch[:n], y_torch[:n], their["fab-t"], batch_size=batch_size)
    fab_alone = (ours_fab._replace(correct=ours_fab.correct & ours.clean[:n]),
                 theirs_fab._replace(correct=theirs_fab.correct & ours.clean[:n]))
  return AutoAttackReport(clean_acc, gap, ours, theirs, fab_alone, tolerance, reference)


def format_autoattack_report(r: AutoAttackReport) -> str:
  """Running robust accuracy after each attack on both sides, seconds, and the verdict."""
  rows: list[Row] = [("clean", r.ours.clean_accuracy, r.ours.clean_accuracy, "", "")]
  for spec in r.ours.attacks:
    rows.append((f"after {spec.label}", float(r.ours.chain.robust_after[spec.name].mean()),
                 float(r.theirs.robust_after[spec.name].mean()),
                 f"{r.ours.chain.seconds[spec.name]:.0f}", f"{r.theirs.seconds[spec.name]:.0f}"))
  if r.fab_alone is not None:
    o, t = r.fab_alone
    rows.append((f"FAB-T alone, first {o.correct.size} digits", float(o.correct.mean()),
                 float(t.correct.mean()), _seconds(o), _seconds(t)))
  failed = [c.name for c in r.ours.checks if not c.passed]
  lines = _table(rows, r.reference) + differing_examples(r)
  verdict = (f"{'PASS' if r.passed else 'FAIL'}: AutoAttack standard ({r.ours.norm}), crp_jax "
             f"{100 * r.ours.robust_accuracy:.1f}% vs {r.reference} {100 * r.theirs_final:.1f}%: must be <= "
             f"+{100 * r.tolerance:.1f} points; "
             f"logits max |diff| {r.logit_max_abs_diff:.1e} <= {LOGIT_TOLERANCE:.0e}; "
             f"AutoAttack checks failed: {', '.join(failed) or 'none'}")
  return "\n".join(lines + [verdict])


def _broken_by(robust_after: dict[str, np.ndarray], names: list[str], i: int) -> str:
  """Which attack of the chain first broke example ``i`` (``robust`` if none did)."""
  return next((n for n in names if not robust_after[n][i]), "robust")


def differing_examples(r: AutoAttackReport) -> list[str]:
  """One line per example whose final verdict differs between the two sides, with what broke it on each."""
  names = [s.name for s in r.ours.attacks]
  last = names[-1]
  ours, theirs = r.ours.chain.robust_after[last], r.theirs.robust_after[last]
  differ = np.flatnonzero(ours != theirs)
  lines = [f"examples whose verdict differs: {differ.size} of {ours.size}"]
  lines += [f"  example {i}: crp_jax {_broken_by(r.ours.chain.robust_after, names, i)}, "
            f"{r.reference} {_broken_by(r.theirs.robust_after, names, i)}" for i in differ]
  return lines


Row = tuple[str, float, float, str, str]  # label, crp_jax, torchattacks, their wall times


def _table(rows: list[Row], reference: str = "torchattacks") -> list[str]:
  """Aligned text lines of ``rows``, accuracies in % and their difference in points."""
  width = max(40, *(len(r[0]) for r in rows))
  ref = reference[:8] + "."
  header = (f"{'attack':<{width}} {'crp_jax %':>9} {ref + ' %':>11} {'diff':>6} "
            f"{'crp_jax s (+compile)':>20} {ref + ' s':>11}")
  lines = [header, "-" * len(header)]
  for label, ours, theirs, our_s, their_s in rows:
    lines.append(f"{label:<{width}} {100 * ours:>9.1f} {100 * theirs:>11.1f} "
                 f"{100 * (ours - theirs):+6.1f} {our_s:>20} {their_s:>11}")
  return lines


def _seconds(o: Outcome) -> str:
  return f"{o.seconds:.0f}" + (f" (+{o.compile_s:.0f})" if o.compile_s else "")


def format_report(report: Report, budget: Budget, autoattack_label: str) -> str:
  """The table: attack | crp_jax | torchattacks | difference (points) | wall times, and the verdict."""
  ours, theirs, clean = report.ours, report.theirs, float(report.clean.mean())
  labels = {"apgd-ce": f"APGD-CE ({budget.apgd_steps} steps)",
            "apgd-t": f"APGD-T ({budget.num_targets} targets x {budget.apgd_steps})",
            "square": f"Square ({budget.square_queries} queries)"}
  rows: list[Row] = [("clean", clean, clean, "", "")]
  rows += [(label, ours[n].correct.mean(), theirs[n].correct.mean(), _seconds(ours[n]),
            _seconds(theirs[n])) for n, label in labels.items()]
  total = _seconds(Outcome(report.clean, sum(o.seconds for o in ours.values()),
                           sum(o.compile_s for o in ours.values())))
  their_total = _seconds(Outcome(report.clean, sum(o.seconds for o in theirs.values())))
  rows += [("worst case (b): same 3 attacks", report.ours_worst, report.theirs_worst, total,
            their_total),
           (f"worst case (a): vs {autoattack_label}", report.ours_worst,
            report.autoattack_accuracy, total, _seconds(report.autoattack))]
  verdict = (
      f"{'PASS' if report.passed else 'FAIL'}: crp_jax worst case {100 * report.ours_worst:.1f}% "
      f"vs (a) {autoattack_label} {100 * report.autoattack_accuracy:.1f}% and (b) torchattacks' "
      f"APGD-CE+APGD-T+Square {100 * report.theirs_worst:.1f}%: must be <= "
      f"+{100 * report.tolerance:.1f} points; logits max |diff| {report.logit_max_abs_diff:.1e} "
      f"<= {LOGIT_TOLERANCE:.0e}")
  return "\n".join(_table(rows) + [verdict])


def define_flags() -> None:
  """The command-line flags; defined only when run as a script, so tests can import this module.

  ``--examples`` and the budgets set the run time (AutoAttack is cheap when examples fall).
  """
  flags.DEFINE_integer("examples", 1000, "Test digits attacked (<= 1000).")
  flags.DEFINE_float("eps", 0.3, "Radius in --norm.")
  flags.DEFINE_integer("train_steps", 300, "Adam steps of batch 128.")
  flags.DEFINE_string("workdir", "", "A LeNet model folder of a mnist5k run to attack instead of training "
                      "one (the robust control: runs/<run>/pgd_at of --preset=control).")
  flags.DEFINE_integer("apgd_steps", Budget().apgd_steps, "APGD-CE steps, and APGD-T steps per target.")
  flags.DEFINE_integer("num_targets", Budget().num_targets, "APGD-T target classes.")
  flags.DEFINE_integer("square_queries", Budget().square_queries, "Square's query budget.")
  flags.DEFINE_integer("batch_size", 250, "Examples per attack call.")
  flags.DEFINE_integer("seed", 0, "Seed of the training run and of both sides' attacks.")
  flags.DEFINE_float("tolerance", 1.0, "Points our worst case may exceed theirs.")
  flags.DEFINE_enum("protocol", "strong", ["strong", "autoattack"],
                    "strong: APGD-CE, APGD-T, Square each alone and AutoAttack (issue 4); autoattack: "
                    "attacks.autoattack(version='standard') against torchattacks' APGD-CE, APGD-T, FAB-T, "
                    "Square chained the same way (issue 15).")
  flags.DEFINE_enum("reference", "torchattacks", ["torchattacks", "pyautoattack"],
                    "With --protocol=autoattack: torchattacks' attacks, or AutoAttack's own code from PyPI's "
                    "pyautoattack (the bench extra).")
  flags.DEFINE_enum("norm", "linf", ["linf", "l2", "l1"], "With --protocol=autoattack: the threat model.")
  flags.DEFINE_integer("fab_alone_examples", 0, "With --protocol=autoattack: also FAB-T alone on this "
                       "many digits, both sides.")


def flag_problem(f: flags.FlagValues) -> str | None:
  """The first bad flag value, in the words argparse's ``p.error`` used, or ``None``."""
  if not 0 < f.examples <= 1000:
    return f"--examples must be in [1, 1000], got {f.examples}"
  for name in ("train_steps", "apgd_steps", "num_targets", "square_queries", "batch_size"):
    if f[name].value < 1:
      return f"--{name} must be >= 1, got {f[name].value}"
  if not 0 <= f.fab_alone_examples <= f.examples:
    return f"--fab_alone_examples must be in [0, --examples={f.examples}], got {f.fab_alone_examples}"
  if (f.reference != "torchattacks" or f.norm != "linf") and f.protocol != "autoattack":
    return "--reference and --norm apply to --protocol=autoattack only"
  if f.reference == "torchattacks" and f.norm != "linf":
    return f"--norm={f.norm} needs --reference=pyautoattack (the torchattacks reference here is L-inf only)"
  # The largest radius that still leaves the 28x28 box uncovered: 1 (L-inf), 28 (L2), 784 (L1).
  largest = {"linf": 1.0, "l2": 28.0, "l1": 784.0}[f.norm]
  if not 0 < f.eps <= largest or f.tolerance < 0:
    return (f"need 0 < --eps <= {largest:g} (--norm={f.norm}) and --tolerance >= 0, "
            f"got {f.eps} and {f.tolerance}")
  if f.workdir and not os.path.isfile(os.path.join(f.workdir, "config.json")):
    return f"--workdir={f.workdir}: no config.json there (give a model folder, e.g. runs/<run>/pgd_at)"
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """``app.run``'s parser: a bad flag, value or extra argument ends the run with one line and status 2."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _usage_error(str(e).splitlines()[0])
  problem = flag_problem(flags.FLAGS) or (
      f"unexpected arguments: {' '.join(rest[1:])}" if len(rest) > 1 else None)
  if problem:
    _usage_error(problem)
  return rest


def _usage_error(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def main(argv: list[str]) -> int:
  del argv  # parse_flags refused any positional argument
  f = flags.FLAGS
  budget = Budget(f.apgd_steps, f.num_targets, f.square_queries)
  start = time.perf_counter()
  model = f.workdir or f"a standard LeNet trained {f.train_steps} steps"
  if f.protocol == "autoattack":
    r = run_autoattack_parity(examples=f.examples, eps=f.eps, train_steps=f.train_steps, budget=budget,
                              batch_size=f.batch_size, seed=f.seed, tolerance=f.tolerance / 100,
                              workdir=f.workdir, fab_alone_examples=f.fab_alone_examples,
                              reference=f.reference, norm=f.norm)
    print(f"\nAutoAttack parity against {f.reference} at eps={f.eps} ({f.norm}) on {f.examples} mnist5k test digits of {model}, "
          f"total {time.perf_counter() - start:.0f} s")
    print(format_autoattack_report(r))
    return 0 if r.passed else 1
  report, label = run_parity(examples=f.examples, eps=f.eps, train_steps=f.train_steps,
                             budget=budget, batch_size=f.batch_size, seed=f.seed,
                             tolerance=f.tolerance / 100, workdir=f.workdir)
  print(f"\nparity at eps={f.eps} (L-inf) on {f.examples} mnist5k test digits of {model}, "
        f"total {time.perf_counter() - start:.0f} s")
  print(format_report(report, budget, label))
  return 0 if report.passed else 1


if __name__ == "__main__":
  define_flags()
  logging.set_verbosity(logging.ERROR)  # orbax's INFO lines would bury the table
  app.run(main, flags_parser=parse_flags)
