"""A task's evaluation sets: where their rows come from, which names are allowed, and the sets ``predict`` writes.

A set is a :class:`~records.eval_set.EvalSet`: ``validation``, ``test`` or an adversarial set's name
(``adv_sst2``, ``marker_typo``). A name becomes a metric prefix and a file name
(``skill_neurons/<name>.safetensors``, ``predictions/<name>.csv``), so adversarial names must not clash with
the clean ones nor hold path characters (:func:`check_set_names`).
"""

from __future__ import annotations

import re

from datamodules.task_spec import SPLIT_ROLES, Source, TaskError, TaskSpec
from records.eval_set import CLEAN_SETS, EvalSet

SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def source_of(task: TaskSpec, eval_set: EvalSet) -> Source:
    """Where the rows of an evaluation set come from: the task's split, or its adversarial set."""
    return task.adversarial[eval_set.name] if eval_set.adversarial else task.splits[eval_set.name]


def task_sets(task: TaskSpec, stage: str | None) -> list[EvalSet]:
    """The sets a Lightning ``stage`` evaluates, in loader order: the clean one (``test`` under ``test``, else
    ``validation``), then every adversarial set of ``task``."""
    return [EvalSet.clean(stage), *(EvalSet(name) for name in task.adversarial)]


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


def predict_sets_of(task: TaskSpec, names: list[str] | None) -> list[EvalSet]:
    """The sets ``predict`` writes, in the order given: ``names`` (``None``: the clean validation set, then
    every adversarial set of ``task``, as ``validate`` evaluates them). Unknown or repeated names are refused
    with the sets there are (checked when the DataModule is made: no file is read, no run folder written)."""
    known = [s for s in CLEAN_SETS if s in task.splits] + list(task.adversarial)
    if names is None:
        return task_sets(task, "predict")
    if not names:
        raise TaskError(f"data.predict_sets=[] names no set — choose from {known} (or leave it unset for "
                        f"{[s.name for s in task_sets(task, 'predict')]})")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise TaskError(f"data.predict_sets names {unknown}, but task {task.name!r} has the evaluation sets {known} "
                        "— e.g. --data.predict_sets=[" + ", ".join(known) + "] (a set left out by data.adversarial "
                        "is not loaded)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise TaskError(f"data.predict_sets names {repeated} more than once — give each set once")
    return [EvalSet(name) for name in names]
