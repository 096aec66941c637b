"""AutoAttack (Croce & Hein 2020) in JAX: its attacks in order on the points not yet broken, and its checks.

:func:`autoattack` is the call an AutoAttack user knows: ``version="standard"``
runs APGD-CE, APGD-T, FAB-T and Square; each attack sees only the examples
every earlier one failed on, and an example is robust if it is classified
correctly clean and after all of them. :func:`run_in_order` is that loop on
its own, over any function that runs one attack on a set of examples, so
the CLI's evaluation (which shards over a mesh) uses the same rule.

Unlike the attacks, this driver is host code: the set of examples left
shrinks, so each attack runs jitted on fixed-size chunks of it (the last
chunk padded to a power of two, so an attack compiles at most a few times).

Each program it runs (an attack on a chunk, the clean forward pass) is
traced to a jaxpr whose constants (the parameters ``logits_fn`` closes over)
become arguments, and its executable is cached under the program's text:
calling :func:`autoattack` again with new parameters of the same shapes,
through a new ``logits_fn``, compiles nothing, and the cache holds no
parameter, so an old model is freed when the caller drops it.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax import _checks, cpu
from crp_jax.attacks import _core
from crp_jax.attacks._chain_state import ChainState, Finished, fingerprint
from crp_jax.attacks._core import LogitsFn
from crp_jax.attacks._indicators import Indicator, attack_failure
from crp_jax.attacks._spec import AttackSpec, autoattack_attacks, run_attack

# (spec, indices of the examples to attack) -> ((m,) bool still correct, (m, *shape) points or None)
RunFn = Callable[[AttackSpec, np.ndarray], tuple[np.ndarray, np.ndarray | None]]


class Check(NamedTuple):
  """One of AutoAttack's sanity checks: ``passed`` false means the number may not be trusted."""

  name: str
  passed: bool
  detail: str


class Chain(NamedTuple):
  """What :func:`run_in_order` measured.

  Attributes:
    robust_after: attack name -> ``(N,)`` bool, correct clean and after
      this attack and every earlier one (AutoAttack's running robust accuracy).
    attacked: attack name -> how many examples it ran on.
    seconds: attack name -> wall time.
  """

  robust_after: dict[str, np.ndarray]
  attacked: dict[str, int]
  seconds: dict[str, float]


def budget(spec: AttackSpec, num_classes: int) -> int:
  """Gradient steps (APGD, FAB) or queries (Square) the attack may spend on one example.

  Targets are capped at ``num_classes − 1``, as the attacks cap them.
  """
  targets = min(max(spec.num_targets, 1), num_classes - 1)
  return spec.steps * spec.restarts * (targets if spec.kind in ("apgd_t", "fab") else 1)


class Cost(NamedTuple):
  """What one attack may spend on one example: forward-only passes and gradient evaluations (forward + backward)."""

  forwards: int
  gradients: int


#: FAB's bisection at the end of each run (fab_with_info's default), one forward pass a step.
FAB_FINAL_SEARCH = 10


def cost(spec: AttackSpec, num_classes: int) -> Cost:
  """The most ``spec`` spends on one example, counted from its code; early stopping spends less.

  FGSM: 1 gradient. PGD: per run ``n`` gradients and a forward pass (the
  last iterate). APGD: per run ``n + 1`` gradients (the start, then each
  step; L1-APGD ``n + 3``, a start per radius), times the targets for APGD-T, which first picks them with a
  forward pass. FAB: per run and step one forward
  pass and the gradients of the boundary (``C`` for untargeted FAB, which
  picks the closest class, 1 per target), plus its final bisection. Square
  and noise: ``n`` forward passes. ``C`` is the number of classes.
  """
  targets = min(max(spec.num_targets, 1), num_classes - 1)
  runs, n = spec.restarts, spec.steps
  if spec.kind == "fgsm":
    return Cost(0, 1)
  if spec.kind == "pgd":
    return Cost(runs, runs * n)
  starts = 3 if spec.norm == "l1" else 1   # L1-APGD's three radii each start with a gradient
  if spec.kind == "apgd":
    return Cost(0, runs * (n + starts))
  if spec.kind == "apgd_t":   # a forward pass at x picks the targets (MALT: C backward passes too)
    return Cost(1, runs * targets * (n + starts) + (num_classes if spec.targeting == "malt" else 0))
  if spec.kind == "fab":
    per_step = 1 if spec.num_targets else num_classes
    fab_runs = runs * (targets if spec.num_targets else 1)
    return Cost(1 + fab_runs * (n + FAB_FINAL_SEARCH), fab_runs * n * per_step)
  if spec.kind in ("square", "noise"):
    return Cost(n, 0)
  return Cost(1, 0)   # clean


