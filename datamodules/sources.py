"""Reading one split of a task into a ``datasets.Dataset`` of (text fields, label id, idx).

Hub splits are read with ``datasets.load_dataset``; local csv/tsv/json/jsonl/parquet files through the
same function's file builders, so both are cached by ``datasets``. Every problem a user can cause (missing
file or column, a label outside the declared ones, an empty split, a hub name while offline) raises a
:class:`~datamodules.task_spec.TaskError` naming the fix.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
from pathlib import Path

import datasets
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.task_spec import Source, TaskError, TaskSpec

BIG_FILE_BYTES = 10_000_000  # datasets shows its progress bars when reading a local file this large or larger
BIG_SPLIT_ROWS = 20_000  # ... and when tokenising a split this long or longer (seconds of work, not instant)


@contextlib.contextmanager
def progress_bars_if(show: bool):
    """datasets' progress bars off while a small file is read or a small split tokenised (they would flash past),
    as they are for everything big; the previous setting (on by default, or ``HF_DATASETS_DISABLE_PROGRESS_BARS``)
    comes back afterwards. Hub downloads always keep theirs."""
    hide = not show and datasets.is_progress_bar_enabled()
    if hide:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            datasets.enable_progress_bars()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ) not in ("0", "", "false", "False")


def file_digest(path: Path) -> str:
    """A content digest of a file (``datasets`` keys its cache on path and modification time only, so an
    edited file with the same size and time would be served stale)."""
    digest = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _chain(err: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while err is not None and id(err) not in seen:
        out.append(err)
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return out


def _read_problem(path: Path, fmt: str, err: BaseException) -> str | None:
    """What is wrong with a local file that a file builder could not read, with the line to look at."""
    raw = path.read_bytes()
    if any(isinstance(e, UnicodeDecodeError) for e in _chain(err)) or fmt in ("csv", "tsv", "json"):
        for number, line in enumerate(raw.splitlines(), start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as bad:
                byte = line[bad.start]
                return (f"line {number} is not UTF-8 (byte 0x{byte:02x} at column {bad.start + 1}) — save the file "
                        "as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8)")
    if fmt == "json":
        text = raw.decode("utf-8-sig")
        broken = None
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                if line.strip():
                    json.loads(line)
            except json.JSONDecodeError as bad:
                broken = (number, bad)
                break
        if broken is None:
            return None  # valid JSON Lines: the builder's message is about the structure
        try:
            json.loads(text)
            return None  # one (pretty-printed) JSON document
        except json.JSONDecodeError as whole:
            number, bad = broken if broken[0] > 1 else (whole.lineno, whole)  # JSON Lines broken at a later line
            return f"line {number} is not valid JSON ({bad.msg} at column {bad.colno}) — fix or remove it"
    return None


def load_raw(source: Source, cache_dir: str | None = None) -> datasets.Dataset:
    """All rows of ``source`` as they are in the file or on the hub."""
    if source.file is not None:
        path = Path(source.file)
        if path.is_dir():
            raise TaskError(f"data file {source.file!r} is a directory — give a file (csv/tsv/json/jsonl/parquet)")
        if not path.is_file():
            raise TaskError(f"data file {source.file!r} does not exist — check the path (relative to {os.getcwd()})")
        fmt = source.format
        # The config name carries a digest of the content, so an edited file is never served from the cache.
        kwargs: dict = {"data_files": str(path), "split": "train", "cache_dir": cache_dir,
                        "name": f"content-{file_digest(path)}"}
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
        verbosity = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its builders log a file's error before raising it
        try:
            with progress_bars_if(path.stat().st_size >= BIG_FILE_BYTES):
                return datasets.load_dataset(builder, **kwargs)
        except Exception as err:  # the file builders raise many types; re-raise with the file named
            if any("corresponds to no data" in str(e) or "No columns to parse" in str(e) for e in _chain(err)):
                return datasets.Dataset.from_dict({})  # a file without rows: prepare_split says "empty"
            problem = _read_problem(path, fmt, err)
            if problem:
                raise TaskError(f"cannot read {source.describe()} as {fmt}: {problem}") from None
            cause = _chain(err)[-1]
            raise TaskError(f"cannot read {source.describe()} as {fmt}: {type(cause).__name__}: "
                            f"{' '.join(str(cause).split())[:300]}") from None
        finally:
            datasets.logging.set_verbosity(verbosity)
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
    """Rows of one split with the task's text fields, an integer ``label`` and the source row ``idx``; an
    adversarial file's ``original_<column>`` columns (the clean text a row was attacked from) come along as
    ``original_<field>``, which pair each row with its clean twin (``clean_input_ids`` when tokenised).

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
    # an adversarial row's clean twin (AdvGLUE's dev_ann.json, generated sets): `original_<column>` per text field
    originals = {f: f"original_{col}" for f, col in wanted.items()
                 if f != "label" and f"original_{col}" in raw.column_names}
    raw = raw.select_columns(list(dict.fromkeys([*wanted.values(), *originals.values()])))
    raw_labels = raw[wanted["label"]]
    texts = [raw[wanted[f]] for f in task.text_fields]
    ids, keep, empty = [], [], []
    for row, value in enumerate(raw_labels):
        try:
            label = task.label_id(value)
        except TaskError as err:
            raise TaskError(f"{role} split ({source.describe()}), row {row}: {err}") from None
        if label is None:
            continue
        if any(column[row] is None or not str(column[row]).strip() for column in texts):
            empty.append(row)  # a null or blank text is no example: dropped, counted and shown
            continue
        keep.append(row)
        ids.append(label)
    if empty:
        rank_zero_warn(f"{role} split ({source.describe()}): dropped {len(empty)} row(s) with a null or empty text "
                       f"(rows {', '.join(map(str, empty[:10]))}{', ...' if len(empty) > 10 else ''}); "
                       "summary.json records the count")
    if limit is not None:
        keep, ids = keep[:limit], ids[:limit]
    if not keep:
        raise TaskError(
            f"{role} split of task {task.name!r} ({source.describe()}) is empty"
            + (" after dropping labels " + str(list(task.drop_labels)) if len(raw) else "")
            + (f" and {len(empty)} rows with null or empty text" if empty else "")
            + " — point it at a file with examples"
        )
    rows = raw.select(keep)
    data = {field: [str(x) for x in rows[col]] for field, col in wanted.items() if field != "label"}
    data["label"] = ids
    data["idx"] = keep
    for field, col in originals.items():  # "" where a row has no original (that field was not attacked)
        data[f"original_{field}"] = ["" if x is None else str(x) for x in rows[col]]
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
        "dropped_empty_text": len(empty),
        "label_counts": {task.label_names[k]: ids.count(k) for k in range(len(task.label_names))},
        "sha256": digest.hexdigest(),
    }
    return ds, record
