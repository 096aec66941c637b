"""MkDocs hook: the generated parts of the documentation site.

A page asks for a generated section with a marker line, ``<!-- generated: NAME -->``;
:func:`on_page_markdown` replaces it at build time. Nothing here is copied
by hand, so the site cannot drift from the code or from ``results/``:

* ``cli``: every flag of every command, parsed from the command's own
  ``python -m experiments.<cmd> --helpfull``;
* ``config``: every config field, its default and its value in each preset,
  read from :mod:`experiments.configs`;
* ``studies``: one command per table or figure, from :mod:`studies.registry`;
* ``cost``: the cost of each study at ``--preset=paper``, from the study's
  runs, the throughput measured in ``benchmarks/results-gpu.md`` and the
  FLOP count of :mod:`benchmarks._flops`;
* ``findings``: every ``results/<study>/<setting>/table.md``, the positive
  control's report and the certification tables, with their figures.

``tests/test_docs.py`` imports the helpers below (``command_help``,
``parse_flags``) to check the commands written in the pages.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import html
import math
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("run", "evaluate", "certify", "study")
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


# ----------------------------------------------------------------------------- the commands' flags

def _source_digest() -> str:
  """A digest of the sources that define the commands' flags and configs (the help cache's key)."""
  h = hashlib.sha256()
  for folder in ("experiments", "tools", "benchmarks", "examples", os.path.join("crp_jax", "runner")):
    for base, _, names in sorted(os.walk(os.path.join(ROOT, folder))):
      for name in sorted(names):
        if name.endswith(".py"):
          with open(os.path.join(base, name), "rb") as f:
            h.update(name.encode() + f.read())
  return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def command_help(module: str) -> str:
  """The text of ``python -m <module> --helpfull`` (else ``--help``), cached on disk by source digest.

  Raises ``RuntimeError`` with the command's stderr when neither exits 0.
  """
  cache = os.path.join(tempfile.gettempdir(), f"crp_jax-docs-{os.getuid()}", _source_digest())
  path = os.path.join(cache, module + ".txt")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  env = dict(os.environ, CRP_PLAIN_PROCESS="1", CRP_COMPILATION_CACHE="", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  err = ""
  for flag in ("--helpfull", "--help"):
    p = subprocess.run([sys.executable, "-m", module, flag], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    # absl's own --helpfull exits 1 after printing; a help that lists flags is what counts.
    if (p.returncode == 0 and p.stdout.strip()) or (p.returncode == 1 and parse_flags(p.stdout)):
      os.makedirs(cache, exist_ok=True)
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(p.stdout)
      os.replace(path + ".tmp", path)
      return p.stdout
    err = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit {p.returncode}"]
  raise RuntimeError(f"python -m {module} --helpfull failed: {err[0]}")


def prefetch_help(modules) -> None:
  """Runs :func:`command_help` for several modules at once (two at a time: the help imports JAX)."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    list(pool.map(command_help, modules))


_ENTRY = re.compile(r"^  (?:-\S,)?--(\[no\])?([A-Za-z_][\w.-]*)(?::\s*(.*))?$")
_ARGPARSE = re.compile(r"^\s+(?:-\w, )?--([A-Za-z_][\w-]*)")


def parse_flags(text: str) -> dict[str, dict[str, Any]]:
  """``{name: {"help", "default", "section", "negatable"}}`` of an absl ``--helpfull`` (or argparse) text.

  absl lists flags under a line naming the module that defines them
  (``/path/experiments/run.py:``, ``experiments.cli:``); argparse lists
  ``--name`` at the start of indented lines.
  """
  out: dict[str, dict[str, Any]] = {}
  section, current = "", None
  for line in text.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith(":"):
      section, current = line.rstrip()[:-1], None
      continue
    m = _ENTRY.match(line)
    if m:
      current = {"help": m.group(3) or "", "default": None, "section": section, "negatable": bool(m.group(1)),
                 "notes": []}
      out[m.group(2)] = current
      continue
    if current is not None and line.startswith("    "):
      part = line.strip()
      if part.startswith("(default: "):
        current["default"] = part[len("(default: "):].rstrip(")")
        current["notes"].append("__default__")
      elif part.startswith("(") and part.endswith(")") and current["notes"]:
        current["notes"].append(part[1:-1])
      elif not current["notes"]:
        current["help"] += " " + part
      continue
    m = _ARGPARSE.match(line)
    if m and section != "absl":
      out.setdefault(m.group(1), {"help": "", "default": None, "section": "argparse", "negatable": False,
                                  "notes": []})
  return out


