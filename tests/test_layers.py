"""The layering rule (README "Layout"), checked on the source: an import against it fails here.

* bottom — formats, tasks, FFN sites, statistics, backbones: :data:`BOTTOM`. They import no Lightning and no
  project module outside the bottom layer.
* middle — the Lightning components: every other module of ``lightning_modules``, ``datamodules`` and
  ``callbacks``. They import bottom modules and middle modules of their own package or of an earlier one in
  :data:`MIDDLE_ORDER` (a callback may name the module class it observes; a model never imports a callback).
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

PACKAGES = ("callbacks", "datamodules", "lightning_modules", "skill_neurons")
MIDDLE_ORDER = ("lightning_modules", "datamodules", "callbacks")
BOTTOM = {
    "callbacks", "callbacks.configuration", "callbacks.contracts", "callbacks.figure_style", "callbacks.neuron_files",
    "callbacks.neuron_statistics", "callbacks.progress", "callbacks.prompt_checkpoint", "callbacks.run_files",
    "callbacks.run_status", "callbacks.sweep_trial", "callbacks.wandb_config",
    "datamodules", "datamodules.eval_sets", "datamodules.synthetic", "datamodules.task_spec", "datamodules.tasks",
    "lightning_modules", "lightning_modules.backbones", "lightning_modules.ffn",
}
NO_LIGHTNING = ("lightning", "pytorch_lightning", "wandb")  # third-party packages the bottom layer never imports


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
    if module.split(".")[0] == "skill_neurons":
        return "top"
    return "bottom" if module in BOTTOM else "middle"


def violations(sources: dict[str, str]) -> list[str]:
    """Every import in ``sources`` ({module name: source}) that breaks the rule, and every import cycle."""
    found, graph = [], {}
    for module, source in sources.items():
        graph[module] = set()
        for target, line, local in project_imports(ast.parse(source)):
            top_name = target.split(".")[0]
            where = f"{module}:{line} imports {target}"
            if layer(module) == "bottom" and top_name in NO_LIGHTNING:
                found.append(f"{where} (the bottom layer imports no Lightning/W&B)")
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
    assert {"callbacks.run_files", "skill_neurons.cli", "lightning_modules.prompt_tuning"} <= set(sources)
    assert violations(sources) == []


def test_the_checker_finds_each_kind_of_violation():
    bad = {
        "callbacks.run_files": "import lightning\nfrom callbacks import skill_neurons\n",  # bottom -> Lightning, middle
        "callbacks.skill_neurons": "from skill_neurons.cli import main\n",  # middle -> top
        "lightning_modules.prompt_tuning": "def f():\n    from callbacks.suppression import X\n",  # later, local
        "callbacks.suppression": "from lightning_modules.prompt_tuning import M\n",
        "skill_neurons.cli": "",
        "datamodules.tasks": "from datamodules.synthetic import a\n",
        "datamodules.synthetic": "from datamodules.tasks import b\n",  # a cycle among bottom modules
    }
    found = "\n".join(violations(bad))
    assert "callbacks.run_files:1 imports lightning (the bottom layer imports no Lightning/W&B)" in found
    assert "callbacks.run_files:2 imports callbacks.skill_neurons (a bottom module imports only bottom" in found
    assert "callbacks.skill_neurons:1 imports skill_neurons.cli (nothing outside skill_neurons" in found
    assert "lightning_modules.prompt_tuning:2 imports callbacks.suppression inside a function" in found
    assert "(lightning_modules comes before callbacks" in found
    assert "import cycle: datamodules.synthetic -> datamodules.tasks" in found
    assert "callbacks.suppression:1" not in found  # a callback may import the module class it observes


@pytest.mark.subprocess
def test_the_report_and_the_sweep_runner_import_without_lightning_transformers_or_datasets():
    """``skill-neurons report`` and ``sweep`` (also ``--status``) read JSON and safetensors: no Lightning side."""
    code = ("import sys\n"
            "import skill_neurons.cli, skill_neurons.report.main, skill_neurons.sweep.command, skill_neurons.runs\n"
            "import skill_neurons.sweep.runner, skill_neurons.report.inputs\n"
            "print(','.join(sorted(m for m in ('lightning', 'transformers', 'datasets', 'wandb') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
