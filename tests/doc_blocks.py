"""The fenced code blocks of the README and the docs, each with the marker line above it that says whether the
suite runs it: `<!-- run -->` (tests/test_docs.py runs it as written), `<!-- run by tests/FILE.py::TEST ... -->`
(that test runs it), or `<!-- not run: REASON -->`. A ```text block is a picture (a layout), not a command."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- (run|run by (?P<test>tests/[\w/]+\.py::\w+)[^>]*|not run: (?P<reason>.+?)) -->$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    marker: str  # the line above the fence
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str | None:
        """'run', 'run by', 'not run', or None when the line above is no marker."""
        found = MARKER.match(self.marker)
        if not found:
            return None
        return "run by" if found["test"] else "not run" if found["reason"] else "run"

    @property
    def run_by(self) -> str | None:
        found = MARKER.match(self.marker)
        return found["test"] if found else None


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found: list[Block] = []
    start: int | None = None
    for i, line in enumerate(lines):
        if not line.startswith("```"):
            continue
        if start is None:
            start = i
            continue
        marker = lines[start - 1] if start else ""
        found.append(Block(path, start + 1, lines[start][3:].strip(), marker, "\n".join(lines[start + 1:i]) + "\n"))
        start = None
    assert start is None, f"{path}:{start + 1 if start is not None else 0}: a code block is never closed"
    return found


def all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in blocks(path)]


def block_run_by(test: str) -> Block:
    """The one block whose marker says `test` runs it (`tests/FILE.py::NAME`)."""
    mine = [b for b in all_blocks() if b.run_by == test]
    assert len(mine) == 1, f"expected one docs block marked 'run by {test}', found {[b.where for b in mine]}"
    return mine[0]
