"""The documentation site: it builds in strict mode, its commands exist, its numbers have sources.

* :func:`test_strict_build` runs ``mkdocs build --strict`` (a broken reference,
  a missing page or a docstring griffe cannot read fails it);
* :func:`test_documented_commands` checks every ``python -m <module>`` written
  in ``docs/*.md``: the module exists, and every ``--flag`` beside it is one
  that command defines (from its ``--helpfull``, through ``docs/hooks.py``);
  every ``--config.<field>`` names a field of a config;
* :func:`test_numbers_have_sources` checks that every result-like number
  written by hand in a page has its source (a command, or a committed file)
  in the same paragraph or table;
* :func:`test_no_journal`: no issue numbers, commit hashes or dates of work.

Nothing here downloads anything.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


@functools.lru_cache(maxsize=None)
def hooks():
  """``docs/hooks.py`` as a module (it is MkDocs' hook, not a package)."""
  spec = importlib.util.spec_from_file_location("crp_jax_docs_hooks", os.path.join(DOCS, "hooks.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def pages() -> dict[str, str]:
  """``{path relative to docs/: text}`` of every Markdown page, and the README (``../README.md``), which the
  same checks hold to: its commands exist with their flags, its numbers have sources, no journal."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    out = {"../README.md": f.read()}
  for base, _, names in os.walk(DOCS):
    for name in sorted(names):
      if name.endswith(".md"):
        path = os.path.join(base, name)
        with open(path, encoding="utf-8") as f:
          out[os.path.relpath(path, DOCS)] = f.read()
  return out


@functools.lru_cache(maxsize=None)
def tracked_files() -> frozenset[str]:
  out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
  return frozenset(out.splitlines())


def test_strict_build(tmp_path):
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert p.returncode == 0, p.stderr[-4000:]
  for page in (p for p in pages() if not p.startswith("../")):   # the README is checked, not built
    html = page[:-3] + ("/index.html" if not page.endswith("index.md") else ".html")
    assert (tmp_path / "site" / html).exists(), f"{page} was not built ({html})"
  cli = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
  for command in hooks().COMMANDS:   # the generated flag tables are there
    assert f"python -m experiments.{command}" in cli
  findings = (tmp_path / "site" / "findings" / "index.html").read_text(encoding="utf-8")
  assert "results/table1/" in findings


# ----------------------------------------------------------------------------- commands and flags

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_COMMAND = re.compile(r"python -m ([A-Za-z_][\w.]*)((?:[^`\n#]|\\\n)*)")


def documented_commands() -> list[tuple[str, str, list[str]]]:
  """``(page, module, [flag tokens])`` of every ``python -m <module> ...`` written in a page."""
  out = []
  for page, text in pages().items():
    for m in _COMMAND.finditer(text):
      module = m.group(1).rstrip(".")
      tokens = [t.strip("'\"") for t in m.group(2).replace("\\\n", " ").split()]
      out.append((page, module, [t for t in tokens if t.startswith("--")]))
  return out


def flag_name(token: str) -> str | None:
  """``--name=value`` -> ``name``; ``None`` for a placeholder (``--config.<field>=value``)."""
  name = token[2:].split("=", 1)[0]
  return None if not name or "<" in name or "[" in name else name


def uses_flag_parser(module: str) -> bool:
  """Whether ``module``'s source parses flags (absl or argparse), so ``--help`` prints and exits."""
  spec = importlib.util.find_spec(module)
  with open(spec.origin, encoding="utf-8") as f:
    text = f.read()
  return "absl" in text or "argparse" in text or "experiments import cli" in text


@functools.lru_cache(maxsize=None)
def config_fields() -> frozenset[str]:
  """Every ``a.b`` field path of every dataset's config at every preset."""
  from experiments.configs import get_config  # pylint: disable=import-outside-toplevel
  from crp_jax.runner.config import DATASETS, PRESETS  # pylint: disable=import-outside-toplevel
  out = set()
  for d in DATASETS:
    for p in PRESETS:
      try:
        config = get_config(d, p)
      except ValueError:   # a preset only some datasets have
        continue
      out |= set(hooks()._flatten(config.to_dict()))  # pylint: disable=protected-access
  return frozenset(out)


def check_flags(module: str, tokens: list[str]) -> list[str]:
  """The problems of ``tokens`` (``--flag[=value]``) as flags of ``python -m module``; [] if none."""
  names = [n for n in map(flag_name, tokens) if n]
  if not names:
    return []
  if not uses_flag_parser(module):
    return [f"python -m {module} parses no flags, but the page gives {', '.join(tokens)}"]
  defined = hooks().parse_flags(hooks().command_help(module))
  problems = []
  for name in names:
    if name.startswith("config."):
      if "config" not in defined:
        problems.append(f"python -m {module} has no --config, but the page gives --{name}")
      elif name[len("config."):] not in config_fields():
        problems.append(f"--{name}: no such config field")
    elif name not in defined:
      problems.append(f"python -m {module} defines no --{name}")
  return problems


def test_documented_commands():
  commands = documented_commands()
  assert any(m == "experiments.run" for _, m, _ in commands)
  missing = sorted({f"{page}: python -m {m}" for page, m, _ in commands if importlib.util.find_spec(m) is None})
  assert not missing, f"documented modules that do not exist: {missing}"
  with_flags = sorted({m for _, m, tokens in commands if any(map(flag_name, tokens)) and uses_flag_parser(m)})
  hooks().prefetch_help(with_flags)
  problems = [f"{page}: {p}" for page, m, tokens in commands for p in check_flags(m, tokens)]
  assert not problems, "\n".join(problems)


def test_check_flags_catches_a_wrong_flag():
  assert check_flags("experiments.run", ["--preset=paper", "--config.epochs=2"]) == []
  assert check_flags("experiments.run", ["--no_such_flag=1"]) == ["python -m experiments.run defines no --no_such_flag"]
  assert check_flags("experiments.run", ["--config.no_such_field=1"]) == ["--config.no_such_field: no such config field"]


# ----------------------------------------------------------------------------- numbers and their sources

#: A result-like number: a percentage, a ratio, a duration, a size, a rate, or a decimal with two or more decimals.
_RESULT = re.compile(
    r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:%|×)"
    r"|(?<![\w.])\d[\d,]*(?:\.\d+)? ?(?:s|min|h|GiB|MiB|img/s|TFLOP/s|forwards/s|ulps)(?![\w/])"
    r"|(?<![\w.])\d+\.\d{2,}(?![\w.])")
_CODE = re.compile(r"`[^`]*`")
_PATH = re.compile(r"`([\w./=-]+\.(?:md|txt|json|png|py|sh))`")


def blocks(text: str) -> list[str]:
  """A page's paragraphs, each table joined with the paragraphs just before and after it (caption, source)."""
  text = _FENCE.sub("", text)
  raw = [b for b in re.split(r"\n\s*\n", text) if b.strip()]
  out, i = [], 0
  while i < len(raw):
    if raw[i].lstrip().startswith("|"):
      start = len(out) - 1 if out and not out[-1].lstrip().startswith("|") else len(out)
      merged = "\n".join(out[start:] + [raw[i]] + raw[i + 1:i + 2])
      del out[start:]
      out.append(merged)
      i += 2
    else:
      out.append(raw[i])
      i += 1
  return out


def has_source(block: str) -> bool:
  if re.search(r"python -m |bash |pytest", block):
    return True
  return any(p in tracked_files() for p in _PATH.findall(block))


def unsourced_numbers(text: str) -> list[str]:
  """The blocks of ``text`` with a result-like number and no source, shortened."""
  out = []
  for block in blocks(text):
    if "<!-- generated:" in block:
      continue
    numbers = _RESULT.findall(_CODE.sub("", block))
    if numbers and not has_source(block):
      out.append(f"{numbers[:3]} in: {block[:120]!r}")
  return out


_DECIMAL = re.compile(r"(?<![\w.])\d[\d,]*\.\d{2,}(?![\w.])")
_RESULT_FILE = re.compile(r"`((?:results|benchmarks)/[\w./=-]+\.(?:md|txt|json))`")


def misquoted_numbers(text: str, root: str = ROOT) -> list[str]:
  """Decimals (two or more places) of a block that cites result files but appear in none of them."""
  out = []
  for block in blocks(text):
    cited = [p for p in _RESULT_FILE.findall(block) if os.path.exists(os.path.join(root, p))]
    if not cited:
      continue
    sources = ""
    for p in cited:
      with open(os.path.join(root, p), encoding="utf-8") as f:
        sources += f.read().replace(",", "")
    for number in _DECIMAL.findall(_CODE.sub("", block)):
      if number.replace(",", "") not in sources:
        out.append(f"{number} is in none of {cited}: {block[:100]!r}")
  return out


def test_numbers_have_sources():
  problems = [f"{page}: {p}" for page, text in pages().items() for p in unsourced_numbers(text)]
  assert not problems, "\n".join(problems)


def test_quoted_numbers_are_in_their_sources():
  problems = [f"{page}: {p}" for page, text in pages().items() for p in misquoted_numbers(text)]
  assert not problems, "\n".join(problems)


def test_number_check_sees_a_number_without_source(tmp_path):
  assert unsourced_numbers("It ran at 2,614.7 img/s.")
  assert unsourced_numbers("| a | 98.20 |\n|---|---|\n| b | 1.52× |")
  assert not unsourced_numbers("It ran at 2,614.7 img/s (`python -m benchmarks.run`).")
  assert not unsourced_numbers("| a | 98.20 |\n|---|---|\n\nSource: `results/table1/mnist5k-small/table.md`.")
  assert not unsourced_numbers("K = 10 draws of U(−0.3, 0.3), Eq. 8, Table 3.")
  (tmp_path / "results").mkdir()
  (tmp_path / "results" / "t.md").write_text("| FGSM | 19.80 ± 1.92 |\n")
  assert misquoted_numbers("FGSM leaves 12.34% (`results/t.md`).", root=str(tmp_path))
  assert not misquoted_numbers("FGSM leaves 19.80 ± 1.92 (`results/t.md`).", root=str(tmp_path))


def test_referenced_files_are_committed():
  missing = sorted({f"{page}: {p}" for page, text in pages().items() for p in _PATH.findall(text)
                    if "/" in p and p not in tracked_files() and not os.path.exists(os.path.join(ROOT, p))})
  assert not missing, missing


# ----------------------------------------------------------------------------- no journal

_JOURNAL = {
    "an issue number": re.compile(r"\bissues?\s*#?\d+|(?<![\w/&])#\d{1,5}\b", re.I),
    "a commit hash": re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b"),
    "a date of work": re.compile(r"\b20\d\d-\d\d-\d\d\b"),
    "words about the session": re.compile(r"this session|was lent|no GPU was|at hand|today|yesterday", re.I),
}


def test_no_journal():
  texts = dict(pages())
  texts["generated findings"] = hooks().findings_section()
  problems = []
  for where, text in texts.items():
    for what, pattern in _JOURNAL.items():
      if where == "generated findings" and what in ("a commit hash", "a date of work"):
        continue   # the results' own provenance lines; the pages themselves carry neither
      for m in pattern.finditer(text):
        problems.append(f"{where}: {what}: {text[max(0, m.start() - 40):m.end() + 20]!r}")
  assert not problems, "\n".join(problems)


def test_benchmark_results_have_no_journal():
  """``benchmarks/results.md`` keeps the current tables and their reasoning: a date only as a date of measurement."""
  problems = []
  for rel in hooks().BENCHMARK_FILES:
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
      text = f.read()
    for what, pattern in _JOURNAL.items():
      for m in pattern.finditer(text):
        if what == "a date of work" and text[max(0, m.start() - 9):m.start()] == "measured ":
          continue
        problems.append(f"{rel}: {what}: {text[max(0, m.start() - 40):m.end() + 20]!r}")
  assert not problems, "\n".join(problems)


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q"]))
