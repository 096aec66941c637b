r"""crp_jax's attacks against foolbox 3, the JAX peer (through eagerpy): ``python -m benchmarks.foolbox_peer``.

  python -m benchmarks.foolbox_peer --out=benchmarks/results.md     # the record
  python -m benchmarks.foolbox_peer --batches=32 --rows=fgsm_linf   # one row, printed only
  python -m benchmarks.foolbox_peer --tiny                          # smoke size

Rows, at each of ``--batches`` (32 and 256): FGSM L∞, PGD L∞ (40 steps),
FGSM L2 (foolbox's ``L2FastGradientAttack``) and PGD L2 (40 steps), on one
LeNet (:class:`crp_jax.models.LeNet`) trained here for ``--train_steps``
Adam steps on ``mnist5k`` (:mod:`crp_jax.data`, offline), attacking the
first test images with their true labels.

Both contenders do the same work: cross-entropy of the logits summed over
the batch, the same number of steps, the same absolute step size, no random
start, the last iterate returned, no early stop, no success check:

* crp_jax: a user's ``jax.jit`` around :func:`crp_jax.attacks.fgsm` (FGSM
  L∞, and with ``norm="l2"`` the L2 FGM) or :func:`crp_jax.attacks.pgd`
  (``random_start=False``, ``last_iterate=True``),
  the variables passed as an argument, no compiler options, JAX's default
  single CPU device.
* foolbox: the attack's ``run(fmodel, x, y, epsilon=ε)`` (what
  ``attack(fmodel, x, y, epsilons=ε)`` calls before it checks success) on
  ``foolbox.JAXModel(jax.jit(logits_fn), bounds=(0, 1))``, with
  ``abs_stepsize`` and ``random_start=False`` (foolbox's PGD defaults are a
  step relative to ε and a random start). eagerpy then dispatches the
  loss, its gradient (the jitted model's forward and backward executables)
  and the sign, projection and clipping op by op.

Both run in this one process, alternately (:func:`benchmarks._timing.interleave`:
one warm-up round, then ``--repeats``); each cell is the median time of one
attack call, ± half the relative range. Each row also checks that both
reach the same robust accuracy (the model's accuracy on each contender's
adversarial batch; float rounding can flip the sign of a near-zero
gradient entry, so single pixels may differ).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks import _env, _timing, run as bench
from crp_jax import attacks
from crp_jax import data as crp_data
from crp_jax.models import LeNet, init_variables

ROWS = ("fgsm_linf", "pgd_linf", "fgsm_l2", "pgd_l2")
BEGIN = "<!-- benchmarks.foolbox_peer: begin (generated; edit outside these markers) -->"
END = "<!-- benchmarks.foolbox_peer: end -->"
NO_FOOLBOX = "not measured: foolbox not installed"
PIXEL_TOL = 1e-4   # a pixel "differs" between the two adversarial batches beyond float rounding
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Spec:
  """One attack: its label, norm, radius, step size and number of steps."""
  name: str
  label: str
  norm: str
  eps: float
  step_size: float
  steps: int


def specs(steps: int, eps_linf: float, eps_l2: float, step_linf: float, step_l2: float) -> dict[str, Spec]:
  return {
      "fgsm_linf": Spec("fgsm_linf", "FGSM L∞", "linf", eps_linf, eps_linf, 1),
      "pgd_linf": Spec("pgd_linf", f"PGD-{steps} L∞", "linf", eps_linf, step_linf, steps),
      "fgsm_l2": Spec("fgsm_l2", "FGSM L2 (FGM)", "l2", eps_l2, eps_l2, 1),
      "pgd_l2": Spec("pgd_l2", f"PGD-{steps} L2", "l2", eps_l2, step_l2, steps),
  }


# ----------------------------------------------------------------------------- the model


def train_lenet(steps: int, batch: int = 128, seed: int = 0) -> dict[str, Any]:
  """LeNet's variables after ``steps`` Adam steps (1e-3, cross-entropy) on ``mnist5k``'s training split."""
  model, tx = LeNet(), optax.adam(1e-3)
  split = crp_data.load_split("mnist5k", "train")
  images = np.asarray(split.images, np.float32) / 255
  labels = np.asarray(split.labels, np.int32)
  params = jax.jit(lambda k: init_variables(model, k, images.shape[1:]))(jax.random.key(seed))["params"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(len(images)) for _ in range(-(-steps * batch // len(images)))])
  for i in range(steps):
    idx = order[i * batch:(i + 1) * batch]
    params, opt_state = step(params, opt_state, images[idx], labels[idx])
  return {"params": jax.block_until_ready(params)}


def test_batch(n: int) -> tuple[jax.Array, jax.Array]:
  """The first ``n`` test images of ``mnist5k`` in [0, 1] and their labels."""
  split = crp_data.load_split("mnist5k", "test")
  return (jnp.asarray(np.asarray(split.images[:n], np.float32) / 255),
          jnp.asarray(np.asarray(split.labels[:n], np.int32)))


# ----------------------------------------------------------------------------- the contenders


def ours(model, spec: Spec) -> Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]:
  """A user's ``jax.jit`` of crp_jax's attack, ``(variables, x, y, key) -> x_adv``."""
  def attack(variables, x, y, key):
    logits_fn = lambda z: model.apply(variables, z, train=False)
    if spec.steps == 1:
      return attacks.fgsm(logits_fn, x, y, eps=spec.eps, norm=spec.norm)
    return attacks.pgd(logits_fn, x, y, key=key, eps=spec.eps, step_size=spec.step_size, num_steps=spec.steps,
                       norm=spec.norm, random_start=False, early_stop=False, last_iterate=True)
  return jax.jit(attack)


def foolbox_attack(spec: Spec) -> Any:
  """foolbox's attack of ``spec``: fixed absolute step, no random start."""
  import foolbox as fb  # pylint: disable=g-import-not-at-top
  return {
      "fgsm_linf": lambda: fb.attacks.LinfFastGradientAttack(random_start=False),
      "fgsm_l2": lambda: fb.attacks.L2FastGradientAttack(random_start=False),
      "pgd_linf": lambda: fb.attacks.LinfProjectedGradientDescentAttack(
          abs_stepsize=spec.step_size, steps=spec.steps, random_start=False),
      "pgd_l2": lambda: fb.attacks.L2ProjectedGradientDescentAttack(
          abs_stepsize=spec.step_size, steps=spec.steps, random_start=False),
  }[spec.name]()


