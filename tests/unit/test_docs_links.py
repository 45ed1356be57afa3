"""Every relative link in README.md and docs/*.md points to a file (and heading) that exists,
and every repository path the pages quote exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# A quoted path into the repository's source folders: `fraud/worker/app.py`, `tables/rules/`.
QUOTED_PATH = re.compile(r"`((?:fraud|proto|tables|benchmarks|docs)/[\w./-]*)`")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# Output folders the tools create when they run (git-ignored), quoted as where output goes.
CREATED_BY_TOOLS = {"benchmarks/results/"}


def prose(page: Path) -> str:
    """The page without its fenced code blocks (shell sessions and TOML are not links)."""
    return FENCE.sub("", page.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {
        slug(line.lstrip("#")) for line in prose(page).splitlines() if re.match(r"#{1,6} ", line)
    }


def relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(page))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_there_are_pages_and_links_to_check() -> None:
    assert ROOT / "docs" / "performance.md" in PAGES
    assert len(PAGES) >= 5
    assert sum(len(relative_links(p)) for p in PAGES) >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path_part, _, fragment = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_quoted_repository_path_exists(page: Path) -> None:
    missing = [
        quoted
        for quoted in QUOTED_PATH.findall(prose(page))
        if "{" not in quoted
        and "*" not in quoted
        and quoted not in CREATED_BY_TOOLS
        and not (ROOT / quoted).exists()
    ]
    assert not missing, f"{page.relative_to(ROOT)}: quoted paths that do not exist: {missing}"


def test_the_link_checker_finds_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page.write_text(
        "[ok](other.md) [ok too](other.md#a-section) [web](https://example.com/x)\n"
        "[missing](nope.md) [bad anchor](other.md#no-such-section)\n"
        "```sh\n[not a link](inside-code.md)\n```\n"
    )
    assert relative_links(page) == [
        "other.md", "other.md#a-section", "nope.md", "other.md#no-such-section"
    ]  # fmt: skip
    assert anchors(tmp_path / "other.md") == {"other-page", "a-section"}
    assert slug("`fraud bench latency|throughput|docs`") == "fraud-bench-latencythroughputdocs"
