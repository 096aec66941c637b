"""Where the LeNet train step's time goes on the CPU mesh (the numbers in benchmarks/results.md).

    python -m benchmarks.probes.train_probe variants                  # crp_jax's step, with parts removed
    CRP_CPU_DEVICES=1 python -m benchmarks.probes.train_probe adam    # a minimal Flax+optax step, 1 device
    CRP_CPU_DEVICES=2 python -m benchmarks.probes.train_probe adam    # ... and on 2 devices
    python -m benchmarks.probes.train_probe trace                     # per-thunk times from jax.profiler
    CRP_CPU_DEVICES=1 python -m benchmarks.probes.train_probe trace --model=resnet18
    CRP_CPU_DEVICES=1 python -m benchmarks.probes.train_probe interference   # crp_jax after torch steps
    python -m benchmarks.probes.train_probe rewrites --model=wrn     # the CPU conv rewrites on vs off
    python -m benchmarks.probes.train_probe wrn                      # WRN-28-10 bf16: batch, dropout, MFU (GPU)
    python -m benchmarks.probes.train_probe mesh --model=lenet       # the step on one device vs all of them

Batch 128 of random uint8 images, the CLI's process settings; variants run
interleaved, 10 rounds of 4 steps, median ms per step.
"""

from __future__ import annotations

import collections
import functools
import glob
import gzip
import json
import re
import resource
import tempfile
from typing import Any, Callable

from absl import app, flags

from benchmarks import _env, _timing


def _interleaved(runs: dict[str, Callable[[int], None]], rounds: int = 10, steps: int = 4) -> None:
  times = _timing.interleave({k: functools.partial(run, steps) for k, run in runs.items()},
                             repeats=rounds, warmup=0)
  for name, ts in times.items():
    per_step = _timing.median(ts) / steps
    print(f"{name:28s} {1e3 * per_step:6.1f} ms per step  {128 / per_step:6.0f} img/s")


def _runner(step, state, batches) -> Callable[[int], None]:
  import jax  # pylint: disable=g-import-not-at-top
  box = [state]

  def run(n: int) -> None:
    for i in range(n):
      box[0], _ = step(box[0], batches[i % len(batches)])
    jax.block_until_ready(box[0])

  run(1)
  return run


def variants() -> None:
  """crp_jax.train's step with the finiteness check, the metrics, or the Adam barrier changed."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from benchmarks import run as bench  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import train, meshes, seeds  # pylint: disable=g-import-not-at-top
  from crp_jax.data import to_float  # pylint: disable=g-import-not-at-top
  from crp_jax.models import LeNet  # pylint: disable=g-import-not-at-top
  mesh, model = meshes.make_mesh(), LeNet()
  data = bench.make_data((28, 28, 1), 128)
  batches = [jax.device_put(data.batch(i), NamedSharding(mesh, P("data"))) for i in range(4)]

  def make(finite: bool, metrics: bool, barrier: bool):
    tx = train.make_optimizer(train.TrainSpec(method="standard", perturbation_eps=0.3), 1000)
    state = jax.device_put(train.create_state(model, tx, seeds.run_keys(0)["init"], (28, 28, 1)),
                           NamedSharding(mesh, P()))

    def step(state, batch):
      x = to_float(batch["image"])
      loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
          model.apply({"params": p}, x), batch["label"]).mean()
      loss, grads = jax.value_and_grad(loss_fn)(state.params)
      grads = jax.lax.optimization_barrier(grads) if barrier else grads
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state)
      out = {"loss": loss}
      if metrics:
        norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(norm)
        out.update(grad_norm=norm, ok=ok & train.all_finite(new.params) if finite else ok)
      return new, out

    return _runner(train.jit_train_step(step, mesh), state, batches)

  _interleaved({"as crp_jax.train": make(True, True, False),
                "no finiteness check": make(False, True, False),
                "no metrics": make(False, False, False),
                "barrier before Adam": make(True, True, True)})


def adam() -> None:
  """A minimal Flax + optax.adam step on the CLI's devices (compare CRP_CPU_DEVICES=1 and 2)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import train  # pylint: disable=g-import-not-at-top
  from crp_jax.models import LeNet  # pylint: disable=g-import-not-at-top
  mesh, model, tx = meshes.make_mesh(), LeNet(), optax.adam(1e-3)
  shard, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  params = jax.device_put(model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))), rep)
  batch = (jax.device_put(jax.random.uniform(jax.random.key(1), (128, 28, 28, 1)), shard),
           jax.device_put(jnp.arange(128) % 10, shard))

  def step(state, batch):
    params, opt_state = state
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, batch[0]), batch[1]).mean()
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  state = (params, jax.device_put(tx.init(params), rep))
  print(f"{len(jax.devices())} device(s):")
  _interleaved({"flax + optax.adam": _runner(jax.jit(step, donate_argnums=0), state, [batch])})


