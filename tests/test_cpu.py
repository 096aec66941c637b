"""crp_jax.cpu: the CPU settings ``import crp_jax`` applies (an XLA flag, malloc), their opt-outs and the notice."""

import os
import subprocess
import sys

import pytest

from crp_jax import cpu

FLAG = cpu.FLAGS[0]
HOST = cpu.flags_for("0.10.2")
JOINED = " ".join(HOST)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def configure(env, **kw):
  kw.setdefault("version", "0.10.2")
  kw.setdefault("started", lambda: False)
  kw.setdefault("malloc", lambda: "retain")
  kw.setdefault("retain_freed_memory", True)
  return cpu.configure_cpu(env, **kw)


def test_adds_the_flag_after_the_users_flags_once():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  first = configure(env)
  assert (first.status, first.added, first.active) == ("added", HOST, True)
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", *HOST]
  again = configure(env)
  assert (again.status, again.added) == ("present", ())
  assert env["XLA_FLAGS"].split().count(FLAG) == 1


def test_a_value_the_user_set_stays():
  name = FLAG.split("=")[0]
  env = {"XLA_FLAGS": f"{name}=+individual_convolution --foo"}
  settings = configure(env)
  assert (settings.status, settings.added) == ("present", ())
  assert env["XLA_FLAGS"] == f"{name}=+individual_convolution --foo"


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
  assert env == {} and cpu.flags_for("0.10.0") == cpu.FLAGS


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
  flags = cpu.flags_for(cpu.jaxlib_version())
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

