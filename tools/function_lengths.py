r"""The longest functions of the tree by code lines (no blank, comment or docstring lines).

  python -m tools.function_lengths [--top=15] [--roots=crp_jax,experiments,benchmarks,tools,reference]

The style guide asks for functions of about 50 code lines or fewer.
"""

from __future__ import annotations

import ast
import glob
import io
import os
import tokenize

from absl import app, flags

_TOP = flags.DEFINE_integer("top", 15, "How many functions to list.")
_ROOTS = flags.DEFINE_list("roots", ["crp_jax", "experiments", "benchmarks", "tools", "reference"],
                           "Folders to scan.")


def code_lines(source: str) -> set[int]:
  """Line numbers holding code: not blank, not only a comment, not a docstring."""
  lines = set()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                        tokenize.ENDMARKER):
      lines.update(range(tok.start[0], tok.end[0] + 1))
  tree = ast.parse(source)
  for node in ast.walk(tree):
    body = getattr(node, "body", None)
    if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
        getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
      lines -= set(range(body[0].lineno, body[0].end_lineno + 1))
  return lines


def functions(path: str) -> list[tuple[int, str]]:
  """``(code lines, "path:line name")`` of every function and method in ``path``."""
  source = open(path, encoding="utf-8").read()
  code = code_lines(source)
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      n = len([l for l in code if node.lineno <= l <= node.end_lineno])
      out.append((n, f"{path}:{node.lineno} {node.name}"))
  return out


def main(argv: list[str]) -> None:
  del argv
  paths = sorted(p for r in _ROOTS.value for p in glob.glob(os.path.join(r, "**", "*.py"), recursive=True))
  rows = sorted((f for p in paths for f in functions(p)), reverse=True)
  for n, where in rows[:_TOP.value]:
    print(f"{n:4d}  {where}")
  print(f"{len(rows)} functions in {len(paths)} files; {sum(n > 50 for n, _ in rows)} over 50 code lines")


if __name__ == "__main__":
  app.run(main)
