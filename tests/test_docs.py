"""The README and the documentation site say what the code does: every command block is run by the suite or says
why not, every test and file they name exists, every dotted name they cite imports, the generated references
cover every setting, and the README stays short enough to read."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from cli_flags import command_options
from doc_blocks import ROOT, all_blocks, blocks, doc_files

from trainables.config.spine import Settings, settings_fields

BIN = Path(sys.executable).parent
TEST_REF = re.compile(r"tests/([\w/]+\.py)::(\w+)")
CODE_PATH = re.compile(r"`((?:trainables|study|analysis|benchmarks|tests|docs)/[\w/.\-]*)`")
FILE_NAME = re.compile(r"\b((?:trainables|study|analysis|benchmarks|tests|docs)/[\w/\-]+\.(?:py|yaml|ipynb|md|sh))\b")
DOTTED = re.compile(r"`((?:trainables|study|analysis)(?:\.\w+)+)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_code_block_says_whether_the_suite_runs_it() -> None:
    shown = all_blocks()
    unmarked = [f"{b.where} ({b.marker!r})" for b in shown if b.lang != "text" and b.kind is None]
    assert not unmarked, "blocks without a '<!-- run -->' / '<!-- run by tests/F.py::T -->' / " \
        f"'<!-- not run: reason -->' line above them: {unmarked}"
    assert sum(b.kind == "run" for b in shown) >= 3 and any(b.kind == "run by" for b in shown)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_tests_named_in_the_docs_exist(path: Path) -> None:
    for file, name in TEST_REF.findall(path.read_text()):
        source = ROOT / "tests" / file
        assert source.is_file(), f"{path.name} names tests/{file}, which does not exist"
        assert re.search(rf"^def {name}\(", source.read_text(), re.M), f"{path.name} names tests/{file}::{name}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_files_and_names_the_docs_cite_exist(path: Path) -> None:
    text = path.read_text()
    for cited in CODE_PATH.findall(text):
        if "<" not in cited and "NAME" not in cited:
            assert (ROOT / cited.rstrip(".")).exists(), f"{path.name} cites {cited}, which does not exist"
    for cited in FILE_NAME.findall(text):
        assert (ROOT / cited).is_file(), f"{path.name} names {cited}, which does not exist"
    for dotted in DOTTED.findall(text):
        module, _, attr = dotted.rpartition(".")
        try:
            importlib.import_module(dotted)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), attr), f"{path.name} cites {dotted}, which does not exist"


def test_code_blocks_fit_the_page() -> None:
    """A block wider than the site's column scrolls sideways and hides the end of its lines (often the comment)."""
    wide = [f"{b.where} +{i}: {len(line)} characters" for b in all_blocks()
            for i, line in enumerate(b.text.splitlines(), 1) if len(line) > 92]
    assert not wide, f"code lines over 92 characters: {wide}"


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 120
    assert "make run" in readme and "make test" in readme and "BETTER THAN THE BASE" in readme
    for target in LINK.findall(readme):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_blocks_marked_run_run_as_written(tmp_path: Path) -> None:
    """A new user's shell: the virtual environment's commands on PATH, a fresh directory."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    ran = 0
    for block in (b for b in all_blocks() if b.kind == "run"):
        assert block.lang == "bash", f"{block.where}: only bash blocks are run as written"
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{block.where} failed ({done.returncode}):\n{done.stderr[-2000:]}"
        ran += 1
    assert ran >= 3 and (tmp_path / "spec.schema.json").is_file()


def test_the_generated_spec_reference_lists_every_setting_of_the_spec() -> None:
    from study.spec import StudySpec

    reference = hooks().spec_reference()
    missing = [path for path in settings_fields(StudySpec) if f"`{path}`" not in reference]
    assert not missing, f"settings missing from the spec reference: {missing}"


def test_the_generated_settings_reference_lists_every_settings_model() -> None:
    import study.options  # noqa: F401  (the models register as subclasses)
    import study.settings  # noqa: F401
    import trainables.config  # noqa: F401  (the models register as subclasses)

    def subclasses(cls: type) -> set[type]:
        return {c for s in cls.__subclasses__() for c in {s} | subclasses(s)}

    mine = {c for c in subclasses(Settings) if c.__module__.startswith(("trainables.config", "study.settings",
                                                                         "study.options"))}
    reference = hooks().settings_reference()
    missing = sorted(c.__name__ for c in mine if f"### {c.__name__}\n" not in reference)
    assert not missing, f"settings models missing from docs/reference/settings.md: {missing}"


def _command_lines(path: Path) -> list[str]:
    """Each `patchtune COMMAND ...` the page shows, in code blocks (with their continuation lines) or inline."""
    lines: list[str] = []
    for block in blocks(path):
        shown: list[str] = []
        for line in block.text.splitlines():
            if re.match(r"\s*(\.venv/bin/)?patchtune ", line):
                shown.append(line.split("#", 1)[0])
            elif shown and line.startswith(" ") and (line.strip().startswith("[") or shown[-1].rstrip().endswith("\\")):
                shown[-1] += " " + line.split("#", 1)[0]
        lines += shown
    prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return lines + re.findall(r"`(?:\.venv/bin/)?(patchtune [^`]+)`", prose)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_commands_the_docs_show_take_the_flags_they_show(path: Path) -> None:
    commands = command_options()
    for line in _command_lines(path):
        words = re.sub(r"^\s*(\.venv/bin/)?patchtune\s+", "", line).split()
        if not words or words[0].startswith("-") or words[0].isupper() or words[0].endswith(":"):
            continue  # `patchtune --help`, a placeholder (`patchtune COMMAND`), an error message's prefix
        assert words[0] in commands, f"{path.name} shows `patchtune {words[0]}`, which is not a command"
        unknown = {f for f in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", line)} - set(commands[words[0]])
        assert not unknown, f"{path.name}: `patchtune {words[0]}` has no {sorted(unknown)}"
