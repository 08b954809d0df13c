"""The attack's output: an append-only jsonl file and its ``<FILE>.meta.json`` sidecar, resumable after a kill.

Rows are appended one chunk of examples at a time and flushed to disk; then the sidecar (written atomically)
records how many examples are done and how many bytes of the jsonl hold them. A rerun with the same settings
cuts the jsonl back to those bytes (a row half-written by a kill goes) and goes on from the next example; with
per-example randomness (seed and row) and fixed chunks, the finished file is byte for byte an uninterrupted
run's. A rerun with other settings (recipe, seed, run, constraints ...) is refused rather than mixing attacks.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from records.files import atomic_write
from skill_neurons.attack import AttackError

FORMAT = 1


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def meta_path(out: Path) -> Path:
    """``FILE.jsonl`` → ``FILE.jsonl.meta.json``."""
    return out.with_name(out.name + ".meta.json")


def read_meta(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads(meta_path(out).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise AttackError(f"{meta_path(out)} cannot be read — it is the attack's record of {out}; remove both "
                          "files to start again, or give another --out") from None


class AttackFile:
    """The jsonl ``out`` of an attack with ``settings`` (what makes two attacks the same attack)."""

    def __init__(self, out: Path, settings: dict[str, Any]):
        self.out, self.settings = Path(out), settings
        self.meta: dict[str, Any] = {}

    def check(self) -> dict[str, Any] | None:
        """The progress of an earlier run of this attack into ``out`` (None: none); refuses a file that another
        attack, or something else, wrote. Reads only: call it before any work."""
        meta = read_meta(self.out)
        if meta is None:
            if self.out.exists() and self.out.stat().st_size > 0:
                raise AttackError(f"--out {self.out} exists and no attack wrote it (no {meta_path(self.out).name}) "
                                  "— give another --out, or remove the file")
            return None
        differ = sorted(k for k in {*meta.get("settings", {}), *self.settings}
                        if meta.get("settings", {}).get(k) != self.settings.get(k))
        if differ:
            shown = "; ".join(f"{k}: {meta['settings'].get(k)!r} -> {self.settings.get(k)!r}" for k in differ[:4])
            raise AttackError(f"--out {self.out} holds another attack ({shown}) — give another --out, or remove "
                              f"{self.out} and {meta_path(self.out).name} to replace it")
        size = self.out.stat().st_size if self.out.exists() else 0
        if size < meta["progress"]["bytes"]:
            raise AttackError(f"--out {self.out} holds {size} bytes, less than the {meta['progress']['bytes']} its "
                              f"{meta_path(self.out).name} records — it was cut or replaced; remove both files to "
                              "start again")
        return meta

    def start(self, meta: dict[str, Any] | None, fresh: dict[str, Any]) -> dict[str, Any]:
        """Open for appending: cut the jsonl back to what the sidecar records (or start it empty)."""
        self.meta = meta or {"format": FORMAT, "settings": self.settings, "complete": False, **fresh}
        done = self.meta["progress"]["bytes"]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out, "ab") as f:
            f.truncate(done)
        if meta is None:
            self._write_meta()
        return self.meta

    def append(self, rows: list[dict[str, Any]], progress: dict[str, Any]) -> None:
        """Append ``rows``, flush them to disk, then record ``progress`` (examples done, counts) with the size."""
        with open(self.out, "ab") as f:
            for row in rows:
                f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        self.meta["progress"] = {**progress, "bytes": size}
        self._write_meta()

    def finish(self, extra: dict[str, Any]) -> None:
        self.meta.update(extra, complete=True)
        self._write_meta()

    def _write_meta(self) -> None:
        text = json.dumps(self.meta, indent=1, sort_keys=False) + "\n"
        atomic_write(meta_path(self.out), lambda f: f.write(text))
