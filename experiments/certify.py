r"""Certified L2 robustness of saved models: ``python -m experiments.certify --workdir=DIR[,DIR...] --config.eval.certify.sigma=S``.

Randomized smoothing (Cohen, Rosenfeld & Kolter 2019; :mod:`crp_jax.certify`)
on a fixed subset of the test split: the certified accuracy at each
radius, the abstention rate and the noisy forward passes per second, per
model, written to ``certify-sigma<S>.json``, ``.md`` and ``.png`` (one
curve per model) in the first workdir. The settings are the fields of
``config.eval.certify``, spelled as in ``experiments.run`` and
``experiments.evaluate`` (``--config.eval.certify.<field>``).

  python -m experiments.certify --workdir=runs/mnist5k-crp-vs-standard-seed0 --config.eval.certify.sigma=0.25
  python -m experiments.certify --workdir=runs/a/crp,runs/b/standard --config.eval.certify.sigma=0.5 \
      --config.eval.certify.n=100000 --config.eval.certify.num_examples=500
"""

from __future__ import annotations

import dataclasses
import shlex
import sys

from absl import flags

from experiments import cli

#: Flags of an older spelling -> the one that replaced them.
RENAMED = {name: f"--config.eval.certify.{name}" for name in
           ("sigma", "n0", "n", "alpha", "batch_size", "num_examples", "radii", "seed")}


def define_flags(argv: list[str]) -> None:
  """The flags; ``--config`` is ``eval.certify`` of a run's config, with its defaults."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from crp_jax.runner.config import certify_config  # pylint: disable=g-import-not-at-top
  cli.check_renamed(argv, RENAMED)
  flags.DEFINE_list("workdir", None, "Model folder(s) of experiments.run, comma-separated; the outputs go "
                    "into the first.", required=True)
  flags.DEFINE_integer("rows", 0, "Examples per call (0: one per device).")
  flags.DEFINE_bool("progress", True, "Show progress bars.")
  cli.define_distributed_flags()
  for path in cli.config_overrides(argv):
    if not path.startswith("eval.certify."):
      cli.fail(f"--config.{path}: certify takes only the eval.certify.* fields")
  template = ml_collections.ConfigDict({"eval": {"certify": certify_config()}})
  cli.define_config(argv, template, "CERTIFY's settings (config.eval.certify of experiments.run); "
                    "sigma (> 0) is required")


def spec_from_flags():
  """The :class:`~crp_jax.runner.certification.CertifySpec` of the flags; bad values fail in one line."""
  from crp_jax.runner.certification import CertifySpec  # pylint: disable=g-import-not-at-top
  spec = CertifySpec.from_config(flags.FLAGS.config.eval.certify)   # sigma: 0 (the default) is refused
  spec = dataclasses.replace(spec, rows=flags.FLAGS.rows)
  try:
    spec.check()
  except ValueError as e:
    cli.fail(f"--config.eval.certify.{e}")
  return spec


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  spec = spec_from_flags()
  writer = cli.start_distributed()
  command = "python -m experiments.certify " + shlex.join(sys.argv[1:])
  from crp_jax.runner import certification  # pylint: disable=g-import-not-at-top
  with cli.user_errors():
    text = certification.run(flags.FLAGS.workdir, spec, command=command, progress=flags.FLAGS.progress and writer)
    if writer:
      print(text)


if __name__ == "__main__":
  cli.setup_process("experiments.certify")
  define_flags(sys.argv)
  cli.run(main)
