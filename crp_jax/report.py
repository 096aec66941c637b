"""Paper-style tables (markdown) of evaluation results, side by side per model."""

from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
  return "—" if x is None else f"{100 * x:.2f}"


def accuracy_table(results: dict[str, dict[str, Any]]) -> str:
  """A markdown table: one row per attack, one column per model.

  Args:
    results: model name -> its ``results.json`` dict (needs ``evaluation``).
  """
  names = list(results)
  first = results[names[0]]["evaluation"]
  rows = [("No attack (full test split)", [r["evaluation"]["clean_accuracy"] for r in results.values()])]
  for key, label in first["labels"].items():
    suffix = f" (n={first['num_attacked']})"
    rows.append((label + suffix, [r["evaluation"]["accuracy"].get(key) for r in results.values()]))
  head = "| Setting | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names) + "\n"
  return head + "".join(f"| {label} | " + " | ".join(_pct(v) for v in vals) + " |\n"
                        for label, vals in rows)


def describe_run(result: dict[str, Any]) -> str:
  """One line with the settings a table depends on."""
  c = result["config"]
  t = result["training"]
  train = (f"{c['method']}" if c["method"] == "standard" else
           f"{c['method']}: K={c['num_perturbations']} {c['distribution']} ε={c['perturbation_eps']:.4g}"
           f"{' + clean' if c['include_clean'] else ''}")
  return (f"{train}; {c['model']} on {c['dataset']}, {c['epochs']} epochs, {t['steps']} steps of "
          f"batch {c['batch_size']}, seed {c['seed']}, {t['seconds']:.0f} s")


def markdown_report(results: dict[str, dict[str, Any]], command: str) -> str:
  """The full ``report.md``: how it was made, the settings, and the table."""
  first = next(iter(results.values()))
  e = first["config"]["eval"]
  lines = [f"# Robustness report: {first['config']['dataset']}", "",
           f"Command: `{command}`", "",
           f"White-box attacks at L∞ ε = {e['eps']:.4g}; accuracy in %.", ""]
  lines += [f"- **{name}**: {describe_run(r)}" for name, r in results.items()]
  lines += ["", accuracy_table(results)]
  return "\n".join(lines)
