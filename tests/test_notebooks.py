"""The notebooks' code cells run in order."""

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # trains two small models; the README test covers the same API in CI
def test_quickstart_notebook_runs(capsys):
  nb = json.load(open(os.path.join(ROOT, "notebooks", "quickstart.ipynb")))
  scope = {}
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      exec(compile("".join(cell["source"]), "quickstart.ipynb", "exec"), scope)
  assert "| standard | crp |" in capsys.readouterr().out
