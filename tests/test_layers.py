"""The layering rule (README "Layout"), checked on the source: an import against it fails here.

* bottom — the ``records`` package: the run directory and ``summary.json``, prompt checkpoints, neuron files, the
  W&B config and names, figures. It imports no Lightning, transformers, datasets or W&B, and no project module
  outside ``records``.
* middle — the Lightning components: ``lightning_modules``, ``datamodules`` and ``callbacks``. They import
  ``records`` and modules of their own package or of an earlier one in :data:`MIDDLE_ORDER` (a callback may
  name the module class it observes; a model never imports a callback or a DataModule).
* top — the command layer ``skill_neurons``: imports anything; nothing else imports it.

Function-local imports of project modules are allowed only in the top layer (they keep a tool's start light);
below it, a function-local import would only hide a cycle. There are no cycles.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, subprocess_env

PACKAGES = ("records", "callbacks", "datamodules", "lightning_modules", "skill_neurons")
BOTTOM_PACKAGE = "records"
MIDDLE_ORDER = ("lightning_modules", "datamodules", "callbacks")
HEAVY = ("lightning", "pytorch_lightning", "wandb", "transformers", "datasets")  # never imported by the bottom layer


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(imported module, line, function-local?) for every import in a module."""
    found = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, local) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.append((child.module, child.lineno, local))
                # ``from package import module`` imports the module
                found.extend((f"{child.module}.{alias.name}", child.lineno, local) for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def layer(module: str) -> str:
    package = module.split(".")[0]
    return "top" if package == "skill_neurons" else "bottom" if package == BOTTOM_PACKAGE else "middle"


def violations(sources: dict[str, str]) -> list[str]:
    """Every import in ``sources`` ({module name: source}) that breaks the rule, and every import cycle."""
    found, graph = [], {}
    for module, source in sources.items():
        graph[module] = set()
        for target, line, local in project_imports(ast.parse(source)):
            top_name = target.split(".")[0]
            where = f"{module}:{line} imports {target}"
            if layer(module) == "bottom" and top_name in HEAVY:
                found.append(f"{where} (the bottom layer imports no Lightning, transformers, datasets or W&B)")
            if target not in sources:
                continue
            graph[module].add(target)
            mine, theirs = layer(module), layer(target)
            if local and mine != "top":
                found.append(f"{where} inside a function (below the command layer that only hides a cycle)")
            if theirs == "top" and mine != "top":
                found.append(f"{where} (nothing outside skill_neurons imports the command layer)")
            elif mine == "bottom" and theirs != "bottom":
                found.append(f"{where} (a bottom module imports only bottom modules)")
            elif mine == "middle" and theirs == "middle":
                own, other = module.split(".")[0], target.split(".")[0]
                if MIDDLE_ORDER.index(other) > MIDDLE_ORDER.index(own):
                    found.append(f"{where} ({own} comes before {other} in {MIDDLE_ORDER})")
    found.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (or a self-import)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return out


def project_sources(root: Path) -> dict[str, str]:
    return {module_name(path, root): path.read_text()
            for package in PACKAGES for path in sorted((root / package).rglob("*.py"))}


def test_the_source_follows_the_layering_rule():
    sources = project_sources(ROOT)
    assert {"records.summary", "skill_neurons.cli", "lightning_modules.prompt_tuning"} <= set(sources)
    assert violations(sources) == []


def test_the_checker_finds_each_kind_of_violation():
    bad = {
        "records.summary": "import transformers\nfrom callbacks import skill_neurons\n",  # bottom -> heavy, middle
        "callbacks.skill_neurons": "from skill_neurons.cli import main\n",  # middle -> top
        "lightning_modules.prompt_tuning": "def f():\n    from callbacks.suppression import X\n",  # later, local
        "callbacks.suppression": "from lightning_modules.prompt_tuning import M\n",
        "skill_neurons.cli": "",
        "records.files": "from records.figures import a\n",
        "records.figures": "from records.files import b\n",  # a cycle among bottom modules
        "lightning_modules.backbones": "from datamodules.tasks import T\n",  # a model imports a DataModule module
        "datamodules.tasks": "",
    }
    found = "\n".join(violations(bad))
    assert "records.summary:1 imports transformers (the bottom layer imports no Lightning, transformers" in found
    assert "records.summary:2 imports callbacks.skill_neurons (a bottom module imports only bottom" in found
    assert "callbacks.skill_neurons:1 imports skill_neurons.cli (nothing outside skill_neurons" in found
    assert "lightning_modules.prompt_tuning:2 imports callbacks.suppression inside a function" in found
    assert "(lightning_modules comes before callbacks" in found
    assert "import cycle: records.figures -> records.files" in found
    assert "lightning_modules.backbones:1 imports datamodules.tasks (lightning_modules comes before datamodules" in found
    assert "callbacks.suppression:1" not in found  # a callback may import the module class it observes


@pytest.mark.subprocess
def test_the_report_and_the_sweep_runner_import_without_lightning_transformers_or_datasets():
    """``skill-neurons report`` and ``sweep`` (also ``--status``) read JSON and safetensors: no Lightning side; nor
    does ``attack --help`` (its model side loads when an attack runs)."""
    code = ("import sys\n"
            "import skill_neurons.cli, skill_neurons.report.main, skill_neurons.sweep.command, skill_neurons.runs\n"
            "import skill_neurons.sweep.runner, skill_neurons.report.inputs, skill_neurons.attack.command\n"
            "print(','.join(sorted(m for m in ('lightning', 'transformers', 'datasets', 'wandb') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
