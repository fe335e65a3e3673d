"""The documentation is one tree under docs/ whose links all land: every relative link of README.md,
CHANGELOG.md, benchmarks/*.md and docs/**/*.md names a file that exists and, when it carries a
``#fragment`` into a markdown page, a heading of that page (GitHub's anchor for it); every ``docs/....md``
named in the sources and configs exists; every topic page is listed in the README's documentation table.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    *sorted((ROOT / "benchmarks").glob("*.md")),
    *sorted(DOCS.rglob("*.md")),
]
# Pages written by a program (the lab's committed report) are examples of its output, not topic pages.
GENERATED = {DOCS / "lab" / "seeds" / "README.md", DOCS / "lab" / "dino_fig7" / "README.md"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text: str) -> list[str]:
    """The lines of a markdown page outside fenced code blocks (a `# comment` in a bash block is no
    heading, and a `[x](y)` in a code sample is no link)."""
    lines, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (link targets and markup dropped) lower-cased, every
    character but letters, digits, `_`, `-` and spaces removed, spaces turned into `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page offers: its headings (a repeated one numbered -1, -2, ... as GitHub does)
    and explicit `<a id=...>` / `<a name=...>` targets."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page.read_text()):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = github_anchor(heading.group(1))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
        found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", line))
    return found


def dead_links(page: Path, root: Path = ROOT) -> list[str]:
    """`page -> target` (paths relative to `root`) for every relative link of a page that does not land."""
    dead = []
    for line in prose_lines(page.read_text()):
        for groups in LINK.findall(line):
            target = groups[0] or groups[1]
            if "://" in target or target.startswith("mailto:"):
                continue
            path_part, _, fragment = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(root)} -> {target}"
            if not resolved.exists():
                dead.append(f"{where} (no such file)")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                dead.append(f"{where} (no heading with that anchor in {resolved.relative_to(root)})")
    return dead


def test_github_anchor_follows_githubs_rule():
    assert github_anchor("What is checked, and what is not") == "what-is-checked-and-what-is-not"
    assert github_anchor("Sharding (`dinolite/fsdp/sharding.py`)") == "sharding-dinolitefsdpshardingpy"
    assert github_anchor("The demo_vicreg preset: 25/25/1") == "the-demo_vicreg-preset-25251"
    assert github_anchor("A [link](x.md) in a heading") == "a-link-in-a-heading"
    assert (
        github_anchor("What the demos reach (digits, CPU) - and more") == "what-the-demos-reach-digits-cpu---and-more"
    )


def test_anchors_skip_code_blocks_and_number_repeats(tmp_path):
    page = tmp_path / "p.md"
    page.write_text('# Title\n\n```bash\n# not a heading\n```\n\n## Step\n\n## Step\n\n<a id="here"></a>\n')
    assert anchors(page) == {"title", "step", "step-1", "here"}


def test_dead_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#a-section) [self](#page) [web](https://x.org/#y) ![img](other.md)\n"
        "[gone](missing.md) [bad anchor](other.md#no-such-section) [bad self](#nowhere)\n"
        "```\n[in code](missing-too.md)\n```\n"
    )
    assert dead_links(page, tmp_path) == [
        "page.md -> missing.md (no such file)",
        "page.md -> other.md#no-such-section (no heading with that anchor in other.md)",
        "page.md -> #nowhere (no heading with that anchor in page.md)",
    ]


def test_every_relative_link_lands_on_a_file_and_heading():
    dead = [link for page in PAGES for link in dead_links(page)]
    assert not dead, "dead documentation links:\n" + "\n".join(dead)


def test_docs_named_in_sources_and_configs_exist():
    """A `docs/....md` named in a docstring, comment or config (the old README cited
    docs/readme/monitor.md while it was missing) is a page that exists."""
    sources = [
        *ROOT.glob("dinolite/**/*.py"),
        *ROOT.glob("dinolite/configs/**/*.yaml"),
        *ROOT.glob("eval/*.py"),
        *ROOT.glob("launch/*.py"),
        *ROOT.glob("benchmarks/*.py"),
        *(path for path in ROOT.glob("tests/**/*.py") if path.name != Path(__file__).name),
        # The CHANGELOG names pages that moved away, on purpose.
        *(page for page in PAGES if page.name != "CHANGELOG.md"),
    ]
    dead = []
    for path in sources:
        for target in re.findall(r"(?<![\w/.])(docs/[\w./-]*\w\.md)(?:#([\w-]+))?", path.read_text()):
            page, fragment = ROOT / target[0], target[1]
            if not page.exists():
                dead.append(f"{path.relative_to(ROOT)} names {target[0]}")
            elif fragment and fragment not in anchors(page):
                dead.append(f"{path.relative_to(ROOT)} names {target[0]}#{fragment} (no such heading)")
    assert not dead, "dead documentation references:\n" + "\n".join(sorted(set(dead)))


def test_docs_are_one_tree_listed_in_the_readme():
    """Topic pages sit directly under docs/ (no second tree such as the old docs/readme/), and the
    README's documentation table lists each of them."""
    readme = (ROOT / "README.md").read_text()
    topic_pages = sorted(DOCS.glob("*.md"))
    nested = [p.relative_to(ROOT) for p in DOCS.rglob("*.md") if p.parent != DOCS and p not in GENERATED]
    assert not nested, f"pages outside the one docs/ tree: {nested}"
    unlisted = [p.name for p in topic_pages if f"](docs/{p.name})" not in readme]
    assert not unlisted, f"docs pages the README's documentation table does not list: {unlisted}"


