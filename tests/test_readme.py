"""The README's library example runs as written."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)   # the example's AutoAttack state folder is relative
  text = open(os.path.join(ROOT, "README.md")).read()
  block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  exec(compile(block, "README.md", "exec"), {})
  printed = capsys.readouterr().out.split()
  assert len(printed) == 2 and all(0.0 <= float(v) <= 1.0 for v in printed)
  assert os.path.isfile(tmp_path / "runs" / "aa-state" / "autoattack_state.npz")