def _trainer(model_name: str, conv_rewrites: bool | None = None):
  """crp_jax's crp step as ``benchmarks.run`` times it: ``(trainer, data, shape, ε, steps per repeat)``.

  ``conv_rewrites`` is the model's switch of the CPU convolution rewrites
  (``None``: the default, on the CPU backend only).
  """
  from benchmarks import run as bench  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import train  # pylint: disable=g-import-not-at-top
  model, shape, eps, steps, _ = bench.train_workload(model_name, bench.sizes(False, bench.on_accelerator()))
  model = model.clone(conv_rewrites=conv_rewrites)
  data = bench.make_data(shape, 128)
  return bench.JaxTrainer(model, shape, data, meshes.make_train_mesh(), method="crp", eps=eps), data, shape, eps, steps


def _rates(runs: dict[str, tuple[Any, int, int]], repeats: int) -> dict[str, tuple[float, float]]:
  """``runs[name] = (trainer, steps, batch)`` interleaved: images/s at the median repeat, and the spread."""
  times = _timing.interleave({k: functools.partial(t.run, n) for k, (t, n, _) in runs.items()}, repeats=repeats)
  return {k: (runs[k][1] * runs[k][2] / _timing.median(ts), _timing.spread(ts)) for k, ts in times.items()}


def rewrites(model_name: str, repeats: int = 5) -> None:
  """The crp step with :mod:`crp_jax.models.conv`'s rewrites forced on and off, on this backend.

  They are on by default on the CPU only (``conv.rewrites_enabled()``); the
  model's ``conv_rewrites`` attribute forces them, which shows what they gain
  there and would cost on an accelerator.
  """
  from crp_jax.models import conv  # pylint: disable=g-import-not-at-top
  runs = {}
  for on in (True, False):
    trainer, _, _, _, steps = _trainer(model_name, conv_rewrites=on)
    runs[f"rewrites {'on' if on else 'off'}"] = (trainer, steps, 128)
    print(f"rewrites {'on' if on else 'off':3s}: compiled in {trainer.compile_s:.1f} s", flush=True)
  for name, (images, _) in _rates(runs, repeats).items():
    print(f"{name:13s} {images:9.1f} img/s (default here: {'on' if conv.rewrites_enabled() else 'off'})")


