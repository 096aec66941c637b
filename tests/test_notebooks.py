"""The notebooks run top to bottom in a Jupyter kernel, at their tiny size, on 1 and on 8 fake CPU devices.

Each one is executed as Colab would (nbclient, kernel ``python3``) in a
fresh kernel whose environment sets the device count; a cell that raises
fails the test. The kernel is this interpreter, named by a kernelspec
written to a temporary ``JUPYTER_PATH``, so neither a user's kernelspecs
nor a missing ``jupyter kernelspec install`` can change what runs.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import os
import re
import subprocess
import sys

import nbclient  # the test extra's notebook packages: missing, the suite fails rather than skips
import nbformat
import pytest

from ipykernel import kernelspec
from tests import cli_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES_LINE = re.compile(r"on cpu: (\d+) device\(s\)")


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory):
  """A folder holding one kernelspec, ``python3``, that starts ``sys.executable -m ipykernel_launcher``."""
  path = tmp_path_factory.mktemp("jupyter")
  kernelspec.write_kernel_spec(path / "kernels" / "python3")
  return str(path)


def execute(name: str, devices: int, cwd, monkeypatch, jupyter_path: str) -> nbformat.NotebookNode:
  """Runs ``notebooks/<name>`` at its tiny size in ``cwd`` on ``devices`` fake CPU devices; returns it with outputs."""
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  monkeypatch.setenv("JUPYTER_PATH", jupyter_path)  # where nbclient looks up the kernelspec
  # The checkout's top-level packages (experiments, studies) import as from the repository root: only crp_jax
  # is installed into site-packages.
  path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
  env = cli_server.without_device_count(os.environ)
  flags = " ".join(f"--xla_force_host_platform_device_count={devices}".split() + env.get("XLA_FLAGS", "").split())
  env.update(CRP_NOTEBOOK_TINY="1", JAX_PLATFORMS="cpu", PYTHONPATH=path, XLA_FLAGS=flags)
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600, allow_errors=False,
                                   resources={"metadata": {"path": str(cwd)}})
  client.execute(env=env)
  return nb


def outputs(nb: nbformat.NotebookNode) -> tuple[str, str, list[bytes]]:
  """Everything the code cells printed, the markdown they displayed, and the PNGs they displayed."""
  text, markdown, images = [], [], []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      assert out["output_type"] != "error", "".join(out.get("traceback", []))
      if out["output_type"] == "stream":
        text.append(out["text"])
      data = out.get("data", {})
      markdown.append(data.get("text/markdown", ""))
      if "image/png" in data:
        images.append(base64.b64decode(data["image/png"]))
  return "".join(text), "\n".join(markdown), images


# The quickstart runs by default on 8 devices; the release check (pytest -m slow) runs both notebooks on
# 1 and 8: the device-count handling (fit_to_devices, the mesh cell) is the same code in both, and
# test_every_cell_compiles_and_its_imports_resolve checks the study notebook's code in the default suite.
@pytest.mark.parametrize("devices", [pytest.param(1, marks=pytest.mark.slow), 8])
def test_quickstart_runs_top_to_bottom(devices, tmp_path, monkeypatch, jupyter_path):
  nb = execute("quickstart.ipynb", devices, tmp_path, monkeypatch, jupyter_path)
  text, markdown, images = outputs(nb)
  assert "Not on Colab: skipped the install" in text
  assert [int(n) for n in DEVICES_LINE.findall(text)] == [devices]
  assert f"{devices} device(s): train batch 64, eval batch 16" in text
  # The report: both models under the paper's protocol and the strong one, and the verdict.
  assert "| Setting | standard | crp |" in markdown and "*Strong protocol (n=16)*" in markdown
  assert "Worst case: AutoAttack standard" in markdown and "## Verdict" in markdown
  assert len(images) == 1 and images[0][:4] == b"\x89PNG"
  result = json.loads((tmp_path / "runs" / "quickstart-tiny" / "results.json").read_text())
  assert {r["device_count"] for r in result.values()} == {devices}
  assert set(result) == {"standard", "crp"}
  assert images[0] == (tmp_path / "runs" / "quickstart-tiny" / "robustness.png").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 8])
def test_paper_study_runs_top_to_bottom(devices, tmp_path, monkeypatch, jupyter_path):
  nb = execute("paper_study.ipynb", devices, tmp_path, monkeypatch, jupyter_path)
  text, markdown, images = outputs(nb)
  assert [int(n) for n in DEVICES_LINE.findall(text)] == [devices]
  assert f"3 runs on {devices} device(s)" in text
  for k in (1, 5, 10):
    assert f"K={k}, seed 0: trained and evaluated" in text
  assert "Table 4: number of perturbations K" in markdown and "| Setting | 1 | 5 | 10 |" in markdown
  assert "(paper: 99.43±0.05)" in markdown  # Table 4's clean accuracy at K = 1, as printed
  assert "| PGD-4 |" in markdown and "| Strong worst case (AutoAttack: APGD-CE, APGD-T, FAB-T, Square) |" in markdown
  assert len(images) == 1 and images[0][:4] == b"\x89PNG"
  out = tmp_path / "runs" / "notebook-results" / "table4" / "mnist5k-tiny"
  assert images[0] == (out / "accuracy_vs_k.png").read_bytes()
  record = json.loads((out / "study.json").read_text())
  assert record["device_count"] == devices and len(record["runs"]) == 3


@pytest.mark.parametrize("name", ["quickstart.ipynb", "paper_study.ipynb"])
def test_every_cell_compiles_and_its_imports_resolve(name):
  """Without a kernel: each code cell is valid Python and every ``from m import a, b`` names what ``m`` has."""
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  cells = [c.source for c in nb.cells if c.cell_type == "code"]
  assert cells
  for i, source in enumerate(cells):
    tree = ast.parse(source, f"{name} cell {i}")
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for alias in node.names:
          assert importlib.util.find_spec(alias.name) is not None, (name, i, alias.name)
      elif isinstance(node, ast.ImportFrom):
        module = importlib.import_module(node.module)
        for alias in node.names:
          assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
              name, i, f"{node.module}.{alias.name}")


def install_cell(name: str) -> str:
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  return next(c.source for c in nb.cells if c.cell_type == "code" and "def install_commands" in c.source)


def test_install_cell_clones_the_repository_with_the_jax_build_of_the_accelerator_and_skips_outside_colab(
    monkeypatch, capsys, tmp_path):
  source = install_cell("quickstart.ipynb")
  assert install_cell("paper_study.ipynb") == source
  def no_pip(*args, **kwargs):
    raise AssertionError(f"the install cell ran {args} outside Colab")
  for name in ("run", "call", "check_call", "check_output", "Popen"):
    monkeypatch.setattr(subprocess, name, no_pip)
  scope = {"REPO": "https://example.org/crp_jax", "BRANCH": "dev"}
  exec(compile(source, "install cell", "exec"), scope)  # outside Colab: prints, runs nothing
  assert capsys.readouterr().out.startswith("Not on Colab: skipped the install")
  install = scope["install_commands"]
  checkout = str(tmp_path / "clone")
  clone, pip = install("https://example.org/crp_jax", "dev", "tpu", checkout)
  assert clone == ["git", "clone", "--depth=1", "--branch=dev", "https://example.org/crp_jax", checkout]
  # An editable install of the clone: its experiments and studies packages import from the checkout.
  assert pip[-3:] == ["-e", f"{checkout}[notebook]", "jax[tpu]"]
  assert install("u", "main", "gpu", checkout)[-1][-1] == "jax[cuda12]"
  assert install("u", "main", "cpu", checkout)[-1][-1] == f"{checkout}[notebook]"
  os.makedirs(checkout)
  assert len(install("u", "main", "cpu", checkout)) == 1  # cloned already: no second clone
  for var in ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("TPU_NAME", "local")
  assert scope["accelerator"]() == "tpu"


def test_install_cell_outside_colab_finds_the_checkout_from_notebooks_and_refuses_without_one(
    monkeypatch, tmp_path):
  source = install_cell("quickstart.ipynb")
  real = importlib.util.find_spec
  # experiments imports only once the checkout's root leads sys.path (as in a kernel started in notebooks/).
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: real(name, *a) if name != "experiments" or sys.path[0] == ROOT else None)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (ROOT, "")])
  monkeypatch.chdir(os.path.join(ROOT, "notebooks"))
  exec(compile(source, "install cell", "exec"), {"REPO": "u", "BRANCH": "main"})
  assert sys.path[0] == ROOT
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p != ROOT])
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ModuleNotFoundError, match="checkout"):
    exec(compile(source, "install cell", "exec"), {"REPO": "u", "BRANCH": "main"})
