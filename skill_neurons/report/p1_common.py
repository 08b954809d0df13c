"""What the ``--definitions p1-code`` sections share: the rows of the definitions section, and the seed means
in P1's float64 (:func:`.p1_code.p1_score` per run, then the mean over seeds as ``src/find.py::get_max_mean``)."""

from __future__ import annotations

import dataclasses

import numpy as np

from skill_neurons.report import p1_code
from skill_neurons.report.base import Context, Run
from skill_neurons.report.seed_means import SeedMean, seed_means

DOC = "docs/p1_code.md"


def differences(ctx: Context) -> list[dict]:
    """The rows of the definitions section, filled by the sections as they compute both numbers."""
    return ctx.cache.setdefault("p1_differences", [])


def sized(mean, why: str) -> str:
    """``why`` plus the size rule, for runs whose ``paper`` definition sizes top sets as ours (not ``paper``)."""
    return why if mean.sizing == "p1" else f"{why}; and k: ceil(N·n/100) for these runs, P1's int(N/100·n)"


def note(ctx: Context, figure: str, what: str, paper, p1, why: str) -> None:
    differences(ctx).append({"figure": figure, "quantity": what, "paper": paper, "p1_code": p1, "why": why})


def number(value, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else (
        f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def fallbacks(ctx: Context) -> dict[str, str]:
    """Neuron file -> why its stored float32 score stands in for P1's float64 one."""
    return ctx.cache.setdefault("p1_fallbacks", {})


def p1_run_score(ctx: Context, run: Run, name: str) -> np.ndarray | None:
    """(L, N) float64 score of one run's set as P1 computes it (:func:`.p1_code.p1_score` from the file's
    ``accuracy`` and ``class_count``); the stored float32 score where the file lacks them (noted in
    :func:`fallbacks`). Only the (L, N) result is kept: the (L, P, N) accuracies of a grid would not fit."""
    cache = ctx.cache.setdefault("p1_run_scores", {})
    key = (run.source, name)
    if key not in cache:
        stored = ctx.scores.score(run, name)
        score = None if stored is None else stored.numpy().astype(np.float64)
        if stored is not None:
            path = ctx.scores.path(run, name)
            try:
                from safetensors import safe_open

                with safe_open(str(path), framework="np") as f:
                    missing = [t for t in ("accuracy", "class_count") if t not in f.keys()]  # noqa: SIM118
                    if missing:
                        raise ValueError(f"no {' or '.join(missing)} tensor")
                    score = p1_code.p1_score(f.get_tensor("accuracy"), f.get_tensor("class_count"))
            except Exception as error:  # noqa: BLE001 (any unreadable accuracy: the stored score, said so)
                fallbacks(ctx)[str(path)] = str(error)
        cache[key] = score
    return cache[key]


def p1_seed_means(ctx: Context) -> list[SeedMean]:
    """:func:`.seed_means` with every set's mean rebuilt in P1's float64 (``find.py::get_max_mean``: the mean
    over the seeds of each seed's max over positions), over the same runs; cached per report."""
    if "p1_seed_means" not in ctx.cache:
        means = []
        for m in seed_means(ctx):
            sets = {}
            for name in m.sets:
                scores = [s for r in m.runs if (s := p1_run_score(ctx, r, name)) is not None]
                sets[name] = np.mean(np.array(scores), axis=0)
            means.append(dataclasses.replace(m, sets=sets))
        ctx.cache["p1_seed_means"] = means
    return ctx.cache["p1_seed_means"]


def score_lines(ctx: Context) -> list[str]:
    """What report.md says about the scores the ``p1-code`` sections start from."""
    lines = ["Scores: P1's float64 predictivity (`src/utils.py::valid`: acc = k/n, `np.where(acc > 1 - acc, acc, "
             "1 - acc)`; `find.py::get_max_mean`), rebuilt exactly from each neuron file's per-position `accuracy` "
             "(k = round(acc · n), n = the set's example count)."]
    if fallbacks(ctx):
        lines[0] += (f" {len(fallbacks(ctx))} file(s) could not be rebuilt; their stored float32 score is used "
                     "(ties may then differ from P1's):")
        listed = sorted(fallbacks(ctx).items())
        lines += ["", *(f"- `{path}`: {why}" for path, why in listed[:10])]
        if len(listed) > 10:
            lines.append(f"- and {len(listed) - 10} more (report.json: `p1_differences` → `float32_fallbacks`)")
    return [*lines, ""]
