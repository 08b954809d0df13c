"""Atomic files: every run file is written to a temp file beside it, fsynced and renamed, so a crash or a full
disk leaves the previous version; strict JSON (no ``NaN``) for every JSON record.

The bottom layer: imports nothing of Lightning, transformers or the rest of the project.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from records.errors import UserError

FILE_MODE = 0o666  # as open() creates a file: the umask decides (0644 under the usual 022), like every run file


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new temp file beside ``name`` in ``folder``, created with :data:`FILE_MODE` so that the umask gives
    it the mode of any other new file (``tempfile.mkstemp`` would make it 0600 whatever the umask)."""
    for _ in range(100):
        tmp = str(folder / f".{name}-{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name for {name} in {folder}")


class WriteError(UserError, OSError):
    """A run file could not be written (disk full, read-only or forbidden folder). The message names the file
    and the free space; the file's previous version is intact. The CLI prints it as one line, exit code 1."""

    exit_code = 1

    def __init__(self, path: str | Path, err: OSError):
        folder = Path(path).parent
        try:
            free = f"{shutil.disk_usage(folder).free / 1024:,.0f} KiB free on its filesystem"
        except OSError:
            free = "free space unknown"
        reason = err.strerror or str(err)
        fix = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
               errno.EROFS: "the folder is read-only: choose another --runs_dir / --dir / --out",
               errno.EACCES: "you may not write there: choose another --runs_dir / --dir / --out",
               errno.EPERM: "you may not write there: choose another --runs_dir / --dir / --out"}
        super().__init__(err.errno, f"cannot write {path}: {reason} ({free}) — "
                                    f"{fix.get(err.errno, 'check the folder')}; its previous version is intact")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = False, backup: bool = False) -> None:
    """Write ``path`` through a temp file in the same folder, fsync, rename: a reader (or a restart after a
    crash) sees the old file or the new one, never a half-written one. ``write(f)`` fills the file, whose mode
    is that of any new file (0666 less the umask). With ``backup`` the previous version stays as ``<name>.bak``
    (a hard link, replaced atomically). Any ``OSError`` (disk full, read-only folder) becomes a
    :class:`WriteError` naming the file and the free space, with the previous file intact."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = _create_temp(path.parent, path.name)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if backup and path.is_file():
            _keep_backup(path)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(path, err) from err
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def backup_path(path: str | Path) -> Path:
    """Where :func:`atomic_write` (``backup=True``) keeps the previous version of ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".bak")


def _keep_backup(path: Path) -> None:
    """``path`` (the version about to be replaced) becomes ``path.bak``, atomically: a hard link, renamed over
    the old backup (a copy where the filesystem has no hard links)."""
    link = path.with_name(f".{path.name}-{secrets.token_hex(6)}.bak")
    try:
        os.link(path, link)
    except OSError:
        shutil.copyfile(path, link)
    os.replace(link, backup_path(path))


def jsonable(value: Any) -> Any:
    """``json.dump``'s fallback: tensors and numpy scalars become numbers or lists, anything else a string."""
    if hasattr(value, "tolist"):  # a 0-d tensor or numpy scalar gives its number
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def strict_json(value: Any, default: Callable[[Any], Any] = jsonable) -> Any:
    """``value`` as strict JSON data: NaN and ±inf (which ``json.dump`` writes as ``NaN``/``Infinity``, invalid
    for strict readers) become ``null``; tensors and other objects go through ``default`` first."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool)) and k is not None else k:
                strict_json(v, default) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v, default) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    converted = default(value)
    return str(value) if converted is value else strict_json(converted, default)


def write_json_atomic(path: str | Path, data: Any, indent: int = 1,
                      default: Callable[[Any], Any] = jsonable, backup: bool = False) -> None:
    """``data`` as strict JSON (:func:`strict_json`: no ``NaN``), written atomically (``backup``: keep the previous
    file as ``<name>.bak``)."""
    data = strict_json(data, default)
    atomic_write(path, lambda f: json.dump(data, f, indent=indent, allow_nan=False), backup=backup)


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
