"""Attack files as ``skill-neurons attack`` writes them, made up for the report's tests."""

from __future__ import annotations

import json
import random
from pathlib import Path


def synthetic_attack(folder: Path, backbone: str, task: str, seed: int, recipe: str, rng: random.Random) -> dict:
    """An attack file as skill-neurons attack writes it (successful rows kept) and its sidecar; returns the
    outcome of every example, the truth the table is checked against."""
    outcomes = [rng.choice(["succeeded", "failed", "skipped"]) if recipe != "noise" else "noise" for _ in range(12)]
    words = [rng.randint(1, 3) for _ in outcomes]
    rows = [{"sentence": "x", "label": 1, "idx": i, "success": o == "succeeded", "queries": 5,
             "words_changed": [{"field": "sentence", "index": k, "original": "ab", "perturbed": "ba"}
                               for k in range(n)]} for i, (o, n) in enumerate(zip(outcomes, words))
            if o in ("succeeded", "noise")]
    path = folder / backbone / task / f"seed{seed}" / f"{recipe}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = {"examples": len(outcomes), "attacked": sum(o in ("succeeded", "failed") for o in outcomes),
              "succeeded": outcomes.count("succeeded"), "rows_written": len(rows),
              "queries": 0 if recipe == "noise" else 5 * len(outcomes), "words_changed": sum(
                  len(r["words_changed"]) for r in rows), "outcomes": {o: outcomes.count(o) for o in set(outcomes)}}
    meta = {"format": 1, "complete": True, "counts": counts,
            "settings": {"recipe": recipe, "backbone": backbone, "task": task, "seed": 0, "source_run": f"r{seed}"}}
    (path.parent / f"{recipe}.jsonl.meta.json").write_text(json.dumps(meta))
    return {"outcomes": outcomes, "rows": rows}