def foolbox_model(model, variables) -> Any:
  """``foolbox.JAXModel`` of the jitted logits (an unjitted model runs every layer op by op, 4x slower)."""
  import foolbox as fb  # pylint: disable=g-import-not-at-top
  return fb.JAXModel(jax.jit(lambda z: model.apply(variables, z, train=False)), bounds=(0.0, 1.0))


def has_foolbox() -> bool:
  try:
    import foolbox  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


# ----------------------------------------------------------------------------- rows


@dataclasses.dataclass
class Result:
  """One row: the workload, both contenders' times (s) and their robust accuracies."""
  name: str
  batch: int
  workload: str
  times: dict[str, list[float]]
  accuracy: dict[str, float]
  pixels_differ: float | None = None

  def ratio(self) -> float | None:
    if "ref" not in self.times:
      return None
    return _timing.median(self.times["ref"]) / _timing.median(self.times["ours"])


def fmt_ms(seconds: list[float]) -> str:
  return f"{1e3 * _timing.median(seconds):,.1f} ms (±{100 * _timing.spread(seconds) / 2:.0f}%)"


def target(batch: int) -> tuple[float, float | None]:
  """``(floor, goal)``: at least as fast everywhere; the goal 1.5× at batch 32 (per-call overhead dominates)."""
  return (1.0, 1.5) if batch <= 32 else (1.0, None)


