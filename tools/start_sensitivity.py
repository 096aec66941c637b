r"""Does an example's verdict depend on the attack's random start? Counts the keys that break it.

  python -m tools.start_sensitivity --workdir=runs/control-paper-warmup/pgd_at --ids=41,58,84 --eps=0.3

For each test example of ``--ids`` and each attack of AutoAttack's
``standard`` version named in ``--attacks`` (at its full budget, in
``--norm``), runs the attack alone ``--keys`` times, with root keys
``0 … keys − 1`` (example ``i`` draws from ``fold_in(spec.key(root), i)``,
as :func:`crp_jax.attacks.autoattack` keys it), and prints how many of those
keys break the example. An example broken by some keys and not others sits
where the random start decides: two implementations with different random
number generators can disagree on it without either being wrong. Then the
code version.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when run as a script, so tests can import this module."""
  flags.DEFINE_string("workdir", None, "A trained model's folder (config.json and checkpoints).", required=True)
  flags.DEFINE_list("ids", None, "Test example indices.", required=True)
  flags.DEFINE_float("eps", None, "Radius; default the model's eval.eps.")
  flags.DEFINE_enum("norm", "linf", ["linf", "l2", "l1"], "Threat model.")
  flags.DEFINE_list("attacks", ["apgd-ce", "apgd-t"], "Attacks of AutoAttack standard, by name.")
  flags.DEFINE_integer("keys", 10, "Root keys tried, 0 … keys − 1.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)   # orbax's restore chatter would bury the counts
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from crp_jax import attacks, data  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import pipeline, provenance  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(os.path.join(FLAGS.workdir, "config.json")):
    sys.exit(f"error: --workdir={FLAGS.workdir}: no config.json there (give a model folder, e.g. runs/<run>/pgd_at)")
  trained = pipeline.load_trained(FLAGS.workdir)
  test = data.load_split(trained.config.dataset, "test")
  ids = np.asarray([int(i) for i in FLAGS.ids])
  if FLAGS.keys < 1 or ids.min() < 0 or ids.max() >= test.num_examples:
    sys.exit(f"error: --keys must be >= 1 and --ids in [0, {test.num_examples})")
  x, y = data.to_float(test.images[ids]), jax.numpy.asarray(test.labels[ids])
  logits_fn = lambda z: trained.model.apply(trained.variables, z, train=False)
  eps = FLAGS.eps if FLAGS.eps is not None else trained.config.eval.eps
  specs = {s.name: s for s in attacks.autoattack_attacks("standard", eps=eps, norm=FLAGS.norm)}
  unknown = sorted(set(FLAGS.attacks) - set(specs))
  if unknown:
    sys.exit(f"error: --attacks: unknown {unknown}; choose from {sorted(specs)}")
  print(f"{FLAGS.workdir}: {FLAGS.norm} eps {eps:g}, examples {ids.tolist()}, {FLAGS.keys} keys", flush=True)
  for name in FLAGS.attacks:
    spec = specs[name]
    run = jax.jit(lambda k, spec=spec: attacks.run_attack(spec, logits_fn, x, y, key=k))
    broken = np.zeros(len(ids), int)
    for root in range(FLAGS.keys):
      keys = attacks.example_keys(spec.key(jax.random.key(root)), ids)
      broken += ~np.asarray(attacks.correct(logits_fn, run(keys), y))
    for i, b in zip(ids, broken):
      print(f"{spec.label}: example {i} broken by {b} of {FLAGS.keys} keys", flush=True)
  print(provenance.line(provenance.stamp()))


if __name__ == "__main__":
  define_flags()
  app.run(main)
