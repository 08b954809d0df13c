"""Reading one split of a task into a ``datasets.Dataset`` of (text fields, label id, idx).

Hub splits are read with ``datasets.load_dataset``; local csv/tsv/json/jsonl/parquet files through the
same function's file builders, so both are cached by ``datasets``. Every problem a user can cause (missing
file or column, a label outside the declared ones, an empty split, a hub name while offline) raises a
:class:`~datamodules.tasks.TaskError` naming the fix.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import datasets

from datamodules.tasks import Source, TaskError, TaskSpec

datasets.disable_progress_bars()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ) not in ("0", "", "false", "False")


def load_raw(source: Source, cache_dir: str | None = None) -> datasets.Dataset:
    """All rows of ``source`` as they are in the file or on the hub."""
    if source.file is not None:
        path = Path(source.file)
        if not path.is_file():
            raise TaskError(f"data file {source.file!r} does not exist — check the path (relative to {os.getcwd()})")
        fmt = source.format
        kwargs: dict = {"data_files": str(path), "split": "train", "cache_dir": cache_dir}
        if fmt in ("csv", "tsv"):
            quoting = source.quoting or ("none" if fmt == "tsv" else "minimal")
            kwargs.update(
                delimiter="\t" if fmt == "tsv" else ",",
                quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL,
                keep_default_na=False,  # a sentence "null" or "NA" stays text
                encoding="utf-8-sig",  # GLUE's MRPC files start with a byte-order mark
            )
            builder = "csv"
        elif fmt == "json":
            builder = "json"
            if source.json_field:
                kwargs["field"] = source.json_field
        else:
            builder = "parquet"
        try:
            return datasets.load_dataset(builder, **kwargs)
        except Exception as err:  # the file builders raise many types; re-raise with the file named
            if "corresponds to no data" in str(err) or "No columns to parse" in str(err):
                return datasets.Dataset.from_dict({})  # a file without rows: prepare_split says "empty"
            raise TaskError(f"cannot read {source.describe()} as {fmt}: {type(err).__name__}: {err}") from None
    try:
        return datasets.load_dataset(source.hub, source.hub_config, split=source.hub_split, cache_dir=cache_dir)
    except Exception as err:  # network, missing config or split: all need the same advice
        why = "HF_HUB_OFFLINE is set and it is not in the local datasets cache" if offline() else str(err)
        raise TaskError(
            f"cannot load {source.describe()} ({why}). Use local files instead: "
            "--data.files='{train: path/train.tsv, validation: path/dev.tsv}' for a task's splits, "
            "--data.adversarial_files='{adv_sst2: path/to/advglue/dev.json}' for adversarial sets"
        ) from None


def prepare_split(task: TaskSpec, source: Source, role: str, cache_dir: str | None = None,
                  limit: int | None = None) -> tuple[datasets.Dataset, dict]:
    """Rows of one split with the task's text fields, an integer ``label`` and the source row ``idx``.

    Returns the dataset and a record of it for the run's summary (source, counts, content hash).
    """
    raw = load_raw(source, cache_dir)
    if len(raw) == 0:
        raise TaskError(f"{role} split of task {task.name!r} ({source.describe()}) is empty — point it at a file "
                        "with examples")
    wanted = {f: source.column(f) for f in task.text_fields}
    wanted["label"] = source.column("label")
    missing = [f"{field} (column {col!r})" for field, col in wanted.items() if col not in raw.column_names]
    if missing:
        raise TaskError(
            f"{role} split of task {task.name!r} ({source.describe()}) has no {', '.join(missing)}; its columns "
            f"are {raw.column_names} — map them with columns: {{field: column}} in the task's source"
        )
    raw = raw.select_columns(list(dict.fromkeys(wanted.values())))
    raw_labels = raw[wanted["label"]]
    ids, keep = [], []
    for row, value in enumerate(raw_labels):
        try:
            label = task.label_id(value)
        except TaskError as err:
            raise TaskError(f"{role} split ({source.describe()}), row {row}: {err}") from None
        if label is not None:
            keep.append(row)
            ids.append(label)
    if limit is not None:
        keep, ids = keep[:limit], ids[:limit]
    if not keep:
        raise TaskError(
            f"{role} split of task {task.name!r} ({source.describe()}) is empty"
            + (" after dropping labels " + str(list(task.drop_labels)) if len(raw) else "")
            + " — point it at a file with examples"
        )
    rows = raw.select(keep)
    data = {field: [str(x) for x in rows[col]] for field, col in wanted.items() if field != "label"}
    data["label"] = ids
    data["idx"] = keep
    ds = datasets.Dataset.from_dict(data)
    digest = hashlib.sha256()
    for i, label in zip(keep, ids):
        digest.update(f"{i}:{label};".encode())
    for field in task.text_fields:
        digest.update("\x1f".join(data[field]).encode())
    record = {
        "source": source.describe(),
        "rows": len(ds),
        "dropped": len(raw) - len(rows) if limit is None else None,
        "label_counts": {task.label_names[k]: ids.count(k) for k in range(len(task.label_names))},
        "sha256": digest.hexdigest(),
    }
    return ds, record