def wrn(repeats: int = 5) -> None:
  """WRN-28-10's bf16 crp step as ``benchmarks.run`` times it, and variants, with their MFU.

  Variants: no dropout (what the dropout masks cost), the dropout key on the
  ``rbg`` generator instead of threefry, and larger batches.
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import _flops, run as bench  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import train  # pylint: disable=g-import-not-at-top
  s = bench.sizes(False, bench.on_accelerator())
  model, shape, eps, steps, workload = bench.train_workload("wrn", s)
  mesh_ = meshes.make_train_mesh()
  flops, peak = 3 * _flops.forward_flops(model, shape), _flops.peak_bf16(mesh_.devices.flat[0])
  variants = {"as benchmarked": (model, s.train_batch, None),
              "no dropout": (dataclasses.replace(model, dropout_rate=0.0), s.train_batch, None),
              "rbg dropout key": (model, s.train_batch, jax.random.key(1, impl="rbg")),
              "batch 256": (model, 256, None),
              "batch 512": (model, 512, None)}
  runs = {}
  for name, (m, batch, key) in variants.items():
    trainer = bench.JaxTrainer(m, shape, bench.make_data(shape, batch), mesh_, method="crp", eps=eps,
                               dropout_key=key)
    runs[name] = (trainer, max(1, steps * s.train_batch // batch), batch)
    print(f"{name:16s} compiled in {trainer.compile_s:.1f} s", flush=True)
  rates = _rates(runs, repeats)
  print(f"{workload}; {flops / 1e9:.1f} GFLOP per image; peak {peak and peak / 1e12} TFLOP/s")
  for name, (images, _) in rates.items():
    mfu = f"MFU {flops * images / (peak * mesh_.devices.size):.1%}" if peak else "no peak known"
    print(f"{name:16s} {images:9.1f} img/s  {flops * images / 1e12:6.0f} TFLOP/s  {mfu}", flush=True)


def mesh(model_name: str, repeats: int = 10) -> None:
  """The crp step on a one-device mesh against the all-device mesh, interleaved, in one process."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import run as bench  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import train  # pylint: disable=g-import-not-at-top
  model, shape, eps, steps, _ = bench.train_workload(model_name, bench.sizes(False, bench.on_accelerator()))
  data = bench.make_data(shape, 128)
  runs = {f"{n} device(s)": (bench.JaxTrainer(model, shape, data, meshes.make_mesh(jax.devices()[:n]),
                                              method="crp", eps=eps), steps, 128)
          for n in (1, len(jax.devices()))}
  for name, (images, spread) in _rates(runs, repeats).items():
    print(f"{name:12s} {images:8.1f} img/s (±{50 * spread:.0f}%)")


_GPU_KINDS = (("convolution (cuDNN)", r"conv|xmma|implicit_gemm|cudnn"), ("matmul", r"gemm|cublas|nvjet|cutlass"),
              ("reduction fusion", r"reduce"), ("other fusion", r"fusion"))


def _gpu_kind(kernel: str) -> str:
  return next((kind for kind, pattern in _GPU_KINDS if re.search(pattern, kernel, re.I)), "other")