def run_in_order(specs: Sequence[AttackSpec], clean: np.ndarray, run: RunFn,
                 log: Callable[[str], None] | None = None,
                 on_broken: Callable[[np.ndarray, np.ndarray], None] | None = None,
                 state: ChainState | None = None) -> Chain:
  """Runs ``specs`` in order, each on the examples still robust; AutoAttack's loop.

  ``clean`` ``(N,)`` bool marks the examples classified correctly without
  attack: the only ones attacked. ``on_broken(indices, points)`` receives
  the adversarial points of the examples each attack broke. With ``state``
  an attack it records as finished is not run again (its results and
  points are read back), and each attack that finishes is recorded.
  """
  robust = np.asarray(clean, bool).copy()
  out = Chain({}, {}, {})
  for spec in specs:
    idx = np.flatnonzero(robust)
    done = state.finished.get(spec.name) if state is not None else None
    if done is None:
      start, previous = time.perf_counter(), state.current_seconds if state and state.current == spec.name else 0.0
      broken, points = np.zeros(0, np.int64), None
      if idx.size:
        still, points = run(spec, idx)
        hit = ~np.asarray(still, bool)
        broken, points = idx[hit], None if points is None else np.asarray(points)[hit]
      robust[broken] = False
      done = Finished(robust.copy(), int(idx.size), previous + time.perf_counter() - start, broken, points)
      if state is not None:
        state.finish(spec.name, done)
    robust = done.robust.copy()
    if on_broken is not None and done.points is not None and done.broken.size:
      on_broken(done.broken, done.points)
    out.robust_after[spec.name] = robust.copy()
    out.attacked[spec.name], out.seconds[spec.name] = done.attacked, done.seconds
    if log is not None:
      log(f"  {spec.name}: robust accuracy {100 * robust.mean():.2f}% ({robust.sum()}/{robust.size}) "
          f"after {out.seconds[spec.name]:.1f} s on {done.attacked} examples")
  return out


def _chunks(m: int, batch_size: int) -> list[tuple[int, int, int]]:
  """``(start, rows, padded rows)`` of each chunk: full chunks, then the rest padded to a power of two."""
  out = []
  for start in range(0, m, batch_size):
    rows = min(batch_size, m - start)
    out.append((start, rows, rows if rows == batch_size else min(batch_size, 1 << (rows - 1).bit_length())))
  return out


#: (program text, constants' shapes) -> its executable; the 64 latest. Holds no constant's value.
_EXECUTABLES: collections.OrderedDict[tuple, Callable] = collections.OrderedDict()
_MAX_EXECUTABLES = 64


class Program(NamedTuple):
  """A traced function: ``run(*args)`` calls its cached executable with the constants it closed over."""

  executable: Callable
  consts: list
  out_tree: object

  def run(self, *args) -> object:
    out = self.executable(self.consts, *jax.tree.leaves(args))
    return jax.tree.unflatten(self.out_tree, out)


def program(fn: Callable, *args) -> Program:
  """``fn`` traced at ``args``' shapes, its closed-over arrays as arguments of one cached executable.

  Two functions that trace to the same program text with constants of the
  same shapes (the same model with new parameters) share the executable,
  compiled once with :func:`crp_jax.cpu.compile_for_cpu`; the cache keeps the
  program, never the constants.
  """
  closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
  jaxpr = closed.jaxpr
  consts = list(closed.consts)
  key = (str(jaxpr), tuple((np.shape(c), str(jax.typeof(c))) for c in consts))
  executable = _EXECUTABLES.pop(key, None)
  if executable is None:
    evaluate = jax.jit(lambda consts, *flat: jax.core.eval_jaxpr(jaxpr, consts, *flat))
    executable = cpu.compile_for_cpu(evaluate, consts, *jax.tree.leaves(args))
  _EXECUTABLES[key] = executable
  while len(_EXECUTABLES) > _MAX_EXECUTABLES:
    _EXECUTABLES.popitem(last=False)
  return Program(executable, consts, jax.tree.structure(shapes))


