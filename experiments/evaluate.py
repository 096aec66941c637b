r"""Evaluate saved models: ``python -m experiments.evaluate --workdir=DIR[,DIR...] [--config.eval.<field>=V]``.

Runs the paper's protocol and the strong protocol (APGD-CE, APGD-T, Square
and AutoAttack's number: FAB-T on the examples they left), the
gradient-masking checks, and the transfer (black-box) matrix between all
the models given, then writes ``evaluation.json``, ``evaluation.md``,
``evaluation.png`` and one RobustBench-shaped ``robustbench-<model>.json``
per model into the first workdir. Each model is evaluated as trained
(its saved ``config.eval``) except for the ``--config.eval.<field>``
overrides given, the same spelling as ``experiments.run``'s.

  python -m experiments.evaluate --workdir=runs/mnist5k-crp-vs-standard-seed0
  python -m experiments.evaluate --workdir=runs/a/crp,runs/b/crp,runs/c/crp --config.eval.attack_subset=1000
  python -m experiments.evaluate --workdir=DIR --strong=autoattack-plus
  python -m experiments.evaluate --workdir=DIR --config.eval.certify.sigma=0.25 --config.eval.certify.n=10000
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from absl import flags

from experiments import cli

#: ``--strong`` -> the eval fields it sets.
STRONG: dict[str, dict[str, object]] = {
    "autoattack-standard": {"strong": True, "autoattack": "standard"},
    "autoattack-plus": {"strong": True, "autoattack": "plus"},
    "apgd-square": {"strong": True, "autoattack": ""},
    "true": {"strong": True},
    "false": {"strong": False},
}
#: Flags of an older spelling -> the one that replaced them.
RENAMED = {name: f"--config.eval.{name}" for name in
           ("attack_subset", "square_queries", "apgd_steps", "num_targets", "fab_steps")}
RENAMED.update({"certify_sigma": "--config.eval.certify.sigma", "certify_n": "--config.eval.certify.n",
                "certify_examples": "--config.eval.certify.num_examples"})


def define_flags(argv: list[str]) -> None:
  """The flags; ``--config`` holds the ``eval`` fields a run's config has (their defaults are not used)."""
  from experiments.configs import get_config  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  cli.check_renamed(argv, RENAMED)
  flags.DEFINE_list("workdir", None, "Model folder(s) of experiments.run, comma-separated; the outputs go "
                    "into the first.", required=True)
  flags.DEFINE_enum("strong", None, list(STRONG),
                    "Shorthand for --config.eval.strong and --config.eval.autoattack: autoattack-standard "
                    "(APGD-CE, APGD-T, FAB-T, Square), autoattack-plus, apgd-square (APGD-CE, APGD-T, Square, "
                    "no FAB-T), true (as trained) or false (off); default: as trained.", case_sensitive=False)
  flags.DEFINE_bool("progress", True, "Show progress bars.")
  cli.define_distributed_flags()
  for path in cli.config_overrides(argv):
    if not path.startswith("eval.") or path == "eval.":
      cli.fail(f"--config.{path}: evaluate changes only the eval.* fields; the rest are the saved run's")
  template = ml_collections.ConfigDict({"eval": get_config("mnist5k").eval})
  cli.define_config(argv, template, "The evaluation fields to change (config.eval of experiments.run); "
                    "each model keeps its saved value of every field not given")


def overrides_from_flags(argv: list[str]) -> dict[str, Any]:
  """``{field: value}`` (nested for ``certify``) of the ``--config.eval.*`` given, then ``--strong``'s."""
  out: dict[str, Any] = {}
  for path in cli.config_overrides(argv):
    parts = path.split(".")[1:]
    node = flags.FLAGS.config.eval
    for part in parts:
      node = node[part]
    value = node.to_dict() if hasattr(node, "to_dict") else node
    target = out
    for part in parts[:-1]:
      target = target.setdefault(part, {})
    target[parts[-1]] = value
  if flags.FLAGS.strong is not None:
    out.update(STRONG[flags.FLAGS.strong.lower()])
  return out


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  writer = cli.start_distributed()
  overrides = overrides_from_flags(sys.argv)
  command = "python -m experiments.evaluate " + shlex.join(sys.argv[1:])
  from crp_jax.runner import pipeline  # pylint: disable=g-import-not-at-top
  with cli.user_errors():
    text = pipeline.evaluate_saved(flags.FLAGS.workdir, eval_overrides=overrides,
                                   progress=flags.FLAGS.progress and writer, command=command)
    if writer:
      print(text)


if __name__ == "__main__":
  cli.setup_process("experiments.evaluate")
  define_flags(sys.argv)
  cli.run(main)
