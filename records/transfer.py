"""Relative prompt transfer, defined once: the reference accuracy of a target task and the relative score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from records.summary import BEST_KEY, finished_fit_runs

# ------------------------------------------------------------------ relative transfer
# relative(A→B) = 100 · acc(A→B) / acc(B→B). acc(B→B) (the *reference*) is the best clean validation accuracy
# (best['val/acc']) of the fit run of task B on the same backbone **with the seed of A's prompt** — the same
# number as evaluating B's own prompt on B, which P1 reads from its B→B transfer runs. This is P1's
# get_transferability_matrix_new (src/analysis.py): a ratio per seed; a cell of the matrix is the mean of those
# ratios over seeds. When B has no fit run of that seed, the reference is the mean over B's fit runs and ``how``
# says so. Adversarial targets get no relative score (P1 leaves those cells empty). summary.json, the W&B
# summary and the report all use these two functions.
SAME_SEED = "fit run of B with the prompt's seed (best val/acc)"
MEAN_OVER_SEEDS = "mean over B's fit runs (best val/acc); none has the prompt's seed"
NO_REFERENCE = "no finished fit run of B on this backbone"


def reference_accuracy(candidates: list[tuple[str, Any, float]], seed: Any) -> tuple[float | None, list[str], str]:
    """acc(B→B) from B's fit runs ``candidates`` = [(run id, seed, best val/acc as a fraction)] for a prompt of
    seed ``seed``: (reference or None, the run ids it comes from, how it was found)."""
    same = [c for c in candidates if seed is not None and c[1] == seed]
    chosen = same or candidates
    if not chosen:
        return None, [], NO_REFERENCE
    reference = sum(c[2] for c in chosen) / len(chosen)
    return reference, [str(c[0]) for c in chosen], SAME_SEED if same else MEAN_OVER_SEEDS


def relative_score(accuracy: float | None, reference: float | None) -> float | None:
    """100 · accuracy / reference (both fractions, or both %), None without a positive reference."""
    if accuracy is None or reference is None or reference <= 0:
        return None
    return 100.0 * accuracy / reference


def transfer_record(source: dict[str, Any], target_task: str, backbone: str, accuracy: float,
                    runs_roots: list[Path]) -> dict[str, Any]:
    """Transfer of a prompt from ``source['task']`` (A) to ``target_task`` (B): the accuracy and, when B's own
    fit runs with this backbone are in one of ``runs_roots``, the relative score."""
    own = [summary for _, summary in finished_fit_runs(runs_roots)
           if summary.get("settings", {}).get("task") == target_task
           and summary.get("settings", {}).get("backbone") == backbone
           and (summary.get("best") or {}).get(BEST_KEY) is not None]
    candidates = [(o.get("run_id"), o["settings"].get("seed"), o["best"][BEST_KEY]) for o in own]
    reference, runs, how = reference_accuracy(candidates, source.get("seed"))
    return {
        "source_task": source.get("task"), "target_task": target_task, "accuracy": accuracy,
        "reference_accuracy": reference, "reference_runs": runs, "reference": how,
        "relative": relative_score(accuracy, reference),
    }
