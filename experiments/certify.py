r"""Certified L2 robustness of saved models: ``python -m experiments.certify --workdir=DIR[,DIR...] --sigma=S``.

Randomized smoothing (Cohen, Rosenfeld & Kolter 2019; :mod:`crp_jax.certify`)
on a fixed subset of the test split: the certified accuracy at each
radius, the abstention rate and the noisy forward passes per second, per
model, written to ``certify-sigma<S>.json``, ``.md`` and ``.png`` (one
curve per model) in the first workdir.

  python -m experiments.certify --workdir=runs/mnist5k-crp-vs-standard-seed0 --sigma=0.25
  python -m experiments.certify --workdir=runs/a/crp,runs/b/standard --sigma=0.5 --n=100000 --num_examples=500
"""

from __future__ import annotations

import shlex
import sys

from absl import flags

from experiments import cli

flags.DEFINE_list("workdir", None, "Model folder(s) of experiments.run, comma-separated.", required=True)
flags.DEFINE_float("sigma", None, "Noise std σ of the smoothed classifier (input units, pixels in [0, 1]).",
                   required=True)
flags.DEFINE_integer("n0", 100, "Noisy samples that select the class (CERTIFY's n0).")
flags.DEFINE_integer("n", 100_000, "Noisy samples that bound its probability (CERTIFY's n).")
flags.DEFINE_float("alpha", 0.001, "Failure probability α of each certificate.")
flags.DEFINE_integer("batch_size", 1000, "Noisy samples per example per step.")
flags.DEFINE_integer("num_examples", 500, "Test examples to certify (a fixed subset; 0: all).")
flags.DEFINE_integer("rows", 0, "Examples per call (0: one per device).")
flags.DEFINE_list("radii", ["0", "0.25", "0.5", "0.75", "1", "1.25", "1.5", "1.75", "2"], "L2 radii of the table.")
flags.DEFINE_integer("seed", 0, "Seed of the noise (the same for every model).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
cli.define_distributed_flags()


def spec_from_flags():
  """The :class:`~crp_jax.runner.certification.CertifySpec` of the flags; bad values fail in one line."""
  from crp_jax.runner.certification import CertifySpec  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  try:
    radii = tuple(float(r) for r in f.radii)
  except ValueError:
    cli.fail(f"--radii={','.join(f.radii)}: give numbers, e.g. 0,0.25,0.5")
  spec = CertifySpec(sigma=f.sigma, n0=f.n0, n=f.n, alpha=f.alpha, batch_size=f.batch_size,
                     num_examples=f.num_examples, rows=f.rows, radii=radii, seed=f.seed)
  try:
    spec.check()
  except ValueError as e:
    cli.fail(f"--{e}")
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
  cli.run(main)
