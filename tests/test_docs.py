"""The README is the manual: short, starting with the two commands, and no broken links.

Fast and import-free (only the standard library): it reads Markdown files as text.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LIMIT = 12_000  # bytes, as `wc -c README.md` counts them (house style: under 12,000)
FIRST_COMMANDS = ["./run.sh", "./run.sh test"]
INTRO_LIMIT = 600  # characters of the short paragraph allowed between title and commands

# [text](target) and ![alt](target), with an optional "title"; [label]: target
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_FENCE = re.compile(r"^\s*(```|~~~)")


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """conftest's autouse fixture of the same name imports torch (seconds); these tests
    run no stage, so they replace it with nothing."""
    yield


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links there are not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else re.sub(r"`[^`]*`", "``", line))
    return "\n".join(lines)


def relative_links(text: str) -> list[str]:
    """Link targets that name a file of the repository: not web addresses, not anchors."""
    found = _INLINE.findall(prose(text)) + _REFERENCE.findall(prose(text))
    return [t for t in found
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("#")]


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """The relative links of ``path`` to files that do not exist or are outside ``root``."""
    bad = []
    for target in relative_links(path.read_text(encoding="utf-8")):
        file = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (path.parent / file).resolve()
        if root not in resolved.parents and resolved != root:
            bad.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            bad.append(target)
    return bad


def opening(text: str) -> tuple[str, list[str]]:
    """The text between the title and the first code block (headings left out), and that
    block's commands (comments and blank lines left out)."""
    lines = text.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    assert lines and lines[0].startswith("# "), "README.md must start with a '# title' line"
    intro, i = [], 1
    while i < len(lines) and not _FENCE.match(lines[i]):
        if not lines[i].lstrip().startswith("#"):
            intro.append(lines[i])
        i += 1
    commands = []
    for line in lines[i + 1:]:
        if _FENCE.match(line):
            break
        command = line.split(" #", 1)[0].strip()
        if command and not command.startswith("#"):
            commands.append(" ".join(command.split()))
    return "\n".join(intro).strip(), commands


def test_readme_is_under_the_size_limit():
    size = len(README.read_bytes())
    assert size < LIMIT, (f"README.md is {size} bytes, the limit is {LIMIT}: move detail "
                          "into docs/ (docs/usage.md) and link it")


def test_readme_starts_with_the_two_commands():
    intro, commands = opening(README.read_text(encoding="utf-8"))
    paragraphs = [p for p in re.split(r"\n\s*\n", intro) if p.strip()]
    assert len(paragraphs) <= 1 and len(intro) <= INTRO_LIMIT, (
        "at most one short paragraph between the README's title and its first commands")
    assert commands[:2] == FIRST_COMMANDS, (
        f"the README's first code block must start with {FIRST_COMMANDS}, has {commands[:2]}")


DOCS = [README] + sorted((REPO / "docs").glob("*.md"))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_files_of_the_repository(path):
    bad = broken_links(path)
    assert not bad, f"{path.relative_to(REPO)}: broken links {bad}"


def test_the_checks_catch_what_they_should(tmp_path):
    text = ("# t\n\nShort.\n\n## Quick start\n\n```bash\n./run.sh   # go\n./run.sh test\n```\n"
            "[ok](../README.md) [web](https://x.org/a.md) [anchor](#x) `[code](nope.md)`\n"
            "[bad](nope.md#part) ![pic](img/none.png)\n```\n[fenced](nope2.md)\n```\n"
            "[ref]: ../../outside.md\n")
    assert opening(text) == ("Short.", ["./run.sh", "./run.sh test"])
    assert relative_links(text) == ["../README.md", "nope.md#part", "img/none.png",
                                    "../../outside.md"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# t\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(text)
    assert broken_links(page, tmp_path) == ["nope.md#part", "img/none.png",
                                            "../../outside.md (outside the repository)"]
    two = "# t\n\nOne.\n\nTwo.\n\n```\n./run.sh\n./run.sh test\n```\n"
    assert len([p for p in re.split(r"\n\s*\n", opening(two)[0]) if p.strip()]) == 2
