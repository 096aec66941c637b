"""crp_jax.cpu: the CPU settings ``import crp_jax`` applies (an XLA flag, malloc), their opt-outs and the notice."""

import os
import subprocess
import sys

import numpy as np
import pytest

from crp_jax import cpu

FLAG = cpu.FLAGS[0]
HOST = cpu.flags_for("0.10.2", accelerator=False)     # both flags, as on this CPU-only install
JOINED = " ".join(HOST)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def configure(env, **kw):
  kw.setdefault("version", "0.10.2")
  kw.setdefault("started", lambda: False)
  kw.setdefault("malloc", lambda: "retain")
  kw.setdefault("retain_freed_memory", True)
  kw.setdefault("accelerator", lambda: False)
  return cpu.configure_cpu(env, **kw)


def test_adds_the_flag_after_the_users_flags_once():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  first = configure(env)
  assert (first.status, first.added, first.active) == ("added", HOST, True) and len(HOST) == 2
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", *HOST]
  again = configure(env)
  assert (again.status, again.added) == ("present", ())
  assert env["XLA_FLAGS"].split().count(FLAG) == 1


def test_a_value_the_user_set_stays_and_accelerators_get_no_heap_limit():
  env = {"XLA_FLAGS": "--xla_multiheap_size_constraint_per_heap=1000"}
  assert configure(env).added == (FLAG,)
  assert env["XLA_FLAGS"].split() == ["--xla_multiheap_size_constraint_per_heap=1000", FLAG]
  env = {}
  assert configure(env, accelerator=lambda: True).added == cpu.FLAGS and env["XLA_FLAGS"] == FLAG


@pytest.mark.parametrize("env", [{"CRP_JAX_CPU_TUNING": "0"}, {"CRP_PLAIN_PROCESS": "1"}])
def test_opt_outs_leave_xla_flags_alone(env):
  settings = configure(env, opt_out=True, malloc=lambda: pytest.fail("malloc set despite the opt-out"))
  assert (settings.status, settings.active, settings.malloc) == ("opted_out", False, "opted_out")
  assert "XLA_FLAGS" not in env
  # An explicit call is explicit: it applies the flag whatever the environment says.
  assert configure(env).status == "added" and env["XLA_FLAGS"] == JOINED


def test_other_jaxlib_versions_get_nothing():
  env = {}
  assert configure(env, version="0.11.0").status == "unsupported"
  assert configure(env, version="0.9.2").status == "unsupported"
  assert env == {} and cpu.flags_for("0.10.0") == cpu.FLAGS + cpu.HOST_FLAGS
  assert cpu.flags_for("0.10.0", accelerator=True) == cpu.FLAGS


def test_malloc_retention_on_request_only():
  assert configure({}, retain_freed_memory=False, malloc=lambda: pytest.fail("malloc set")).malloc == "default"
  code = "import crp_jax; print(crp_jax.configure_cpu(retain_freed_memory=True).malloc)"
  status = _python(code, CRP_JAX_CPU_TUNING="0").stdout.strip()
  assert status == ("retain" if sys.platform == "linux" and not cpu.accelerator_plugin() else status)
  assert status in ("retain", "accelerator", "not_glibc")


def test_too_late_once_a_backend_has_started():
  env = {"XLA_FLAGS": "--foo"}
  settings = configure(env, started=lambda: True)
  assert (settings.status, settings.active) == ("too_late", False)
  assert env == {"XLA_FLAGS": "--foo"}


def test_notice_lines():
  added = cpu.CpuSettings(HOST, HOST, "added")
  line = cpu.notice(added, {})
  assert JOINED in line and "CRP_JAX_CPU_TUNING=0" in line and "\n" not in line
  assert cpu.notice(added, {"CRP_JAX_CPU_TUNING": "1"}) is None
  assert cpu.notice(cpu.CpuSettings((), HOST, "present"), {}) is None


def _python(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "CRP_JAX_CPU_TUNING", "CRP_PLAIN_PROCESS")}
  env.update({k: v for k, v in env_changes.items() if v is not None})
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120, check=True)


SHOW = ("import os, jax, crp_jax; print(crp_jax.cpu_settings.status); print(os.environ.get('XLA_FLAGS', ''));"
        "print(jax.jit(lambda x: x + 1)(1)); print(crp_jax.cpu_settings.malloc)")


@pytest.mark.skipif(not cpu.flags_for(cpu.jaxlib_version()), reason="no flag for this jaxlib")
def test_import_applies_the_flag_and_says_so_once():
  out = _python(SHOW)
  flags = cpu.flags_for(cpu.jaxlib_version(), cpu.accelerator_plugin())
  assert out.stdout.split("\n")[:4] == ["added", " ".join(flags), "2", "default"]   # malloc only on request
  assert [line for line in out.stderr.splitlines() if line.startswith("crp_jax:")] == [cpu.notice(
      cpu.CpuSettings(flags, flags, "added"), {})]


@pytest.mark.skipif(not cpu.flags_for(cpu.jaxlib_version()), reason="no flag for this jaxlib")
@pytest.mark.parametrize("env", [{"CRP_JAX_CPU_TUNING": "0"}, {"CRP_PLAIN_PROCESS": "1"}])
def test_import_opted_out_applies_nothing_and_is_silent(env):
  out = _python(SHOW, **env)
  assert out.stdout.split("\n")[:4] == ["opted_out", "", "2", "opted_out"]
  assert "crp_jax:" not in out.stderr


@pytest.mark.skipif(not cpu.flags_for(cpu.jaxlib_version()), reason="no flag for this jaxlib")
def test_import_after_jax_started_says_how_to_get_the_flag():
  out = _python("import jax; jax.devices(); import crp_jax; print(crp_jax.cpu_settings.status)")
  assert out.stdout.strip() == "too_late"
  assert "crp_jax.configure_cpu()" in out.stderr and FLAG in out.stderr


@pytest.mark.skipif(not cpu.flags_for(cpu.jaxlib_version()), reason="no flag for this jaxlib")
def test_the_heap_limit_changes_no_bit_of_a_train_step(tmp_path):
  """16 MiB temporary heaps place buffers differently and compute the same bits (3 LeNet Adam steps)."""
  code = ("import sys, jax, numpy as np, optax, crp_jax; from crp_jax.models import LeNet, init_variables; "
          "m = LeNet(); p = init_variables(m, jax.random.key(0), (28, 28, 1))['params']; tx = optax.adam(1e-3); "
          "x = jax.random.uniform(jax.random.key(1), (128, 28, 28, 1)); y = jax.numpy.arange(128) % 10; "
          "loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(m.apply({'params': p}, x), y).mean(); "
          "step = jax.jit(lambda p, o: (lambda g: (lambda u, o: (optax.apply_updates(p, u), o))"
          "(*tx.update(g, o, p)))(jax.grad(loss)(p))); o = tx.init(p)\n"
          "for _ in range(3): p, o = step(p, o)\n"
          "np.save(sys.argv[1], np.concatenate([l.ravel() for l in jax.tree.leaves(p)]))")
  out = {}
  for name, flags in (("one heap", cpu.FLAGS), ("16 MiB heaps", cpu.FLAGS + cpu.HOST_FLAGS)):
    path = tmp_path / f"{len(flags)}.npy"
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, check=True, timeout=120,
                   env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "CRP_JAX_CPU_TUNING": "0",
                        "XLA_FLAGS": " ".join(flags)})
    out[name] = np.load(path)
  np.testing.assert_array_equal(out["one heap"], out["16 MiB heaps"])