def own_flags(module: str) -> dict[str, dict[str, Any]]:
  """The flags ``module`` itself defines (its file's and ``experiments.cli``'s), not absl's or JAX's."""
  own = module.rsplit(".", 1)[-1] + ".py"
  return {name: f for name, f in parse_flags(command_help(module)).items()
          if f["section"].endswith(os.sep + own) or f["section"] in ("experiments.cli", "argparse")}


def _usage(text: str) -> str:
  return text.split("\nflags:\n", 1)[0].strip()


def _cell(text: str) -> str:
  """``text`` for one Markdown table cell: HTML escaped outside `code` spans, no ``|`` or newline."""
  parts = re.split(r"(`[^`]*`)", text.replace("\n", " "))
  return "".join(p if p.startswith("`") else html.escape(p, quote=False).replace("[", "\\[").replace("]", "\\]")
                 for p in parts).replace("|", "\\|")


def cli_section() -> str:
  """Every command's usage and a table of its flags."""
  prefetch_help([f"experiments.{c}" for c in COMMANDS])
  parts = []
  for cmd in COMMANDS:
    module = f"experiments.{cmd}"
    usage = _usage(command_help(module))
    first, _, rest = usage.partition("\n")
    parts += [f"### `python -m {module}`", "", _cell(first.replace("``", "`")).replace("\\|", "|"), "",
              "```text", rest.strip("\n").replace("``", ""), "```", "",
              "| Flag | Default | What it does |", "|---|---|---|"]
    for name, f in sorted(own_flags(module).items()):
      shown = f"--[no]{name}" if f["negatable"] else f"--{name}"
      if name == "config":   # its help ends with the whole config as YAML: the fields table shows it
        what = _cell(f["help"].split(" its fields:")[0].strip().rstrip(";")) + (
            "; `--config=path.py[:arg]` loads your own file's `get_config(arg)`. Every field: "
            "[Config fields](#config-fields).")
        default = ""
      else:
        what = _cell(f["help"].strip())
        extra = [n for n in f["notes"] if n != "__default__"]
        if extra:
          what += " (" + "; ".join(_cell(n) for n in extra) + ")"
        default = "" if f["default"] in (None, "", "''") else f"`{f['default'].strip(chr(39))}`"
      parts.append(f"| `{shown}` | {default} | {what} |")
    parts += ["", "Every command also takes absl's standard flags (`--flagfile`, `--verbosity`, "
              "`--helpfull`, ...); `--helpfull` lists them.", ""]
  return "\n".join(parts)


# ----------------------------------------------------------------------------- config fields

