r"""Evaluate saved models: ``python -m experiments.evaluate --workdir=DIR[,DIR...]``.

Runs the paper's protocol and the strong protocol (APGD-CE, APGD-T, Square
and AutoAttack's number: FAB-T on the examples they left), the
gradient-masking checks, and the transfer (black-box) matrix between all
the models given, then writes ``evaluation.json``, ``evaluation.md``,
``evaluation.png`` and one RobustBench-shaped ``robustbench-<model>.json``
per model into the first workdir.

  python -m experiments.evaluate --workdir=runs/mnist5k-crp-vs-standard-seed0
  python -m experiments.evaluate --workdir=runs/a/crp,runs/b/crp,runs/c/crp --attack_subset=1000
  python -m experiments.evaluate --workdir=DIR --strong=autoattack-plus
  python -m experiments.evaluate --workdir=DIR --certify_sigma=0.25 --certify_n=10000   # adds certified accuracy
"""

from __future__ import annotations

import shlex
import sys

from absl import flags

from experiments import cli

flags.DEFINE_list("workdir", None, "Model folder(s) of experiments.run, comma-separated.", required=True)
flags.DEFINE_integer("attack_subset", None, "Test examples to attack (0: all); default: as trained.")
flags.DEFINE_integer("square_queries", None, "Square attack query budget.")
flags.DEFINE_integer("apgd_steps", None, "APGD iterations.")
flags.DEFINE_integer("num_targets", None, "APGD-T and FAB-T target classes.")
flags.DEFINE_integer("fab_steps", None, "FAB-T steps per target.")
#: ``--strong`` -> the eval fields it sets.
STRONG: dict[str, dict[str, object]] = {
    "autoattack-standard": {"strong": True, "autoattack": "standard"},
    "autoattack-plus": {"strong": True, "autoattack": "plus"},
    "apgd-square": {"strong": True, "autoattack": ""},
    "true": {"strong": True},
    "false": {"strong": False},
}
flags.DEFINE_enum("strong", None, list(STRONG),
                  "The strong protocol and masking checks: autoattack-standard (APGD-CE, APGD-T, FAB-T, Square), "
                  "autoattack-plus, apgd-square (APGD-CE, APGD-T, Square, no FAB-T), true (as trained) or "
                  "false (off); default: as trained.", case_sensitive=False)
flags.DEFINE_float("certify_sigma", None, "Also certify (randomized smoothing, eval.certify) at this noise std σ; "
                   "0 turns it off; default: as trained (off unless the run set it).")
flags.DEFINE_integer("certify_n", None, "CERTIFY's n (noisy samples per example); default: as trained (100,000).")
flags.DEFINE_integer("certify_examples", None, "Test examples to certify (0: all); default: as trained (500).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
cli.define_distributed_flags()

_EVAL_FLAGS = ("attack_subset", "square_queries", "apgd_steps", "num_targets", "fab_steps")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  writer = cli.start_distributed()
  overrides = {f: flags.FLAGS[f].value for f in _EVAL_FLAGS if flags.FLAGS[f].value is not None}
  if flags.FLAGS.strong is not None:
    overrides.update(STRONG[flags.FLAGS.strong.lower()])
  certify = {"sigma": flags.FLAGS.certify_sigma, "n": flags.FLAGS.certify_n,
             "num_examples": flags.FLAGS.certify_examples}
  certify = {k: v for k, v in certify.items() if v is not None}
  if certify:
    overrides["certify"] = certify
  command = "python -m experiments.evaluate " + shlex.join(sys.argv[1:])
  from crp_jax.runner import pipeline  # pylint: disable=g-import-not-at-top
  with cli.user_errors():
    text = pipeline.evaluate_saved(flags.FLAGS.workdir, eval_overrides=overrides,
                                   progress=flags.FLAGS.progress and writer, command=command)
    if writer:
      print(text)


if __name__ == "__main__":
  cli.setup_process("experiments.evaluate")
  cli.run(main)