def measure_row(spec: Spec, batch: int, model, variables, x: jax.Array, y: jax.Array, clean: float,
                repeats: int, use_foolbox: bool) -> Result:
  key = jax.random.key(0)
  ours_fn = ours(model, spec)
  work: dict[str, Callable[[], object]] = {"ours": lambda: ours_fn(variables, x, y, key).block_until_ready()}
  if use_foolbox:
    fmodel, atk = foolbox_model(model, variables), foolbox_attack(spec)
    work["ref"] = lambda: atk.run(fmodel, x, y, epsilon=spec.eps).block_until_ready()
  times = _timing.interleave(work, repeats=repeats)
  forward = jax.jit(lambda v, z: model.apply(v, z, train=False))
  accuracy = lambda z: float(jnp.mean(jnp.argmax(forward(variables, z), -1) == y))
  adv = {"ours": ours_fn(variables, x, y, key)}
  if use_foolbox:
    adv["ref"] = atk.run(fmodel, x, y, epsilon=spec.eps)
  differ = float(jnp.mean(jnp.abs(adv["ours"] - adv["ref"]) > PIXEL_TOL)) if use_foolbox else None
  size = f"α={spec.step_size:g}, " if spec.steps > 1 else ""
  workload = (f"{spec.label}, batch {batch}, ε={spec.eps:g}, {size}no random start; clean accuracy "
              f"{100 * clean:.1f}%")
  return Result(spec.name, batch, workload, times, {k: accuracy(v) for k, v in adv.items()}, differ)


def table_row(r: Result) -> str:
  floor, goal = target(r.batch)
  goal_text = f"≥{floor:.1f}×" + (f" (goal {goal:.1f}×)" if goal else "")
  acc = f"{100 * r.accuracy['ours']:.1f}%"
  if "ref" not in r.times:
    return f"| {r.name} | {r.workload} | {fmt_ms(r.times['ours'])} | {NO_FOOLBOX} | – | {goal_text} | {acc} / – | not measured |"
  ratio = r.ratio()
  status = "goal met" if goal and ratio >= goal else "floor met" if ratio >= floor else "NOT MET"
  same = r.accuracy["ours"] == r.accuracy["ref"]
  acc += f" / {100 * r.accuracy['ref']:.1f}% ({'same' if same else 'DIFFERENT'}; {100 * r.pixels_differ:.2g}% of pixels differ by > {PIXEL_TOL:g})"
  return (f"| {r.name} | {r.workload} | {fmt_ms(r.times['ours'])} | {fmt_ms(r.times['ref'])} | {ratio:.2f}× | "
          f"{goal_text} | {acc} | {status} |")


def report(results: list[Result], argv: Sequence[str], started: str, seconds: float, train_steps: int,
           repeats: int) -> str:
  mem = _env.memory_gib()
  head = ("| row | workload | crp_jax | foolbox | ours/ref | target | robust accuracy (crp_jax / foolbox) | status |\n"
          "|---|---|---|---|---|---|---|---|\n")
  return "\n".join([
      "### foolbox 3, the JAX peer",
      "",
      f"Generated by `{' '.join(['python -m benchmarks.foolbox_peer', *argv])}`.",
      "",
      f"- machine: {_env.cpu_model()}, {os.cpu_count()} cores" + (f", {mem:.0f} GiB RAM" if mem else "")
      + f"; load average {started} at start, {_env.load_average()} at the end",
      "- versions: " + ", ".join(f"{k} {v}" for k, v in _env.versions(("foolbox", "eagerpy")).items()),
      f"- one process, JAX's default {jax.device_count()} {jax.default_backend()} device, "
      f"XLA_FLAGS `{os.environ.get('XLA_FLAGS', '')}`, allocator: {_env.loaded_allocator()}",
      f"- model: LeNet trained here, {train_steps} Adam steps of 128 on `mnist5k`; the first test images "
      "with their true labels",
      "- crp_jax: `jax.jit` of `crp_jax.attacks.fgsm` (FGSM L∞, and `norm=\"l2\"` for FGSM L2) or "
      "`crp_jax.attacks.pgd(..., random_start=False, early_stop=False, last_iterate=True)`, the variables an "
      "argument, no compiler options",
      "- foolbox: `attack.run(fmodel, x, y, epsilon=ε)` on `foolbox.JAXModel(jax.jit(logits_fn), bounds=(0, 1))`, "
      "PGD with `abs_stepsize=α` and `random_start=False` (its defaults are a step relative to ε and a "
      "random start): the same steps, step sizes and start as crp_jax's",
      f"- {repeats} timed repeats after one warm-up round, contenders interleaved; time per attack call, medians, "
      f"± half the relative range; ours/ref = foolbox's time / crp_jax's; wall time {seconds / 60:.1f} min",
      "",
      head + "".join(table_row(r) + "\n" for r in results),
  ])


