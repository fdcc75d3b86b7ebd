"""The documentation holds together: the README is the front door (at most 250 lines) and links
every topic page in docs/, and every relative link in README.md and docs/*.md reaches a file
that exists, and a heading that exists where it names one (`#anchor`, GitHub's slugs)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced and indented code blocks, with inline code spans blanked out
    (a link or heading inside code is not one)."""
    out, fence, previous_blank = [], None, True
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m[1][0] * 3
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        indented = line.startswith(("    ", "\t")) and previous_blank
        previous_blank = not line.strip() or (indented and previous_blank)
        out.append("" if indented else line)
    return out


def without_code_spans(line: str) -> str:
    return re.sub(r"(`+)(.+?)\1", lambda m: " " * len(m[0]), line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, punctuation dropped (letters,
    digits, marks, `_`, `-` and spaces kept), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")  # html tags, code marks
    text = re.sub(r"(\*\*|__|\*|_)(\S(?:.*?\S)?)\1", r"\2", text)  # emphasis marks
    text = text.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text()):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m[2])
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    return [m[1] for line in prose_lines(path.read_text()) for m in LINK.finditer(without_code_spans(line))]


def relative(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//", target)


def test_slug_follows_github():
    assert slug("Reading results: `regablate report`") == "reading-results-regablate-report"
    assert slug("How many seeds: `regablate plan` and `hydra.sweeper.seeds=auto`") == \
        "how-many-seeds-regablate-plan-and-hydrasweeperseedsauto"
    assert slug("Tuning a regulariser's strength: `hydra/sweeper=optuna`") == \
        "tuning-a-regularisers-strength-hydrasweeperoptuna"
    assert slug("One run, from `regablate run` to `summary.json`") == "one-run-from-regablate-run-to-summaryjson"
    assert slug("Recurrent networks: `model=lstm` and `model=gru`") == "recurrent-networks-modellstm-and-modelgru"
    assert slug("The run dir") == "the-run-dir"


def test_code_is_not_prose(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n\n```\n# not a heading [x](missing.md)\n```\n\n`[y](gone.md)` [z](here.md)\n")
    assert anchors(page) == {"title"}
    assert links(page) == ["here.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in filter(relative, links(page)):
        file, _, anchor = target.partition("#")
        where = (page.parent / unquote(file)).resolve() if file else page
        if not where.exists():
            broken.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and unquote(anchor) not in anchors(where):
            broken.append(f"{target}: no heading #{anchor} in {where.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_readme_is_the_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; topics belong in docs/"


def test_readme_links_every_topic_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README) if relative(t)}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds no pages"
    missing = [p.name for p in pages if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"
