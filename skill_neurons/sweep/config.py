"""The sweep file: constants, W&B's sweep engine, the command a trial runs (rendered as ``wandb agent`` does)."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from records.errors import UserError
from records.files import atomic_write

STATE_FILE = "state.json"
MARKER_ENV = "SKILL_NEURONS_SWEEP_TRIAL"  # "<sweep id>/<run id>" in every trial process's environment
KILL_DELAY_S = 30.0  # SIGTERM -> SIGKILL, as wandb agent's default
DEFAULT_SWEEP_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # wandb agent's default
ARGS_MACROS = ("${args}", "${args_no_equals}", "${args_no_hyphens}", "${args_no_boolean_flags}", "${args_json}",
               "${args_json_file}", "${args_append_hydra}", "${args_override_hydra}")
METHODS = ("grid", "random", "bayes")
ENGINE_STATES = {"pending": "running", "running": "running", "finished": "finished", "failed": "failed",
                 "crashed": "crashed", "stopped": "killed"}
ENGINE_MISSING = ("W&B's sweep engine is not installed (PyPI package `sweeps`; this repository's sweeps/ folder "
                  "only holds YAML files) — install it with: pip install 'sweeps>=0.2.0,<0.3'")
SUMMARY_SECTIONS = ("fit_metrics", "validate_metrics", "test_metrics", "summary")


class SweepError(UserError):
    """A mistake in the sweep file, the options or the sweep directory; the message names the fix."""


# ----------------------------------------------------------------------------------------- the engine
def engine():
    """The PyPI ``sweeps`` package (not this repository's ``sweeps/`` folder of YAML files).

    A folder without ``__init__.py`` on ``sys.path`` (the repository root, when run from there) only becomes
    a namespace package if no regular package of that name is found anywhere on the path, so the installed
    engine always wins; getting the namespace package means the engine is missing.
    """
    try:
        with warnings.catch_warnings():  # sweeps 0.2 declares pydantic-v1 style config: harmless warnings
            warnings.simplefilter("ignore")
            import sweeps.run  # fails for the namespace package

            import sweeps
    except ImportError:
        raise SweepError(ENGINE_MISSING) from None
    if not hasattr(sweeps, "next_run") or not hasattr(sweeps, "stop_runs"):
        raise SweepError(ENGINE_MISSING)
    return sweeps


def plain(value: Any) -> Any:
    """numpy scalars/arrays (the engine's samples) -> plain Python, recursively, so they render and save."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


# ------------------------------------------------------------------------ rendering, as wandb agent
def _create_sweep_command_args(command: dict) -> dict[str, Any]:
    """A copy of ``wandb.sdk.launch.sweeps.utils.create_sweep_command_args`` (wandb 0.31), used only if
    that import fails; tests/test_sweeps.py checks that both give the same result."""
    flags, no_hyphens, no_booleans, no_equals, hydra_append, hydra_override = [], [], [], [], [], []
    flags_dict: dict[str, Any] = {}
    for param, config in command["args"].items():
        value = config["value"]
        flag = f"{param}={value}"
        flags.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{param}", str(value)]
        hydra_append.append("+" + flag)
        hydra_override.append("++" + flag)
        if isinstance(value, bool):
            if value:
                no_booleans.append("--" + param)
        else:
            no_booleans.append("--" + flag)
        flags_dict[param] = value
    return {"args": flags, "args_no_equals": no_equals, "args_no_hyphens": no_hyphens,
            "args_no_boolean_flags": no_booleans, "args_json": [json.dumps(flags_dict)], "args_dict": flags_dict,
            "args_append_hydra": hydra_append, "args_override_hydra": hydra_override}


def _create_sweep_command(command: list) -> list:
    """A copy of ``wandb.sdk.launch.sweeps.utils.create_sweep_command``: ``${envvar:NAME}`` -> $NAME."""
    import re

    pattern = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")
    for i, chunk in enumerate(command):
        if pattern.search(str(chunk)):
            for m in list(pattern.finditer(chunk))[::-1]:
                var = os.environ.get(m.group(1), m.group(1))
                command[i] = f"{command[i][: m.start()]}{var}{command[i][m.end():]}"
    return command


def _agent_helpers():
    try:
        from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args
    except ImportError:
        return _create_sweep_command, _create_sweep_command_args
    return create_sweep_command, create_sweep_command_args


def render_command(config: dict, params: dict[str, Any], args_json_file: str | os.PathLike = "") -> list[str]:
    """The argv ``wandb agent`` would start for ``params`` (``{key: value}``), macros filled in as it does.

    Mirrors ``wandb.wandb_agent.Agent._command_run``: ``${env}`` is ``/usr/bin/env``, ``${interpreter}`` is
    ``python``, ``${program}`` the sweep's program, ``${args}`` is ``--key=value`` with ``str(value)``
    (so ``True``, ``None``, ``[1, 2]``, ``1e-05``), and likewise for the other ``${args_*}`` forms.
    """
    create_sweep_command, create_sweep_command_args = _agent_helpers()
    command = create_sweep_command(list(config.get("command") or DEFAULT_SWEEP_COMMAND))
    sweep_vars: dict[str, Any] = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [config.get("program")]
    sweep_vars["args_json_file"] = [str(args_json_file)]
    if sys.platform != "win32":
        sweep_vars["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in command:
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += sweep_vars.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def save_param_file(path: Path, params: dict[str, Any]) -> None:
    """``WANDB_SWEEP_PARAM_PATH``: the trial's parameters in W&B's config-file format (wandb.init reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {k: {"value": v} for k, v in params.items()}  # as wandb's save_config_file_from_dict, atomically
    text = "wandb_version: 1" + ("\n\n" + yaml.safe_dump(values, sort_keys=False, allow_unicode=True) if values else "")
    atomic_write(path, lambda f: f.write(text))


# ------------------------------------------------------------------------------- the sweep file
def load_sweep_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a sweep YAML; every problem becomes one :class:`SweepError` that names the fix."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file '{path}' does not exist (the shipped ones are in sweeps/)")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise SweepError(f"{path} is not valid YAML{at}: {getattr(e, 'problem', None) or e} — fix the file") from None
    if not isinstance(config, dict):
        raise SweepError(f"{path} must be a mapping with method, metric, parameters and command "
                         "(see sweeps/quickstart.yaml)")
    check_sweep_config(config, str(path))
    return config


def check_sweep_config(config: dict[str, Any], name: str = "the sweep config") -> dict[str, Any]:
    """Validate against the engine's JSON schema; return the config with the engine's defaults filled in."""
    sweeps = engine()
    import jsonschema  # a dependency of the engine

    config = {k: v for k, v in config.items() if k != "run_cap"}  # W&B's server knows run_cap; the schema not
    method = config.get("method")
    if method not in METHODS:
        raise SweepError(f"unknown method {method!r} in {name} — use one of: {', '.join(METHODS)}")
    if not isinstance(config.get("parameters"), dict) or not config["parameters"]:
        raise SweepError(f"{name} has no parameters — add `parameters:` with at least one key (e.g. "
                         "model.learning_rate: {values: [0.01, 0.003]})")
    for key, spec in config["parameters"].items():
        if not isinstance(spec, dict):
            raise SweepError(f"parameter {key!r} in {name} must be a mapping such as {{values: [...]}}, "
                             f"{{value: x}} or {{min: a, max: b}}, not {spec!r}")
    try:
        violations = sweeps.schema_violations_from_proposed_config(config)
    except ValueError as e:
        violations = [str(e)]
    if violations:
        raise SweepError(f"{name} is not a valid W&B sweep config:\n  - " + "\n  - ".join(violations))
    if (method == "bayes" or "early_terminate" in config) and not config.get("metric"):
        what = "bayes search" if method == "bayes" else "early termination"
        raise SweepError(f"{what} needs a metric — add `metric: {{name: val/acc, goal: maximize}}` to {name}")
    command = [str(c) for c in config.get("command") or DEFAULT_SWEEP_COMMAND]
    if not any(c in ARGS_MACROS for c in command):
        raise SweepError(f"the command in {name} has no ${{args}}, so trials would not get the parameters — "
                         "put ${args} after the subcommand (… fit --config X ${args})")
    if "${program}" in command and not config.get("program"):
        raise SweepError(f"the command in {name} uses ${{program}} but there is no `program:` — add it")
    if any(c == "--runs_dir" or c.startswith("--runs_dir=") for c in command) or "runs_dir" in config["parameters"]:
        raise SweepError(f"{name} sets --runs_dir; leave it out — `skill-neurons sweep` puts each trial in "
                         "DIR/runs/<run id> (and `wandb agent` in runs/<run id>)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dict(sweeps.SweepConfig(config))
        except (ValueError, TypeError, KeyError, jsonschema.ValidationError) as e:
            raise SweepError(f"{name} is not a valid W&B sweep config: {e}") from None


