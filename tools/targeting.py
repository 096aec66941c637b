r"""APGD-T's targets, AutoAttack's (highest logits) against MALT's (closest linearised boundary), on a saved model.

  python -m tools.targeting --workdir=runs/control-paper-warmup/pgd_at --examples=500 --malt_targets=1,3

Runs AutoAttack's first two attacks, APGD-CE then APGD-T (each on the
examples still robust, :func:`crp_jax.attacks.autoattack` with a custom list),
once with AutoAttack's targeting (``--targets`` classes) and once per entry
of ``--malt_targets`` with MALT's. Prints, per run, the robust accuracy after
APGD-T, the gradient evaluations APGD-T may spend in all
(:meth:`~crp_jax.attacks.AutoAttackResult.compute`), its seconds, and how
many examples it leaves robust that AutoAttack's targeting broke (and the
reverse); then the code version.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when run as a script, so tests can import this module."""
  flags.DEFINE_string("workdir", None, "A trained model's folder (config.json and checkpoints).", required=True)
  flags.DEFINE_integer("examples", 500, "First test examples attacked.")
  flags.DEFINE_integer("steps", 100, "APGD steps (per target for APGD-T).")
  flags.DEFINE_integer("targets", 9, "AutoAttack's target classes.")
  flags.DEFINE_list("malt_targets", ["1", "3"], "MALT's numbers of target classes, one run each.")
  flags.DEFINE_integer("batch_size", 500, "Examples per jitted call.")
  flags.DEFINE_float("eps", None, "Radius; default the model's eval.eps.")
  flags.DEFINE_integer("seed", 0, "Key of the attacks.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from crp_jax import attacks, data  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import pipeline, provenance  # pylint: disable=g-import-not-at-top
  counts = [int(k) for k in FLAGS.malt_targets]
  if min(counts + [FLAGS.examples, FLAGS.steps, FLAGS.targets]) < 1:
    sys.exit("error: --examples, --steps, --targets and --malt_targets must be positive")
  trained = pipeline.load_trained(FLAGS.workdir)
  test = data.load_split(trained.config.dataset, "test")
  x, y = data.to_float(test.images[:FLAGS.examples]), jax.numpy.asarray(test.labels[:FLAGS.examples])
  logits_fn = lambda z: trained.model.apply(trained.variables, z, train=False)
  eps = FLAGS.eps if FLAGS.eps is not None else trained.config.eval.eps
  apgd_ce, apgd_t, *_ = attacks.autoattack_attacks("standard", eps=eps, apgd_steps=FLAGS.steps,
                                                    num_targets=FLAGS.targets)
  runs = {f"logits, {FLAGS.targets} targets": apgd_t}
  for k in counts:
    runs[f"MALT, {k} target{'s' if k > 1 else ''}"] = dataclasses.replace(apgd_t, num_targets=k, targeting="malt")
  print(f"{FLAGS.workdir}: APGD-CE then APGD-T ({FLAGS.steps} steps per target), eps {eps:g}, "
        f"{len(x)} examples", flush=True)
  first = None
  for label, spec in runs.items():
    r = attacks.autoattack(logits_fn, x, y, key=jax.random.key(FLAGS.seed), eps=eps, custom=[apgd_ce, spec],
                           batch_size=FLAGS.batch_size, log=None)
    first = r if first is None else first
    c = r.compute()[spec.name]
    only_ref = int(np.sum(r.robust & ~first.robust))
    only_this = int(np.sum(first.robust & ~r.robust))
    print(f"{label}: robust {100 * r.accuracy_after()['apgd-ce']:.2f}% after APGD-CE, "
          f"{100 * r.robust_accuracy:.2f}% after APGD-T; APGD-T ran on {c['examples']} examples, at most "
          f"{c['total_gradients']:,} gradient evaluations, {r.chain.seconds[spec.name]:.0f} s; "
          f"robust here but broken with AutoAttack's targets: {only_ref}, the reverse: {only_this}", flush=True)
  print(provenance.line(provenance.stamp()))


if __name__ == "__main__":
  define_flags()
  app.run(main)
