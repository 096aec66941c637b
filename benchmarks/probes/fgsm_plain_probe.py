r"""Why a user's own FGSM timing and ``benchmarks.plain``'s FGSM row disagree: one fresh process per way of timing it.

  python -m benchmarks.probes.fgsm_plain_probe              # every mode, each in its own process
  python -m benchmarks.probes.fgsm_plain_probe --mode=torch # one mode, in this process

FGSM on LeNet at batch 256, ε = 0.3, as ``benchmarks.plain``'s ``fgsm`` row.
Modes (img/s, the median of ``--repeats`` calls after one warm-up):

* ``user``: a user's script: ``jax.jit`` of ``attacks.fgsm`` with the
  variables closed over, nothing else (``import crp_jax`` sets nothing).
* ``user_options``: the same, jitted with ``crp_jax.cpu.compiler_options()``
  (the documented call).
* ``user_compiled``: the same, through ``crp_jax.compile_for_cpu`` (the options
  and, FGSM's temporaries being 61 MiB at batch 256, the heap cap).
* ``bench``: as ``benchmarks.plain`` jits it, the variables an argument.
* ``bench_options``: that, with the options.
* ``torch``: torchattacks' FGSM alone in its process, torch's default threads.
* ``interleaved``: ``bench_options`` and ``torch`` alternately in one process,
  as ``benchmarks.plain`` times them (``benchmarks._timing.interleave``).
* ``compare``: ``user``, ``user_options`` and ``user_compiled`` alternately in
  one process, so that a loaded machine slows all three alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

MODES = ("user", "user_options", "user_compiled", "bench", "bench_options", "torch", "interleaved", "compare")
FLAGS = flags.FLAGS
flags.DEFINE_string("mode", "", f"One of {', '.join(MODES)}; empty: each in a fresh process.")
flags.DEFINE_integer("repeats", 7, "Timed calls per mode.")
flags.DEFINE_integer("batch", 256, "Batch size.")


def _median_rate(fn, repeats: int, batch: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return batch / statistics.median(times)


def _jax_fn(mode: str):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from crp_jax import attacks, cpu  # pylint: disable=g-import-not-at-top
  from crp_jax.models import LeNet, init_variables  # pylint: disable=g-import-not-at-top
  model = LeNet()
  variables = jax.jit(lambda k: init_variables(model, k, (28, 28, 1)))(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (FLAGS.batch, 28, 28, 1))
  y = jnp.argmax(model.apply(variables, x), -1).astype(jnp.int32)
  options = cpu.compiler_options() if mode.endswith("options") else None
  if mode.startswith("user"):
    fn = jax.jit(lambda x, y: attacks.fgsm(lambda z: model.apply(variables, z, train=False), x, y, eps=0.3),
                 compiler_options=options)
    if mode == "user_compiled":
      fn = cpu.compile_for_cpu(fn, x, y)
    return (lambda: fn(x, y).block_until_ready()), (variables, x, y)
  fn = jax.jit(lambda v, x, y: attacks.fgsm(lambda z: model.apply(v, z, train=False), x, y, eps=0.3),
               compiler_options=options)
  return (lambda: fn(variables, x, y).block_until_ready()), (variables, x, y)


def _torch_fn(variables, x, y):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import run as bench  # pylint: disable=g-import-not-at-top
  tr = bench.load_torch(True, threads=None)
  atk = tr.make_attack("fgsm", tr.lenet_from_flax(jax.device_get(variables)), eps=0.3, step_size=0.01, num_steps=1)
  xt, yt = tr.to_nchw(np.asarray(x)), torch.from_numpy(np.asarray(y).astype(np.int64))
  return lambda: atk(xt, yt)


def measure(mode: str) -> str:
  if mode == "compare":
    from benchmarks import _timing  # pylint: disable=g-import-not-at-top
    work = {m: _jax_fn(m)[0] for m in ("user", "user_options", "user_compiled")}
    times = _timing.interleave(work, repeats=FLAGS.repeats)
    rate = {k: FLAGS.batch / statistics.median(v) for k, v in times.items()}
    spread = {k: _timing.spread(v) for k, v in times.items()}
    return ", ".join(f"{k} {r:,.0f} img/s (±{100 * spread[k]:.0f}%)" for k, r in rate.items())
  if mode == "torch":
    _, data = _jax_fn("bench")
    return f"{_median_rate(_torch_fn(*data), FLAGS.repeats, FLAGS.batch):,.0f} img/s"
  if mode == "interleaved":
    from benchmarks import _timing  # pylint: disable=g-import-not-at-top
    ours, data = _jax_fn("bench_options")
    times = _timing.interleave({"ours": ours, "ref": _torch_fn(*data)}, repeats=FLAGS.repeats)
    rate = {k: FLAGS.batch / statistics.median(v) for k, v in times.items()}
    return f"{rate['ours']:,.0f} vs torch {rate['ref']:,.0f} img/s ({rate['ours'] / rate['ref']:.2f}x)"
  fn, _ = _jax_fn(mode)
  return f"{_median_rate(fn, FLAGS.repeats, FLAGS.batch):,.0f} img/s"


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.mode:
    print(f"{FLAGS.mode:14s} {measure(FLAGS.mode)}", flush=True)
    return
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "CRP_JAX_CPU_TUNING")}
  for mode in MODES:
    out = subprocess.run([sys.executable, "-m", "benchmarks.probes.fgsm_plain_probe", f"--mode={mode}",
                          f"--repeats={FLAGS.repeats}", f"--batch={FLAGS.batch}"], env=env, capture_output=True,
                         text=True, check=False)
    print(out.stdout.strip() or f"{mode:14s} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)


if __name__ == "__main__":
  app.run(main)
