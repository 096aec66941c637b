"""Many ``python -m experiments.<command>`` runs at the cost of one interpreter start.

A command that fails on its flags spends about 2.5 s of CPU importing JAX,
tfds and the configs and well under 0.1 s doing what a test checks. The
server below imports all of that once, without starting a JAX backend, and
forks one child per command. The child takes the command's environment,
working folder, stdin, stdout and stderr, and runs the module as
``__main__`` from its first line, exactly as ``python -m`` would: the same
entry point, flag parsing, error handling and exit status. It skips only the
interpreter start and the entry point's one re-execution, whose settings
(:func:`crp_jax.runner.process.tuned_env`) it gets in its environment.

Use :func:`run` like ``subprocess.run``; it returns a
``subprocess.CompletedProcess``. A command whose ``JAX_*`` environment
differs from the server's would see JAX configured at import differently,
so it is refused (run it with ``subprocess``).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
from typing import Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What every command imports before it does anything; none of it starts a JAX backend.
PRELOAD = ("absl.app", "absl.flags", "absl.logging", "ml_collections", "numpy", "jax", "flax", "optax",
           "tensorflow_datasets", "orbax.checkpoint", "experiments.cli", "experiments.configs",
           "crp_jax.runner.process", "crp_jax.runner.pipeline")


def _child(request: dict) -> None:
  """In the forked child: becomes the command, then exits with its status (never returns)."""
  import runpy  # pylint: disable=g-import-not-at-top
  code = 1
  try:
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                           (2, request["stderr"], os.O_WRONLY)):
      os.dup2(os.open(path, mode), fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["module"], *request["args"]]
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if e.code is not None and not isinstance(e.code, int):
      print(e.code, file=sys.stderr)
  except BaseException:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
  finally:
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except (OSError, ValueError):
        pass
    os._exit(code)  # pylint: disable=protected-access


def serve() -> None:
  """The server's loop: one JSON request per line on stdin, one ``{"returncode": n}`` line back."""
  import importlib  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import process  # pylint: disable=g-import-not-at-top
  sys.path[0] = ROOT   # as ``python -m`` from the root would (this script's folder is tests/)
  for name in PRELOAD:
    importlib.import_module(name)
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  assert not xla_bridge._backends, "a preloaded module started a JAX backend: forking it is unsafe"  # pylint: disable=protected-access
  print(json.dumps({"ready": True}), flush=True)
  while line := sys.stdin.readline():
    request = json.loads(line)
    request["env"] = {**process.tuned_env(request["env"]), process._MARK: "1"}  # pylint: disable=protected-access
    pid = os.fork()
    if pid == 0:
      _child(request)
    print(json.dumps({"returncode": _wait(pid, request["timeout"])}), flush=True)


def _wait(pid: int, timeout: float) -> int:
  """The child's exit code (``-9`` if it ran past ``timeout`` seconds and was killed)."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  deadline = time.monotonic() + timeout
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      return os.waitstatus_to_exitcode(status)
    if time.monotonic() > deadline:
      os.kill(pid, signal.SIGKILL)
    time.sleep(0.005)


class _Server:
  """The client side: one server process, one command at a time."""

  def __init__(self):
    self.lock = threading.Lock()
    self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)],
                                 cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ))
    self.jax_env = {k: v for k, v in os.environ.items() if k.startswith("JAX_")}
    ready = self.proc.stdout.readline()
    if not ready:
      raise RuntimeError("the CLI server did not start; run its imports by hand to see why")

  def run(self, module: str, args: Sequence[str], env: Mapping[str, str], cwd: str,
          timeout: float) -> subprocess.CompletedProcess:
    if {k: v for k, v in env.items() if k.startswith("JAX_")} != self.jax_env:
      raise ValueError("env: JAX_* variables differ from the server's; run this command with subprocess")
    with tempfile.TemporaryDirectory(prefix="crp-cli-") as tmp, self.lock:
      out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
      for path in (out, err):
        open(path, "w").close()
      request = {"module": module, "args": list(args), "env": dict(env), "cwd": cwd, "stdout": out, "stderr": err,
                 "timeout": timeout}
      self.proc.stdin.write(json.dumps(request) + "\n")
      self.proc.stdin.flush()
      reply = self.proc.stdout.readline()
      if not reply:
        raise RuntimeError(f"the CLI server died running {module} {args}")
      with open(out) as f_out, open(err) as f_err:
        return subprocess.CompletedProcess([sys.executable, "-m", module, *args], json.loads(reply)["returncode"],
                                           f_out.read(), f_err.read())

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=30)


_SERVER: _Server | None = None
_START = threading.Lock()


def run(module: str, args: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str = ROOT,
        timeout: float = 300) -> subprocess.CompletedProcess:
  """``subprocess.run([python, "-m", module, *args], capture_output=True, text=True)``, forked from the server.

  A command still running after ``timeout`` seconds is killed (return code -9).
  """
  global _SERVER
  with _START:
    if _SERVER is None:
      _SERVER = _Server()
      atexit.register(_SERVER.close)
  return _SERVER.run(module, args, os.environ if env is None else env, cwd, timeout)


if __name__ == "__main__":
  serve()


def without_device_count(environ: Mapping[str, str]) -> dict[str, str]:
  """``environ`` less ``XLA_FLAGS``' fake device count (conftest's 4 devices), its other flags kept."""
  env = dict(environ)
  flags = [f for f in env.pop("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  return env
