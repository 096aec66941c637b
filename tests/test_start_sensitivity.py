"""tools.start_sensitivity: a bad folder is one line and exit 1, not a traceback."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_start_sensitivity_refuses_a_folder_without_a_model(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "tools.start_sensitivity", f"--workdir={tmp_path}", "--ids=1"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "no config.json there" in proc.stderr and "Traceback" not in proc.stderr
