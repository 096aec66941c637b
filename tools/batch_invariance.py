r"""How many per-example AutoAttack verdicts change with the batch size, on a saved model.

  python -m tools.batch_invariance --workdir=runs/control-paper-warmup/pgd_at --examples=200 \
      --batch_sizes=7,64,200 --attacks=apgd-ce,apgd-t --apgd_steps=20

Runs :func:`crp_jax.attacks.autoattack` on the first ``--examples`` test
examples once per batch size, with the same key. Every draw is per example
(:func:`crp_jax.attacks.example_keys`), so what can still differ is the
model's own arithmetic, which XLA compiles per batch shape. Prints, for each
batch size against the first: the largest difference of the clean logits,
how many examples' final verdicts (robust or broken) differ, and how many
adversarial points differ in any bit; then the code version.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when run as a script, so tests can import this module."""
  flags.DEFINE_string("workdir", None, "A trained model's folder (config.json and checkpoints).", required=True)
  flags.DEFINE_integer("examples", 200, "First test examples attacked.")
  flags.DEFINE_list("batch_sizes", ["7", "64", "200"], "Batch sizes compared with the first.")
  flags.DEFINE_list("attacks", ["apgd-ce", "apgd-t"], "AutoAttack's attacks to run (custom list).")
  flags.DEFINE_integer("apgd_steps", 20, "APGD steps (and FAB's).")
  flags.DEFINE_integer("square_queries", 500, "Square's queries.")
  flags.DEFINE_float("eps", None, "Radius; default the model's eval.eps.")
  flags.DEFINE_integer("seed", 0, "Key of the attacks.")


def main(argv: list[str]) -> None:
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from crp_jax import attacks, data  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import pipeline, provenance  # pylint: disable=g-import-not-at-top
  sizes = [int(s) for s in FLAGS.batch_sizes]
  if not sizes or min(sizes) < 1 or FLAGS.examples < 1:
    sys.exit("--batch_sizes and --examples: positive integers")
  trained = pipeline.load_trained(FLAGS.workdir)
  test = data.load_split(trained.config.dataset, "test")
  x = data.to_float(test.images[:FLAGS.examples])
  y = jax.numpy.asarray(test.labels[:FLAGS.examples])
  logits_fn = lambda z: trained.model.apply(trained.variables, z, train=False)
  eps = FLAGS.eps if FLAGS.eps is not None else trained.config.eval.eps
  runs, logits = {}, {}
  for size in sizes:
    logits[size] = np.concatenate([np.asarray(logits_fn(x[i:i + size])) for i in range(0, len(x), size)])
    runs[size] = attacks.autoattack(logits_fn, x, y, key=jax.random.key(FLAGS.seed), eps=eps, custom=FLAGS.attacks,
                                    batch_size=size, log=None, apgd_steps=FLAGS.apgd_steps,
                                    fab_steps=FLAGS.apgd_steps, square_queries=FLAGS.square_queries)
  first = sizes[0]
  print(f"{FLAGS.workdir}: {', '.join(FLAGS.attacks)} ({FLAGS.apgd_steps} steps), eps {eps:g}, "
        f"{len(x)} examples; batch {first}: robust accuracy {100 * runs[first].robust_accuracy:.2f}%")
  for size in sizes[1:]:
    r, ref = runs[size], runs[first]
    print(f"batch {size} vs {first}: clean logits differ by at most {np.abs(logits[size] - logits[first]).max():.2e}; "
          f"verdicts that differ: {int(np.sum(r.robust != ref.robust))} of {len(x)}; "
          f"adversarial points that differ in any bit: {int(np.sum(np.any(r.x_adv != ref.x_adv, axis=(1, 2, 3))))}; "
          f"robust accuracy {100 * r.robust_accuracy:.2f}%")
  print(provenance.line(provenance.stamp()))


if __name__ == "__main__":
  define_flags()
  app.run(main)
