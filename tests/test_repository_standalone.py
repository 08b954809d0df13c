"""Users have only the repository: the README and docs/ name no file that is not in it (notes kept beside the
development checkout, paths of the machine it was written on)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import ROOT

WRITTEN = {"report.md"}  # Markdown the tools write (skill-neurons report), not a document the repository ships
MARKDOWN_NAME = re.compile(r"(?<![\w/.-])([\w./-]*[\w-]\.md)\b")  # a named Markdown file: notes.md, docs/x.md
MACHINE_PATHS = re.compile(r"(?<![\w.])(/work/|/home/|/Users/|/root/|/tmp/skill|~/shared)")
CLIMBING = re.compile(r"(?<![\w.])((?:\.\./)+[\w./-]*)")  # "../x", not the ellipsis in ".../seed_33"


def outside_references(text: str, folder: Path) -> list[str]:
    """What ``text`` (a file in ``folder``) names outside the repository."""
    shipped = {path.name for path in ROOT.rglob("*.md")  # the repository's own, not a virtualenv's or .git's
               if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)}
    found = [m.group(1) for m in MARKDOWN_NAME.finditer(text)
             if not m.group(1).startswith("../") and Path(m.group(1)).name not in WRITTEN
             and not (folder / m.group(1)).exists() and not (ROOT / m.group(1)).exists()
             and Path(m.group(1)).name not in shipped]  # a Markdown file the repository does not hold
    found += [m.group(0) for m in MACHINE_PATHS.finditer(text)]
    for match in CLIMBING.finditer(text):
        target = (folder / match.group(1)).resolve()
        if not target.is_relative_to(ROOT.resolve()):
            found.append(match.group(1))
    return found


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_checker_finds_references_outside_the_repository():
    assert outside_references("see NOTES_BESIDE.md bugs 1, 7", ROOT) == ["NOTES_BESIDE.md"]
    assert outside_references("see docs/p1_code.md and README.md", ROOT) == []
    assert outside_references("data in ../elsewhere/data", ROOT) == ["../elsewhere/data"]
    assert outside_references("from /work/wt/notes.txt", ROOT) == ["/work/"]
    assert outside_references("import .../seed_33/SST2PromptRoberta/task_prompt", ROOT) == []
    assert outside_references("[README](../README.md)", ROOT / "docs") == []  # docs/ -> the root: inside
    assert outside_references("[x](../../x.md)", ROOT / "docs") == ["../../x.md"]


def test_readme_and_docs_name_no_file_outside_the_repository():
    found = {str(path.relative_to(ROOT)): outside_references(path.read_text(), path.parent) for path in documents()}
    assert {name: refs for name, refs in found.items() if refs} == {}
    assert (ROOT / "README.md") in documents()
