"""The README and the pages under docs/: every link leads to a page and a heading that exist,
every page is linked from the README, and every page a message of the package names holds the
section it names."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))


def _anchor(heading: str) -> str:
    # GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(page: Path) -> list[str]:
    lines = page.read_text("utf-8").split("\n")
    return [line.lstrip("#").strip() for line in lines if line.startswith("#")]


def test_every_link_of_the_readme_and_the_docs_leads_somewhere() -> None:
    broken = []
    for page in [ROOT / "README.md", *PAGES]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text("utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # https: and the like
            name, _, anchor = target.partition("#")
            linked = (page.parent / name) if name else page
            if not linked.is_file():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and anchor not in {_anchor(h) for h in _headings(linked)}:
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_links_every_page_of_docs() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    assert PAGES, "docs/ holds the reference"
    assert [p.name for p in PAGES if f"](docs/{p.name})" not in readme] == []


def test_every_docs_section_the_package_names_exists() -> None:
    # Messages say where to read on: "(docs/datasets.md: Offline use)".
    named = set()
    for module in (ROOT / "src" / "nanogptx").glob("*.py"):
        named |= set(re.findall(r"docs/(\w+\.md): ([A-Z][\w ]+)", module.read_text("utf-8")))
    assert ("datasets.md", "Offline use") in named
    missing = [
        f"docs/{page}: {section}"
        for page, section in sorted(named)
        if not (ROOT / "docs" / page).is_file() or section not in _headings(ROOT / "docs" / page)
    ]
    assert missing == []
