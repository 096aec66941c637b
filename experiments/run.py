r"""Train and evaluate CRP models: ``python -m experiments.run [flags]``.

  python -m experiments.run                         # offline default: standard vs CRP LeNet on mnist5k
  python -m experiments.run --dataset=svhn --preset=paper
  python -m experiments.run --preset=control        # PGD-AT beside standard and CRP: the positive control
  python -m experiments.run --dataset=cifar10 --method=variable --config.include_clean=False
  python -m experiments.run --config.epochs=2 --config.eval.pgd_steps='(10,20)'
  python -m experiments.run --config=my_config.py:small   # your own file's get_config("small")
  python -m experiments.run --coordinator_address=10.0.0.2:1234 --num_processes=2 --process_id=0  # on host 0
  python -m experiments.run --distributed ...       # every host of a Cloud TPU pod slice or SLURM job

The workdir defaults to ``runs/<dataset>-<methods>-seed<seed>``, followed by
the preset (unless ``small``) and every training field that differs from the
preset (e.g. ``-distribution=gaussian``); running the same command again
resumes from its checkpoints.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import flags

from experiments import cli


def define_flags(argv: list[str]) -> None:
  """The flags, with ``--config`` built from ``--dataset`` and ``--preset``.

  Called after :func:`cli.setup_process`: the configs import the library
  (JAX, tfds), which the process should load once, after its re-exec.
  """
  from experiments.configs import DATASETS, PRESETS, get_config  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("dataset", "mnist5k", DATASETS, "Dataset; picks the config file.")
  flags.DEFINE_enum("preset", "small", PRESETS, "small: sized for a CPU; paper: the paper's settings; "
                    "short: the paper's protocol at about a GPU-hour per table (svhn, cifar10); "
                    "control: PGD-AT beside standard and CRP (the positive control); control_paper: PGD-AT and "
                    "TRADES at the paper's ε = 0.3 and 50 epochs (mnist, mnist5k).")
  flags.DEFINE_string("method", None, "Shorthand for --config.method (standard, crp, variable, pgd_at, trades).")
  flags.DEFINE_list("workdir", None, "Output folder (one); default "
                    "runs/<dataset>-<methods>-seed<seed>[-<preset>][-<changed fields>].")
  flags.DEFINE_string("tfds_data_dir", None,
                      "Folder of prepared tfds datasets (shorthand for --config.tfds_data_dir).")
  flags.DEFINE_bool("allow_config_change", False, "Resume although eval-only fields of the config changed.")
  flags.DEFINE_bool("progress", True, "Show progress bars.")
  cli.define_distributed_flags()
  user_file = cli.config_file_arg(argv)
  if user_file is None:
    dataset, preset = cli.pre_parse(argv, DATASETS, PRESETS)
    config, what = get_config(dataset, preset), f"The run's config: experiments/configs/{dataset}.py at --preset={preset}"
  else:
    cli.pre_parse(argv, DATASETS, PRESETS, check_overrides=False)
    config, what = cli.load_config_file(user_file), f"The run's config: {user_file}"
  cli.define_config(argv, config, what)
  flags.DEFINE_string("config_file", user_file, "Set by --config=path.py[:arg] (read before the flags).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  writer = cli.start_distributed()
  config = cli.apply_shorthands(flags.FLAGS.config, method=flags.FLAGS.method,
                                tfds_data_dir=flags.FLAGS.tfds_data_dir)
  from experiments.configs import get_config  # pylint: disable=g-import-not-at-top
  if flags.FLAGS.config_file:   # the file's config is the starting point, and names the preset
    preset_config, preset = cli.load_config_file(flags.FLAGS.config_file), "file"
  else:
    preset_config, preset = get_config(flags.FLAGS.dataset, flags.FLAGS.preset), flags.FLAGS.preset
  if flags.FLAGS.workdir and len(flags.FLAGS.workdir) > 1:
    cli.fail(f"--workdir={','.join(flags.FLAGS.workdir)}: run writes one folder; give one")
  workdir = flags.FLAGS.workdir[0] if flags.FLAGS.workdir else cli.default_workdir(config, preset_config, preset)
  given = ([f"--config={flags.FLAGS.config_file}"] if flags.FLAGS.config_file else []) + sys.argv[1:]
  command = "python -m experiments.run " + shlex.join(given)
  from crp_jax.runner import pipeline  # pylint: disable=g-import-not-at-top
  with cli.user_errors():
    text = pipeline.run(config, workdir, progress=flags.FLAGS.progress and writer,
                        allow_config_change=flags.FLAGS.allow_config_change, command=command)
    if writer:
      print(text)
      print(f"\nwrote {os.path.join(workdir, 'report.md')}")


if __name__ == "__main__":
  cli.setup_process("experiments.run")
  define_flags(sys.argv)
  cli.run(main)
