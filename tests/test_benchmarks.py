"""Tests of the benchmark harness (``python -m benchmarks.run``) and of what the speed work touched.

The smoke test runs the harness in-process at a tiny size without torch;
the ``parity`` tests (``pytest -m parity``, need the ``.[bench]`` extra)
check that the PyTorch reference is the same network as crp_jax's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import _env, _flops, foolbox_peer, run
from crp_jax.runner import meshes
from crp_jax import cpu
from crp_jax.models import LeNet, ResNet18, WideResNet, init_variables, max_pool_2x2


def test_smoke_without_torch(tmp_path):
  out = tmp_path / "results.md"
  text = run.main(["benchmarks.run", "--tiny", "--notorch", "--rows=lenet,attacks,autoattack,pgd_at,compile", "--repeats=1",
                   f"--out={out}"])
  written = out.read_text()
  assert text in written and written.startswith("# Benchmarks")
  assert "| row | workload | crp_jax | reference | ours/ref |" in written
  for row in ("| lenet |", "| fgsm |", "| pgd |", "| autoattack |", "| pgd_at |", "| compile |", "| gpu |"):
    assert row in written
  assert run.NO_TORCH in written and run.NO_GPU in written
  assert "img/s" in written


def test_plain_process_table_from_a_fresh_interpreter(tmp_path, monkeypatch):
  """``--rows=plain`` runs ``benchmarks.plain`` in a new process from the user's environment; its table leads."""
  command = run.plain_command
  monkeypatch.setattr(run, "plain_command", lambda args, out: [*command(args, out), "--rows=fgsm,cli_step"])
  monkeypatch.delenv(run.PLAIN_JSON, raising=False)
  out = tmp_path / "results.md"
  text = run.main(["benchmarks.run", "--tiny", "--notorch", "--rows=plain,lenet", "--repeats=1", f"--out={out}"])
  plain, cli = text.split("### CLI process")
  assert "### Plain process" in plain and "| fgsm |" in plain and "| cli_step |" in plain and "| lenet |" in cli
  assert "devices: 1 cpu" in plain and "torch threads: " in plain and "import crp_jax: sets nothing" in plain
  if cpu.flags_for(cpu.jaxlib_version()):
    # The convolution setting is the README's per-executable option now, not an XLA_FLAGS flag.
    line = plain.split("process settings (both contenders)")[1].split("\n")[0]
    assert cpu.YNN_VALUE in line and cpu.FLAGS[0] not in line


def test_the_plain_process_starts_from_the_users_environment():
  env = {"XLA_FLAGS": " ".join(["--xla_force_host_platform_device_count=4", *cpu.FLAGS]), "A": "b"}
  assert run.user_environ(env) == {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "A": "b"}


