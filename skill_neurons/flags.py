"""The project's flags are spelled as LightningCLI spells its own (``--run_id``, ``--from_run``, ``--mask_slot``:
underscores). A renamed flag's old spelling keeps working for one release: :func:`old_spellings` rewrites it and
prints one deprecation line on stderr. No command code, no Lightning.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TextIO


def old_spellings(argv: Sequence[str], renamed: Mapping[str, str], prog: str, err: TextIO | None = None) -> list[str]:
    """``argv`` with every old spelling of :data:`renamed` (``{"--mask-slot": "--mask_slot"}``) replaced by the
    new one, as ``--old value`` or ``--old=value``; arguments after ``--`` are left alone. When any was used,
    one line on ``err`` (default stderr) names each old spelling and its replacement."""
    out, used = [], []
    for index, arg in enumerate(argv):
        if arg == "--":
            out.extend(argv[index:])
            break
        flag, equals, value = arg.partition("=")
        if flag in renamed:
            used.append(flag)
            arg = f"{renamed[flag]}{equals}{value}"
        out.append(arg)
    if used:
        names = ", ".join(f"{old} -> {renamed[old]}" for old in dict.fromkeys(used))
        print(f"{prog}: deprecated spelling: {names} (the project's flags use underscores, as LightningCLI's do; "
              "the old spelling will stop working in the next release)", file=err or sys.stderr, flush=True)
    return out
