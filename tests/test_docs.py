"""The README and the guides in ``docs/`` hold together: the README stays short and starts with the two set-up
commands CI relies on, every guide says what it is for and is on the README's map, every relative link and
image points at a file (and heading) that exists, and every command that needs weights the user converts is
marked as such. Text only: nothing here runs a network."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *GUIDES]

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)


def _prose(path: Path) -> str:
    """The text without fenced code blocks (a ``](`` inside code is not a link)."""
    return FENCE.sub("", path.read_text())


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(path), flags=re.M):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_readme_is_short_and_starts_with_the_two_setup_commands():
    lines = README.read_text().splitlines()
    assert len(lines) < 200
    assert lines[2] == ("    python3 -m venv .venv && .venv/bin/pip install -e . && "
                        ".venv/bin/python -m magec_jax.invert --config configs/demo.py")
    assert lines[3] == ("    python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && "
                        "MAGEC_REQUIRE_SHARED=1 .venv/bin/python -m pytest -q")


@pytest.mark.parametrize("path", GUIDES, ids=lambda p: p.name)
def test_each_guide_says_what_it_is_for_and_is_on_the_readme_map(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1] == ""
    assert lines[2].startswith("This guide is for"), f"{path.name}: the first paragraph should say what it is for"
    assert f"](docs/{path.name})" in README.read_text(), f"{path.name} is not on the README's map of the guides"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_and_images_exist(path):
    broken = []
    for target in LINK.findall(_prose(path)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = unquote(target).partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.name}: broken links {broken}"


def test_the_link_checker_sees_links_images_and_anchors(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# A `b` c\n\n## Two words\n\n![x](pic.png) and [y](doc.md#two-words) and [z](#a-b-c)\n"
                   "```\n[not a link](nowhere.md)\n```\n")
    assert LINK.findall(_prose(doc)) == ["pic.png", "doc.md#two-words", "#a-b-c"]
    assert _anchors(doc) == {"a-b-c", "two-words"}


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_commands_that_need_converted_weights_are_marked(path):
    """An indented command block that reads from ``weights/`` (weights the user converts; nothing there is
    shipped) says ``# needs converted weights``."""
    unmarked = []
    for block in re.findall(r"(?:^    .*\n?)+", _prose(path), flags=re.M):
        if re.search(r"(?<![\w/])weights/", block) and "# needs converted weights" not in block:
            unmarked.append(block.strip().splitlines()[0])
    assert not unmarked, f"{path.name}: unmarked commands {unmarked}"