def jitted_runner(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
                  batch_size: int, clip: _core.Clip = (0.0, 1.0), state: ChainState | None = None) -> RunFn:
  """A :data:`RunFn` for :func:`run_in_order`: ``spec`` jitted on chunks of the examples asked for.

  Example ``i`` (its index in ``x``) draws from ``fold_in(spec.key(key), i)``
  (:func:`~crp_jax.attacks.example_keys`), so its draws do not depend on
  ``batch_size`` or on which examples share its chunk. The last chunk is
  padded with copies of its first example (their results dropped). Each
  attack is traced once per chunk size and runs through :func:`program`'s
  executables. With ``state`` each chunk is recorded as it finishes, and
  chunks recorded before (by a run that was killed) are read, not rerun.
  """
  traced: dict[tuple[AttackSpec, int], Program] = {}

  def attack(spec: AttackSpec, *args) -> Program:
    if (spec, len(args[0])) not in traced:
      def fn(x, y, k, ids):
        x_adv = run_attack(spec, logits_fn, x, y, key=_core.example_keys(k, ids), clip=clip)
        return _core.correct(logits_fn, x_adv, y), x_adv
      traced[spec, len(args[0])] = program(fn, *args)
    return traced[spec, len(args[0])]

  def run(spec: AttackSpec, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    done = list(state.chunks_of(spec.name)) if state is not None else []
    still, points = [c[0] for c in done], [c[1] for c in done]
    for start, count, size in _chunks(idx.size, batch_size)[len(done):]:
      begin = time.perf_counter()
      rows = idx[start:start + count]
      padded = np.concatenate([rows, np.full(size - count, rows[0])])
      args = (x[padded], y[padded], spec.key(key), padded.astype(np.int32))
      ok, x_adv = attack(spec, *args).run(*args)
      still.append(np.asarray(ok)[:rows.size])
      points.append(np.asarray(x_adv)[:rows.size])
      if state is not None:
        state.add_chunk(spec.name, still[-1], points[-1], time.perf_counter() - begin)
    return np.concatenate(still), np.concatenate(points)

  return run


def model_checks(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> list[Check]:
  """AutoAttack's checks of the model itself, on ``x``: a deterministic forward pass, logits, gradients.

  * ``deterministic``: two forward passes give the same logits (a
    randomised defence needs AutoAttack's ``rand`` version, with EOT).
  * ``logits``: the outputs are not probabilities (rows in ``[0, 1]``
    summing to 1); the losses (CE, DLR) expect logits.
  * ``zero gradients``: no example has an exactly zero cross-entropy input
    gradient, where gradient attacks cannot move.
  """
  # Two calls of logits_fn itself (a trace would run its Python once, and a randomised model's
  # randomness may live there); the gradient runs as a cached program (a new model compiles nothing).
  first, second = np.asarray(logits_fn(x)), np.asarray(logits_fn(x))
  same = bool(np.array_equal(first, second))
  probs = bool(np.all((first >= 0) & (first <= 1)) and np.allclose(first.sum(1), 1.0, atol=1e-5))
  grad_fn = lambda x, y: _core.loss_and_grad(logits_fn, _core.ce_loss, x, y)[2]
  grad = np.asarray(program(grad_fn, x, y).run(x, y)).reshape(len(first), -1)
  zero = int(np.sum(~np.any(grad != 0, axis=1)))
  return [
      Check("deterministic", same, "two forward passes agree" if same else
            "two forward passes differ: the model is randomised, use an EOT attack"),
      Check("logits", not probs, "outputs are logits" if not probs else
            "outputs look like probabilities (in [0, 1], rows sum to 1): pass logits"),
      Check("zero gradients", zero == 0, f"{zero} of {len(first)} examples have an exactly zero "
            "cross-entropy input gradient"),
  ]


def square_check(specs: Sequence[AttackSpec], chain: Chain) -> list[Check]:
  """AutoAttack's warning when the black-box Square breaks examples every white-box attack before it missed."""
  names = [s.name for s in specs]
  squares = [i for i, s in enumerate(specs) if s.kind == "square"]
  if not squares or squares[0] == 0:
    return []
  i = squares[0]
  before, after = chain.robust_after[names[i - 1]], chain.robust_after[names[i]]
  extra = int(np.sum(before & ~after))
  return [Check("square vs white-box", extra == 0, f"Square broke {extra} examples that "
                f"{', '.join(names[:i])} did not" + (": a sign of gradient masking" if extra else ""))]


class AutoAttackResult(NamedTuple):
  """What :func:`autoattack` measured; accuracies in ``[0, 1]``.

  Attributes:
    version: ``standard``, ``plus`` or ``custom``.
    eps, norm: the threat model.
    attacks: the specs, in the order they ran.
    clean: ``(N,)`` bool, classified correctly without attack.
    chain: running robust accuracy after each attack, examples attacked, seconds.
    x_adv: ``(N, *shape)`` the point that broke each example (``x`` where none did).
    checks: AutoAttack's checks; a failed one means the number may not hold.
    num_classes: ``C``, the width of the logits.
    indicators: with ``indicators=True``, the indicators of attack failure
      (:func:`~crp_jax.attacks.attack_failure`) on the examples classified
      correctly clean, their ``examples`` indices into ``x``; else empty.
  """

  version: str
  eps: float
  norm: str
  attacks: tuple[AttackSpec, ...]
  clean: np.ndarray
  chain: Chain
  x_adv: np.ndarray
  checks: tuple[Check, ...]
  num_classes: int
  indicators: tuple[Indicator, ...] = ()

  @property
  def robust(self) -> np.ndarray:
    """``(N,)`` bool, correct clean and after every attack."""
    return self.chain.robust_after[self.attacks[-1].name] if self.attacks else self.clean

  @property
  def clean_accuracy(self) -> float:
    return float(self.clean.mean())

  @property
  def robust_accuracy(self) -> float:
    return float(self.robust.mean())

  def accuracy_after(self) -> dict[str, float]:
    """Attack name -> robust accuracy after it and every earlier one."""
    return {name: float(r.mean()) for name, r in self.chain.robust_after.items()}

  def budgets(self) -> dict[str, int]:
    """Attack name -> gradient steps or queries it may spend on one example."""
    return {s.name: budget(s, self.num_classes) for s in self.attacks}

  def compute(self) -> dict[str, dict[str, int]]:
    """Attack name -> ``forwards`` and ``gradients`` it may spend per example (:func:`cost`), the examples
    it ran on, and the totals (per example times examples): what the number cost, as an upper bound."""
    out = {}
    for s in self.attacks:
      c, m = cost(s, self.num_classes), self.chain.attacked[s.name]
      out[s.name] = {"forwards": c.forwards, "gradients": c.gradients, "examples": m,
                     "total_forwards": c.forwards * m, "total_gradients": c.gradients * m}
    return out

  def robustbench_entry(self, **info) -> dict:
    """This result as a RobustBench per-model entry; see :func:`robustbench_entry`."""
    return robustbench_entry(clean_accuracy=self.clean_accuracy, robust_accuracy=self.robust_accuracy,
                             eps=self.eps, norm=self.norm, version=self.version,
                             attacks=[s.name for s in self.attacks], n_examples=int(self.clean.size),
                             checks_failed=[c.name for c in self.checks if not c.passed], **info)


def robustbench_entry(*, clean_accuracy: float, robust_accuracy: float, eps: float, norm: str, version: str,
                      attacks: Sequence[str], n_examples: int, checks_failed: Sequence[str] = (),
                      **info) -> dict:
  """A RobustBench per-model entry (``model_info/<dataset>/<threat>/<name>.json``'s fields).

  Accuracies are strings in percent with two decimals, as there; ``info``
  fills or overrides the descriptive fields (``name``, ``dataset``,
  ``architecture``, ``link``, ...). ``norm``, ``version``, ``attacks``,
  ``n_examples`` and ``checks_failed`` are ours, beside them.

  >>> robustbench_entry(clean_accuracy=0.986, robust_accuracy=0.9531, eps=0.1, norm="linf",
  ...                   version="standard", attacks=["apgd-ce"], n_examples=128)["autoattack_acc"]
  '95.31'
  """
  entry = {"link": "", "name": "", "authors": "", "additional_data": False, "number_forward_passes": 1,
           "dataset": "", "venue": "", "architecture": "", "eps": f"{eps:g}",
           "clean_acc": f"{100 * clean_accuracy:.2f}", "reported": "",
           "autoattack_acc": f"{100 * robust_accuracy:.2f}", "footnote": None,
           "norm": {"linf": "Linf", "l2": "L2", "l1": "L1"}[_checks.norm(norm)], "version": version, "attacks": list(attacks),
           "n_examples": int(n_examples), "checks_failed": list(checks_failed)}
  entry.update(info)
  return entry


def _resolve(version: str, custom: Sequence[str | AttackSpec] | None, *, eps: float, norm: str,
             **budgets) -> tuple[str, tuple[AttackSpec, ...]]:
  """The version's specs, or the ``custom`` list (names of ``plus``' attacks, or specs)."""
  if custom is None:
    return version, autoattack_attacks(version, eps=eps, norm=norm, **budgets)
  # Every attack of plus, with standard's one-run APGD-CE under its name.
  known = {s.name: s for v in ("plus", "standard") for s in autoattack_attacks(v, eps=eps, norm=norm, **budgets)}
  specs = []
  for a in custom:
    if not isinstance(a, AttackSpec) and a not in known:
      raise ValueError(f"custom: unknown attack {a!r}; choose from {', '.join(known)} or give AttackSpecs")
    specs.append(a if isinstance(a, AttackSpec) else known[a])
  if len({s.name for s in specs}) != len(specs):
    raise ValueError(f"custom names an attack twice: {[s.name for s in specs]}")
  return "custom", tuple(specs)


def autoattack(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    custom: Sequence[str | AttackSpec] | None = None,
    batch_size: int = 500,
    clip: _core.Clip = (0.0, 1.0),
    log: Callable[[str], None] | None = print,
    state_dir: str | os.PathLike | None = None,
    indicators: bool = False,
    **budgets,
) -> AutoAttackResult:
  r"""AutoAttack (Croce & Hein 2020): its attacks in order, each on the examples still robust.

  An example counts as robust if it is classified correctly clean and after
  every attack of the version:

  * ``standard``: APGD-CE (100 steps), APGD-T (9 targets × 100 steps),
    FAB-T (9 targets × 100 steps), Square (5,000 queries); in L1, as
    AutoAttack's L1 version, APGD-CE has 5 restarts and APGD-T 5 targets,
    both L1-APGD (radius 3ε, 2ε, then ε);
  * ``plus``: APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts),
    Square, APGD-T, FAB-T;
  * ``rand``: APGD-CE and APGD-DLR, for a randomised model given as
    :func:`~crp_jax.attacks.eot` (the gradients average over its draws, and
    an example is robust if the prediction averaged over the draws is right);
  * ``custom``: a list of those names (``apgd-ce`` is the one-run APGD-CE of
    ``standard``) or of :class:`AttackSpec` s, in the order given.

  Square runs in the given norm (its L2 or L1 version). Only examples
  classified correctly at ``x`` are attacked. Before the attacks the model
  is checked as AutoAttack does (:func:`model_checks`), and after them
  whether Square broke points the white-box attacks missed
  (:func:`square_check`); failed checks are printed and returned.

  Args:
    logits_fn: ``(B, *shape) -> (B, C)`` logits, per-example independent.
    x: ``(N, *shape)`` inputs inside ``clip`` (NHWC for Square).
    y: ``(N,)`` integer labels.
    key: PRNG key; example ``i`` of attack ``a`` draws from
      ``fold_in(spec.key(key), i)``, whatever ``batch_size``.
    eps: radius ε.
    norm: ``"linf"``, ``"l2"`` or ``"l1"`` (AutoAttack's ``"Linf"``, ``"L2"``, ``"L1"`` too).
    version: ``"standard"``, ``"plus"`` or ``"rand"`` (ignored with ``custom``).
    custom: the attacks to run instead of a version.
    batch_size: examples per jitted call.
    clip: pixel range.
    log: where progress lines go (``None``: silent).
    state_dir: a folder where the run records its progress after every
      attack and chunk (atomically); called again with the same arguments
      and folder, a run that was killed continues where it was and ends
      with the same bits as an uninterrupted one. A folder holding another
      run's state is refused (``ValueError``).
    indicators: also run the indicators of attack failure (silent success,
      incomplete optimisation, unstable predictions; PGD with the APGD
      step budget) on the examples classified correctly clean.
    **budgets: ``apgd_steps``, ``fab_steps``, ``num_targets``,
      ``square_queries``, ``restarts`` of :func:`autoattack_attacks`.

  Returns:
    An :class:`AutoAttackResult`: clean and running robust accuracy per
    attack, the adversarial points, the checks.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.array([[1., -1., 0.], [-1., 1., 0.]])
    >>> x, y = jnp.array([[0.55, 0.45], [0.9, 0.1]]), jnp.array([0, 0])
    >>> r = autoattack(lambda x: x @ w, x, y, key=jax.random.key(0), eps=0.1, norm="l2",
    ...                custom=["apgd-ce", "fab-t"], log=None)
    >>> r.accuracy_after()
    {'apgd-ce': 0.5, 'fab-t': 0.5}

  References:
    Croce, Hein, *Reliable Evaluation of Adversarial Robustness with an
    Ensemble of Diverse Parameter-free Attacks*, ICML 2020.
  """
  norm = _checks.attack_inputs(logits_fn, x, y, clip=clip, eps=eps, norm_name=norm)
  _checks.count(batch_size, "batch_size")
  for name, value in budgets.items():
    _checks.count(value, name)
  if state_dir is not None and not isinstance(state_dir, (str, os.PathLike)):
    raise TypeError(f"state_dir: expected a folder path (str or os.PathLike), got {type(state_dir).__name__}")
  if version == "rand" and custom is None and not isinstance(logits_fn, _core.Eot):
    raise ValueError("logits_fn: version='rand' attacks a randomised model through its draws; pass "
                     "attacks.eot(model, key=..., draws=20) with model(x, key) -> logits")
  version, specs = _resolve(version, custom, eps=eps, norm=norm, **budgets)
  x, y = jnp.asarray(x), jnp.asarray(y)
  logits = program(logits_fn, x).run(x)
  clean = np.asarray(jnp.argmax(logits, axis=1) == y)
  checks = model_checks(logits_fn, x[:batch_size], y[:batch_size])
  if log is not None:
    log(f"AutoAttack {version} ({', '.join(s.name for s in specs)}), {norm} eps={eps:g}: "
        f"clean accuracy {100 * clean.mean():.2f}% on {clean.size} examples")
  state = None if state_dir is None else _open_state(
      state_dir, fingerprint(version, specs, eps, norm, batch_size, clip, key, x, y, logits), log)
  x_adv = np.array(x)

  def keep(idx: np.ndarray, points: np.ndarray) -> None:
    x_adv[idx] = points

  run = jitted_runner(logits_fn, x, y, key, batch_size=batch_size, clip=clip, state=state)
  chain = run_in_order(specs, clean, run, log, keep, state)
  checks += square_check(specs, chain)
  for c in checks:
    if not c.passed and log is not None:
      log(f"  check FAILED, {c.name}: {c.detail}")
  found = _failure_indicators(logits_fn, x, y, clean, key=key, eps=eps, norm=norm, clip=clip,
                              num_steps=budgets.get("apgd_steps", 100), log=log) if indicators else ()
  return AutoAttackResult(version, float(eps), norm, specs, clean, chain, x_adv, tuple(checks),
                          int(logits.shape[1]), found)


def _open_state(state_dir: str | os.PathLike, print_: str, log: Callable[[str], None] | None) -> ChainState:
  """The run's :class:`ChainState` in ``state_dir`` (fingerprint ``print_``), saying what it resumes."""
  state = ChainState.open(state_dir, print_)
  if log is not None and (state.finished or state.chunks):
    log(f"  resuming from {state.path}: {len(state.finished)} attack(s) finished, "
        f"{len(state.chunks)} chunk(s) of {state.current or 'none'} done")
  return state


#: The indicators draw from fold_in(key, INDICATOR_KEY); the attacks' key paths are small integers.
INDICATOR_KEY = 1000


def _failure_indicators(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, clean: np.ndarray, *, key: jax.Array,
                        eps: float, norm: str, clip: _core.Clip, num_steps: int,
                        log: Callable[[str], None] | None) -> tuple[Indicator, ...]:
  """:func:`attack_failure` on the examples correct clean, their indices mapped back into ``x``."""
  idx = np.flatnonzero(clean)
  if not idx.size:
    return ()
  found = attack_failure(logits_fn, x[idx], y[idx], key=jax.random.fold_in(key, INDICATOR_KEY), eps=eps,
                         num_steps=num_steps, norm=norm, clip=clip)
  found = tuple(i._replace(examples=idx[i.examples]) for i in found)
  for i in found:
    if log is not None:
      log(f"  {i.line()}")
  return found