def test_a_failing_row_is_recorded_and_fails_the_run(tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise ValueError("boom\nsecond line")
  monkeypatch.setattr(run, "perturbation_row", broken)
  out = tmp_path / "results.md"
  with pytest.raises(SystemExit, match="rows failed: perturbation"):
    run.main(["benchmarks.run", "--tiny", "--notorch", "--rows=perturbation,lenet", "--repeats=1", f"--out={out}"])
  written = out.read_text()
  assert "| perturbation | failed | failed: ValueError: boom |" in written and "| FAILED |" in written
  assert "| lenet |" in written          # the rows after it still ran


def test_flags_start_from_their_defaults_and_a_bad_one_is_one_line(capsys):
  assert run.parse_args(["benchmarks.run", "--tiny", "--notorch"]).tiny
  args = run.parse_args(["benchmarks.run"])     # an earlier in-process call leaves nothing behind
  assert (args.tiny, args.torch, args.repeats, args.out, args.argv) == (False, True, 5, run.DEFAULT_OUT, ())
  for argv, error in ((["--rows=lenet,bogus"], "error: --rows: unknown rows ['bogus']; choose from "
                       + ",".join(run.ROWS)), (["--no-torch"], "error: Unknown command line flag 'no-torch'")):
    with pytest.raises(SystemExit) as exit_:
      run.parse_args(["benchmarks.run", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(error) and err.count("\n") == 1, err


def test_allocator_choice(tmp_path):
  lib = tmp_path / "libtcmalloc_minimal.so.4"
  lib.write_bytes(b"")
  found = _env.find_tcmalloc((str(tmp_path / "missing"), str(tmp_path)))
  assert found == str(lib)
  assert _env.find_tcmalloc((str(tmp_path / "missing"),)) is None
  assert _env.allocator_preload("auto", found) == found
  assert _env.allocator_preload("auto", None) is None and _env.allocator_preload("glibc", found) is None
  with pytest.raises(SystemExit, match="apt install libtcmalloc-minimal4"):
    _env.allocator_preload("tcmalloc", None)
  assert _env.loaded_allocator() in ("glibc malloc", "tcmalloc", "jemalloc")


def test_default_rows_on_this_cpu():
  assert run.default_rows() == ["plain", "lenet", "resnet18", "attacks", "autoattack", "certify", "perturbation",
                                "pgd_at", "memory", "compile"]


def test_model_flops_match_the_analytic_counts():
  # LeNet: two 5x5 SAME convolutions and two dense layers, 2 FLOPs per MAC.
  lenet = 2 * (28 * 28 * 32 * 25 * 1 + 14 * 14 * 64 * 25 * 32 + 7 * 7 * 64 * 1024 + 1024 * 10)
  assert _flops.forward_flops(LeNet(), (28, 28, 1)) == lenet == 27_767_808
  # WRN-28-10 on 32x32: 5.25 GMACs, the figure its paper and model zoos give; the strided
  # convolutions count once whatever form crp_jax.models.conv computes them in.
  assert _flops.forward_flops(WideResNet(), (32, 32, 3)) / 2e9 == pytest.approx(5.248, abs=0.005)


def test_datasheet_peaks_by_device_kind():
  kind = lambda name: type("Device", (), {"device_kind": name})()
  assert _flops.peak_bf16(kind("NVIDIA H100 80GB HBM3")) == 989.4e12
  assert _flops.peak_bf16(kind("NVIDIA H100 PCIe")) == 756e12
  assert _flops.peak_bf16(kind("NVIDIA H200")) == 989.4e12
  assert _flops.peak_bf16(jax.devices()[0]) is None            # no peak for the CPU: MFU not claimed


def test_write_results_keeps_the_notes(tmp_path):
  path = str(tmp_path / "results.md")
  run.write_results(path, "first")
  with open(path, "a") as f:
    f.write("\n## Notes\nhand-written\n")
  run.write_results(path, "second")
  text = open(path).read()
  assert "second" in text and "first" not in text and "hand-written" in text


def test_write_results_appends_a_block_of_other_markers(tmp_path):
  """``benchmarks.foolbox_peer`` writes its own block next to ``benchmarks.run``'s, and replaces only its own."""
  path = str(tmp_path / "results.md")
  run.write_results(path, "run's table")
  for text in ("peer first", "peer second"):
    run.write_results(path, text, begin=foolbox_peer.BEGIN, end=foolbox_peer.END)
  text = open(path).read()
  assert "run's table" in text and "peer second" in text and "peer first" not in text
  assert text.index(run.END) < text.index(foolbox_peer.BEGIN)


def _foolbox_peer(*args: str) -> subprocess.CompletedProcess:
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, "-m", "benchmarks.foolbox_peer", *args], cwd=repo, capture_output=True,
                        text=True, check=False)


def test_foolbox_peer_help_and_a_bad_flag():
  """``--help`` needs no foolbox; a bad row is one line on stderr and status 2."""
  out = _foolbox_peer("--help")
  assert out.returncode == 0 and "--batches" in out.stdout and "--out" in out.stdout, out.stderr
  out = _foolbox_peer("--rows=fgsm_linf,bogus")
  assert out.returncode == 2 and out.stderr.startswith("error: --rows: unknown rows ['bogus']"), out.stderr


def test_peak_rss_of_a_child():
  # The caller holds 600 MiB more than the child ever does; the child's number must not include it.
  held = bytearray(600 * 2**20)
  held[::4096] = b"x" * len(held[::4096])
  mib = run.peak_rss_mib([sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
  del held
  assert 200 < mib < 400
  with pytest.raises(RuntimeError, match="exited with 3"):
    run.peak_rss_mib([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_memory_command_is_a_valid_cli_invocation():
  cmd = run.memory_command("/tmp/x", 100, 64)
  assert cmd[1:3] == ["-m", "experiments.run"] and "--config.num_perturbations=100" in cmd
  # K·M·28·28 float32: K=100 on all of MNIST would be 17.5 GiB.
  assert run.stored_set_gib(100, 60000) == pytest.approx(17.52, abs=0.01)


def test_tuned_env_adds_each_setting_once():
  env = _env.tuned_env({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1", "XLA_FLAGS": "--foo"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.trim_threshold=1:" + _env.HUGETLB
  assert env["XLA_FLAGS"].split() == ["--foo", *_env.XLA_CPU_FLAGS]
  assert _env.tuned_env(env) == env


def test_tuned_settings_keep_the_numbers(tmp_path):
  """LeNet gradients with the tuned settings (the XLA flag, huge pages) match a process without any (float tolerance)."""
  code = ("import sys, jax, numpy as np, crp_jax; from crp_jax.models import LeNet, init_variables; "
          "m = LeNet(); v = init_variables(m, jax.random.key(0), (28, 28, 1)); "
          "x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1)); "
          "g = jax.jit(jax.grad(lambda p: m.apply({'params': p}, x).sum()))(v['params']); "
          "import os; print('present' if crp_jax.cpu.FLAGS[0] in os.environ.get('XLA_FLAGS', '') else 'absent', "
          "jax.device_count()); "
          "np.save(sys.argv[1], np.concatenate([l.ravel() for l in jax.tree.leaves(g)]))")
  plain = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GLIBC_TUNABLES", "CRP_JAX_CPU_TUNING")}
  grads, status = {}, {}
  for name, env in (("plain", {**plain, "CRP_JAX_CPU_TUNING": "0"}), ("tuned", _env.tuned_env(plain))):
    path = tmp_path / f"{name}.npy"
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True, capture_output=True, text=True)
    status[name], grads[name] = out.stdout.split()[0], np.load(path)
  if cpu.flags_for(cpu.jaxlib_version()):
    assert status == {"plain": "absent", "tuned": "present"}
  np.testing.assert_allclose(grads["tuned"], grads["plain"], rtol=1e-4, atol=1e-5 * np.abs(grads["plain"]).max())


def test_max_pool_gradient_matches_autodiff_with_ties():
  """The custom VJP of max_pool_2x2 is jnp.max's gradient, ties included (ReLU zeros, duplicates)."""
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 8, 6, 3)))
  x = x.at[0, 0:2, 0:2, 0].set(0.5)            # a 4-way tie at a positive value
  x = x.at[1, 2, 2:4, 1].set(x[1, 2, 2, 1])     # a 2-way tie
  g = jax.random.normal(jax.random.key(1), (2, 4, 3, 3))
  autodiff = lambda x: x.reshape(2, 4, 2, 3, 2, 3).max(axis=(2, 4))
  for f in (max_pool_2x2, jax.jit(max_pool_2x2)):
    np.testing.assert_array_equal(f(x), autodiff(x))
    grad = lambda h: jax.grad(lambda x: jnp.sum(h(x) * g))(x)
    np.testing.assert_allclose(grad(f), grad(autodiff), rtol=1e-6)


# ----------------------------------------------------------------------------- parity (torch)


@pytest.mark.parity
def test_torch_lenet_is_the_same_network():
  torch = pytest.importorskip("torch")
  from reference import torch_models  # pylint: disable=g-import-not-at-top
  variables = init_variables(LeNet(), jax.random.key(0), (28, 28, 1))
  x = np.asarray(jax.random.uniform(jax.random.key(1), (4, 28, 28, 1)))
  net = torch_models.lenet_from_flax(variables).eval()
  with torch.no_grad():
    ours = np.asarray(LeNet().apply(variables, x))
    ref = net(torch_models.to_nchw(x)).numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parity
def test_torch_resnet18_is_the_same_network():
  torch = pytest.importorskip("torch")
  from reference import torch_models  # pylint: disable=g-import-not-at-top
  model = ResNet18()
  variables = jax.jit(lambda k: init_variables(model, k, (32, 32, 3)))(jax.random.key(0))
  x = np.asarray(jax.random.uniform(jax.random.key(1), (2, 32, 32, 3)))
  net = torch_models.resnet18_from_flax(variables).eval()
  with torch.no_grad():
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    ref = net(torch_models.to_nchw(x)).numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
  params = sum(p.numel() for p in net.parameters())
  assert params == 11_173_962


@pytest.mark.parity
def test_the_pgd_at_rows_contenders_take_the_same_step_at_eps_zero():
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchattacks")
  from reference import torch_models  # pylint: disable=g-import-not-at-top
  data = run.make_data((28, 28, 1), 16, num_batches=1)
  ours = run.JaxTrainer(LeNet(), (28, 28, 1), data, meshes.make_mesh(jax.devices()[:1]), method="pgd_at",
                        eps=0.3, adversary=run.train.AdversarySpec(eps=0.0, steps=2, step_size=0.01))
  net = torch_models.lenet_from_flax(jax.device_get(ours.state.variables()))
  step = torch_models.make_pgd_at_step(net, eps=0.0, step_size=0.01, num_steps=2)
  ours.run(1)
  theirs = step(torch_models.to_nchw(data.image[0] / np.float32(255)), torch_models.torch_labels(data.label[0]))
  np.testing.assert_allclose(float(ours.metrics["loss"]), float(theirs.detach()), rtol=1e-5)


@pytest.mark.parity
def test_foolbox_peer_smoke(tmp_path):
  """``benchmarks.foolbox_peer`` at a tiny size: every row timed on both sides, same robust accuracy, block written."""
  pytest.importorskip("foolbox")
  out = tmp_path / "results.md"
  proc = _foolbox_peer("--tiny", "--repeats=1", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = out.read_text()
  assert foolbox_peer.BEGIN in written and foolbox_peer.END in written
  for row in foolbox_peer.ROWS:
    line = next(l for l in written.splitlines() if l.startswith(f"| {row} |"))
    assert line.count(" ms (±") == 2 and "×" in line and "(same;" in line, line
