"""crp_jax.cpu: its XLA options per executable, the process-wide settings on request, and an import that changes nothing."""

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


def test_other_jaxlib_versions_get_nothing():
  env = {}
  assert configure(env, version="0.11.0").status == "unsupported"
  assert configure(env, version="0.9.2").status == "unsupported"
  assert env == {} and cpu.flags_for("0.10.0") == cpu.FLAGS


def test_malloc_retention_on_request_only():
  assert configure({}, retain_freed_memory=False, malloc=lambda: pytest.fail("malloc set")).malloc == "default"
  code = "import crp_jax; print(crp_jax.configure_cpu(retain_freed_memory=True).malloc)"
  status = _python(code).stdout.strip()
  assert status == ("retain" if sys.platform == "linux" and not cpu.accelerator_plugin() else status)
  assert status in ("retain", "accelerator", "not_glibc")


def _python(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "CRP_JAX_CPU_TUNING", "CRP_PLAIN_PROCESS")}
  env.update({k: v for k, v in env_changes.items() if v is not None})
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300, check=True)


QUIET = """
import os, sys, io, contextlib, importlib, pkgutil
env = dict(os.environ)
import jax
config = dict(jax.config.values)
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
  import crp_jax
  names = [m.name for m in pkgutil.walk_packages(crp_jax.__path__, "crp_jax.")]
  for name in names:
    importlib.import_module(name)
  [getattr(crp_jax, n) for n in crp_jax.__all__]
print(len(names), dict(os.environ) == env, dict(jax.config.values) == config, repr(out.getvalue() + err.getvalue()))
"""


def test_import_of_every_module_changes_nothing_and_prints_nothing():
  out = _python(QUIET)
  count, same_env, same_config, printed = out.stdout.split()
  assert int(count) > 20 and (same_env, same_config, printed) == ("True", "True", "''")
  assert out.stderr == ""


def test_the_library_imports_no_private_jax_module():
  import glob  # pylint: disable=g-import-not-at-top
  files = glob.glob(os.path.join(REPO, "crp_jax", "**", "*.py"), recursive=True)
  offenders = [f for f in files if "jax._src" in open(f).read()]
  assert len(files) > 20 and offenders == []


def test_compiler_options_only_on_a_cpu_of_jaxlib_010_without_the_users_flag():
  want = {cpu.YNN_OPTION: cpu.YNN_VALUE}
  assert cpu.compiler_options("cpu", {}, version="0.10.2") == want
  assert cpu.compiler_options("gpu", {}, version="0.10.2") == {}
  assert cpu.compiler_options("cpu", {}, version="0.11.0") == {}
  assert cpu.compiler_options("cpu", {"CRP_JAX_CPU_TUNING": "0"}, version="0.10.2") == {}
  assert cpu.compiler_options("cpu", {"XLA_FLAGS": f"{FLAG.split('=')[0]}=+dot"}, version="0.10.2") == {}


HLO = """
import sys, jax, jax.numpy as jnp
from crp_jax import attacks, cpu
from crp_jax.models import LeNet, init_variables
m = LeNet(); v = init_variables(m, jax.random.key(0), (28, 28, 1))
x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1)); y = jnp.zeros(8, jnp.int32)
low = jax.jit(lambda v, x, y: attacks.fgsm(lambda z: m.apply(v, z, train=False), x, y, eps=0.3)).lower(v, x, y)
options = cpu.compiler_options() if sys.argv[1] == "option" else None
lines = low.compile(compiler_options=options).as_text().splitlines()
print(chr(10).join(line for line in lines if not line.startswith("HloModule")))
"""


def _hlo(how: str, xla_flags: str | None) -> str:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update({"XLA_FLAGS": xla_flags} if xla_flags else {})
  return subprocess.run([sys.executable, "-c", HLO, how], cwd=REPO, capture_output=True, text=True, timeout=300,
                        check=True, env=env).stdout


