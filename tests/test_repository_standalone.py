"""Users have only the repository: the README and docs/ name no file that is not in it (notes kept beside the
development checkout, paths of the machine it was written on)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import ROOT

NOT_SHIPPED = ("METHOD.md", "STYLE.md")
MACHINE_PATHS = re.compile(r"(?<![\w.])(/work/|/home/|/Users/|/root/|/tmp/skill|~/shared)")
CLIMBING = re.compile(r"(?<![\w.])((?:\.\./)+[\w./-]*)")  # "../x", not the ellipsis in ".../seed_33"


def outside_references(text: str, folder: Path) -> list[str]:
    """What ``text`` (a file in ``folder``) names outside the repository."""
    found = [name for name in NOT_SHIPPED if name in text]
    found += [m.group(0) for m in MACHINE_PATHS.finditer(text)]
    for match in CLIMBING.finditer(text):
        target = (folder / match.group(1)).resolve()
        if not target.is_relative_to(ROOT.resolve()):
            found.append(match.group(1))
    return found


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_checker_finds_references_outside_the_repository():
    assert outside_references("see METHOD.md bugs 1, 7", ROOT) == ["METHOD.md"]
    assert outside_references("data in ../shared/data", ROOT) == ["../shared/data"]
    assert outside_references("from /work/wt/notes.txt", ROOT) == ["/work/"]
    assert outside_references("import .../seed_33/SST2PromptRoberta/task_prompt", ROOT) == []
    assert outside_references("[README](../README.md)", ROOT / "docs") == []  # docs/ -> the root: inside
    assert outside_references("[x](../../x.md)", ROOT / "docs") == ["../../x.md"]


def test_readme_and_docs_name_no_file_outside_the_repository():
    found = {str(path.relative_to(ROOT)): outside_references(path.read_text(), path.parent) for path in documents()}
    assert {name: refs for name, refs in found.items() if refs} == {}
    assert (ROOT / "README.md") in documents()