def _config_comments() -> dict[str, str]:
  """``{field path: comment}`` from the ``# ...`` comments of :mod:`crp_jax.runner.config`'s schema."""
  with open(os.path.join(ROOT, "crp_jax", "runner", "config.py"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  scopes = {"base_config": "", "eval_config": "eval.", "certify_config": "eval.certify.",
            "adversary_config": "adversary.", "flatness_config": "eval.flatness."}
  out, pending, prefix = {}, [], None
  for line in lines:
    s = line.strip()
    if line.startswith("def "):
      prefix, pending = scopes.get(line[4:].split("(")[0]), []
      continue
    if s.startswith("#") and not s.startswith("#:"):
      pending.append(s.lstrip("# ").strip())
      continue
    m = re.match(r"(\w+)\.(\w+) = [^#]*?(?:#\s*(.*))?$", s)
    if m and prefix is not None:
      note = " ".join(pending + ([m.group(3)] if m.group(3) else []))
      if note:
        out[prefix + m.group(2)] = note
    pending = []
  return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def _value(v: Any) -> str:
  if isinstance(v, float):
    for denom in (255,):
      if v and abs(v * denom - round(v * denom)) < 1e-9 and round(v * denom) < 64:
        return f"{round(v * denom)}/{denom}"
    return f"{v:.4g}"
  if isinstance(v, tuple):
    return "(" + ", ".join(_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  if v == "":
    return "''"
  return str(v)


def config_section() -> str:
  """Every config field with its schema default and its value at each dataset's presets."""
  from crp_jax.runner import config as schema  # pylint: disable=import-outside-toplevel
  from experiments.configs import get_config  # pylint: disable=import-outside-toplevel
  columns = [("mnist5k", "small"), ("mnist5k", "control"), ("mnist5k", "control_paper"), ("mnist", "paper"),
             ("svhn", "paper"), ("cifar10", "paper")]
  columns += [("cifar10", p) for p in schema.PRESETS if p not in ("small", "paper", "control", "control_paper")]
  base = _flatten(schema.base_config().to_dict())
  values = [_flatten(get_config(d, p).to_dict()) for d, p in columns]
  comments = _config_comments()
  head = "| Field | Schema default | " + " | ".join(f"{d} `{p}`" for d, p in columns) + " | Notes |"
  rows = [head, "|---" * (len(columns) + 3) + "|"]
  for field in base:
    cells = []
    for v in values:
      shown = _value(v.get(field))
      cells.append(f"**{_cell(shown)}**" if v.get(field) != base[field] else _cell(shown))
    rows.append(f"| `{field}` | {_cell(_value(base[field]))} | " + " | ".join(cells)
                + f" | {_cell(comments.get(field, ''))} |")
  return "\n".join(rows) + ("\n\nBold: the preset changes the schema's default. Generated from "
                            "`crp_jax/runner/config.py` and `experiments/configs/<dataset>.py`.\n")


# ----------------------------------------------------------------------------- studies and their cost

#: Train and test split sizes (TFDS' ``mnist``, ``svhn_cropped``, ``cifar10``; mnist5k's own split).
SPLITS = {"mnist5k": (4_000, 1_000), "mnist": (60_000, 10_000), "svhn": (73_257, 26_032),
          "cifar10": (50_000, 10_000)}
RESULTS_GPU = "benchmarks/results-gpu.md"
BF16_ADVICE = {
    "lenet": "keep f32: LeNet is too small to gain (bf16 not measured)",
    "resnet18": "`--config.dtype=bfloat16` is not measured for ResNet-18; check one seed's clean accuracy "
                "against f32 first",
    "wrn28_10": "the hours assume `--config.dtype=bfloat16` (parameters stay f32), the dtype measured; the "
                "preset's f32 is not measured",
}

def studies_section() -> str:
  """One command per table or figure, from the registry."""
  from studies.registry import STUDIES  # pylint: disable=import-outside-toplevel
  rows = ["| Study | What it reproduces | Default dataset | Command (the paper's settings) |", "|---|---|---|---|"]
  for name, s in STUDIES.items():
    command = (f"`python -m experiments.study --study={name} --preset=paper`" if not s.waits_for
               else "not built yet: " + _cell(s.waits_for.split(":")[0]))
    rows.append(f"| `{name}` | {_cell(s.title)} | {s.dataset} | {command} |")
  return "\n".join(rows) + "\n\nGenerated from `studies/registry.py` (`python -m experiments.study --list`).\n"


def _measured_throughput() -> dict[str, tuple[float, str]]:
  """``{model: (img/s, dtype)}`` of the train-step rows of ``benchmarks/results-gpu.md``."""
  out = {}
  if not os.path.exists(os.path.join(ROOT, RESULTS_GPU)):
    return out
  with open(os.path.join(ROOT, RESULTS_GPU), encoding="utf-8") as f:
    text = f.read()
  for model, row in (("lenet", "lenet"), ("resnet18", "resnet18"), ("wrn28_10", "wrn")):
    m = re.search(rf"^\| {row} \| (.*?) \| ([\d,.]+) img/s", text, re.M)
    if m:
      dtype = "bfloat16" if "bf16" in m.group(1) else "float32"
      out[model] = (float(m.group(2).replace(",", "")), dtype)
  return out


def _train_images(c) -> int:
  from crp_jax import extended_set  # pylint: disable=import-outside-toplevel
  n = c.train_subset or SPLITS[c.dataset][0]
  perturbed, clean = extended_set.layout(c.method, c.num_perturbations, c.include_clean, c.objective)
  return c.epochs * n * (perturbed + int(clean))


def _step_cost(c) -> int:
  """A training image's cost in plain training steps: PGD-AT and TRADES run their inner attack first."""
  from crp_jax.runner.config import ADVERSARIAL_METHODS  # pylint: disable=import-outside-toplevel
  return 1 + c.adversary.steps if c.method in ADVERSARIAL_METHODS else 1


def _eval_forwards(c) -> float:
  """Forward-pass equivalents per attacked example if every attack runs its whole budget (an upper bound).

  A gradient step costs 3 forward passes, a Square or noise query 1. Fields
  a config lacks count as 0, so a renamed field lowers the bound rather than
  breaking the build.
  """
  e = c.eval
  g = lambda name, default=0: e.get(name, default)  # pylint: disable=unnecessary-lambda-assignment
  pgd = sum(g("pgd_steps", ()))
  grad_steps = 1 + pgd * g("restarts", 1) + (g("extra_step_size", 0) > 0) * pgd
  queries = 0
  if g("strong", False):
    grad_steps += g("apgd_steps") * (1 + g("num_targets")) + sum(g("sweep_steps", ())) * g("sweep_restarts", 1)
    grad_steps += sum(g("sweep_apgd_steps", ())) + len(g("eps_grid", ())) * g("eps_sweep_steps")
    grad_steps += g("unbounded_steps") + (g("fab_steps") * g("num_targets") if g("autoattack", "") else 0)
    queries = g("square_queries") + g("noise_samples")
  return 3 * grad_steps + queries


@functools.lru_cache(maxsize=None)
def _model_costs(model: str, shape: tuple[int, ...]) -> tuple[float, int, int]:
  """``(forward FLOPs per image, parameters, conv-output elements per image)``, traced, nothing computed."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from benchmarks import _flops  # pylint: disable=import-outside-toplevel
  from crp_jax.models import get_model  # pylint: disable=import-outside-toplevel
  m = get_model(model)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  variables = jax.eval_shape(m.init, jax.random.key(0), x)
  params = sum(math.prod(a.shape) for a in jax.tree.leaves(variables["params"]))
  jaxpr = jax.make_jaxpr(lambda v, x: m.apply(v, x, train=False))(variables, x).jaxpr

  def conv_out(jp) -> int:
    total = 0
    for eqn in jp.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        total += math.prod(eqn.outvars[0].aval.shape)
      for inner in _flops._jaxprs(eqn.params):  # pylint: disable=protected-access
        total += conv_out(inner)
    return total
  return _flops.forward_flops(m, shape), params, conv_out(jaxpr)


def _hours(seconds: float) -> str:
  h = seconds / 3600
  return f"{h:,.0f}" if h >= 10 else f"{h:.1f}" if h >= 0.1 else "< 0.1"


def cost_section() -> str:
  """The cost table of every built study at ``--preset=paper`` with 5 seeds."""
  from experiments.configs import study_config  # pylint: disable=import-outside-toplevel
  from studies import engine  # pylint: disable=import-outside-toplevel
  from studies.registry import STUDIES  # pylint: disable=import-outside-toplevel
  measured = _measured_throughput()
  wrn_flops = 3 * _model_costs("wrn28_10", (32, 32, 3))[0]
  peak = 989.4e12   # H200 dense bf16, the peak benchmarks/_flops.py uses
  wrn_mfu = measured["wrn28_10"][0] * wrn_flops / peak if "wrn28_10" in measured else 0.315
  rows = ["| Study | Runs | Model | Training images | Throughput (one H200) | Training hours, 1 GPU | "
          "Training hours, 8 GPUs | Evaluation, upper bound from the attack budgets | Peak memory, estimate | bf16 |",
          "|---" * 10 + "|"]
  for name, s in STUDIES.items():
    if s.waits_for:
      continue
    base = study_config(s.dataset, "paper")
    runs = engine.study_runs(s, base, 5)
    unique = {engine.run_name(r.config): r.config for r in runs}
    configs = list(unique.values())
    c0 = configs[0]
    shape = (28, 28, 1) if SPLITS[c0.dataset][0] == 60_000 else (32, 32, 3)
    flops, params, conv_elems = _model_costs(c0.model, shape)
    images = sum(_train_images(c) for c in configs)
    if c0.model in measured:
      rate, dtype = measured[c0.model]
      source = f"{rate:,.0f} img/s {'bf16' if dtype == 'bfloat16' else 'f32'}, measured"
    else:
      rate = wrn_mfu * peak / (3 * flops)
      source = f"{rate:,.0f} img/s, estimate from FLOPs"
    per_run = [_train_images(c) * _step_cost(c) / rate for c in configs]
    eight = sum(sorted(per_run, reverse=True)[i] for i in range(0, len(per_run), 8))
    attacked = c0.eval.attack_subset or SPLITS[c0.dataset][1]
    eval_s = len(configs) * attacked * _eval_forwards(c0) / 3 / rate
    batch = c0.batch_size
    memory = params * 16 + 3 * conv_elems * batch * 4
    bf16 = BF16_ADVICE[c0.model]
    if c0.model == "resnet18" and c0.model in measured and measured[c0.model][1] == "float32":
      bf16_rate = wrn_mfu * peak / (3 * flops)
      bf16 += (f"; estimate from FLOPs at WRN-28-10's MFU: {_hours(images / bf16_rate)} h on 1 GPU "
               "(optimistic: its convolutions are smaller)")
    rows.append(f"| `{name}` | {len(configs)} | {c0.model} | {images:.2e} | {source} | {_hours(sum(per_run))} | "
                f"{_hours(eight)} | {_hours(eval_s)} h | {memory / 2**30:.1f} GiB | {bf16} |")
  return "\n".join(rows) + f"""

How each column is computed (all at `--preset=paper`, the default five seeds, `python -m experiments.study --study=NAME --preset=paper`):

- **Runs**: the study's distinct runs (`studies/registry.py`); a run two studies share (Table 1's uniform
  runs are Table 4's K = 10 and Table 7's G) is trained once, so the studies' hours do not add up.
- **Training images**: epochs × training split × (K perturbed copies + the clean one) per run, summed.
  A PGD-AT or TRADES run (Tables 8–10) costs 1 + `adversary.steps` plain steps per image, since its
  inner attack runs a forward and backward pass per step; the hours count that.
- **Throughput**: the train-step rows of `{RESULTS_GPU}` (one H200, batch 128; command
  `bash benchmarks/gpu.sh`), in the dtype that row measured. A model without a row is estimated from its
  FLOPs (`benchmarks/_flops.py`: 3 × the forward pass) at the model FLOPs utilisation WRN-28-10 measured
  there ({wrn_mfu:.1%} of {peak / 1e12:.0f} TFLOP/s).
- **Training hours, 8 GPUs**: one run per GPU (`--shard=i/8`, no communication), so the longest run of each
  group of eight; a data-parallel run over eight GPUs would at best divide the 1-GPU hours by 8.
- **Evaluation, upper bound**: every attack of the run's evaluation plan at its whole budget on every
  attacked example (gradient steps cost 3 forward passes, Square and noise queries 1), at the training
  throughput. Attacks stop once every example of a batch is broken, so on a non-robust model the
  evaluation costs a fraction of this.
- **Peak memory, estimate** (one training step, batch 128, f32): 16 bytes per parameter (f32 weights,
  gradients, two Adam moments) plus three float32 feature maps per convolution (its output,
  BatchNorm's, ReLU's) for the batch; bf16 halves the feature maps. Not measured on a GPU. XLA's buffer
  plan of the same f32 step compiled for a CPU (`python docs/memory_plan.py`, jax 0.10.2) is 0.08, 1.05
  and 5.02 GiB for LeNet, ResNet-18 and WRN-28-10, within a quarter of the estimate. JAX preallocates
  75% of a GPU's memory by default, so `nvidia-smi` shows that, not the step's need.
"""


# ----------------------------------------------------------------------------- findings

def _findings_sources() -> list[tuple[str, str]]:
  """``(title, path relative to ROOT)`` of every generated finding, the studies in the registry's order."""
  from studies.registry import STUDIES  # pylint: disable=import-outside-toplevel
  out = []
  results = os.path.join(ROOT, "results")
  for name in STUDIES:
    folder = os.path.join(results, name)
    if os.path.isdir(folder):
      for setting in sorted(os.listdir(folder)):
        if os.path.exists(os.path.join(folder, setting, "table.md")):
          out.append((f"{name}, {setting}", f"results/{name}/{setting}/table.md"))
  for base, _, names in sorted(os.walk(os.path.join(results, "control"))):
    if "report.md" in names:
      rel = os.path.relpath(os.path.join(base, "report.md"), ROOT)
      out.append((f"the positive control, {os.path.basename(base)}", rel))
  certify = os.path.join(results, "certify")
  if os.path.isdir(certify):
    for name in sorted(os.listdir(certify)):
      if name.startswith("certify-") and name.endswith(".md"):
        out.append((f"certification, {name[len('certify-'):-3]}", f"results/certify/{name}"))
  return out


_JOURNAL = re.compile(r"\bissues?\s*#?\d+|(?<![\w/&])#\d{1,5}\b|\bissue\b.*#\d", re.I)


def _image_uri(rel_png: str) -> str:
  return "findings/" + rel_png.replace("results/", "", 1).replace("=", "_")


def findings_section() -> str:
  """Every committed result table, its headings demoted under one heading per file."""
  parts = []
  for title, rel in _findings_sources():
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
      text = f.read()
    folder = os.path.dirname(rel)
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
      heading, lines = lines[0][2:].strip(), lines[1:]
      if rel.startswith("results/control/"):
        title = f"The positive control: {heading}"
      elif rel.startswith("results/certify/"):
        title = heading
      else:
        title = f"{heading} ({os.path.basename(folder)})"
    body = []
    for line in lines:
      if _JOURNAL.search(line):   # a stale note that names an issue: the history lives in git
        continue
      if line.startswith("#"):
        line = "###" + line.lstrip("#").rstrip() if line.startswith("# ") else "#" + line
      line = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)",
                    lambda m: f"![{m.group(1)}]({_image_uri(folder + '/' + m.group(2))})", line)
      body.append(line)
    parts += [f"## {title}", "", f"Source: `{rel}`.", "", "\n".join(body).strip(), ""]
  return "\n".join(parts)