@pytest.mark.skipif(not cpu.flags_for(cpu.jaxlib_version()), reason="no flag for this jaxlib")
def test_the_per_executable_option_compiles_what_the_flag_does():
  by_flag, by_option, default = _hlo("none", FLAG), _hlo("option", None), _hlo("none", None)
  assert "ynn" in default and by_option == by_flag != default


MiB = 2**20


@pytest.mark.parametrize("temp_mib, want", [(None, None), (16, None), (32, None), (32.5, cpu.HEAP_BYTES),
                                            (58.8, cpu.HEAP_BYTES), (128, cpu.HEAP_BYTES), (161, None),
                                            (1253.6, None)])
def test_heap_split_only_in_its_window(temp_mib, want):
  temp = None if temp_mib is None else int(temp_mib * MiB)
  got = cpu.heap_split_options(temp, "cpu", {}, version="0.10.2")
  assert got == (None if want is None else {cpu.HEAP_OPTION: want})


@pytest.mark.parametrize("env, backend, version", [({"CRP_JAX_CPU_TUNING": "0"}, "cpu", "0.10.2"),
                                                   ({"CRP_PLAIN_PROCESS": "1"}, "cpu", "0.10.2"),
                                                   ({}, "gpu", "0.10.2"), ({}, "tpu", "0.10.2"),
                                                   ({}, "cpu", "0.11.0")])
def test_heap_split_not_on_opt_out_accelerators_or_other_jaxlibs(env, backend, version):
  assert cpu.heap_split_options(60 * MiB, backend, env, version=version) is None


def _lenet_step(batch: int):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from crp_jax.models import LeNet  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import train, meshes, seeds  # pylint: disable=g-import-not-at-top
  mesh = meshes.make_train_mesh()
  spec = train.TrainSpec(method="crp", perturbation_eps=0.3)
  tx, keys = train.make_optimizer(spec, 100), seeds.run_keys(0)
  objective = train.make_objective(spec, keys["perturbations"], 10, keys["adversary"])
  step = train.jit_train_step(train.make_train_step(LeNet(), tx, objective, keys["dropout"]), mesh)
  state = jax.device_get(train.create_state(LeNet(), tx, keys["init"], (28, 28, 1)))
  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8),
              "label": rng.integers(0, 10, batch).astype(np.int32),
              "example_id": np.arange(batch, dtype=np.int32) + i * batch,
              "draw_id": rng.integers(-1, 10, batch).astype(np.int32)} for i in range(2)]
  put = lambda tree, spec: jax.device_put(tree, NamedSharding(mesh, spec))
  return step, (lambda: put(state, P())), [put(b, P("data")) for b in batches]


@pytest.mark.skipif(not cpu.flags_for(cpu.jaxlib_version()), reason="no heap option for this jaxlib")
def test_compile_for_cpu_splits_the_clis_lenet_step_and_keeps_its_bits():
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  step, fresh_state, batches = _lenet_step(128)
  # The same convolution option as compile_for_cpu's, so the heap cap is the only difference.
  plain = step.lower(fresh_state(), batches[0]).compile(compiler_options=cpu.compiler_options() or None)
  split = cpu.compile_for_cpu(step, fresh_state(), batches[0])
  temp = plain.memory_analysis().temp_size_in_bytes
  assert cpu.MMAP_THRESHOLD_MAX < temp <= cpu.HEAP_SPLIT_MAX   # the window this test is about
  # The option changes XLA's buffer assignment, so the split executable's temporaries differ.
  assert split.memory_analysis().temp_size_in_bytes != temp
  a, b = fresh_state(), fresh_state()
  for batch in batches:
    a, _ = plain(a, batch)
    b, _ = split(b, batch)
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(x, y)


def test_compile_for_cpu_outside_the_window_compiles_once():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  f = jax.jit(lambda x: jnp.sin(x) * 2)
  compiled = cpu.compile_for_cpu(f, jnp.ones(8))
  assert compiled.memory_analysis().temp_size_in_bytes < cpu.MMAP_THRESHOLD_MAX
  assert compiled.as_text() == f.lower(jnp.ones(8)).compile().as_text()