def durations(events: list[dict]) -> tuple[collections.Counter, collections.Counter, bool]:
  """Microseconds per event name and per trace line; on a GPU, of its kernel streams only.

  A GPU's process also holds derived lines (XLA ops, modules) over the same
  time as its streams, so only lines named like a stream are summed there.
  """
  processes = {e["pid"]: e.get("args", {}).get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  devices = {pid for pid, name in processes.items() if "gpu" in name.lower()}
  threads = {(e["pid"], e["tid"]): e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name" and e.get("pid") in devices}
  streams = {k for k, name in threads.items() if "stream" in name.lower()} or set(threads)
  total: collections.Counter = collections.Counter()
  per_thread: collections.Counter = collections.Counter()
  for e in events:
    if e.get("ph") != "X" or (devices and e.get("pid") not in devices):
      continue
    line = (e["pid"], e.get("tid"))
    per_thread[threads.get(line, "host")] += e.get("dur", 0)
    if not devices or line in streams:
      total[e["name"]] += e.get("dur", 0)
  return total, per_thread, bool(devices)


def trace(model_name: str) -> None:
  """Per-thunk milliseconds of a few crp steps, summed over devices, from a Perfetto trace.

  On a GPU only the device's kernels count, grouped by kind, against the step's wall time.
  """
  import jax  # pylint: disable=g-import-not-at-top
  trainer, steps = _trainer(model_name)[0], 5 if model_name != "resnet18" else 2
  trainer.run(3)
  wall = _timing.median([_timing.timed(functools.partial(trainer.run, steps)) for _ in range(3)]) / steps
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      trainer.run(steps)
    with gzip.open(glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)[0]) as f:
      events = json.load(f)["traceEvents"]
  total, per_thread, devices = durations(events)
  ms = lambda us: us / (1e3 * steps)
  print(f"wall time {1e3 * wall:.2f} ms per step (untraced)")
  if devices:
    print("-- GPU trace lines (ms per step): " + ", ".join(f"{n}: {ms(us):.2f}" for n, us in per_thread.most_common()))
    kinds: collections.Counter = collections.Counter()
    for name, us in total.items():
      kinds[_gpu_kind(name)] += us
    print(f"-- GPU kernels by kind (ms per step; all kernels {ms(sum(total.values())):.2f} ms)")
    for name, us in kinds.most_common():
      print(f"{ms(us):8.2f}  {name}")
    from benchmarks import _flops, run as bench  # pylint: disable=g-import-not-at-top
    model, shape = bench.train_workload(model_name, bench.sizes(False, True))[:2]
    flops = 3 * _flops.forward_flops(model, shape) * 128
    busy = ms(kinds["convolution (cuDNN)"] + kinds["matmul"]) / 1e3
    print(f"model FLOPs {flops / 1e12:.2f} T per step: {flops / wall / 1e12:.0f} TFLOP/s over the wall time, "
          f"{flops / busy / 1e12:.0f} TFLOP/s over the convolution and matmul kernels' time")
  else:
    kinds = collections.Counter()
    for name, us in total.items():  # "transpose_copy_fusion.46" -> "transpose_copy_fusion"
      kinds[re.sub(r"\.\d+$", "", name)] += us
    print("-- by kind (ms per step, summed over devices)")
    for name, us in kinds.most_common(30):
      print(f"{ms(us):8.1f}  {name[:100]}")
  print("-- by thunk or kernel (ms per step, summed over devices)")
  for name, us in total.most_common(30):
    print(f"{ms(us):8.2f}  {name[:110]}")


def interference(model_name: str, repeats: int = 4) -> None:
  """crp_jax's step alone, then interleaved with PyTorch's, with the kernel (system) time of each."""
  from benchmarks import run as bench  # pylint: disable=g-import-not-at-top
  tr = bench.load_torch(True)
  if tr is None:
    raise SystemExit("interference needs torch: pip install -e '.[bench]'")
  trainer, data, shape, eps, steps = _trainer(model_name)
  ref = bench.torch_reference(tr, model_name, trainer, data, shape, eps)
  sys_s: dict[str, list[float]] = collections.defaultdict(list)

  def measured(name: str, fn: Callable[[int], None]) -> Callable[[], None]:
    def run() -> None:
      before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
      fn(steps)
      sys_s[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_stime - before) / steps)
    return run

  for label, work in (("alone", {"crp_jax": measured("crp_jax alone", trainer.run)}),
                      ("interleaved", {"crp_jax": measured("crp_jax interleaved", trainer.run),
                                       "torch": measured("torch interleaved", ref)})):
    times = _timing.interleave(work, repeats=repeats)
    for name, ts in times.items():
      key = f"{name} {label}"
      print(f"{key:22s} {128 * steps / _timing.median(ts):8.1f} img/s   "
            f"system time {_timing.median(sys_s[key][-repeats:]):5.2f} s per step", flush=True)


#: ``command -> probe(model)``; each probe's default model is the one its notes measured.
COMMANDS: dict[str, Callable[[str | None], None]] = {
    "variants": lambda model: variants(),
    "adam": lambda model: adam(),
    "trace": lambda model: trace(model or "lenet"),
    "interference": lambda model: interference(model or "resnet18"),
    "rewrites": lambda model: rewrites(model or "resnet18"),
    "wrn": lambda model: wrn(),
    "mesh": lambda model: mesh(model or "lenet"),
}


def define_flags() -> None:
  """The flags; defined only when run as a script, so ``benchmarks.run`` and the tests can import this module."""
  flags.DEFINE_enum("model", None, ["lenet", "resnet18", "wrn"],
                    "trace, mesh: lenet (default); interference, rewrites: resnet18 (default).")


def main(argv: list[str]) -> None:
  """``argv``: the program name and one command of :data:`COMMANDS`."""
  if len(argv) != 2 or argv[1] not in COMMANDS:
    _env.usage_error(f"usage: python -m benchmarks.probes.train_probe {{{','.join(COMMANDS)}}} [--model=...]; "
                     f"got {' '.join(argv[1:]) or 'no command'}")
  _env.setup_process("benchmarks.probes.train_probe")
  COMMANDS[argv[1]](flags.FLAGS.model)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_env.parse_flags)
