"""Which W&B artifacts a report used, and declaring them on the report's W&B run (``run.use_artifact``) so the
dashboard's lineage graph links the report to the skill-neuron artifacts of the runs it read.

Each analysed run logged its neuron files as a version of the artifact of its configuration
(:attr:`records.settings.RunSettings.artifact_name`), aliased ``run-<run id>``; the report names exactly that version.
W&B cannot record the use of an artifact from an offline run (``run.use_artifact`` raises ``TypeError`` in
offline mode, and ``wandb sync`` has no way to add it later), so an offline report run lists the references in
its config (``artifacts_used``) and ``report.json`` says they were not declared.
"""

from __future__ import annotations

from typing import Any

from skill_neurons.report.base import Context

OFFLINE_NOTE = ("not declared: W&B cannot record artifact use from an offline run (run.use_artifact raises "
                "TypeError offline); run the report online (with the runs synced) to link them")


def used_artifacts(ctx: Context) -> list[str]:
    """``name:run-<id>`` of the skill-neuron artifact version of every analysed run the report read."""
    return sorted({f"{run.run_settings.artifact_name}:run-{run.run_id}" for run in ctx.neuron_runs()})


def declare_artifacts(run: Any, refs: list[str]) -> dict[str, Any]:
    """``run.use_artifact`` for every reference (online); what was declared, what not and why."""
    if run.settings.mode in ("offline", "dryrun"):
        return {"declared": [], "not_declared": refs, "why": OFFLINE_NOTE}
    declared, missing = [], []
    for ref in refs:
        try:
            run.use_artifact(ref, type="skill-neurons")
            declared.append(ref)
        except Exception as err:  # not uploaded (an offline run not synced yet), or another project
            missing.append(f"{ref} ({type(err).__name__})")
    return {"declared": declared, "not_declared": missing,
            "why": "not on the W&B server (sync those runs first)" if missing else None}