def _finding_pngs() -> list[str]:
  out = []
  for _, rel in _findings_sources():
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
      for m in re.finditer(r"!\[[^\]]*\]\(([^)/]+\.png)\)", f.read()):
        out.append(os.path.dirname(rel) + "/" + m.group(1))
  return out


# ----------------------------------------------------------------------------- benchmarks

BENCHMARK_FILES = ("benchmarks/results.md", "benchmarks/results-gpu.md")
_BLOCK = re.compile(r"<!-- benchmarks.run: begin.*?-->\n(.*?)<!-- benchmarks.run: end -->", re.S)


def benchmarks_section() -> str:
  """The table ``python -m benchmarks.run`` generated in each results file (its command and machine inside)."""
  parts = []
  for rel in BENCHMARK_FILES:
    path = os.path.join(ROOT, rel)
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      m = _BLOCK.search(f.read())
    if not m:
      continue
    body = "\n".join("#" + line if line.startswith("#") else line for line in m.group(1).strip().splitlines())
    parts += [f"## `{rel}`", "", body, ""]
  return "\n".join(parts)


# ----------------------------------------------------------------------------- MkDocs events

SECTIONS = {"cli": cli_section, "config": config_section, "studies": studies_section, "cost": cost_section,
            "findings": findings_section, "benchmarks": benchmarks_section}


def on_config(config):
  """Makes the repository importable (MkDocs restores ``sys.path`` after loading this hook)."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  return config


def on_files(files, config):
  """Adds the findings' figures (they stay in ``results/``; the site gets a copy)."""
  from mkdocs.structure.files import File  # pylint: disable=import-outside-toplevel
  for rel in _finding_pngs():
    path = os.path.join(ROOT, rel)
    if os.path.exists(path):
      files.append(File.generated(config, _image_uri(rel), abs_src_path=path))
  return files


_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|data|attr|meth|obj|exc|const):<code>(~?)([^<]*)</code>")


def on_page_content(html_text, page, config, files):
  """Drops the Sphinx roles of the docstrings (``:func:`x``` renders as ``x``; ``~a.b`` as ``b``)."""
  return _ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>",
                   html_text)


def on_page_markdown(markdown, page, config, files):
  """Replaces each ``<!-- generated: NAME -->`` line with that section."""
  def replace(m):
    name = m.group(1)
    if name not in SECTIONS:
      raise ValueError(f"{page.file.src_uri}: unknown generated section {name!r}")
    return SECTIONS[name]()
  return MARKER.sub(replace, markdown)
