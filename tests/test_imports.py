"""The pure tensor layer must stay importable without Ray (notebooks, CI, other projects)."""

from __future__ import annotations

import subprocess
import sys

PURE = ["trainables", "trainables.config", "trainables.data", "trainables.models", "trainables.augment",
        "trainables.attacks", "trainables.training", "trainables.evaluation", "trainables.scoring", "trainables.trial",
        "trainables.checkpoint", "trainables.pipeline", "trainables.visualize", "trainables.perf",
        "trainables.strong_attacks", "trainables.audit", "trainables.cells", "trainables.reproduce_cell",
        "trainables.vocab", "analysis", "analysis.paper", "analysis.audit_tables", "analysis.stats",
        "analysis.tables", "analysis.grid", "study.cli", "study.spec", "study.settings"]


def test_pure_modules_do_not_import_ray() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {PURE!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_notebooks_import_only_the_analysis_layer() -> None:
    """The notebooks sit in analysis/ and arrange what it computes: they import analysis.*, never a layer above
    it (study) or the tensor layer (import-linter cannot see them: they are not modules of a package)."""
    import ast
    from pathlib import Path

    notebooks = sorted((Path(__file__).resolve().parents[1] / "analysis" / "notebooks").glob("*.py"))
    assert notebooks
    for path in notebooks:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        assert "analysis" in names and not names & {"study", "trainables", "benchmarks", "torch", "ray"}, (path, names)


def test_no_source_file_is_ignored_by_git() -> None:
    """A package git ignores passes every check here and is missing from every clone (a `data/` pattern once hid
    trainables/data/)."""
    import shutil
    from pathlib import Path

    import pytest

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    folders = ["study", "trainables", "analysis", "benchmarks", "tests", "docs"]
    ignored = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", *folders],
                             cwd=root, capture_output=True, text=True, check=True).stdout.split()
    sources = [f for f in ignored if f.endswith((".py", ".md", ".yaml", ".yml", ".css", ".ipynb", ".sh"))]
    assert not sources, f"git ignores these source files: {sources}"