# ----------------------------------------------------------------------------- command line


def define_flags() -> None:
  if "batches" in FLAGS:
    return
  flags.DEFINE_string("rows", ",".join(ROWS), f"Comma-separated subset of {','.join(ROWS)}.")
  flags.DEFINE_list("batches", ["32", "256"], "Batch sizes.")
  flags.DEFINE_integer("repeats", 5, "Timed repeats per contender, after one warm-up round.")
  flags.DEFINE_integer("steps", 40, "PGD steps.")
  flags.DEFINE_float("eps_linf", 0.1, "L∞ radius of FGSM and PGD.")
  flags.DEFINE_float("eps_l2", 1.5, "L2 radius of FGM and PGD.")
  flags.DEFINE_float("step_linf", 0.01, "PGD L∞ step size (absolute, both contenders).")
  flags.DEFINE_float("step_l2", 0.1, "PGD L2 step size (absolute, both contenders).")
  flags.DEFINE_integer("train_steps", 62, "Adam steps of 128 that train the LeNet (62: about two epochs).")
  flags.DEFINE_bool("tiny", False, "Smoke size: batch 4, 2 PGD steps, 2 train steps (overrides those flags).")
  flags.DEFINE_bool("foolbox", True, "Measure foolbox (--nofoolbox: crp_jax only).")
  flags.DEFINE_string("out", "", "Markdown file whose foolbox_peer block is written or replaced (empty: print only).")


def main(argv: Sequence[str]) -> None:
  """Runs the rows; prints the table and writes ``--out`` (``app.run`` would print a returned value)."""
  names = _env.selected_rows(argv, FLAGS.rows, list(ROWS))
  try:
    batches = [int(b) for b in FLAGS.batches]
  except ValueError:
    _env.usage_error(f"--batches: integers expected, got {','.join(FLAGS.batches)}")
  if FLAGS.repeats < 1 or any(b < 1 for b in batches):
    _env.usage_error("--repeats and --batches must be positive")
  steps, train_steps = (2, 2) if FLAGS.tiny else (FLAGS.steps, FLAGS.train_steps)
  if FLAGS.tiny:
    batches = [4]
  use_foolbox = FLAGS.foolbox and has_foolbox()
  started, t0 = _env.load_average(), time.perf_counter()
  jax.config.update("jax_num_cpu_devices", 1)   # JAX's default, whatever device count the caller forces
  print(f"benchmarks.foolbox_peer: training LeNet ({train_steps} steps) ...", flush=True)
  model, variables = LeNet(), train_lenet(train_steps)
  x_all, y_all = test_batch(max(batches))
  all_specs = specs(steps, FLAGS.eps_linf, FLAGS.eps_l2, FLAGS.step_linf, FLAGS.step_l2)
  forward = jax.jit(lambda v, z: model.apply(v, z, train=False))
  results = []
  for batch in batches:
    x, y = x_all[:batch], y_all[:batch]
    clean = float(jnp.mean(jnp.argmax(forward(variables, x), -1) == y))
    for name in names:
      r = measure_row(all_specs[name], batch, model, variables, x, y, clean, FLAGS.repeats, use_foolbox)
      ratio = r.ratio()
      print(f"{name:10s} batch {batch:4d}  crp_jax {fmt_ms(r.times['ours']):22s} "
            + (f"foolbox {fmt_ms(r.times['ref']):22s} ours/ref {ratio:.2f}x  robust acc "
               f"{100 * r.accuracy['ours']:.1f}% / {100 * r.accuracy['ref']:.1f}%"
               if ratio is not None else NO_FOOLBOX), flush=True)
      results.append(r)
  text = report(results, sys.argv[1:], started, time.perf_counter() - t0, train_steps,
                FLAGS.repeats)
  if FLAGS.out:
    bench.write_results(FLAGS.out, text, begin=BEGIN, end=END)
    print(f"\nwrote {FLAGS.out}")
  else:
    print("\n" + text)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """:func:`benchmarks._env.parse_flags`, with ``--help`` printing the flags and exiting 0 (absl exits 1)."""
  if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
    print(__doc__.split("\n\n")[0].strip() + "\n\n" + FLAGS.module_help(sys.modules[__name__]))
    sys.exit(0)
  return _env.parse_flags(argv)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
