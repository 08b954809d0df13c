"""A task's evaluation sets: their names, the DataModule roles behind them, and the sets ``predict`` writes.

A set is named ``validation`` (the clean validation split), ``test`` (the labelled test split) or by an
adversarial set's name (``adv_sst2``, ``marker_typo``); its role in the DataModule is the name for the clean
splits and ``adv/<name>`` for adversarial sets. A name becomes a metric prefix and a file name
(``skill_neurons/<name>.safetensors``, ``predictions/<name>.csv``), so adversarial names must not clash with
the clean ones nor hold path characters (:func:`check_set_names`).
"""

from __future__ import annotations

import re

from datamodules.task_spec import SPLIT_ROLES, Source, TaskError, TaskSpec

CLEAN_EVAL = "validation"
CLEAN_SETS = ("validation", "test")  # the labelled clean splits an evaluation can read
SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def role_of(name: str) -> str:
    """``validation`` / ``test`` stay; an adversarial set ``name`` is the role ``adv/<name>``."""
    return name if name in CLEAN_SETS else f"adv/{name}"


def source_of(task: TaskSpec, role: str) -> Source:
    """Where the rows of an evaluation ``role`` come from: the task's split, or its adversarial set."""
    return task.adversarial[role[len("adv/"):]] if role.startswith("adv/") else task.splits[role]


def check_set_names(adversarial: dict) -> None:
    """Adversarial set names must not clash with the clean splits (their metrics and neuron files would overwrite
    the clean ones), with each other up to case (file names on case-insensitive disks), or hold path characters."""
    seen: dict[str, str] = {}
    for name in adversarial:
        if name.casefold() in SPLIT_ROLES:
            raise TaskError(f"adversarial set {name!r} has the name of a clean split ({', '.join(SPLIT_ROLES)}); its "
                            "results would replace the clean ones — rename it in data.extra_adversarial")
        if not SET_NAME.fullmatch(name):
            raise TaskError(f"adversarial set name {name!r}: use letters, digits, '_', '-' and '.' (it becomes the "
                            "file name skill_neurons/<name>.safetensors and the metric prefix adv/<name>/)")
        if name.casefold() in seen:
            raise TaskError(f"adversarial sets {seen[name.casefold()]!r} and {name!r} differ only in case; their "
                            "files would clash — rename one in data.extra_adversarial")
        seen[name.casefold()] = name


def predict_roles(task: TaskSpec, names: list[str] | None) -> list[str]:
    """The roles ``predict`` writes, in the order given: ``names`` (``None``: the clean validation set, then
    every adversarial set of ``task``, as ``validate`` evaluates them). Unknown or repeated names are refused
    with the sets there are (checked when the DataModule is made: no file is read, no run folder written)."""
    known = [s for s in CLEAN_SETS if s in task.splits] + list(task.adversarial)
    if names is None:
        return [CLEAN_EVAL, *(role_of(name) for name in task.adversarial)]
    if not names:
        raise TaskError(f"data.predict_sets=[] names no set — choose from {known} (or leave it unset for "
                        f"{[CLEAN_EVAL, *task.adversarial]})")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise TaskError(f"data.predict_sets names {unknown}, but task {task.name!r} has the evaluation sets {known} "
                        "— e.g. --data.predict_sets=[" + ", ".join(known) + "] (a set left out by data.adversarial "
                        "is not loaded)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise TaskError(f"data.predict_sets names {repeated} more than once — give each set once")
    return [role_of(name) for name in names]