def headings(page: Path) -> list[str]:
    """The text of every heading of a markdown page (outside code blocks)."""
    found = []
    for line in prose_lines(page.read_text()):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            found.append(heading.group(1))
    return found


# `docs/data.md, "Budgets"` or `benchmarks/RESULTS.md, "Intra-op threads"`: a page and a section title,
# the way code comments point to where measured figures and reasons are kept.
SECTION_REFERENCE = re.compile(r"(?<![\w/.])((?:docs/[\w./-]*\w|benchmarks/RESULTS)\.md),? \"([^\"]{3,120})\"")


def section_references(text: str) -> list[tuple[str, str]]:
    """Every (page, section title) a source names; a title wrapped over comment or docstring lines is
    read joined."""
    joined = re.sub(r"\s*\n\s*(?:#\s*)?", " ", text)
    return SECTION_REFERENCE.findall(joined)


def test_section_references_are_read_across_wrapped_comment_lines():
    text = 'x = 1  # measured: benchmarks/RESULTS.md, "what the\n    # hostile-input checks cost").\n'
    assert section_references(text) == [("benchmarks/RESULTS.md", "what the hostile-input checks cost")]


def test_sections_named_in_sources_and_configs_exist():
    """A comment that sends the reader to a page's section for the measured figures (``benchmarks/
    RESULTS.md, "Intra-op threads"``) names a heading of that page (the title, or part of it)."""
    sources = [
        *ROOT.glob("dinolite/**/*.py"),
        *ROOT.glob("dinolite/configs/**/*.yaml"),
        *ROOT.glob("benchmarks/*.py"),
        *(path for path in ROOT.glob("tests/**/*.py") if path.name != Path(__file__).name),
    ]
    dead = []
    for path in sources:
        for page, title in section_references(path.read_text()):
            target = ROOT / page
            if not target.exists():
                dead.append(f"{path.relative_to(ROOT)} names {page} (no such file)")
            elif not any(title.lower() in heading.lower() for heading in headings(target)):
                dead.append(f'{path.relative_to(ROOT)} names {page}, "{title}" (no heading with that text)')
    assert not dead, "dead section references:\n" + "\n".join(sorted(set(dead)))
